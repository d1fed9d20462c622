"""Tasks: one file each, mapped from a recipe's ``task:`` by this registry.

    from vidlang.tasks import get_task
    task = get_task(cfg.task)        # a vidlang.tasks.base.Task
"""
from __future__ import annotations

import importlib

from vidlang.errors import ConfigError

# task name -> module defining TASK (imported only when asked for)
TASKS = {
    "taco": "vidlang.tasks.taco",  # TACo retrieval: L1 + L2 + L3 with cascade negatives
    "mvgpt": "vidlang.tasks.mvgpt",  # MV-GPT pretraining (FG/BG/MLM) and captioning
    "classify": "vidlang.tasks.classify",  # action / category classification: a probe on a video encoder
    "segmentation": "vidlang.tasks.segmentation",  # COIN-style action segmentation: a per-frame head
    "step_localization": "vidlang.tasks.step_localization",  # CrossTask: frame x step scores + Zhukov DP
    "videoqa": "vidlang.tasks.videoqa",  # open-ended VideoQA: MV-GPT encoder + top-K answer classifier
}


def get_task(name: str):
    if name not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(sorted(TASKS))}, not {name!r}")
    return importlib.import_module(TASKS[name]).TASK
