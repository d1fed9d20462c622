"""Action / category classification: a linear probe (or fine-tuned head) on a video encoder.

The head reads the stored features (``probe.encoder=raw``), or TACo's or MV-GPT's video encoder from
``probe.encoder_from``; labels come from ``probe.labels``. Validation reports top-1/top-5 accuracy and
the majority-class accuracy (the majority chosen on the training labels).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from vidlang import checkpoint as ckpt
from vidlang.config import Config
from vidlang.data.dataset import PerVideoDataset, pad_videos
from vidlang.data.labels import read_labels
from vidlang.data.records import TensorBatch
from vidlang.data.sources import open_source, split_clips
from vidlang.errors import ConfigError, DataError
from vidlang.evaluation.classification import topk_accuracy
from vidlang.models.loading import read_config
from vidlang.models.probe import ProbeModel
from vidlang.tasks.base import Experiment, Task, experiment_manifest


@dataclass
class LabelBatch(TensorBatch):
    video: torch.Tensor
    video_mask: torch.Tensor
    labels: torch.Tensor
    video_ids: list[str] = field(default_factory=list)


class LabelledVideos(PerVideoDataset):
    """One item per video: its (T, D) features and its class index."""

    def __init__(self, video_ids: list[str], store, labels: dict[str, int], max_frames: int):
        missing = [v for v in video_ids if v not in labels]
        if missing:
            raise DataError(f"{len(missing)} videos have no label in probe.labels (e.g. {', '.join(missing[:3])})")
        super().__init__(video_ids, store, max_frames)
        self.labels = labels

    def item(self, video_id: str) -> dict:
        return {"label": self.labels[video_id]}


def collate_labels(items: list[dict]) -> LabelBatch:
    video, mask = pad_videos(items)
    return LabelBatch(video, mask, torch.tensor([it["label"] for it in items]), [it["video_id"] for it in items])


def build_experiment(cfg: Config) -> Experiment:
    p = cfg.probe
    if not p.labels:
        raise ConfigError("probe.labels is empty: give a {video_id: label} JSON or MSR-VTT's videodatainfo json/zip")
    source = open_source(cfg.data)
    splits = split_clips(source, cfg.data, cfg.train.seed)
    names = read_labels(p.labels)
    train_ids = sorted({c.video_id for c in splits.train})
    classes = sorted({names[v] for v in train_ids if v in names}, key=lambda c: (len(c), c))
    index = {c: i for i, c in enumerate(classes)}
    unseen = sorted({names[c.video_id] for c in splits.validation + splits.test if names.get(c.video_id) not in index}
                    - {None})
    if unseen:
        raise DataError(f"labels {unseen[:5]} of held-out videos never occur in training: the head cannot predict them")
    labels = {v: index[n] for v, n in names.items() if n in index}
    make = lambda clips: LabelledVideos(sorted({c.video_id for c in clips}), source.store, labels,  # noqa: E731
                                        cfg.data.max_frames) if clips else None
    train_set, val_set, test_set = make(splits.train), make(splits.validation), make(splits.test)
    for ds in (train_set, val_set, test_set):
        if ds is not None:
            ds.clips = [c for c in splits.train + splits.validation + splits.test if c.video_id in set(ds.videos)]
    encoder_config = None
    torch.manual_seed(cfg.train.seed)
    if p.encoder != "raw":
        if not p.encoder_from:
            raise ConfigError(f"probe.encoder={p.encoder!r} needs probe.encoder_from (its checkpoint or run folder)")
        folder = ckpt.find_checkpoint(p.encoder_from)
        ckpt.read_meta(folder, expect_model=p.encoder)
        encoder_config = read_config(folder).to_dict()
    model = ProbeModel(p.encoder, source.store.dim, len(classes), encoder_config, p.hidden, p.dropout, p.finetune)
    if p.encoder != "raw":
        from safetensors.torch import load_file

        model.load_encoder(load_file(str(folder / "model.safetensors")))
    majority = Counter(labels[v] for v in train_set.videos).most_common(1)[0][0]  # chosen on training labels
    model.meta["majority_class"] = majority
    meta = {"probe": model.meta, "classes": classes,
            "encoder_checkpoint": str(folder) if p.encoder != "raw" else None}
    manifest = experiment_manifest(source, splits, train_set, val_set, test_set)
    return Experiment(cfg, train_set, val_set, model, manifest, collate=collate_labels, meta=meta, test_set=test_set,
                      train_ids=train_set.videos, summary=lambda: {"classes": classes})


@torch.no_grad()
def evaluate(model: ProbeModel, dataset: LabelledVideos, cfg: Config, device="cpu", distributed=None) -> dict:
    model.eval()
    scores, labels = [], []
    for a in range(0, len(dataset), 256):
        batch = collate_labels([dataset[i] for i in range(a, min(a + 256, len(dataset)))]).to(device)
        scores.append(model.head(model.pooled(batch.video, batch.video_mask)).float().cpu())
        labels.append(batch.labels.cpu())
    scores, labels = torch.cat(scores).numpy(), torch.cat(labels).numpy()
    acc = topk_accuracy(scores, labels, ks=(1, 5))
    majority = 100 * float((labels == model.meta["majority_class"]).mean())
    return {"top1": 100 * acc[1], "top5": 100 * acc[5], "majority_top1": majority, "num_videos": len(labels)}


TASK = Task(
    name="classify",
    model="probe",
    build=build_experiment,
    forward=lambda model, batch, cfg, generator, shard: model(batch),
    log_keys=("loss",),
    evaluate=evaluate,
    show_keys=lambda cfg: ("top1", "top5"),
    scoring=lambda cfg: f"{cfg.probe.encoder} features, {'fine-tuned head' if cfg.probe.finetune else 'linear probe'}",
)
