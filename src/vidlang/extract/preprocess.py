"""``preprocess``: what a model reads, from a (T, D) feature array or a raw video file.

An array is checked (finite, width ``dim``) and sampled to ``max_frames`` time steps as training did;
a video path is decoded by the :class:`~vidlang.extract.extractor.Extractor` that wrote the model's
training features (loaded on first use), then checked and sampled the same way.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vidlang.data.dataset import sample_frames
from vidlang.data.features import validate_features
from vidlang.errors import ConfigError
from vidlang.extract.extractor import Extractor, read_store_record

__all__ = ["Preprocess", "is_video_path"]


def is_video_path(x: object) -> bool:
    return isinstance(x, (str, os.PathLike))


class Preprocess:
    """``preprocess(x)``: (T, D) array or video path -> float32 (T', D) with T' <= ``max_frames``; a list -> a list.

    ``record``: the extractor record of the model's training store (None: videos are refused with
    ``missing``, a sentence saying what to pass); ``weights``: clip/resnet weights for it; ``store``:
    the store folder, whose extract summary may name the weights.
    """

    def __init__(self, dim: int | None, max_frames: int | None = None, record: dict | None = None, *,
                 weights: str | None = None, store: str | os.PathLike | None = None, device: str = "cpu",
                 missing: str = "no extractor record is known for these features", name: str = "model"):
        self.dim, self.max_frames, self.record = dim, max_frames, record
        self.weights, self.store, self.device, self.missing, self.name = weights, store, str(device), missing, name
        self._extractor: Extractor | None = None

    @classmethod
    def for_store(cls, store: str | os.PathLike, dim: int | None = None, max_frames: int | None = None, *,
                  weights: str | None = None, device: str = "cpu") -> Preprocess:
        """From a feature store or index folder written by ``vidlang extract`` / ``vidlang index``."""
        record = read_store_record(store)
        if record is None:
            raise ConfigError(f"{store} records no extractor (not written by `vidlang extract`): give a store or "
                              "index folder whose features `vidlang extract` wrote")
        if dim is not None and int(record.get("dim", -1)) != dim:
            raise ConfigError(f"{store} holds features of width {record.get('dim')}, the model reads {dim}")
        return cls(dim or int(record["dim"]), max_frames, record, weights=weights, store=store, device=device,
                   name=str(store))

    @property
    def extractor(self) -> Extractor:
        """The frame extractor (built on first use); ConfigError when none is recorded."""
        if self._extractor is None:
            if self.record is None:
                raise ConfigError(f"cannot read a video file: {self.missing}")
            self._extractor = Extractor.from_record(self.record, self.weights, self.device, store=self.store)
        return self._extractor

    def __call__(self, x):
        if isinstance(x, (list, tuple)) or (isinstance(x, np.ndarray) and x.ndim == 3):
            return [self(item) for item in x]
        source = "input"
        if is_video_path(x):
            source = str(x)
            x = self.extractor.features(Path(x))
        elif hasattr(x, "detach"):  # a torch tensor
            x = x.detach().cpu().numpy()
        arr = validate_features(x, source, self.dim, self.name)
        return sample_frames(arr, self.max_frames) if self.max_frames else arr

    def __repr__(self) -> str:
        ext = self.record.get("backbone") if self.record else None
        return f"Preprocess(dim={self.dim}, max_frames={self.max_frames}, extractor={ext})"
