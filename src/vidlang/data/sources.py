"""From a ``DataConfig`` to a feature store and train/validation clip lists.

A split is given as one of:
- a path to an id list (one id per line, or a CSV with a ``video_id`` column);
- a split name of the annotations (``train``, ``validate``, ``test``, ``training``, ``validation``);
- ``index:A:B``: the store's videos at positions A..B-1 (e.g. ``index:0:700`` = video0..video699
  of msrvtt-ae128-dev);
- ``all``: every annotated video that the store holds.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vidlang.config import DataConfig
from vidlang.data.annotations import filter_clips, read_annotations, read_id_list
from vidlang.data.features import FeatureStore, open_store
from vidlang.data.records import Clip
from vidlang.errors import ConfigError, DataError


@dataclass
class Source:
    store: FeatureStore
    clips: list[Clip]  # every annotated clip
    counter: Counter = field(default_factory=Counter)  # what the readers skipped

    def split(self, spec: str) -> list[Clip]:
        return select_split(self.clips, self.store, spec)

    def manifest(self, **splits: list[Clip]) -> dict:
        out = {"store": self.store.manifest(), "skipped_by_readers": dict(self.counter)}
        for name, clips in splits.items():
            ids = sorted({c.video_id for c in clips})
            digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
            out[name] = {"clips": len(clips), "videos": len(ids), "ids_sha256": digest}
        return out


def open_source(cfg: DataConfig) -> Source:
    if not (cfg.root or (cfg.features and cfg.annotations)):
        raise ConfigError("set data.root (a folder like msrvtt-ae128-dev) or both data.features and data.annotations")
    root = Path(cfg.root) if cfg.root else None
    features = Path(cfg.features) if cfg.features else root
    annotations = Path(cfg.annotations) if cfg.annotations else root / "annotations.json"
    if not annotations.exists():
        raise DataError(f"annotation file not found: {annotations}")
    store = open_store(features, fps=cfg.feature_fps, allow_pickle=cfg.allow_pickle)
    counter: Counter = Counter()
    options = {"skip_bad": cfg.skip_bad, "counter": counter}
    if cfg.paragraph:
        options["paragraph"] = True
    clips = read_annotations(annotations, **options)
    return Source(store, clips, counter)


def select_split(clips: list[Clip], store: FeatureStore, spec: str) -> list[Clip]:
    spec = spec.strip()
    if spec in ("", "all"):
        return [c for c in clips if c.video_id in store]
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
