"""Retrieval metrics on a text x video similarity matrix.

Conventions (shared by every vidlang retrieval number):

* ``sim[i, j]`` is the score of text ``i`` against video ``j``; higher is more similar.
* Ranks are 1-based.
* Ties count against the ground truth (``tie_break="pessimistic"``, the default):
  rank = 1 + number of *other* (non-ground-truth) candidates scoring ``>=`` the ground
  truth. A model that gives every candidate the same score therefore gets the worst
  rank (R@1 = 0), never a perfect one. ``tie_break="optimistic"`` (CLIP4Clip's
  ``compute_metrics``: rank = 1 + number of candidates scoring *strictly higher*) is
  kept only to compare with numbers computed that way; it rewards ties, so a constant
  score matrix gets R@1 = 100%. With distinct scores the two modes agree.
* Text->video: each text is a query; its ground truth is ``text_to_video[i]``.
* Video->text: each video is a query over all texts; several texts may belong to a
  video (MSR-VTT: 20). The video's rank is the position of the *first* of its own
  texts in the ranked list (CLIP4Clip / Frozen-in-Time convention: a hit at k when
  any of its captions is in the top k). Ties between its own texts do not matter;
  ties with other videos' texts are broken by ``tie_break``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vidlang.errors import DataError

TIE_BREAKS = ("optimistic", "pessimistic")
# Elements per (queries x candidates) chunk: bounds the temporary boolean/float blocks.
_CHUNK_ELEMS = 1 << 24


def _as_tensor(sim: torch.Tensor | np.ndarray) -> torch.Tensor:
    if not isinstance(sim, torch.Tensor):
        sim = torch.as_tensor(np.ascontiguousarray(sim))
    if sim.ndim != 2:
        raise DataError(f"similarity matrix must be 2-D (num_texts, num_videos), got shape {tuple(sim.shape)}")
    if sim.shape[0] == 0 or sim.shape[1] == 0:
        raise DataError(f"similarity matrix is empty: shape {tuple(sim.shape)}")
    if sim.dtype == torch.bool or sim.is_complex():
        raise DataError(f"similarity matrix must be real-valued, got dtype {sim.dtype}")
    return sim if sim.is_floating_point() else sim.double()


def _as_index(text_to_video: Sequence[int], num_texts: int, num_videos: int, device) -> torch.Tensor:
    if isinstance(text_to_video, torch.Tensor):
        idx = text_to_video.detach()
    else:
        idx = torch.as_tensor(np.asarray(text_to_video))
    if idx.ndim != 1 or idx.shape[0] != num_texts:
        raise DataError(f"text_to_video must have one entry per text ({num_texts}), got shape {tuple(idx.shape)}")
    if idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise DataError(f"text_to_video must hold integer video indices, got dtype {idx.dtype}")
    bad = ((idx < 0) | (idx >= num_videos)).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise DataError(f"text_to_video[{i}] = {int(idx[i])} is not a video index in [0, {num_videos})")
    return idx.long().to(device)


def _check_tie_break(tie_break: str) -> None:
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")


def _chunk(n_candidates: int) -> int:
    return max(1, _CHUNK_ELEMS // max(1, n_candidates))


def _check_finite(block: torch.Tensor, offset: int, what: str) -> None:
    if not torch.isfinite(block).all():
        row = int((~torch.isfinite(block)).any(dim=1).nonzero()[0]) + offset
        raise DataError(f"similarity matrix has NaN/inf scores for {what} {row}")


def t2v_ranks(
    sim: torch.Tensor | np.ndarray, text_to_video: Sequence[int], tie_break: str = "pessimistic"
) -> torch.Tensor:
    """1-based rank of each text's ground-truth video among all videos, shape (num_texts,)."""
    _check_tie_break(tie_break)
    sim = _as_tensor(sim)
    n_text, n_video = sim.shape
    gt_idx = _as_index(text_to_video, n_text, n_video, sim.device)
    ranks = torch.empty(n_text, dtype=torch.long, device=sim.device)
    step = _chunk(n_video)
    for s in range(0, n_text, step):
        block = sim[s : s + step]
        _check_finite(block, s, "text")
        gt = block.gather(1, gt_idx[s : s + step, None])  # (c, 1)
        if tie_break == "optimistic":
            ranks[s : s + step] = 1 + (block > gt).sum(dim=1)
        else:  # the ground truth itself is among the >= ones: 1 + others = count
            ranks[s : s + step] = (block >= gt).sum(dim=1)
    return ranks


