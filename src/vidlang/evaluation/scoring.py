"""Inference scoring for TACo: s1 + 0.5·s2 + s3 (§1.5), exact or cascade, in bounded memory."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vidlang import distributed as dist
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


def _rows(encoded: EncodedSet, rows: slice) -> Encoded:
    e = encoded.encoded
    return Encoded(e.tokens[rows], e.mask[rows], e.pooled[rows])


def _weighted_tokens(texts: EncodedSet, rows: slice) -> tuple[Encoded, torch.Tensor]:
    """The texts ``rows`` with only their weighted tokens (nouns and verbs; zero-weight padding up to the
    most any text has), and those weights: s2 gets the same value from far fewer token similarities."""
    sub, weights = _rows(texts, rows), texts.weights[rows]
    keep = weights != 0
    width = max(1, int(keep.sum(dim=1).max()))
    order = torch.sort(keep.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]
    tokens = sub.tokens.gather(1, order[..., None].expand(-1, -1, sub.tokens.shape[-1]))
    return Encoded(tokens, sub.mask.gather(1, order), sub.pooled), weights.gather(1, order)


def _blocks(model, videos: EncodedSet, texts: EncodedSet, rows: range, text_chunk: int, budget: int):
    """(text slice, video slice, s1 block, s2 block) over texts ``rows`` × all videos, in blocks whose
    (texts, videos, tokens, frames) token-similarity tensor holds at most ``budget`` elements."""
    n_v, tokens, frames = len(videos), texts.encoded.tokens.shape[1], videos.encoded.tokens.shape[1]
    per_text = max(1, n_v * tokens * frames)
    t_chunk = max(1, min(text_chunk, budget // per_text))
    v_chunk = n_v if t_chunk * per_text <= budget else max(1, budget // (t_chunk * tokens * frames))
    for start in range(rows.start, rows.stop, t_chunk):
        t_rows = slice(start, min(start + t_chunk, rows.stop))
        s1 = model.sentence_scores(videos.encoded, _rows(texts, t_rows))
        weighted, weights = _weighted_tokens(texts, t_rows)
        for v_start in range(0, n_v, v_chunk):
            v_rows = slice(v_start, min(v_start + v_chunk, n_v))
            sim = model.token_similarities(_rows(videos, v_rows), weighted)
            yield t_rows, v_rows, s1[:, v_rows], torch.einsum("ijp,ip->ij", sim, weights)


@torch.no_grad()
def sentence_and_token_scores(model, videos: EncodedSet, texts: EncodedSet, text_chunk: int = 256,
                              rows: range | None = None, budget: int = 2**25):
    """s1 and s2 (texts ``rows``, videos). s2 = IDF-weighted mean over tokens of interest of the max over frames."""
    rows = range(len(texts)) if rows is None else rows
    s1 = torch.empty(len(rows), len(videos), device=videos.encoded.tokens.device)
    s2 = torch.empty_like(s1)
    for t_rows, v_rows, b1, b2 in _blocks(model, videos, texts, rows, text_chunk, budget):
        local = slice(t_rows.start - rows.start, t_rows.stop - rows.start)
        s1[local, v_rows], s2[local, v_rows] = b1, b2
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
def _add_fusion_rows(model, videos: EncodedSet, texts: EncodedSet, rows: range, batch_pairs: int,
                     out: torch.Tensor) -> None:
    """Add s3 of every (text in ``rows``, video) pair to ``out`` (rows, videos), pair indices made
    one batch at a time (row-major, as the pairs of the whole matrix would be)."""
    n_v, flat = len(videos), out.view(-1)
    for start in range(0, len(flat), batch_pairs):
        pairs = torch.arange(start, min(start + batch_pairs, len(flat)), device=out.device)
        text_index, video_index = rows.start + pairs // n_v, pairs % n_v
        flat[start : start + len(pairs)] += model.fusion_scores(videos.encoded, texts.encoded, video_index,
                                                                text_index).float()


def _shortlist(base: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(text, video) pairs, row-major: each text's top-k videos and each video's top-k texts."""
    n_t, n_v = base.shape
    row = base.topk(min(k, n_v), dim=1).indices + torch.arange(n_t, device=base.device)[:, None] * n_v
    col = base.T.topk(min(k, n_t), dim=1).indices * n_v + torch.arange(n_v, device=base.device)[:, None]
    pairs = torch.unique(torch.cat([row.reshape(-1), col.reshape(-1)]))  # sorted
    return pairs // n_v, pairs % n_v


