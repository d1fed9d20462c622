"""TACo's losses and cascade sampling as small pure functions on tensors.

Conventions: a batch holds B (video, text) pairs with positives on the diagonal;
score matrices are indexed ``[text, video]``. Equations refer to TACo (ICCV 2021).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sentence_scores(video_pooled: torch.Tensor, text_cls: torch.Tensor) -> torch.Tensor:
    """s1[i, j] = x̄_j · ȳ_i, shape (texts, videos)."""
    return text_cls @ video_pooled.T


def sentence_loss(scores: torch.Tensor, tau: float = 1.0, symmetric: bool = True, reduction: str = "mean",
                  targets: torch.Tensor | None = None):
    """L1, Eq. 3: softmax over videos for each text (plus over texts for each video when symmetric).

    ``targets`` (texts,): the video column of each text; None = the diagonal (one text per video). With
    several texts of one video (multiple positives), the video side scores each positive text against the
    texts of the other videos only: -log e^{s_iv} / (e^{s_iv} + Σ_{i': v(i') ≠ v} e^{s_i'v}), per text i.
    """
    logits = scores / tau
    if targets is None:
        target = torch.arange(len(logits), device=logits.device)
        loss = F.cross_entropy(logits, target, reduction=reduction)
        if symmetric:
            loss = (loss + F.cross_entropy(logits.T, target, reduction=reduction)) / 2
        return loss
    loss = F.cross_entropy(logits, targets, reduction=reduction)
    if symmetric:
        rows = torch.arange(len(logits), device=logits.device)
        own = targets[None, :] == torch.arange(logits.shape[1], device=logits.device)[:, None]  # (videos, texts)
        others = logits.T.masked_fill(own, float("-inf")).logsumexp(1)  # each video's negative texts
        positive = logits[rows, targets]
        video_side = torch.logaddexp(positive, others[targets]) - positive
        video_side = video_side.mean() if reduction == "mean" else video_side.sum()
        loss = (loss + video_side) / 2
    return loss


def token_scores(video_tokens: torch.Tensor, video_mask: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
    """s(x_j, y_i^p) = max over frames k of x_j^k · y_i^p (Eq. 4), shape (texts, videos, text tokens)."""
    (i, p, d), (j, k) = text_tokens.shape, video_mask.shape
    # one (i·p, j·k) matmul, masked in place: no permuted copy of the 4-D tensor (mm's backward needs no output)
    sim = (text_tokens.reshape(i * p, d) @ video_tokens.reshape(j * k, d).T).view(i, p, j, k)
    sim.masked_fill_(~video_mask[None, None], torch.finfo(sim.dtype).min)
    return sim.amax(-1).permute(0, 2, 1)


def token_loss(token_sim: torch.Tensor, weights: torch.Tensor, tau: float = 1.0, reduction: str = "mean",
               targets: torch.Tensor | None = None):
    """L2, Eq. 4: for each token of interest p of text i, softmax over videos j of s(x_j, y_i^p).

    ``weights`` (texts, tokens) are the normalised IDF weights (zero off the tokens of interest).
    Texts with no token of interest are skipped. ``targets`` (texts,): each text's video column (None: the
    diagonal). Returns (loss, number of texts used).
    """
    logits = token_sim.permute(0, 2, 1) / tau  # (texts, tokens, videos)
    columns = torch.arange(len(logits), device=logits.device) if targets is None else targets
    target = columns[:, None].expand(logits.shape[:2])
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    per_text = (nll.view(target.shape) * weights).sum(1)
    used = weights.sum(1) > 0
    count = int(used.sum())
    if count == 0:
        return token_sim.sum() * 0.0, 0
    total = per_text[used].sum()
    return (total / count if reduction == "mean" else total), count


def alignment_scores(s1: torch.Tensor, token_sim: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cascade score (§1.4): x̄_j·ȳ_i + Σ_{p∈P_i} s(x_j, y_i^p), computed from the L1/L2 terms."""
    interest = (weights > 0).to(token_sim.dtype)
    return s1 + torch.einsum("ijp,ip->ij", token_sim, interest)


def hard_negatives(scores: torch.Tensor, k: int, offset: int = 0, positives: torch.Tensor | None = None) -> torch.Tensor:
    """Cascade sampling (§1.4): the top-k columns of each row by alignment score, never the positive
    column ``offset + row``. Rows are anchors (texts, or videos with ``scores.T``); under torchrun they
    are this rank's anchors and ``offset`` their first row in the global batch. ``positives`` (rows,
    columns) bool, when given, marks every column a row must never take instead (multiple positives)."""
    masked = scores.detach().clone()
    if positives is None:
        k = min(k, scores.shape[1] - 1)
        rows = torch.arange(len(masked), device=masked.device)
        masked[rows, rows + offset] = float("-inf")
    else:
        k = min(k, scores.shape[1] - int(positives.sum(1).max()))
        masked.masked_fill_(positives, float("-inf"))
    return masked.topk(k, dim=1).indices


