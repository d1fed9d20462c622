"""From a ``DataConfig`` to a feature store and train/validation clip lists.

A split is given as one of:
- a path to an id list (one id per line, or a CSV with a ``video_id`` column);
- a split name of the annotations (``train``, ``validate``, ``test``, ``training``, ``validation``);
- ``index:A:B``: the store's videos at positions A..B-1 (e.g. ``index:0:700`` = video0..video699
  of msrvtt-ae128-dev);
- ``all``: every annotated video (one the store lacks is an error, or a named skip with skip_bad).

A recipe's validation split must be held out from its training split (checked by video id), and
says so: ``carve:N`` (or ``carve:0.1``) holds out N (or a tenth of the) training videos, chosen by
the seed; ``none`` trains without validation. An empty ``data.val_split`` is an error: validating on
every clip of a folder would validate on the training clips. ``data.test_split`` is scored once, at
the end of training, and never chooses a checkpoint.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidlang.config import DataConfig
from vidlang.data.annotations import filter_clips, read_annotations, read_id_list
from vidlang.data.features import FeatureStore, open_store
from vidlang.data.narration import Streams, attach_transcripts, read_transcripts
from vidlang.data.records import Clip, Skips
from vidlang.errors import ConfigError, DataError


def ids_sha256(video_ids: Iterable[str]) -> str:
    """The hash that manifests and results give an id list (sorted, unique, newline-joined; 16 hex)."""
    return hashlib.sha256("\n".join(sorted(set(video_ids))).encode()).hexdigest()[:16]


@dataclass
class Source:
    store: FeatureStore
    clips: list[Clip]  # every annotated clip (with its transcript when transcripts were given)
    counter: Counter = field(default_factory=Skips)  # what the readers skipped (Skips: each item named)
    streams: Streams | None = None  # timed utterances per video, when transcripts were given

    def split(self, spec: str) -> list[Clip]:
        return select_split(self.clips, self.store, spec)

    def manifest(self, **splits: list[Clip]) -> dict:
        out = {"store": self.store.manifest(), "skipped_by_readers": dict(self.counter),
               "skipped_items_by_readers": list(getattr(self.counter, "items", []))}
        for name, clips in splits.items():
            ids = {c.video_id for c in clips}
            out[name] = {"clips": len(clips), "videos": len(ids), "ids_sha256": ids_sha256(ids)}
        return out


def open_data(root: str | Path | None = None, *, features: str | Path | None = None,
              annotations: str | Path | None = None, transcripts: str | Path | None = None,
              fps: float | None = None, allow_pickle: bool = False, skip_bad: bool = False,
              paragraph: bool = False, need_annotations: bool = True) -> Source:
    """Open a data folder for any command: its feature store (``features``, default ``root``), every
    annotated clip (``annotations``, default ``root/annotations.json``) and, with ``transcripts``,
    each clip's speech by time. ``need_annotations=False``: clips may come from the transcripts alone."""
    root = Path(root) if root else None
    features = Path(features) if features else root
    if features is None:
        raise ConfigError("set data.root (a folder like msrvtt-ae128-dev) or data.features (the feature store)")
    annotations = Path(annotations) if annotations else (root / "annotations.json" if root else None)
    counter = Skips()
    clips: list[Clip] = []
    if need_annotations or (annotations is not None and annotations.exists()):
        if annotations is None:
            raise ConfigError("set data.root or data.annotations (the annotation file)")
        if not annotations.exists():
            raise DataError(f"annotation file not found: {annotations}")
        options = {"skip_bad": skip_bad, "counter": counter, **({"paragraph": True} if paragraph else {})}
        clips = read_annotations(annotations, **options)
    store = open_store(features, fps=fps, allow_pickle=allow_pickle)
    streams = None
    if transcripts:
        streams = read_transcripts(transcripts, skip_bad=skip_bad, counter=counter, allow_pickle=allow_pickle)
        clips = attach_transcripts(clips, streams)
    return Source(store, clips, counter, streams)


