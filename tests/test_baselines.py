"""TF-IDF -> ridge baseline: synthetic sanity check and the real msrvtt-ae128-dev split."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from vidlang.evaluation.baselines import tfidf_ridge_baseline  # noqa: E402
from vidlang.errors import DataError  # noqa: E402
from vidlang.evaluation.metrics import retrieval_metrics  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msrvtt-ae128-dev"
# Chosen by a sweep on train videos only (fit video0-599, score video600-699):
# min_df in {1,2,3} x alpha in {0.3,1,3,5,10,20,30}; best t2v R@1/5/10 at min_df=2, alpha=10.
ALPHA, MIN_DF = 10.0, 2


def synthetic(rng, n_videos, caps_per_video, concepts, vecs):
    """Each video shows 3 concepts; its feature is the sum of their vectors plus noise;
    its captions name the concepts (shuffled) among filler words."""
    fillers = ["a", "the", "is", "video", "of", "some", "shows", "there"]
    caps, feats, t2v = [], [], []
    for v in range(n_videos):
        chosen = rng.choice(len(concepts), 3, replace=False)
        feats.append(vecs[chosen].sum(0) + 0.1 * rng.standard_normal(vecs.shape[1]))
        for _ in range(caps_per_video):
            words = [concepts[c] for c in chosen] + list(rng.choice(fillers, 4))
            rng.shuffle(words)
            caps.append(" ".join(words))
            t2v.append(v)
    return caps, np.asarray(feats), np.asarray(t2v)


def test_synthetic_far_above_chance():
    rng = np.random.default_rng(0)
    concepts = [f"concept{i}" for i in range(40)]
    vecs = rng.standard_normal((40, 16))
    tr_caps, tr_feats, tr_t2v = synthetic(rng, 300, 3, concepts, vecs)
    te_caps, te_feats, te_t2v = synthetic(rng, 50, 2, concepts, vecs)
    sim = tfidf_ridge_baseline(tr_caps, tr_feats[tr_t2v], te_caps, te_feats, alpha=1.0)
    assert sim.shape == (100, 50) and np.isfinite(sim).all()
    m = retrieval_metrics(sim, te_t2v)
    assert m["t2v_R@1"] > 60.0  # chance is 2%
    assert m["v2t_R@1"] > 60.0


def test_words_matter():
    """Shuffling which caption goes with which training video destroys the signal."""
    rng = np.random.default_rng(1)
    concepts = [f"concept{i}" for i in range(40)]
    vecs = rng.standard_normal((40, 16))
    tr_caps, tr_feats, tr_t2v = synthetic(rng, 300, 3, concepts, vecs)
    te_caps, te_feats, te_t2v = synthetic(rng, 50, 2, concepts, vecs)
    shuffled = tr_feats[rng.permutation(tr_t2v)]
    sim = tfidf_ridge_baseline(tr_caps, shuffled, te_caps, te_feats, alpha=1.0)
    assert retrieval_metrics(sim, te_t2v)["t2v_R@1"] < 20.0


def test_bad_input():
    feats = np.ones((2, 4))
    with pytest.raises(DataError, match="3 captions"):
        tfidf_ridge_baseline(["a b", "c d", "e f"], feats, ["a"], feats)
    with pytest.raises(DataError, match="dim 3"):
        tfidf_ridge_baseline(["ab cd", "cd ef"], feats, ["ab"], np.ones((2, 3)))
    bad = feats.copy()
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match="row 1"):
        tfidf_ridge_baseline(["ab cd", "cd ef"], bad, ["ab"], feats)
    with pytest.raises(DataError, match=r"test_captions\[0\]"):
        tfidf_ridge_baseline(["ab cd", "cd ef"], feats, [None], feats)
    with pytest.raises(DataError, match="empty vocabulary"):
        tfidf_ridge_baseline(["", ""], feats, ["ab"], feats)


def test_missing_sklearn_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.feature_extraction.text", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        tfidf_ridge_baseline(["ab cd"], np.ones((1, 2)), ["ab"], np.ones((1, 2)))


def test_real_msrvtt_ae128_dev():
    if not (DATA / "features.npy").exists():
        pytest.skip(f"{DATA} is absent")
    feats = np.load(DATA / "features.npy").mean(axis=1)  # (800, 128) mean-pooled
    ids = (DATA / "video_ids.txt").read_text().split()
    ann = json.loads((DATA / "annotations.json").read_text())
    caps = [ann[v]["captions"] for v in ids]
    train = range(0, 700)
    test = range(700, 800)
    tr_caps = [c for i in train for c in caps[i]]
    tr_feats = np.repeat(feats[:700], [len(caps[i]) for i in train], axis=0)
    te_caps = [c for i in test for c in caps[i]]
    te_t2v = [i - 700 for i in test for _ in caps[i]]
    sim = tfidf_ridge_baseline(tr_caps, tr_feats, te_caps, feats[700:], alpha=ALPHA, min_df=MIN_DF)
    m = retrieval_metrics(sim, te_t2v)
    print(
        f"\nTF-IDF ridge (alpha={ALPHA}, min_df={MIN_DF}) on video700-799, {m['num_texts']} queries: "
        f"t2v R@1/5/10 {m['t2v_R@1']:.1f}/{m['t2v_R@5']:.1f}/{m['t2v_R@10']:.1f} MedR {m['t2v_MedR']:.1f}; "
        f"v2t R@1/5/10 {m['v2t_R@1']:.1f}/{m['v2t_R@5']:.1f}/{m['v2t_R@10']:.1f} MedR {m['v2t_MedR']:.1f}"
    )
    assert m["num_texts"] == 2000 and m["num_videos"] == 100
    assert m["t2v_R@1"] > 5.0  # chance is 1%
