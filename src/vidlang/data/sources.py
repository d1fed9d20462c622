"""From a ``DataConfig`` to a feature store and train/validation clip lists.

A split is given as one of:
- a path to an id list (one id per line, or a CSV with a ``video_id`` column);
- a split name of the annotations (``train``, ``validate``, ``test``, ``training``, ``validation``);
- ``index:A:B``: the store's videos at positions A..B-1 (e.g. ``index:0:700`` = video0..video699
  of msrvtt-ae128-dev);
- ``all``: every annotated video that the store holds.

An id list or split name of which fewer than ``MIN_SPLIT_MATCH`` (50%) of the videos are both
annotated and in the feature store is a ConfigError naming the split and the counts: it was written
for other annotations (e.g. MSR-VTT's 1k-A test ids against ``train_val_videodatainfo.json`` alone).
A smaller shortfall is kept (the dataset then raises, or skips with ``skip_bad``) and counted in
``Source.split_counts`` (listed / annotated / matched), which the manifest carries.

Evaluation protocols (``data.protocol``; every result is stamped with one, see ``PROTOCOLS``).
"""
from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vidlang.config import DataConfig
from vidlang.data.annotations import (MIN_SPLIT_MATCH, filter_clips, read_annotation_files, read_id_list,
                                      read_id_sentences)
from vidlang.data.features import FeatureStore, open_store
from vidlang.data.records import Clip
from vidlang.errors import ConfigError, DataError

PROTOCOLS = {
    "all-captions": "every caption of a whole-video clip is a query (MSR-VTT: all 20 per test video)",
    "1k-A-jsfusion": "MSR-VTT 1k-A as published (JSFusion): one sentence per test video; the sentence of the "
                     "split CSV's 'sentence' column, else (stamped '1k-A-jsfusion:first-caption') the video's "
                     "first caption in annotation-file order",
    "paragraph": "a video's sentences joined into one text, retrieved against the whole video",
    "clip": "each annotated segment is a unit, retrieved by its own sentence",
}


@dataclass
class Source:
    store: FeatureStore
    clips: list[Clip]  # every annotated clip
    counter: Counter = field(default_factory=Counter)  # what the readers skipped
    protocol: str = "all-captions"  # see PROTOCOLS
    split_counts: dict = field(default_factory=dict)  # spec -> {listed, annotated, matched} video counts

    def split(self, spec: str) -> list[Clip]:
        return select_split(self.clips, self.store, spec, counts=self.split_counts)

    def eval_split(self, spec: str) -> tuple[list[Clip], str]:
        """The clips of an evaluation split under ``self.protocol``, and the protocol stamp for its results."""
        return apply_protocol(self.split(spec), self.protocol, spec)

    def manifest(self, **splits: list[Clip]) -> dict:
        out = {"store": self.store.manifest(), "skipped_by_readers": dict(self.counter), "protocol": self.protocol,
               "split_counts": dict(self.split_counts)}
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
    annotations = cfg.annotations or str(root / "annotations.json")
    for path in annotations.split(","):
        if path.strip() and not Path(path.strip()).exists():
            raise DataError(f"annotation file not found: {path.strip()}")
    store = open_store(features, fps=cfg.feature_fps, allow_pickle=cfg.allow_pickle)
    counter: Counter = Counter()
    clips = read_annotation_files(annotations, skip_bad=cfg.skip_bad, counter=counter, paragraph=bool(cfg.paragraph))
    return Source(store, clips, counter, resolve_protocol(cfg, clips))


def resolve_protocol(cfg: DataConfig, clips: list[Clip]) -> str:
    """``data.protocol``, or when empty: paragraph (``data.paragraph``), clip (segment annotations) or
    all-captions. A protocol that contradicts the annotations is a ConfigError."""
    segments = any(c.start is not None or c.end is not None for c in clips)
    protocol = cfg.protocol or ("paragraph" if cfg.paragraph else "clip" if segments else "all-captions")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"data.protocol must be one of {sorted(PROTOCOLS)}, not {protocol!r}")
    if (protocol == "paragraph") != bool(cfg.paragraph):
        raise ConfigError(f"data.protocol={protocol} and data.paragraph={cfg.paragraph} disagree: "
                          "paragraph retrieval reads the annotations with data.paragraph=true")
    if protocol == "clip" and not segments:
        raise ConfigError("data.protocol=clip needs segment annotations (start/end); these are whole videos")
    if protocol in ("all-captions", "1k-A-jsfusion") and segments:
        raise ConfigError(f"data.protocol={protocol} is for whole-video captions; these annotations have "
                          "segments: use clip (or paragraph with data.paragraph=true)")
    return protocol


