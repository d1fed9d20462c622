"""Non-neural retrieval baselines on pre-extracted video features.

``tfidf_ridge_baseline``: TF-IDF (word 1-2-grams) of each caption -> ridge regression
onto its video's mean-pooled, standardised feature; a test text scores each test video
by the cosine between its predicted vector and the video's actual one.

Captioning baselines: ``consensus_captions`` (the consensus caption of the k nearest training
videos; ``nearest_neighbour_captions`` is k=1) and ``best_constant_caption`` (one training
caption for every video).
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from vidlang.errors import ConfigError, DataError


def _sklearn():
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import Ridge
    except ImportError as e:  # optional dependency
        raise ImportError(
            "the TF-IDF baseline needs scikit-learn: pip install scikit-learn"
        ) from e
    return TfidfVectorizer, Ridge


def _feats(x: np.ndarray, name: str, rows: int | None = None, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"{name} must be 2-D (rows, dim) mean-pooled features, got shape {x.shape}")
    if rows is not None and x.shape[0] != rows:
        raise DataError(f"{name} has {x.shape[0]} rows but there are {rows} captions")
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{name} has dim {x.shape[1]}, the training features have dim {dim}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise DataError(f"{name} row {int(np.flatnonzero(bad)[0])} has NaN/inf values")
    return x


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def tfidf_ridge_baseline(
    train_captions: Sequence[str],
    train_video_feats: np.ndarray,
    test_captions: Sequence[str],
    test_video_feats: np.ndarray,
    alpha: float = 1.0,
    *,
    min_df: int | float = 1,
    ngram_range: tuple[int, int] = (1, 2),
) -> np.ndarray:
    """Similarity matrix (num_test_texts, num_test_videos) of the TF-IDF -> ridge baseline.

    train_captions:    N training captions.
    train_video_feats: (N, D) the mean-pooled feature of each caption's video (one row
                       per caption, so a video with 20 captions appears 20 times).
    test_captions:     M query captions.
    test_video_feats:  (V, D) mean-pooled features of the candidate videos.
    alpha, min_df:     ridge strength and TF-IDF minimum document frequency (choose
                       them on held-out *training* videos, never on the test split).

    Features are standardised per dimension with the training rows' mean/std (a
    dimension with zero std is only centred). A caption with no known n-gram gets the
    ridge intercept as its prediction, i.e. (almost) the same score for every video.
    """
    TfidfVectorizer, Ridge = _sklearn()
    train_captions, test_captions = list(train_captions), list(test_captions)
    for name, caps in (("train_captions", train_captions), ("test_captions", test_captions)):
        if not caps:
            raise DataError(f"{name} is empty")
        bad = [i for i, c in enumerate(caps) if not isinstance(c, str)]
        if bad:
            raise DataError(f"{name}[{bad[0]}] is {type(caps[bad[0]]).__name__}, not a string")
    y = _feats(train_video_feats, "train_video_feats", rows=len(train_captions))
    v = _feats(test_video_feats, "test_video_feats", dim=y.shape[1])
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")

    mean, std = y.mean(axis=0), y.std(axis=0)
    std[std == 0] = 1.0
    y, v = (y - mean) / std, (v - mean) / std

    vec = TfidfVectorizer(ngram_range=ngram_range, sublinear_tf=True, min_df=min_df)
    try:
        x_train = vec.fit_transform(train_captions)
    except ValueError as e:  # e.g. "empty vocabulary"
        raise DataError(f"TF-IDF on train_captions failed: {e}") from e
    ridge = Ridge(alpha=alpha).fit(x_train, y)
    pred = ridge.predict(vec.transform(test_captions))
    return (_unit_rows(pred) @ _unit_rows(v).T).astype(np.float32)


def _pooled(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    """(N, D) features, mean-pooling (N, T, D) over T."""
    x = np.asarray(x, dtype=np.float64)
    return _feats(x.mean(axis=1) if x.ndim == 3 else x, name, dim=dim)


def _caption_lists(captions: Sequence[Sequence[str]], name: str) -> list[list[str]]:
    out = []
    for i, caps in enumerate(captions):
        if isinstance(caps, str) or not all(isinstance(c, str) for c in caps) or not any(c.strip() for c in caps):
            raise DataError(f"{name}[{i}] must be a non-empty list of caption strings, got {caps!r:.80}")
        out.append([c for c in caps if c.strip()])
    return out


def nearest_videos(train_feats: np.ndarray, test_feats: np.ndarray, k: int = 1) -> np.ndarray:
    """(M, k) indices of each test video's k nearest training videos, nearest first.

    Nearest: highest cosine between mean-pooled features ((N, D), or (N, T, D) pooled here),
    standardised per dimension with the training mean/std; ties go to the lower index.
    """
    x = _pooled(train_feats, "train_feats")
    q = _pooled(test_feats, "test_feats", dim=x.shape[1])
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= len(x):
        raise ConfigError(f"k must be an integer in [1, {len(x)}] (the training videos), got {k!r}")
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    sim = _unit_rows((q - mean) / std) @ _unit_rows((x - mean) / std).T
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def consensus_captions(train_feats: np.ndarray, train_captions: Sequence[Sequence[str]], test_feats: np.ndarray,
                       k: int = 1) -> list[str]:
    """Caption each test video with the consensus caption of its k nearest training videos.

    Nearest: :func:`nearest_videos`. Consensus (Devlin et al. 2015): among all captions of those k
    videos, the one with the highest mean CIDEr-D (pycocoevalcap's formula and PTB tokens, IDF over
    all training videos) against each of the other captions of the pool; ties go to the caption
    of the nearer video (then the earlier caption). ``k=1`` is :func:`nearest_neighbour_captions`.
    Choose k on validation videos, never on the test split. Needs Java (the PTB tokenizer).
    """
    caps = _caption_lists(train_captions, "train_captions")
    n = _pooled(train_feats, "train_feats").shape[0]
    if n != len(caps):
        raise DataError(f"train_feats has {n} rows but there are {len(caps)} training videos")
    nearest = nearest_videos(train_feats, test_feats, k)
    pools = list(dict.fromkeys(tuple(int(v) for v in row) for row in nearest))
    best = dict(zip(pools, _pool_consensus(caps, pools)))
    return [best[tuple(int(v) for v in row)] for row in nearest]


def own_consensus_captions(captions: Sequence[Sequence[str]]) -> list[str]:
    """Each video's consensus caption among its own captions (as :func:`consensus_captions` with the
    pool of that one video; IDF over all the videos given). Needs Java (the PTB tokenizer)."""
    caps = _caption_lists(captions, "captions")
    return _pool_consensus(caps, [(v,) for v in range(len(caps))])


def _pool_consensus(caps: list[list[str]], pools: Sequence[tuple[int, ...]]) -> list[str]:
    """For each pool of videos, its caption with the highest mean CIDEr-D against the pool's other
    captions (ties: the earlier video, then the earlier caption)."""
    from vidlang.evaluation.caption_metrics import CiderD, tokenize

    toks = tokenize(dict(enumerate(caps)))
    cider = CiderD([toks[v] for v in range(len(caps))])
    first_ref = np.concatenate([[0], np.cumsum([len(c) for c in caps])])
    best = []
    for pool in pools:
        cols = np.concatenate([np.arange(first_ref[v], first_ref[v + 1]) for v in pool])
        texts = [c for v in pool for c in caps[v]]
        if len(texts) == 1:
            best.append(texts[0])
            continue
        sim = cider.pair_scores([t for v in pool for t in toks[v]])[:, cols]  # (P, P): caption i vs caption j
        np.fill_diagonal(sim, 0.0)
        best.append(texts[int((sim.sum(axis=1) / (len(texts) - 1)).argmax())])
    return best


def rerank_by_neighbours(candidates: Sequence[Sequence[str]], train_feats: np.ndarray,
                         train_captions: Sequence[Sequence[str]], test_feats: np.ndarray, k: int,
                         prior_weight: float = 0.0, *, nearest: np.ndarray | None = None) -> list[str]:
    """For each test video, the one of its ``candidates`` (e.g. a captioner's captions under several
    decodings) with the highest mean CIDEr-D against all captions of its k nearest training videos
    (:func:`nearest_videos`; IDF over all training videos), less ``prior_weight`` times its mean CIDEr-D
    against every training caption; ties go to the first candidate. Only training captions are
    references: each video is reranked alone. ``nearest``: (M, >= k) neighbour indices found another
    way (e.g. a retrieval model), used instead. Needs Java (the PTB tokenizer).
    """
    from vidlang.evaluation.caption_metrics import CiderD, tokenize

    caps = _caption_lists(train_captions, "train_captions")
    cands = _caption_lists(candidates, "candidates")
    n = _pooled(train_feats, "train_feats").shape[0]
    if n != len(caps):
        raise DataError(f"train_feats has {n} rows but there are {len(caps)} training videos")
    nearest = np.asarray(nearest_videos(train_feats, test_feats, k) if nearest is None else nearest)
    if nearest.ndim != 2 or nearest.shape[1] < k or (nearest.size and not 0 <= nearest.min() <= nearest.max() < len(caps)):
        raise DataError(f"nearest must be (test videos, >= {k}) indices of the {len(caps)} training videos, "
                        f"got shape {nearest.shape}")
    nearest = nearest[:, :k]
    if len(cands) != len(nearest):
        raise DataError(f"{len(cands)} candidate lists for {len(nearest)} test videos")
    toks = tokenize({**{("ref", v): c for v, c in enumerate(caps)}, **{("cand", i): c for i, c in enumerate(cands)}})
    cider = CiderD([toks[("ref", v)] for v in range(len(caps))])
    first_ref = np.concatenate([[0], np.cumsum([len(c) for c in caps])])
    out = []
    for i, pool in enumerate(nearest):
        cols = np.concatenate([np.arange(first_ref[v], first_ref[v + 1]) for v in pool])
        scores = cider.pair_scores(toks[("cand", i)])
        agreement = scores[:, cols].mean(axis=1) - prior_weight * scores.mean(axis=1)
        out.append(cands[i][int(agreement.argmax())])
    return out


def nearest_neighbour_captions(train_feats: np.ndarray, train_captions: Sequence[Sequence[str]],
                               test_feats: np.ndarray) -> list[str]:
    """Caption each test video with the consensus caption of its nearest training video
    (:func:`consensus_captions` with ``k=1``). Needs Java (the PTB tokenizer)."""
    return consensus_captions(train_feats, train_captions, test_feats, k=1)


def best_constant_caption(train_captions: Sequence[str] | Sequence[Sequence[str]],
                          references: Mapping[Hashable, Sequence[str]], metric: str = "CIDEr") -> str:
    """The one training caption that, emitted for every video, scores best against ``references``.

    ``train_captions`` (a flat list, or one list per video) are the candidates; ``references``
    must be TRAINING references ({id: captions}), so nothing is chosen on test data. Scores are
    corpus CIDEr-D as coco-caption computes it (PTB tokens, IDF from ``references``), for every
    distinct candidate, exactly; ties go to the first. Needs Java (the PTB tokenizer).
    """
    from vidlang.evaluation.caption_metrics import CiderD, tokenize

    if metric != "CIDEr":
        raise ConfigError(f"best_constant_caption supports metric='CIDEr' only, got {metric!r}")
    flat = [c for caps in train_captions for c in ([caps] if isinstance(caps, str) else caps)]
    if not all(isinstance(c, str) for c in flat):
        raise DataError("train_captions must hold caption strings")
    cands = list(dict.fromkeys(c for c in flat if c.strip()))
    if not cands:
        raise DataError("best_constant_caption got no non-empty training caption")
    refs = _caption_lists(list(references.values()), "references")
    toks = tokenize({"cand": cands, **{i: r for i, r in enumerate(refs)}})
    cider = CiderD([toks[i] for i in range(len(refs))])
    scores = cider.video_scores(toks["cand"]).mean(axis=1)
    return cands[int(np.argmax(scores))]
