"""Action segmentation: frame accuracy (COIN protocol: background frames are counted).

``frame_accuracy`` pools all frames of all videos (correct frames / all frames), the usual
segmentation accuracy (MS-TCN, COIN). ``per_video_accuracy`` gives each video's own value.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vidlang.errors import DataError

__all__ = ["frame_accuracy", "per_video_accuracy", "resample_labels"]


def _pairs(preds: Sequence, truths: Sequence) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(preds) != len(truths) or not len(truths):
        raise DataError(f"need one prediction per video: {len(preds)} predictions, {len(truths)} videos")
    out = []
    for i, (p, t) in enumerate(zip(preds, truths)):
        p, t = np.asarray(p), np.asarray(t)
        if p.ndim != 1 or p.shape != t.shape or t.size == 0:
            raise DataError(f"video {i}: predicted labels {p.shape} and ground truth {t.shape} must be equal, "
                            "non-empty 1-D sequences")
        out.append((p, t))
    return out


def frame_accuracy(preds: Sequence, truths: Sequence, ignore: int | None = None) -> float:
    """Correct frames / frames over all videos. ``ignore`` leaves out frames whose truth is that label
    (e.g. ``ignore=0`` for accuracy without background; the COIN protocol counts background)."""
    correct = total = 0
    for p, t in _pairs(preds, truths):
        keep = np.ones(t.shape, bool) if ignore is None else t != ignore
        correct += int((p[keep] == t[keep]).sum())
        total += int(keep.sum())
    if total == 0:
        raise DataError("no frame left to score")
    return correct / total


def per_video_accuracy(preds: Sequence, truths: Sequence) -> np.ndarray:
    return np.array([float((p == t).mean()) for p, t in _pairs(preds, truths)])


def resample_labels(labels, src_fps: float, dst_fps: float, n_out: int) -> np.ndarray:
    """Bring per-frame labels from ``src_fps`` (e.g. the features' rate) to ``dst_fps`` (e.g. COIN's 10 fps
    annotation rate): output frame i (at i / dst_fps seconds) takes the label of the source frame
    ``floor(i / dst_fps * src_fps)`` that covers it, the last one past the end."""
    x = np.asarray(labels)
    if x.ndim != 1 or x.size == 0:
        raise DataError(f"labels must be a non-empty 1-D sequence, got shape {x.shape}")
    if src_fps <= 0 or dst_fps <= 0 or n_out < 1:
        raise DataError(f"need positive fps and n_out, got {src_fps}, {dst_fps}, {n_out}")
    idx = np.floor(np.arange(n_out) * (src_fps / dst_fps) + 1e-9).astype(np.int64)
    return x[np.minimum(idx, x.size - 1)]
