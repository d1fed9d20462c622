"""Non-neural retrieval baselines on pre-extracted video features.

``tfidf_ridge_baseline``: TF-IDF (word 1-2-grams) of each caption -> ridge regression
onto its video's mean-pooled, standardised feature; a test text scores each test video
by the cosine between its predicted vector and the video's actual one.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vidlang.errors import DataError


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
