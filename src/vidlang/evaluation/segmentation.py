"""Action segmentation: frame accuracy (COIN protocol: background frames are counted).

``frame_accuracy`` pools all frames of all videos (correct frames / all frames), the usual
segmentation accuracy (MS-TCN, COIN). ``per_video_accuracy`` gives each video's own value.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vidlang.errors import DataError

__all__ = ["frame_accuracy", "per_video_accuracy"]


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
