"""Action segmentation (COIN-style) as a task: a per-frame classifier over the steps plus background.

The head (:class:`~vidlang.models.frame_probe.FrameProbe`) reads every frame of the stored features
(``probe.encoder=raw``) or of a TACo / MV-GPT video encoder (``probe.encoder_from``), frozen (linear
probe, the MIL-NCE/UniVL protocol) or fine-tuned (``probe.finetune``). Labels: ``data.annotations``
is a task world's ``world.json`` (per-frame step ids at the feature rate, 0 = background); the splits
are its ``split`` names (or id lists, ``carve:N``) as for any recipe. Validation reports frame
accuracy with background counted (COIN), at the annotation's resolution (here the feature frames),
without background, and the majority-class accuracy (the majority chosen on the training frames).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vidlang import checkpoint as ckpt
from vidlang.config import Config
from vidlang.data.dataset import PerVideoDataset, pad_videos
from vidlang.data.features import open_store
from vidlang.data.records import TensorBatch
from vidlang.data.sources import Source, select_split, split_clips
from vidlang.data.step_world import (
    StepWorld,
    check_lengths,
    majority_label,
    read_step_world,
)
from vidlang.errors import ConfigError, DataError
from vidlang.evaluation.protocol import held_out
from vidlang.evaluation.segmentation import frame_accuracy
from vidlang.models.frame_probe import FrameProbe
from vidlang.models.loading import model_from_checkpoint, read_config
from vidlang.tasks.base import Experiment, Task, experiment_manifest


@dataclass
class FrameBatch(TensorBatch):
    video: torch.Tensor  # (B, T, D)
    video_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T) class per frame (0 where padded)
    video_ids: list[str] = field(default_factory=list)


class FrameLabelledVideos(PerVideoDataset):
    """One item per video: all its (T, D) feature frames and its (T,) frame labels."""

    def __init__(self, video_ids: list[str], store, world: StepWorld):
        check_lengths(world, store, video_ids)
        super().__init__(video_ids, store)
        self.world = world

    def item(self, video_id: str) -> dict:
        return {"labels": torch.from_numpy(self.world.videos[video_id].labels)}


def collate_frames(items: list[dict]) -> FrameBatch:
    video, mask = pad_videos(items)
    labels = torch.zeros(mask.shape, dtype=torch.long)
    for k, it in enumerate(items):
        labels[k, : len(it["labels"])] = it["labels"]
    return FrameBatch(video, mask, labels, [it["video_id"] for it in items])


def open_world(cfg: Config) -> tuple[StepWorld, object]:
    if not cfg.data.annotations or not cfg.data.features:
        raise ConfigError(f"task {cfg.task}: set data.annotations (a task world's world.json) and data.features")
    return read_step_world(cfg.data.annotations), open_store(cfg.data.features, fps=cfg.data.feature_fps,
                                                             allow_pickle=cfg.data.allow_pickle)


def encoder_source(cfg: Config) -> tuple[Path | None, dict | None]:
    """The encoder checkpoint folder and its config (None, None for raw features)."""
    p = cfg.probe
    if p.encoder == "raw":
        return None, None
    if not p.encoder_from:
        raise ConfigError(f"probe.encoder={p.encoder!r} needs probe.encoder_from (its checkpoint or run folder)")
    folder = ckpt.find_checkpoint(p.encoder_from)
    ckpt.read_meta(folder, expect_model=p.encoder)
    return folder, read_config(folder).to_dict()


def load_encoder_weights(model, folder: Path | None) -> None:
    if folder is not None:
        from safetensors.torch import load_file

        model.load_encoder(load_file(str(folder / "model.safetensors")))


def build_frame_experiment(cfg: Config) -> Experiment:
    """The world's frames and labels, split as the recipe says, and a FrameProbe over steps + background."""
    world, store = open_world(cfg)
    source = Source(store, world.clips())
    splits = split_clips(source, cfg.data, cfg.train.seed)
    make = lambda clips: FrameLabelledVideos(sorted({c.video_id for c in clips}), store, world) if clips else None
    train_set, val_set, test_set = make(splits.train), make(splits.validation), make(splits.test)
    for ds, clips in ((train_set, splits.train), (val_set, splits.validation), (test_set, splits.test)):
        if ds is not None:
            ds.clips = clips
    folder, encoder_config = encoder_source(cfg)
    torch.manual_seed(cfg.train.seed)
    p = cfg.probe
    model = FrameProbe(p.encoder, store.dim, world.num_steps + 1, encoder_config, 0, p.dropout, p.finetune)
    load_encoder_weights(model, folder)
    model.meta["majority_class"] = majority_label(world, train_set.videos)  # chosen on training frames
    meta = {"probe": model.meta, "encoder_checkpoint": str(folder) if folder else None,
            "world": str(world.path)}
    manifest = experiment_manifest(source, splits, train_set, val_set, test_set)
    return Experiment(cfg, train_set, val_set, model, manifest, collate=collate_frames, meta=meta, test_set=test_set,
                      train_ids=train_set.videos)


