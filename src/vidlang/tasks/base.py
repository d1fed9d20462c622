"""The small protocol between the training loop and a task.

A task says what model and data a recipe builds, the loss of one batch, and how validation
scores the model. train.py is handed a Task and knows no method; a new task is one new file
in tasks/ that defines ``TASK`` (and registers its name in tasks/__init__.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    files: dict[str, str | bytes] = field(default_factory=dict)  # more files for every checkpoint folder
    # (batch_size, seed, num_workers, rank, world) -> a resumable stream (next, state, load_state) that
    # replaces the unique-video BatchStream over train_set, e.g. a sharded store (data.shards); None: BatchStream
    train_stream: Callable[[int, int, int, int, int], Any] | None = None
    clips_per_video: int = 1  # the BatchStream's clips of each video per batch (batch_size counts videos)


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
    # (cfg, warmup_linear) -> the lr factor of each step; default: warmup_linear(train.warmup_steps, train.steps)
    lr_schedule: Callable[[Config, Callable], Callable[[int], float]] = \
        lambda cfg, warmup_linear: warmup_linear(cfg.train.warmup_steps, cfg.train.steps)
    # train.members > 1: None if inference pools the members' outputs under cfg, else what it would take
    pools_members: Callable[[Config], str | None] = lambda cfg: "this task has no way to pool several models"
    # (runs to train first, the config to train once they exist): e.g. MV-GPT's decode.rerank_retriever recipe
    prerequisites: Callable[[Config], tuple[list[Config], Config]] = lambda cfg: ([], cfg)


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


def shard_training(cfg: Config, video_dim: int, transform: Callable[[dict], Any], collate_fn: Callable,
                   held_out: set[str]) -> tuple[Callable[..., Any], dict, list[str]]:
    """``data.shards``: the training clips come from a sharded store, streamed (data/shard_stream.py).
    Returns the Experiment's ``train_stream`` factory, the store's manifest and its sorted video ids.
    The store must hold clips of ``video_dim`` and none of the ``held_out`` (validation/test) videos."""
    from vidlang.data.shard_stream import ShardStream
    from vidlang.data.shards import ShardedStore
    from vidlang.errors import ConfigError, DataError

    store = ShardedStore(cfg.data.shards)
    if store.dim != video_dim:
        raise DataError(f"data.shards={cfg.data.shards} holds {store.dim}-d features; the feature store of "
                        f"data.root/data.features (validation) has {video_dim}")
    ids = store.video_ids()
    leaked = sorted(held_out & ids)
    if leaked:
        raise ConfigError(f"data.shards={cfg.data.shards} holds {len(leaked)} validation/test videos (e.g. "
                          f"{leaked[:3]}): write the store from the training clips only")

    def make(batch_size: int, seed: int, num_workers: int, rank: int, world: int) -> ShardStream:
        return ShardStream(store, batch_size, seed, num_workers, rank, world, collate_fn, transform)

    return make, {**store.manifest(), "videos": len(ids)}, sorted(ids)