def random_negatives(n: int, k: int, generator: torch.Generator | None = None, device=None):
    """The baseline: k uniformly drawn negatives (never the positive) per text and per video."""
    k = min(k, n - 1)

    def draw() -> torch.Tensor:
        offsets = torch.stack([torch.randperm(n - 1, generator=generator)[:k] for _ in range(n)]) + 1
        return (torch.arange(n)[:, None] + offsets) % n

    return draw().to(device), draw().to(device)


def fusion_loss(pos: torch.Tensor, neg_videos: torch.Tensor, neg_texts: torch.Tensor, reduction: str = "mean"):
    """L3, Eq. 5 over sampled negatives.

    pos: (B,) fusion logits w·z^cls of the positive pairs.
    neg_videos: (B, k) logits of (text i, negative video) pairs; neg_texts: (B, k) of (video i, negative text).
    For each text a softmax over {positive + its negatives}, the same for each video; the two are averaged.
    """
    target = torch.zeros(len(pos), dtype=torch.long, device=pos.device)
    text_side = F.cross_entropy(torch.cat([pos[:, None], neg_videos], 1), target, reduction=reduction)
    video_side = F.cross_entropy(torch.cat([pos[:, None], neg_texts], 1), target, reduction=reduction)
    return (text_side + video_side) / 2


# ============================================================================== MV-GPT losses
# Token-level losses of MV-GPT (methods.md §2.3). Text tensors are (B, L) WordPiece ids; logits (B, L, V).

IGNORE = -100  # label of positions that carry no MLM target (torch's cross-entropy convention)


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                 label_smoothing: float = 0.0) -> torch.Tensor:
    """L_FG = -log p(W | F, U) (and L_BG = -log p(U | F, W)) as token-level cross-entropy:
    the mean of -log p(target token | prefix) over the real (``mask`` true) target tokens of the batch.
    ``label_smoothing`` = e: each token's term is (1 - e) * -log p(target) + e * mean_c -log p(c) over
    the C classes of ``logits`` (Szegedy et al. 2016). A batch without a target token gives 0 (never NaN)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none",
                          label_smoothing=label_smoothing)
    weights = mask.reshape(-1).to(nll.dtype)
    return (nll * weights).sum() / weights.sum().clamp_min(1.0)


def self_critical_loss(sequence_log_probs: torch.Tensor, rewards: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """Self-critical sequence training (Rennie et al. 2017, eq. 7-9): for each sampled caption w^s,
    -(r(w^s) - b) * log p(w^s), averaged over the samples. ``sequence_log_probs`` (N,) are the sums of
    the sampled tokens' log-probabilities; the advantage r - b carries no gradient."""
    if not (sequence_log_probs.shape == rewards.shape == baseline.shape):
        raise ValueError(f"shapes differ: log-probs {tuple(sequence_log_probs.shape)}, rewards "
                         f"{tuple(rewards.shape)}, baseline {tuple(baseline.shape)}")
    advantage = (rewards - baseline).detach().to(sequence_log_probs.dtype)
    return -(advantage * sequence_log_probs).mean()


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MLM: mean cross-entropy over the positions whose label is not ``IGNORE``; 0 when none is."""
    return caption_loss(logits, labels.clamp_min(0), labels != IGNORE)


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, prob: float, generator: torch.Generator | None,
                special_ids, mask_id: int, vocab_size: int, bert_style: bool = True):
    """BERT masking: each real, non-special token is chosen with probability ``prob``.

    A chosen token becomes ``mask_id`` (BERT style: 80% ``mask_id``, 10% a uniformly random id, 10% kept).
    Returns ``(masked_ids, labels)``: labels hold the original id at chosen positions, ``IGNORE`` elsewhere.
    The draws come from ``generator`` (a CPU generator; None = the global RNG): one (4, *shape) uniform draw.
    """
    shape = input_ids.shape
    draws = torch.rand((4, *shape), generator=generator, device=generator.device if generator else None)
    draws = draws.to(input_ids.device)
    special = torch.isin(input_ids, torch.as_tensor(list(special_ids), dtype=input_ids.dtype, device=input_ids.device))
    chosen = (draws[0] < prob) & attention_mask.bool() & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    if not bert_style:
        return input_ids.masked_fill(chosen, mask_id), labels
    to_mask = chosen & (draws[1] < 0.8)
    to_random = chosen & (draws[1] >= 0.8) & (draws[2] < 0.5)
    random_ids = (draws[3] * vocab_size).long().clamp_max(vocab_size - 1)
    masked = input_ids.masked_fill(to_mask, mask_id)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels
