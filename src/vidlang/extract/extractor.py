"""The frame extractor a feature store was written with, re-created from its record.

``vidlang extract`` records in each store how its features were made (backbone and weights hash,
sampling, frame size: :func:`vidlang.extract.run.extractor_record`). :class:`Extractor` rebuilds that
extractor and checks that it would write the very same record, so a new video gets features that
match the store's (and what a model trained on the store expects)::

    ext = Extractor.from_store("features/")          # or Extractor.from_record(record, weights, device)
    feats = ext.features("clip.mp4")                 # (T, D) float32, as `vidlang extract` makes them
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

from vidlang.errors import ConfigError, DataError
from vidlang.extract.backbones import (
    Backbone,
    ClipBackbone,
    ResNetBackbone,
    TinyBackbone,
)
from vidlang.extract.run import SUMMARY_FILE, embed_frames, extractor_record
from vidlang.extract.video import Sampling, decode_video

__all__ = ["EFFICIENTNET", "Extractor", "read_store_record"]

EFFICIENTNET = "efficientnet-lite0"  # arrives with vidlang.extract.efficientnet (imported lazily)


def read_store_record(store: str | os.PathLike) -> dict | None:
    """The extractor record of a store folder written by ``vidlang extract`` (its meta.json, else the first
    ``<id>.meta.json``); of an index folder (index.json ``extractor``); None when there is none."""
    folder = Path(store)
    for file in (folder / "index.json", folder / "meta.json"):
        if file.is_file():
            try:
                meta = json.loads(file.read_bytes().decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise DataError(f"cannot parse {file}: {e}") from e
            rec = meta.get("extractor") if isinstance(meta, dict) else None
            if isinstance(rec, dict):
                return rec
    for side in sorted(folder.glob("*.meta.json")) if folder.is_dir() else ():
        try:
            rec = json.loads(side.read_bytes().decode("utf-8")).get("extractor")
        except (UnicodeDecodeError, ValueError, AttributeError) as e:
            raise DataError(f"cannot read the extractor record {side}: {e}") from e
        return rec if isinstance(rec, dict) else None
    return None


def _summary_weights(store: Path | None) -> str | None:
    """The weights ``vidlang extract`` ran with, as its summary records them (checked by hash later)."""
    try:
        w = json.loads((store / SUMMARY_FILE).read_text(encoding="utf-8")).get("weights")
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return w if isinstance(w, str) and w and w != "built-in" and Path(w).exists() else None


def _backbone(record: dict, weights: str | None, store: Path | None, device: str) -> Backbone:
    name = str(record["backbone"])
    if name == "tiny-untrained":
        return TinyBackbone(int(record.get("frame_dim", record["dim"])), device, warn=False)
    if name == EFFICIENTNET:
        try:
            from vidlang.extract.efficientnet import EfficientNetLite0Backbone
        except ImportError:
            raise ConfigError(f"the features come from backbone {EFFICIENTNET}, which this vidlang cannot run "
                              "(no vidlang.extract.efficientnet): update vidlang and pip install 'vidlang[frames]'") from None
        return EfficientNetLite0Backbone(weights, device)
    weights = weights or _summary_weights(store)
    if not weights:
        raise ConfigError(f"the features come from backbone {name} (weights sha256 {str(record.get('weights_hash'))[:12]}"
                          "...): pass its weights (weights=PATH; --extractor-weights PATH on the command line)")
    return ClipBackbone(weights, device) if name.startswith("clip-") else ResNetBackbone(weights, device)


class Extractor:
    """A backbone + sampling + frame size that reproduce a store's features; thread-safe ``features``."""

    def __init__(self, backbone: Backbone, sampling: Sampling, frame_size: int, record: dict | None = None,
                 batch_size: int = 32):
        self.backbone, self.sampling, self.frame_size, self.batch_size = backbone, sampling, frame_size, batch_size
        self.record = record if record is not None else extractor_record(backbone, sampling, frame_size)
        self._lock = threading.Lock()

    @classmethod
    def from_record(cls, record: dict | None, weights: str | None = None, device: str = "cpu",
                    store: str | os.PathLike | None = None) -> Extractor:
        """Re-create the extractor of ``record`` (a store's ``extractor``); ``weights``: the clip/resnet weights
        (else the ones ``store``'s extract summary names), checked against the record's sha256.
        ConfigError when the record is missing or incomplete, or the rebuilt extractor differs."""
        if not isinstance(record, dict):
            raise ConfigError("the features were not written by `vidlang extract` (no extractor record), so the "
                              "same features cannot be computed for a new video")
        try:
            bb = _backbone(record, weights, Path(store) if store else None, str(device))
            sampling = Sampling(record["sampling"], record["fps"], record["num_frames"], record["window"],
                                record["stride"], record["pool"])
            frame_size = int(record["frame_size"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"the extractor record is incomplete ({type(e).__name__}: {e}): {record}") from None
        sampling.check()
        mine = extractor_record(bb, sampling, frame_size)
        if mine != record:
            from vidlang.data.features import differing_keys

            raise ConfigError(f"the extractor this vidlang builds differs from the recorded one: "
                              f"{differing_keys(record, mine)}")
        return cls(bb, sampling, frame_size, record)

    @classmethod
    def from_store(cls, store: str | os.PathLike, weights: str | None = None, device: str = "cpu") -> Extractor:
        """The extractor of a store folder (or an index folder) written by ``vidlang extract``."""
        record = read_store_record(store)
        if record is None:
            raise ConfigError(f"{store} records no extractor (its features were not written by `vidlang extract`): "
                              "the same features cannot be computed for a new video")
        return cls.from_record(record, weights, device, store=store)

    @property
    def dim(self) -> int:
        return int(self.record["dim"])

    def features(self, video_path: str | os.PathLike) -> np.ndarray:
        """(T, D) float32 features of the video at ``video_path``, made exactly as ``vidlang extract`` makes them."""
        return self.features_and_info(video_path)[0]

    def features_and_info(self, video_path: str | os.PathLike, max_seconds: float | None = None,
                          max_frames: int | None = None) -> tuple[np.ndarray, dict]:
        """(features, decoded-video info: duration, codec, frames, ...); decoding stops with VideoTooLong past
        ``max_seconds`` of decoded video or ``max_frames`` frames."""
        frames, info = decode_video(video_path, self.sampling, self.frame_size, max_seconds, max_frames)
        with self._lock:
            feats = embed_frames(self.backbone, frames, self.sampling, batch_size=self.batch_size)
        if not np.isfinite(feats).all():
            raise DataError(f"backbone {self.backbone.name} produced NaN/inf features for {video_path}")
        return feats.astype(np.float32, copy=False), info

    def __repr__(self) -> str:
        return f"Extractor({self.backbone.name}, {self.sampling}, frame_size={self.frame_size}, dim={self.dim})"
