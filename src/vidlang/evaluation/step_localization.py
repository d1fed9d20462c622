"""CrossTask step localization: the Zhukov et al. dynamic program and the official recall.

Follows DmZhukov/CrossTask (``dp.pyx`` and ``get_recalls`` in ``train.py``):

* :func:`zhukov_dp` takes a (T, K) cost matrix of the task's K ordered steps and returns a 0/1
  (T, K) assignment of minimal total cost in which **every step gets exactly one frame**, steps
  come in order at strictly increasing frames, and all other frames are background (cost
  ``bg_cost``). This is the official ``exactly_one=True`` mode, the one its evaluation uses;
  it needs T >= K. Ties go as in ``dp.pyx`` (stay, then previous state, then skip; at the end the
  last step's state wins a tie against trailing background).
* :func:`localize_steps` decodes scores (higher is better) as the official ``eval()`` does:
  ``dp(-log_softmax(scores, axis=1))``.
* :func:`crosstask_recall`: per task, (sum over videos of predicted frames that fall inside
  their step's ground truth) / (sum over videos of steps that occur in the ground truth);
  :func:`average_recall` is the plain mean over tasks.
* :func:`uniform_assignment` is the official baseline (step k at frame ``round(T / K * (k + 0.5))``).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vidlang.errors import DataError

__all__ = [
    "average_recall",
    "crosstask_recall",
    "frame_step_scores",
    "localize_steps",
    "uniform_assignment",
    "zhukov_dp",
]


def _matrix(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise DataError(f"{name} must be a non-empty (T, K) matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DataError(f"{name} holds NaN or inf")
    return a


def zhukov_dp(cost, bg_cost: float = 0.0) -> np.ndarray:
    """Minimal-cost ordered assignment of one frame per step; (T, K) costs -> (T, K) uint8.

    States 0..2K: even = background before step k/2+1 (or after the last), odd 2s-1 = step s.
    """
    C = _matrix(cost, "cost")
    T, K = C.shape
    if T < K:
        raise DataError(f"cannot place {K} steps at distinct frames of a {T}-frame video (need T >= K)")
    S = 2 * K + 1
    step_of = np.array([0 if k % 2 == 0 else (k + 1) // 2 for k in range(S)])
    is_step = step_of > 0
    L = np.full(S, np.inf)
    L[0] = 0.0
    back = np.zeros((T, S), dtype=np.int64)
    ks = np.arange(S)
    for t in range(T):
        stay = np.where(is_step, np.inf, L)  # only background states repeat
        prev = np.concatenate([[np.inf], L[:-1]])
        skip = np.where(is_step, np.concatenate([[np.inf, np.inf], L[:-2]]), np.inf)
        cand = np.stack([stay, prev, skip])  # argmin keeps the first of equals, as dp.pyx
        choice = np.argmin(cand, axis=0)
        best = cand[choice, ks]
        back[t] = ks - choice
        frame_cost = np.where(is_step, C[t, np.maximum(step_of - 1, 0)], bg_cost)
        L = best + frame_cost
    k = S - 1 if L[S - 1] < L[S - 2] else S - 2
    y = np.zeros((T, K), dtype=np.uint8)
    for t in range(T - 1, -1, -1):
        if is_step[k]:
            y[t, step_of[k] - 1] = 1
        k = back[t, k]
    return y


def localize_steps(scores, bg_cost: float = 0.0) -> np.ndarray:
    """Official decoding of (T, K) step scores: ``zhukov_dp(-log_softmax(scores, axis=1))``."""
    s = _matrix(scores, "scores")
    m = s.max(axis=1, keepdims=True)
    log_softmax = s - m - np.log(np.exp(s - m).sum(axis=1, keepdims=True))
    return zhukov_dp(-log_softmax, bg_cost)


def uniform_assignment(n_frames: int, n_steps: int) -> np.ndarray:
    """The official uniform baseline: step k at frame ``round(T / K * (k + 0.5))`` (Python rounding)."""
    if n_steps < 1 or n_frames < n_steps:
        raise DataError(f"uniform_assignment needs 1 <= n_steps <= n_frames, got T={n_frames}, K={n_steps}")
    y = np.zeros((n_frames, n_steps), dtype=np.uint8)
    size = float(n_frames) / n_steps
    for k in range(n_steps):
        y[round(size * (k + 0.5)), k] = 1
    return y


def crosstask_recall(y_true: Mapping[str, Mapping[str, np.ndarray]],
                     y_pred: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Recall per task over the videos present in both ``y_true[task]`` and ``y_pred[task]``.

    Both hold (T, K) 0/1 matrices per video. A task of ``y_true`` without predictions, or whose
    videos have no ground-truth step, is an error (the official script would divide by zero).
    """
    recalls = {}
    for task, truths in y_true.items():
        preds = y_pred.get(task)
        if preds is None:
            raise DataError(f"task {task!r} has ground truth but no predictions")
        matched = total = 0
        for vid in sorted(set(truths) & set(preds)):
            yt, yp = np.asarray(truths[vid]), np.asarray(preds[vid])
            if yt.shape != yp.shape or yt.ndim != 2:
                raise DataError(f"task {task!r} video {vid!r}: prediction shape {yp.shape} != truth shape {yt.shape}")
            total += int((yt.sum(axis=0) > 0).sum())
            matched += int((yt.astype(np.int64) * yp.astype(np.int64)).sum())
        if total == 0:
            raise DataError(f"task {task!r}: no ground-truth step in the {len(set(truths) & set(preds))} videos "
                            "shared by truth and predictions")
        recalls[task] = matched / total
    return recalls


def average_recall(recalls: Mapping[str, float]) -> float:
    """The official summary: the unweighted mean of the per-task recalls."""
    if not recalls:
        raise DataError("average_recall needs at least one task")
    return float(np.mean(list(recalls.values())))


def frame_step_scores(frames, steps, normalize: bool = True) -> np.ndarray:
    """(T, d) frame embeddings x (K, d) step-text embeddings -> (T, K) scores (cosine when ``normalize``),
    the zero-shot input of :func:`localize_steps`."""
    f, s = _matrix(frames, "frame embeddings"), _matrix(steps, "step embeddings")
    if f.shape[1] != s.shape[1]:
        raise DataError(f"frame embeddings ({f.shape[1]}-d) and step embeddings ({s.shape[1]}-d) differ in width")
    if normalize:
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        s = s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)
    return f @ s.T