@torch.no_grad()
def frame_scores(model: FrameProbe, dataset: FrameLabelledVideos, device="cpu", batch_size: int = 64):
    """Yield (video_id, (T, C) logits of its real frames, (T,) labels) for every video."""
    model.eval()
    for a in range(0, len(dataset), batch_size):
        batch = collate_frames([dataset[i] for i in range(a, min(a + batch_size, len(dataset)))]).to(device)
        logits = model.frame_logits(batch.video, batch.video_mask).float().cpu().numpy()
        lengths = batch.video_mask.sum(1).tolist()
        for k, vid in enumerate(batch.video_ids):
            yield vid, logits[k, : lengths[k]], batch.labels[k, : lengths[k]].cpu().numpy()


def evaluate(model: FrameProbe, dataset: FrameLabelledVideos, cfg: Config | None = None, device="cpu",
             distributed=None) -> dict:
    preds, truths = [], []
    for _, logits, labels in frame_scores(model, dataset, device):
        preds.append(logits.argmax(1))
        truths.append(labels)
    majority = [np.full_like(t, model.meta["majority_class"]) for t in truths]
    return {"frame_acc": 100 * frame_accuracy(preds, truths), "frame_acc_no_bg": 100 * frame_accuracy(preds, truths, 0),
            "majority_frame_acc": 100 * frame_accuracy(majority, truths), "num_videos": len(truths),
            "num_frames": int(sum(len(t) for t in truths))}


def scored_videos(world: StepWorld, store, split: str | None) -> list[str]:
    """The videos a ``vidlang evaluate --task`` run scores: a split name, id list file, or every video."""
    clips = select_split(world.clips(), store, split or "all")
    if not clips:
        raise DataError(f"split {split!r} selects no video of {world.path}")
    return sorted({c.video_id for c in clips})


def load_frame_probe(checkpoint, device="cpu") -> tuple[FrameProbe, dict]:
    folder = ckpt.find_checkpoint(checkpoint)
    model, _, meta = model_from_checkpoint(folder, "probe")
    if not isinstance(model, FrameProbe):
        raise ConfigError(f"{folder} holds a video-level probe, not a per-frame head (task segmentation)")
    return model.to(device), {**meta, "checkpoint": str(folder)}


def evaluate_checkpoint(checkpoint, annotations, features, split=None, device="cpu",
                        allow_train_overlap=False) -> tuple[dict, dict]:
    """Frame accuracy of a trained segmentation head on a world's videos; the scored ids are checked
    against the head's training ids (evaluation/protocol.held_out)."""
    model, meta = load_frame_probe(checkpoint, device)
    world, store = read_step_world(annotations), open_store(features)
    ids = scored_videos(world, store, split)
    info = held_out(meta["checkpoint"], ids, allow_train_overlap)
    metrics = evaluate(model, FrameLabelledVideos(ids, store, world), device=device)
    return metrics, {**info, "protocol": protocol(meta)}


def protocol(meta: dict) -> str:
    p = meta["probe"]
    return (f"frame accuracy with background, feature-frame resolution; {p['encoder']} features, "
            f"{'fine-tuned' if p['finetune'] else 'linear'} frame head")


TASK = Task(
    name="segmentation",
    model="probe",
    build=build_frame_experiment,
    forward=lambda model, batch, cfg, generator, shard: model(batch),
    log_keys=("loss",),
    evaluate=evaluate,
    show_keys=lambda cfg: ("frame_acc", "frame_acc_no_bg", "majority_frame_acc"),
    scoring=lambda cfg: f"frame accuracy with background; {cfg.probe.encoder} features, "
                        f"{'fine-tuned' if cfg.probe.finetune else 'linear'} frame head",
    score_checkpoint=evaluate_checkpoint,
)