@torch.no_grad()
def score_matrix(
    model,
    videos: EncodedSet,
    texts: EncodedSet,
    scoring: str = "exact",
    token_scale: float = 0.5,
    rerank_topk: int = 20,
    batch_pairs: int = 1024,
    *,
    distributed: bool = False,
) -> torch.Tensor:
    """The (texts, videos) score matrix.

    exact:   s1 + token_scale·s2 + s3, fusion run on every pair in batches.
    cascade: s1 + token_scale·s2 everywhere; the top-k videos of each text and the top-k texts of each
             video are reranked by adding s3; every reranked pair ranks above every other pair.
             (A deviation from the paper, which scores all pairs.)
    s1 / s2 / s3 / s1+s2: one score alone (s1+s2 uses token_scale).

    ``distributed``: under torchrun each rank scores a block of text rows (and its share of the
    reranked pairs) and every rank returns the whole matrix. Nothing of size texts × videos is
    held beyond the result (and, for cascade, the one gathered s1 + s2 matrix it is built in).
    """
    parts, cascade = parse_scoring(scoring)
    model.eval()
    world, rank = (dist.world_size(), dist.rank()) if distributed else (1, 0)
    n_t, n_v = len(texts), len(videos)
    rows = range(*dist.shard_bounds(n_t, world, rank))
    scale = token_scale if len(parts) > 1 else 1.0
    base = torch.zeros(len(rows), n_v, device=videos.encoded.tokens.device)  # this rank's rows of the result
    if parts & {"s1", "s2"}:
        for t_rows, v_rows, s1, s2 in _blocks(model, videos, texts, rows, 256, 2**25):
            block = base[t_rows.start - rows.start : t_rows.stop - rows.start, v_rows]
            if "s1" in parts:
                block += s1
            if "s2" in parts:
                block += scale * s2
    if "s3" in parts and not cascade:
        _add_fusion_rows(model, videos, texts, rows, batch_pairs, base)
    base = dist.gather_rows_into(base, n_t) if world > 1 else base
    if "s3" not in parts or not cascade:
        return base
    text_index, video_index = _shortlist(base, rerank_topk)
    mine = (text_index >= rows.start) & (text_index < rows.stop)  # row-major: one contiguous run per rank
    s3 = fusion_pairs(model, videos, texts, video_index[mine], text_index[mine], batch_pairs)
    if world > 1:
        s3 = torch.cat(dist.all_gather_list(s3))
    reranked = base[text_index, video_index] + s3
    base.sub_(base.max()).add_(reranked.min()).sub_(1.0)  # keeps their order, below every reranked pair
    base[text_index, video_index] = reranked
    return base


def querybank_normalise(sim: torch.Tensor, bank_sim: torch.Tensor, beta: float, dynamic: bool = True,
                        top_k: int = 1) -> torch.Tensor:
    """QB-Norm (Bogolin et al., CVPR 2022) of a (queries, gallery) score matrix, text->video only.

    ``bank_sim`` (bank queries, gallery) scores a bank of training queries against the same gallery.
    Inverted softmax: score(q, j) = beta·sim[q, j] - log Σ_b exp(beta·bank_sim[b, j]) (the log of
    exp(beta·s) / Σ_b exp(beta·bank), same ranking per query). ``dynamic`` (DIS): a query is normalised
    only when its own top-1 gallery item is among the items that are in the top ``top_k`` of some bank
    query; other queries keep beta·sim. Ranks within a query are comparable; scores across queries are
    not (use the raw ``sim`` for video->text).
    """
    if sim.shape[1] != bank_sim.shape[1]:
        raise ValueError(f"sim has {sim.shape[1]} gallery items but bank_sim has {bank_sim.shape[1]}")
    scaled = beta * sim
    normalised = scaled - torch.logsumexp(beta * bank_sim, dim=0)[None]
    if not dynamic:
        return normalised
    active = torch.zeros(sim.shape[1], dtype=torch.bool, device=sim.device)
    active[bank_sim.topk(min(top_k, sim.shape[1]), dim=1).indices.reshape(-1)] = True
    use = active[sim.argmax(dim=1)]
    return torch.where(use[:, None], normalised, scaled)
