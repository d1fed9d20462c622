"""From a ``DataConfig`` to a feature store and train/validation clip lists.

A split is given as one of:
- a path to an id list (one id per line, or a CSV with a ``video_id`` column);
- a split name of the annotations (``train``, ``validate``, ``test``, ``training``, ``validation``);
- ``index:A:B``: the store's videos at positions A..B-1 (e.g. ``index:0:700`` = video0..video699
  of msrvtt-ae128-dev);
- ``all``: every annotated video (one the store lacks is an error, or a named skip with skip_bad).

An id list or split name of which fewer than ``MIN_SPLIT_MATCH`` (50%) of the videos are both
annotated and in the feature store is a ConfigError naming the split and the counts: it was written
for other annotations (e.g. MSR-VTT's 1k-A test ids against ``train_val_videodatainfo.json`` alone).
A smaller shortfall is kept (the dataset then raises, or skips with ``skip_bad``) and counted in
``Source.split_counts`` (listed / annotated / matched), which the manifest carries.

Evaluation protocols (``data.protocol``; every result is stamped with one, see ``PROTOCOLS``).

A recipe's validation split must be held out from its training split (checked by video id), and
says so: ``carve:N`` (or ``carve:0.1``) holds out N (or a tenth of the) training videos, chosen by
the seed; ``none`` trains without validation. An empty ``data.val_split`` is an error: validating on
every clip of a folder would validate on the training clips. ``data.test_split`` is scored once, at
the end of training, and never chooses a checkpoint.
"""
from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidlang.config import DataConfig
from vidlang.data.annotations import read_annotation_files
from vidlang.data.idlists import MIN_SPLIT_MATCH, filter_clips, read_id_list, read_id_sentences
from vidlang.data.features import FeatureStore, open_store
from vidlang.data.narration import Streams, attach_transcripts, read_transcripts
from vidlang.data.records import Clip, Skips, named_skips
from vidlang.errors import ConfigError, DataError

PROTOCOLS = {
    "all-captions": "every caption of a whole-video clip is a query (MSR-VTT: all 20 per test video)",
    "1k-A-jsfusion": "MSR-VTT 1k-A as published (JSFusion): one sentence per test video; the sentence of the "
                     "split CSV's 'sentence' column, else (stamped '1k-A-jsfusion:first-caption') the video's "
                     "first caption in annotation-file order",
    "paragraph": "a video's sentences joined into one text, retrieved against the whole video",
    "clip": "each annotated segment is a unit, retrieved by its own sentence",
}


def ids_sha256(video_ids: Iterable[str]) -> str:
    """The hash that manifests and results give an id list (sorted, unique, newline-joined; 16 hex)."""
    return hashlib.sha256("\n".join(sorted(set(video_ids))).encode()).hexdigest()[:16]


@dataclass
class Source:
    store: FeatureStore
    clips: list[Clip]  # every annotated clip (with its transcript when transcripts were given)
    counter: Counter = field(default_factory=Skips)  # what the readers skipped (Skips: each item named)
    protocol: str = "all-captions"  # see PROTOCOLS
    split_counts: dict = field(default_factory=dict)  # spec -> {listed, annotated, matched} video counts
    streams: Streams | None = None  # timed utterances per video, when transcripts were given

    def split(self, spec: str) -> list[Clip]:
        return select_split(self.clips, self.store, spec, counts=self.split_counts)

    def eval_split(self, spec: str) -> tuple[list[Clip], str]:
        """The clips of an evaluation split under ``self.protocol``, and the protocol stamp for its results."""
        return apply_protocol(self.split(spec), self.protocol, spec)

    def manifest(self, **splits: list[Clip]) -> dict:
        out = {"store": self.store.manifest(), "skipped_by_readers": dict(self.counter), "protocol": self.protocol,
               "split_counts": dict(self.split_counts),
               "skipped_items_by_readers": named_skips(self.counter)}
        for name, clips in splits.items():
            ids = {c.video_id for c in clips}
            out[name] = {"clips": len(clips), "videos": len(ids), "ids_sha256": ids_sha256(ids)}
        return out