def v2t_ranks(
    sim: torch.Tensor | np.ndarray, text_to_video: Sequence[int], tie_break: str = "pessimistic"
) -> torch.Tensor:
    """1-based rank, for each video as query, of the first of its own texts among all texts.

    Shape (num_videos,). Every video needs at least one text.
    """
    _check_tie_break(tie_break)
    sim = _as_tensor(sim)
    n_text, n_video = sim.shape
    gt_idx = _as_index(text_to_video, n_text, n_video, sim.device)
    counts = torch.bincount(gt_idx, minlength=n_video)
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten()[:5].tolist()
        raise DataError(f"video->text ranks need every video to own a text; videos {missing} have none")
    simt = sim.t()  # (videos, texts) view
    ranks = torch.empty(n_video, dtype=torch.long, device=sim.device)
    step = _chunk(n_text)
    for s in range(0, n_video, step):
        block = simt[s : s + step]  # (c, T)
        _check_finite(block, s, "video")
        vids = torch.arange(s, s + block.shape[0], device=sim.device)
        own = gt_idx[None, :] == vids[:, None]  # (c, T)
        best = block.masked_fill(~own, float("-inf")).amax(dim=1, keepdim=True)
        if tie_break == "optimistic":
            ranks[s : s + step] = 1 + (block > best).sum(dim=1)
        else:
            ranks[s : s + step] = 1 + ((block >= best) & ~own).sum(dim=1)
    return ranks


def rank_summary(ranks: torch.Tensor | np.ndarray, ks: Sequence[int] = (1, 5, 10, 50), prefix: str = "") -> dict[str, float]:
    """``R@k`` (percent), ``MedR`` and ``MeanR`` of 1-based ranks, keys prefixed by ``prefix``."""
    r = np.asarray(torch.as_tensor(ranks).cpu(), dtype=np.float64)
    out = {f"{prefix}R@{k}": float(100.0 * np.mean(r <= k)) for k in ks}
    out[f"{prefix}MedR"] = float(np.median(r))
    out[f"{prefix}MeanR"] = float(np.mean(r))
    return out


def retrieval_metrics(
    sim: torch.Tensor | np.ndarray,
    text_to_video: Sequence[int],
    ks: Sequence[int] = (1, 5, 10, 50),
    tie_break: str = "pessimistic",
) -> dict[str, float]:
    """Text->video and video->text retrieval metrics of ``sim`` (num_texts, num_videos).

    Returns ``t2v_R@k`` / ``v2t_R@k`` in percent for each k in ``ks``, ``t2v_MedR``,
    ``t2v_MeanR``, ``v2t_MedR``, ``v2t_MeanR`` (1-based ranks; the median of an even
    number of ranks is the mean of the two middle ones, as ``np.median``), plus
    ``num_texts`` and ``num_videos``. See the module docstring for the tie and
    multi-caption conventions. Work is chunked over queries, so a 10k x 10k matrix fits.
    """
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {tuple(ks)}")
    sim = _as_tensor(sim)
    out = rank_summary(t2v_ranks(sim, text_to_video, tie_break), ks, "t2v_")
    out.update(rank_summary(v2t_ranks(sim, text_to_video, tie_break), ks, "v2t_"))
    out["num_texts"] = int(sim.shape[0])
    out["num_videos"] = int(sim.shape[1])
    return out
