"""Classification accuracy at k (action / category classification): top-1, top-5.

A sample counts as right at k when its label is among the k highest scores. Ties are broken
pessimistically: classes scoring equal to the label's score count as ranked above it, so a
constant scorer gets no credit.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vidlang.errors import DataError

__all__ = ["topk_accuracy"]


def topk_accuracy(scores, labels, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """``{k: accuracy}`` for a (N, C) score matrix and N integer labels in [0, C)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 2 or s.shape[0] == 0 or y.shape != (s.shape[0],):
        raise DataError(f"need (N, C) scores and N labels, got {s.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (y < 0).any() or (y >= s.shape[1]).any():
        raise DataError(f"labels must be integers in [0, {s.shape[1]})")
    if not np.isfinite(s).all():
        raise DataError("scores hold NaN or inf")
    own = s[np.arange(len(y)), y]
    rank = (s >= own[:, None]).sum(axis=1)  # 1 + others scoring >= the label (pessimistic)
    out = {}
    for k in ks:
        if not 1 <= k:
            raise DataError(f"k must be >= 1, got {k}")
        out[int(k)] = float((rank <= k).mean())
    return out