def open_data(root: str | Path | None = None, *, features: str | Path | None = None,
              annotations: str | Path | None = None, transcripts: str | Path | None = None,
              fps: float | None = None, allow_pickle: bool = False, skip_bad: bool = False,
              paragraph: bool = False, protocol: str = "", need_annotations: bool = True) -> Source:
    """Open a data folder for any command: its feature store (``features``, default ``root``), every
    annotated clip (``annotations``, default ``root/annotations.json``; several files joined by ',')
    and, with ``transcripts``, each clip's speech by time. ``need_annotations=False``: clips may come
    from the transcripts alone. ``protocol``: see PROTOCOLS ('' = inferred from the annotations)."""
    root = Path(root) if root else None
    features = Path(features) if features else root
    if features is None:
        raise ConfigError("set data.root (a folder like msrvtt-ae128-dev) or data.features (the feature store)")
    annotations = str(annotations) if annotations else (str(root / "annotations.json") if root else "")
    files = [p.strip() for p in annotations.split(",") if p.strip()]
    counter = Skips()
    clips: list[Clip] = []
    if need_annotations or (files and all(Path(p).exists() for p in files)):
        if not files:
            raise ConfigError("set data.root or data.annotations (the annotation file)")
        for path in files:
            if not Path(path).exists():
                raise DataError(f"annotation file not found: {path}")
        clips = read_annotation_files(annotations, skip_bad=skip_bad, counter=counter, paragraph=bool(paragraph))
    store = open_store(features, fps=fps, allow_pickle=allow_pickle)
    streams = None
    if transcripts:
        streams = read_transcripts(transcripts, skip_bad=skip_bad, counter=counter, allow_pickle=allow_pickle)
        clips = attach_transcripts(clips, streams)
    chosen = resolve_protocol(DataConfig(paragraph=paragraph, protocol=protocol), clips)
    return Source(store, clips, counter, chosen, streams=streams)


def open_source(cfg: DataConfig, need_annotations: bool = True) -> Source:
    """:func:`open_data` with a recipe's ``data`` section."""
    return open_data(cfg.root or None, features=cfg.features or None, annotations=cfg.annotations or None,
                     transcripts=cfg.transcripts or None, fps=cfg.feature_fps, allow_pickle=cfg.allow_pickle,
                     skip_bad=cfg.skip_bad, paragraph=cfg.paragraph, protocol=cfg.protocol,
                     need_annotations=need_annotations)


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
    if spec in ("", "all"):  # a video the store lacks is named by the dataset (or skipped, named)
        return list(clips)
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
    protocol = source.protocol
    if val_spec.startswith("carve:"):
        train, validation = carve(train, val_spec, seed)
        validation, protocol = apply_protocol(validation, source.protocol, "")
    elif val_spec != "none":
        validation, protocol = source.eval_split(val_spec)
    else:
        validation = []
    test, test_protocol = source.eval_split(test_spec) if test_spec != "none" else ([], source.protocol)
    if val_spec != "none" and val_spec == test_spec:
        raise ConfigError(f"data.val_split and data.test_split are both '{val_spec}': a test split never chooses "
                          "a checkpoint; hold out a validation split (e.g. carve:0.1)")
    train_ids = {c.video_id for c in train}
    for key, spec, clips in (("data.val_split", val_spec, validation), ("data.test_split", test_spec, test)):
        shared = sorted(train_ids & {c.video_id for c in clips})
        if shared:
            raise ConfigError(f"{key} '{spec}' shares {len(shared)} videos with data.train_split '{train_spec}' "
                              f"(e.g. {', '.join(shared[:3])}): they must be held out")
    described = {"train": train_spec, "validation": val_spec, "test": test_spec,
                 "protocol": {"validation": protocol, "test": test_protocol}}
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
