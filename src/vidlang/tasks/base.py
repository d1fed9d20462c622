"""The small protocol between the training loop and a task.

A task says what model and data a recipe builds, the loss of one batch, and how validation
scores the model. train.py is handed a Task and knows no method; a new task is one new file
in tasks/ that defines ``TASK`` (and registers its name in tasks/__init__.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vidlang.config import Config
from vidlang.data.records import named_skips


@dataclass
class Experiment:
    """What a task builds from a config: the model, its training and validation sets, and more."""

    cfg: Config
    train_set: torch.utils.data.Dataset  # must have .videos (unique videos, for the batch sampler)
    val_set: torch.utils.data.Dataset | None
    model: torch.nn.Module  # has .video_dim; optional .pretrained_text_parameters() (own lr)
    manifest: dict  # data manifest: store, split sizes and id hashes, skips
    collate: Callable  # items -> batch
    meta: dict = field(default_factory=dict)  # more for every checkpoint's meta.json (e.g. token weights)
    summary: Callable[[], dict] = dict  # more for summary.json at the end (e.g. token-weight statistics)
    test_set: torch.utils.data.Dataset | None = None  # data.test_split: scored once, after training
    train_ids: list[str] = field(default_factory=list)  # training video ids, kept beside every checkpoint


@dataclass(frozen=True)
class Task:
    """What the loop needs of a task.

    ``forward(model, batch, cfg, generator, shard)`` returns a dict with ``objective`` (to backward),
    ``loss`` and the ``log_keys`` to report, and optionally ``counts`` (added to the run's counters).
    ``evaluate(model, val_set, cfg, device, distributed)`` returns the validation metrics;
    ``show_keys`` are printed. ``unused_parameters``: some trainable parameters may get no gradient
    (DDP must then look for them). ``model`` is the model kind written into checkpoints.
    """

    name: str
    model: str
    build: Callable[[Config], Experiment]
    forward: Callable[..., dict]
    log_keys: tuple[str, ...]
    evaluate: Callable[..., dict]
    show_keys: Callable[[Config], tuple[str, ...]]
    unused_parameters: Callable[[Config], bool] = lambda cfg: False
    before_step: Callable[[torch.nn.Module, int], None] = lambda model, step: None
    scoring: Callable[[Config], str] = lambda cfg: cfg.eval.scoring  # stamped in results: how validation scores
    # ``vidlang evaluate CKPT --task NAME``: (checkpoint, annotations, features, split, device,
    # allow_train_overlap) -> (metrics, info with the held_out stamp and "protocol"); None: retrieval only
    score_checkpoint: Callable[..., tuple[dict, dict]] | None = None


def experiment_manifest(source, splits, train_set, val_set=None, test_set=None) -> dict:
    """The data manifest of a run: the store, each split (how chosen, size, id hash), what was skipped."""
    sets = {"train": train_set, "validation": val_set, "test": test_set}
    manifest = source.manifest(**{name: ds.clips if ds is not None else [] for name, ds in sets.items()})
    for name in ("train", "validation", "test"):
        manifest[name]["split"] = splits.described[name]
    manifest["protocol"] = splits.described["protocol"]  # how validation and test are scored (sources.PROTOCOLS)
    manifest["skipped_by_dataset"] = {name: dict(ds.skipped) if ds is not None else {} for name, ds in sets.items()}
    manifest["skipped_items_by_dataset"] = {name: named_skips(ds.skipped) if ds is not None else []
                                            for name, ds in sets.items()}
    return manifest
