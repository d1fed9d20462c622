"""Inference scoring for TACo: s1 + 0.5·s2 + s3 (§1.5), exact or cascade, in bounded memory."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vidlang.models.blocks import Encoded

SCORINGS = ("exact", "cascade", "s1", "s2", "s3", "s1+s2", "s1+s3", "s2+s3")


def parse_scoring(scoring: str) -> tuple[set[str], bool]:
    """``exact`` = s1+s2+s3 on all pairs; ``cascade`` = the same, fusion on a shortlist;
    otherwise a ``+``-joined subset of s1, s2, s3, all pairs. Returns (components, cascade)."""
    if scoring in ("exact", "cascade"):
        return {"s1", "s2", "s3"}, scoring == "cascade"
    parts = set(scoring.split("+"))
    if not parts or not parts <= {"s1", "s2", "s3"}:
        raise ValueError(f"scoring must be exact, cascade or a '+'-joined subset of s1,s2,s3, not {scoring!r}")
    return parts, False


@dataclass
class EncodedSet:
    """A collection encoded once, tokens padded to a common length, on the model's device."""

    encoded: Encoded
    weights: torch.Tensor | None = None  # text side: normalised IDF weights per token

    def __len__(self) -> int:
        return self.encoded.tokens.shape[0]


def _cat(parts: list[Encoded]) -> Encoded:
    width = max(p.tokens.shape[1] for p in parts)
    pad = lambda t, value=0: torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1]) if t.dim() == 3 else (0, width - t.shape[1]), value=value)  # noqa: E731
    return Encoded(
        torch.cat([pad(p.tokens) for p in parts]),
        torch.cat([pad(p.mask, False) for p in parts]),
        torch.cat([p.pooled for p in parts]),
    )


@torch.no_grad()
def encode_videos(model, batches) -> EncodedSet:
    """``batches`` yields (features, mask) pairs."""
    parts = [model.encode_video(f, m) for f, m in batches]
    return EncodedSet(_cat([Encoded(p.tokens.float(), p.mask, p.pooled.float()) for p in parts]))


@torch.no_grad()
def encode_texts(model, batches) -> EncodedSet:
    """``batches`` yields (input_ids, attention_mask, token_weights) triples."""
    parts, weights = [], []
    for ids, mask, w in batches:
        enc = model.encode_text(ids, mask)
        parts.append(Encoded(enc.tokens.float(), enc.mask, enc.pooled.float()))
        weights.append(w.float())
    encoded = _cat(parts)
    width = encoded.tokens.shape[1]
    return EncodedSet(encoded, torch.cat([torch.nn.functional.pad(w, (0, width - w.shape[1])) for w in weights]))


@torch.no_grad()
def sentence_and_token_scores(model, videos: EncodedSet, texts: EncodedSet, text_chunk: int = 256):
    """s1 and s2 (texts, videos). s2 = IDF-weighted mean over tokens of interest of the max over frames."""
    s1 = model.sentence_scores(videos.encoded, texts.encoded)
    s2 = torch.empty_like(s1)
    for start in range(0, len(texts), text_chunk):
        rows = torch.arange(start, min(start + text_chunk, len(texts)))
        sub = Encoded(texts.encoded.tokens[rows], texts.encoded.mask[rows], texts.encoded.pooled[rows])
        sim = model.token_similarities(videos.encoded, sub)
        s2[rows] = torch.einsum("ijp,ip->ij", sim, texts.weights[rows])
    return s1, s2


@torch.no_grad()
def fusion_pairs(model, videos: EncodedSet, texts: EncodedSet, video_index, text_index, batch_pairs: int = 1024):
    """s3 for the listed pairs, ``batch_pairs`` sequences at a time (never all N² at once)."""
    out = torch.empty(len(video_index), device=videos.encoded.tokens.device)
    for start in range(0, len(video_index), batch_pairs):
        sl = slice(start, start + batch_pairs)
        out[sl] = model.fusion_scores(videos.encoded, texts.encoded, video_index[sl], text_index[sl]).float()
    return out


@torch.no_grad()
def score_matrix(
    model,
    videos: EncodedSet,
    texts: EncodedSet,
    scoring: str = "exact",
    token_scale: float = 0.5,
    rerank_topk: int = 20,
    batch_pairs: int = 1024,
) -> torch.Tensor:
    """The (texts, videos) score matrix.

    exact:   s1 + token_scale·s2 + s3, fusion run on every pair in batches.
    cascade: s1 + token_scale·s2 everywhere; the top-k videos of each text and the top-k texts of each
             video are reranked by adding s3; every reranked pair ranks above every other pair.
             (A deviation from the paper, which scores all pairs.)
    s1 / s2 / s3 / s1+s2: one score alone (s1+s2 uses token_scale).
    """
    parts, cascade = parse_scoring(scoring)
    model.eval()
    s1, s2 = sentence_and_token_scores(model, videos, texts)
    scale = token_scale if len(parts) > 1 else 1.0
    base = (s1 if "s1" in parts else 0) + (scale * s2 if "s2" in parts else 0)
    if "s3" not in parts:
        return base
    n_t, n_v = s1.shape
    if not cascade:
        text_index, video_index = torch.meshgrid(torch.arange(n_t), torch.arange(n_v), indexing="ij")
        s3 = fusion_pairs(model, videos, texts, video_index.reshape(-1), text_index.reshape(-1), batch_pairs)
        return base + s3.view(n_t, n_v)
    shortlist = torch.zeros_like(base, dtype=torch.bool)
    shortlist.scatter_(1, base.topk(min(rerank_topk, n_v), dim=1).indices, True)
    shortlist.T.scatter_(1, base.T.topk(min(rerank_topk, n_t), dim=1).indices, True)
    text_index, video_index = shortlist.nonzero(as_tuple=True)
    s3 = fusion_pairs(model, videos, texts, video_index, text_index, batch_pairs)
    reranked = base[text_index, video_index] + s3
    out = base - base.max() + reranked.min() - 1.0  # keeps their order, below every reranked pair
    out[text_index, video_index] = reranked
    return out