def apply_protocol(clips: list[Clip], protocol: str, spec: str) -> tuple[list[Clip], str]:
    """An evaluation split under ``protocol``: (clips, stamp). Only 1k-A-jsfusion changes the clips:
    one sentence per video, from the split file's ``sentence`` column when it has one (stamp
    ``1k-A-jsfusion``), else the video's first caption in annotation order (stamp
    ``1k-A-jsfusion:first-caption``, a stand-in for the published sentence)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {sorted(PROTOCOLS)}, not {protocol!r}")
    if protocol != "1k-A-jsfusion":
        return clips, protocol
    path = Path(spec.strip())
    sentences = read_id_sentences(path) if path.is_file() else None
    first: dict[str, Clip] = {}
    for c in clips:
        first.setdefault(c.video_id, c)
    if sentences is None:
        return list(first.values()), "1k-A-jsfusion:first-caption"
    missing = [v for v in first if v not in sentences]
    if missing:
        raise DataError(f"split {spec}: {len(missing)} videos have no sentence (e.g. {missing[0]!r})")
    return [Clip(v, sentences[v], c.start, c.end, c.split) for v, c in first.items()], protocol


def _check_match(listed: set[str], clips: list[Clip], store: FeatureStore, spec: str,
                 counts: dict | None) -> None:
    annotated = listed & {c.video_id for c in clips}
    matched = {v for v in annotated if v in store}
    if counts is not None:
        counts[spec] = {"listed": len(listed), "annotated": len(annotated), "matched": len(matched)}
    if not listed:
        return
    if not matched or len(matched) < MIN_SPLIT_MATCH * len(listed):
        raise ConfigError(
            f"split {spec}: {len(listed)} video ids listed, {len(annotated)} annotated, {len(matched)} annotated "
            f"and in the feature store {store.path}; at least {MIN_SPLIT_MATCH:.0%} must match. Does the split "
            "belong to these annotations (data.annotations takes several files joined by ',')?")
    if len(matched) < len(listed):
        warnings.warn(f"split {spec}: {len(listed) - len(matched)} of {len(listed)} listed videos lack annotations "
                      f"or features ({len(listed) - len(annotated)} unannotated)", stacklevel=3)


def select_split(clips: list[Clip], store: FeatureStore, spec: str, counts: dict | None = None) -> list[Clip]:
    """The clips of split ``spec`` (see the module docstring); ``counts`` receives its match counts."""
    spec = spec.strip()
    if spec in ("", "all"):
        chosen = [c for c in clips if c.video_id in store]
        if clips and not chosen:
            raise ConfigError(f"split {spec or 'all'}: none of the {len({c.video_id for c in clips})} annotated "
                              f"videos is in the feature store {store.path}")
        return chosen
    if spec.startswith("index:"):
        try:
            _, a, b = spec.split(":")
            ids = store.ids[int(a) : int(b)]
        except ValueError:
            raise ConfigError(f"split '{spec}' must look like index:A:B") from None
    elif Path(spec).is_file():
        ids = read_id_list(Path(spec))
    else:
        names = {c.split for c in clips}
        if spec not in names:
            raise ConfigError(
                f"split '{spec}' is neither an id-list file, 'index:A:B', 'all', nor a split of the annotations "
                f"({sorted(n for n in names if n)})"
            )
        chosen = [c for c in clips if c.split == spec]
        _check_match({c.video_id for c in chosen}, chosen, store, spec, counts)
        return chosen
    _check_match(set(ids), clips, store, spec, counts)
    return filter_clips(clips, ids, spec, min_match=0)  # checked above, with the store