def open_source(cfg: DataConfig, need_annotations: bool = True) -> Source:
    """:func:`open_data` with a recipe's ``data`` section."""
    return open_data(cfg.root or None, features=cfg.features or None, annotations=cfg.annotations or None,
                     transcripts=cfg.transcripts or None, fps=cfg.feature_fps, allow_pickle=cfg.allow_pickle,
                     skip_bad=cfg.skip_bad, paragraph=cfg.paragraph, need_annotations=need_annotations)


def select_split(clips: list[Clip], store: FeatureStore, spec: str) -> list[Clip]:
    spec = spec.strip()
    if spec in ("", "all"):  # a video the store lacks is named by the dataset (or skipped, named)
        return list(clips)
    if spec.startswith("index:"):
        try:
            _, a, b = spec.split(":")
            ids = store.ids[int(a) : int(b)]
        except ValueError:
            raise ConfigError(f"split '{spec}' must look like index:A:B") from None
        return filter_clips(clips, ids)
    path = Path(spec)
    if path.is_file():
        return filter_clips(clips, read_id_list(path))
    names = {c.split for c in clips}
    if spec in names:
        return [c for c in clips if c.split == spec]
    raise ConfigError(
        f"split '{spec}' is neither an id-list file, 'index:A:B', 'all', nor a split of the annotations "
        f"({sorted(n for n in names if n)})"
    )


@dataclass
class Splits:
    """A recipe's clips: training, validation (held out) and test (scored once, at the end)."""

    train: list[Clip]
    validation: list[Clip]
    test: list[Clip]
    described: dict  # how each was chosen, for the manifest and the results


def split_clips(source: Source, cfg: DataConfig, seed: int = 0) -> Splits:
    """Resolve ``data.train_split``, ``data.val_split`` and ``data.test_split``; no validation or test
    video may be a training video."""
    train_spec = cfg.train_split.strip() or "train"
    val_spec, test_spec = cfg.val_split.strip(), (cfg.test_split.strip() or "none")
    if not val_spec:
        raise ConfigError(
            "data.val_split is empty: name a held-out split (an id list file, a split of the annotations such as "
            "'validate', or index:A:B), 'carve:N' to hold out N training videos, or 'none' to train without validation")
    train = source.split(train_spec)
    if not train:
        raise ConfigError(f"data.train_split '{train_spec}' selects no clips")
    if val_spec.startswith("carve:"):
        train, validation = carve(train, val_spec, seed)
    else:
        validation = [] if val_spec == "none" else source.split(val_spec)
    test = [] if test_spec == "none" else source.split(test_spec)
    if val_spec != "none" and val_spec == test_spec:
        raise ConfigError(f"data.val_split and data.test_split are both '{val_spec}': a test split never chooses "
                          "a checkpoint; hold out a validation split (e.g. carve:0.1)")
    train_ids = {c.video_id for c in train}
    for key, spec, clips in (("data.val_split", val_spec, validation), ("data.test_split", test_spec, test)):
        shared = sorted(train_ids & {c.video_id for c in clips})
        if shared:
            raise ConfigError(f"{key} '{spec}' shares {len(shared)} videos with data.train_split '{train_spec}' "
                              f"(e.g. {', '.join(shared[:3])}): they must be held out")
    described = {"train": train_spec, "validation": val_spec, "test": test_spec}
    return Splits(train, validation, test, described)


def carve(clips: list[Clip], spec: str, seed: int) -> tuple[list[Clip], list[Clip]]:
    """``carve:N`` / ``carve:F``: hold out N videos (or a share F < 1) of ``clips`` by ``seed``."""
    try:
        amount = float(spec.split(":", 1)[1])
    except ValueError:
        raise ConfigError(f"data.val_split '{spec}' must look like carve:N (videos) or carve:0.1 (a share)") from None
    videos = sorted({c.video_id for c in clips})
    count = int(round(amount * len(videos))) if 0 < amount < 1 else int(amount)
    if not 0 < count < len(videos):
        raise ConfigError(f"data.val_split '{spec}' must hold out between 1 and {len(videos) - 1} of the "
                          f"{len(videos)} training videos")
    order = np.random.default_rng(seed).permutation(len(videos))
    held = {videos[i] for i in order[:count]}
    return [c for c in clips if c.video_id not in held], [c for c in clips if c.video_id in held]
