"""Tests of the captioning baselines: nearest-neighbour consensus caption and best constant caption."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("pycocoevalcap")
pytest.importorskip("scipy")
if shutil.which("java") is None:
    pytest.skip("caption baselines need java (PTB tokenizer)", allow_module_level=True)

from vidlang.evaluation.baselines import (best_constant_caption, consensus_captions,  # noqa: E402
                                          nearest_neighbour_captions, nearest_videos, rerank_by_neighbours)
from vidlang.errors import ConfigError, DataError  # noqa: E402

# Lower-case, no punctuation: the PTB tokenizer leaves these unchanged.
TRAIN_CAPS = [
    ["a man is slicing a tomato", "a man slices a red tomato", "a man is slicing a tomato on a board",
     "someone plays a guitar"],
    ["a dog runs in the park", "a dog is running in a park", "a cat sleeps"],
    ["a woman sings a song", "a woman is singing", "a woman is singing a song on stage"],
    ["cars race on a track", "cars race on a track", "a car drives fast"],
]


def _brute_nn(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    mean, std = train.mean(0), train.std(0)
    std[std == 0] = 1
    a, b = (train - mean) / std, (test - mean) / std
    out = []
    for q in b:
        sims = [float(q @ x / (np.linalg.norm(q) * np.linalg.norm(x))) for x in a]
        out.append(int(np.argmax(sims)))
    return np.array(out)


def test_nearest_neighbour_picks_the_nearest_videos_consensus_caption():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(4, 6, 5))  # (N, T, D): mean-pooled inside
    test = train.mean(axis=1)[[3, 0, 1, 2, 0]] + 0.05 * rng.normal(size=(5, 5))
    got = nearest_neighbour_captions(train, TRAIN_CAPS, test)
    nearest = _brute_nn(train.mean(axis=1), test)
    assert list(nearest) == [3, 0, 1, 2, 0]
    for caption, v in zip(got, nearest):
        assert caption in TRAIN_CAPS[v]
    assert got[0] == "cars race on a track"  # the caption given twice is the consensus
    assert got[1] not in ("someone plays a guitar",) and got[1] == got[4]
    assert got[2] != "a cat sleeps"  # the outlier never wins


def _brute_knn(train: np.ndarray, test: np.ndarray, k: int) -> list[list[int]]:
    mean, std = train.mean(0), train.std(0)
    std[std == 0] = 1
    a, b = (train - mean) / std, (test - mean) / std
    out = []
    for q in b:
        sims = [float(q @ x / (np.linalg.norm(q) * np.linalg.norm(x))) for x in a]
        out.append(sorted(range(len(a)), key=lambda i: -sims[i])[:k])
    return out


def test_consensus_of_k_nearest_matches_a_plain_loop():
    from vidlang.evaluation.caption_metrics import CiderD, tokenize

    rng = np.random.default_rng(1)
    train = rng.normal(size=(4, 6, 5))
    test = rng.normal(size=(6, 5))
    toks = tokenize(dict(enumerate(TRAIN_CAPS)))
    cider = CiderD([toks[v] for v in range(len(TRAIN_CAPS))])
    ref_index = {}  # (video, caption) -> column of cider's reference matrix
    for v, caps in enumerate(TRAIN_CAPS):
        for i in range(len(caps)):
            ref_index[(v, i)] = len(ref_index)
    for k in (1, 2, 3, 4):
        got = consensus_captions(train, TRAIN_CAPS, test, k=k)
        assert [list(r) for r in nearest_videos(train, test, k)] == _brute_knn(train.mean(axis=1), test, k)
        for caption, pool in zip(got, _brute_knn(train.mean(axis=1), test, k)):
            items = [(v, i) for v in pool for i in range(len(TRAIN_CAPS[v]))]
            means = []
            for v, i in items:  # mean CIDEr-D of caption (v, i) against every other caption of the pool
                terms = [cider.pair_scores([toks[v][i]])[0, ref_index[(w, j)]] for w, j in items if (w, j) != (v, i)]
                means.append(sum(terms) / len(terms))
            v, i = items[int(np.argmax(means))]
            assert caption == TRAIN_CAPS[v][i], (k, pool)
    # every training video in the pool: one caption for every test video, and k=1 is the nearest neighbour
    assert len(set(consensus_captions(train, TRAIN_CAPS, test, k=4))) == 1
    assert consensus_captions(train, TRAIN_CAPS, test, k=1) == nearest_neighbour_captions(train, TRAIN_CAPS, test)
    with pytest.raises(ConfigError, match="k must be"):
        consensus_captions(train, TRAIN_CAPS, test, k=5)
    with pytest.raises(ConfigError, match="k must be"):
        consensus_captions(train, TRAIN_CAPS, test, k=0)


def test_rerank_by_neighbours_matches_a_plain_loop():
    from vidlang.evaluation.caption_metrics import CiderD, tokenize

    rng = np.random.default_rng(2)
    train = rng.normal(size=(4, 5))
    test = train[[3, 0, 1]] + 0.05 * rng.normal(size=(3, 5))
    cands = [["a car drives", "cars race on a track", "a woman sings", "a man is slicing a tomato",
              "a man is singing a song"]] * 2 + [["a man is slicing a tomato", "a woman sings", "a car drives"]]
    toks = tokenize(dict(enumerate(TRAIN_CAPS)))
    cider = CiderD([toks[v] for v in range(len(TRAIN_CAPS))])
    for k, prior in ((1, 0.0), (2, 0.0), (4, 0.0), (1, 0.5), (2, 1.0), (2, 3.0)):
        got = rerank_by_neighbours(cands, train, TRAIN_CAPS, test, k, prior_weight=prior)
        for caption, options, pool in zip(got, cands, _brute_knn(train, test, k)):
            def agreement(c):  # mean CIDEr-D of c against every caption of the pool's videos, less the prior's share
                scores = cider.pair_scores([" ".join(c.split())])[0]
                cols = [j for j, v in enumerate(cider.video_of_ref) if v in pool]
                everyone = sum(scores) / len(scores)  # against every training caption
                return sum(scores[j] for j in cols) / len(cols) - prior * everyone
            assert caption == max(options, key=agreement), (k, prior, pool)
    assert rerank_by_neighbours(cands, train, TRAIN_CAPS, test, 2, prior_weight=3.0) != \
        rerank_by_neighbours(cands, train, TRAIN_CAPS, test, 2)  # the prior changes a pick
    # the pool decides: video 1's neighbour alone, then with video 2 (the singers) beside it
    assert rerank_by_neighbours(cands, train, TRAIN_CAPS, test, 1)[2] == "a man is slicing a tomato"
    assert rerank_by_neighbours(cands, train, TRAIN_CAPS, test, 2)[2] == "a woman sings"
    with pytest.raises(DataError, match="candidate lists"):
        rerank_by_neighbours(cands[:2], train, TRAIN_CAPS, test, 1)


def test_nearest_neighbour_rejects_bad_input():
    feats = np.zeros((4, 3))
    with pytest.raises(DataError, match="rows"):
        nearest_neighbour_captions(feats[:3], TRAIN_CAPS, feats)
    with pytest.raises(DataError, match="dim"):
        nearest_neighbour_captions(feats, TRAIN_CAPS, np.zeros((2, 4)))
    with pytest.raises(DataError, match="non-empty list"):
        nearest_neighbour_captions(feats, TRAIN_CAPS[:3] + [[""]], feats)
    bad = feats.copy()
    bad[1, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        nearest_neighbour_captions(bad, TRAIN_CAPS, feats)


def test_best_constant_caption_is_the_argmax_of_corpus_cider():
    from pycocoevalcap.cider.cider import Cider

    refs = {f"v{i}": caps for i, caps in enumerate(TRAIN_CAPS)}
    got = best_constant_caption(TRAIN_CAPS, refs)
    gts = dict(enumerate(TRAIN_CAPS))
    scores = {c: Cider().compute_score(gts, {v: [c] for v in gts})[0] for caps in TRAIN_CAPS for c in caps}
    assert got == max(scores, key=scores.get)
    assert scores[got] > min(scores.values())
    # a flat candidate list works too, and only its captions can be chosen
    few = ["a cat sleeps", "a woman is singing"]
    assert best_constant_caption(few, refs) == max(few, key=scores.get)


def test_best_constant_caption_rejects_bad_input():
    refs = {"a": ["x y"], "b": ["y z"]}
    with pytest.raises(ConfigError, match="CIDEr"):
        best_constant_caption(["x"], refs, metric="BLEU-4")
    with pytest.raises(DataError, match="no non-empty"):
        best_constant_caption(["", " "], refs)
    with pytest.raises(DataError, match="non-empty list"):
        best_constant_caption(["x"], {"a": []})
