"""A small task world and the recipes the downstream task tests train on it (seconds on one thread)."""
from __future__ import annotations

from pathlib import Path

from vidlang.config import load_config
from vidlang.worlds.steps import StepWorldConfig, write_step_world

SMALL = StepWorldConfig(num_videos=32, seed=3)  # 24 train / 8 validate videos


def small_world(root: Path) -> Path:
    from vidlang.data.features import open_store
    from vidlang.data.step_world import read_step_world, write_step_clips

    world = write_step_world(root / "world", SMALL)
    write_step_clips(read_step_world(world), world / "clips.jsonl", open_store(world / "features").fps)
    return world


def world_config(task: str, world: Path, out: Path, *extra: str):
    """The task's world recipe pointed at ``world``, validating on the world's validate videos."""
    repo = Path(__file__).resolve().parents[1]
    recipe = {"segmentation": "segmentation/world", "step_localization": "step_localization/world",
              "videoqa": "videoqa/world", "taco": "world/taco", "mvgpt": "world/mvgpt"}[task]
    annotations = world / ("clips.jsonl" if task in ("taco", "mvgpt") else "world.json")
    return load_config(repo / "configs" / f"{recipe}.yaml", [
        f"data.features={world / 'features'}", f"data.annotations={annotations}", "data.val_split=validate",
        "data.test_split=none", f"train.out_dir={out}", "train.threads=1", *extra])
