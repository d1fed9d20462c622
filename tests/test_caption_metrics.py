"""Tests of vidlang.evaluation.caption_metrics: coco-caption metrics, preflight and the vectorised CIDEr-D."""
from __future__ import annotations

import math
import shutil
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("pycocoevalcap")
if shutil.which("java") is None:  # the PTB tokenizer is a jar
    pytest.skip("caption metrics need java", allow_module_level=True)

from vidlang.evaluation import caption_metrics as cm  # noqa: E402
from vidlang.errors import DataError, VidlangError  # noqa: E402


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _corpus_bleu(preds: dict, refs: dict, n_max: int = 4) -> list[float]:
    """Plain corpus BLEU-1..n as coco-caption: clipped counts summed over the corpus, the closest
    reference length (shorter on ties) for the brevity penalty, no smoothing."""
    correct, guess = [0] * n_max, [0] * n_max
    hyp_len = ref_len = 0
    for k, hyp in preds.items():
        h = hyp.split()
        rs = [r.split() for r in refs[k]]
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
        for n in range(1, n_max + 1):
            hc = _ngrams(h, n)
            maxref = Counter()
            for r in rs:
                maxref |= _ngrams(r, n)
            correct[n - 1] += sum(min(c, maxref[g]) for g, c in hc.items())
            guess[n - 1] += max(len(h) - n + 1, 0)
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    out, prod = [], 1.0
    for n in range(n_max):
        prod *= correct[n] / guess[n]
        out.append(bp * prod ** (1 / (n + 1)))
    return out


def _lcs(a: list[str], b: list[str]) -> int:
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            t[i + 1][j + 1] = t[i][j] + 1 if a[i] == b[j] else max(t[i][j + 1], t[i + 1][j])
    return t[-1][-1]


def _rouge_l(hyp: str, refs: list[str], beta: float = 1.2) -> float:
    h = hyp.split()
    p = max(_lcs(h, r.split()) / len(h) for r in refs)
    r = max(_lcs(h, r.split()) / len(r.split()) for r in refs)
    return 0.0 if p == 0 or r == 0 else (1 + beta ** 2) * p * r / (r + beta ** 2 * p)


PREDS = {"v1": "the cat sat on the mat", "v2": "a man is slicing a tomato in the kitchen",
         "v3": "two dogs play outside in a park"}
REFS = {"v1": ["the cat is on the mat", "there is a cat on the mat"],
        "v2": ["a man slices a tomato", "someone is cutting a tomato in a kitchen", "a chef cuts vegetables"],
        "v3": ["dogs are running in the park", "two dogs play outside"]}


@pytest.fixture(scope="module")
def fast_scores():
    """One scorer run without METEOR (no METEOR JVM)."""
    with cm.CaptionScorer(meteor=False) as s:
        return s.score(PREDS, REFS)


def test_bleu_one_hand_computed():
    # hyp 6 words, clipped matches the x2, cat, on, mat = 5; ref also 6 words so BP = 1
    out = cm.caption_metrics({"a": "the cat sat on the mat"}, {"a": ["the cat is on the mat"]}, meteor=False)
    assert out["BLEU-1"] == pytest.approx(5 / 6, abs=1e-6)
    assert "METEOR" not in out


def test_bleu_and_rouge_match_plain_loops(fast_scores):
    want = _corpus_bleu(PREDS, REFS)
    for n in range(4):
        assert fast_scores.corpus[f"BLEU-{n + 1}"] == pytest.approx(want[n], abs=1e-6)
    rouge = {k: _rouge_l(PREDS[k], REFS[k]) for k in PREDS}
    assert fast_scores.corpus["ROUGE-L"] == pytest.approx(np.mean(list(rouge.values())))
    for k in PREDS:
        assert fast_scores.per_video[k]["ROUGE-L"] == pytest.approx(rouge[k])
    assert set(fast_scores.corpus) == set(cm.METRICS) - {"METEOR"}


def test_identical_captions_score_perfectly():
    refs = {"a": ["a red ball rolls slowly"], "b": ["two green cubes spin fast"], "c": ["one old man reads books"]}
    out = cm.caption_metrics({k: v[0] for k, v in refs.items()}, refs, meteor=False)
    assert out["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert out["ROUGE-L"] == pytest.approx(1.0)
    # CIDEr-D: cosine 1 for each n-gram order, no length penalty, x10
    assert out["CIDEr"] == pytest.approx(10.0)
    wrong = cm.caption_metrics({"a": "two green cubes spin fast", "b": "a red ball rolls slowly",
                                "c": "one old man reads books"}, refs, meteor=False)
    assert wrong["CIDEr"] < out["CIDEr"] / 2 and wrong["BLEU-4"] < 1.0


def test_tokenizer_lowercases_and_drops_punctuation():
    out = cm.tokenize({"x": ["A Man, running!\nFast...", "   "], 3: ["Café crème"]})
    assert out == {"x": ["a man running fast", ""], 3: ["café crème"]}


def test_empty_prediction_still_scores():
    s = cm.caption_metrics({"a": "", "b": "a dog"}, {"a": ["a cat sleeps"], "b": ["a dog barks"]}, meteor=False)
    assert all(math.isfinite(v) for v in s.values())


@pytest.mark.parametrize("preds, refs, match", [
    ({"a": "x"}, {"a": ["x"], "b": ["y"]}, "no prediction"),
    ({"a": "x", "c": "z"}, {"a": ["x"]}, "no references"),
    ({"a": 3}, {"a": ["x"]}, "not a string"),
    ({"a": "x"}, {"a": "x"}, "list of strings"),
    ({"a": "x"}, {"a": ["", "  "]}, "no non-empty reference"),
    ({}, {}, "no references"),
])
def test_bad_inputs_raise(preds, refs, match):
    with pytest.raises(DataError, match=match):
        cm.caption_metrics(preds, refs, meteor=False)


def test_preflight_names_what_to_install(monkeypatch):
    monkeypatch.setattr(cm, "_checked", set())
    monkeypatch.setattr(cm.shutil, "which", lambda name: None)
    with pytest.raises(VidlangError, match="apt-get install default-jre-headless"):
        cm.preflight()


def test_preflight_catches_read_only_package(monkeypatch):
    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cm, "_checked", set())
    monkeypatch.setattr(cm.tempfile, "mkstemp", refuse)
    with pytest.raises(VidlangError, match="not writable"):
        cm.preflight(meteor=False)


def test_meteor_runs_once_for_several_calls():
    refs = {"a": ["a man is slicing a tomato"], "b": ["a dog runs in the park"]}
    with cm.CaptionScorer() as scorer:
        same = scorer.score({k: v[0] for k, v in refs.items()}, refs)
        jvm = scorer._meteor
        other = scorer.score({"a": "a dog runs in the park", "b": "a man is slicing a tomato"}, refs)
        assert scorer._meteor is jvm  # one JVM for both calls
    assert scorer._meteor is None
    assert same.corpus["METEOR"] > 0.95
    assert other.corpus["METEOR"] < 0.5
    assert set(same.corpus) == set(cm.METRICS)


def test_cider_d_matches_pycocoevalcap():
    from pycocoevalcap.cider.cider import Cider

    rng = np.random.default_rng(0)
    words = "a the man woman dog cat runs eats red ball in on park kitchen is cooking food".split()
    sent = lambda: " ".join(rng.choice(words, size=int(rng.integers(2, 9))))  # noqa: E731
    refs = [[sent() for _ in range(int(rng.integers(1, 5)))] for _ in range(7)]
    cands = [sent() for _ in range(5)] + [refs[2][0], "zebra", ""]
    cider = cm.CiderD(refs)
    got = cider.video_scores(cands)
    for i, c in enumerate(cands):
        score, each = Cider().compute_score(dict(enumerate(refs)), {v: [c] for v in range(len(refs))})
        np.testing.assert_allclose(got[i], each, atol=1e-10)
        assert got[i].mean() == pytest.approx(score, abs=1e-10)
    pair = cider.pair_scores(cands)
    assert pair.shape == (len(cands), sum(len(r) for r in refs))


def test_caption_diversity_counts_distinct_captions_and_the_top_share():
    preds = {"a": "a man is talking", "b": "A man is  talking", "c": "a dog runs", "d": "a man is talking"}
    got = cm.caption_diversity(preds)
    assert got == {"distinct_per_100": 50.0, "top_share": 0.75, "top_caption": "a man is talking"}
    assert cm.caption_diversity({"x": "one"})["top_share"] == 1.0
    with pytest.raises(DataError, match="no captions"):
        cm.caption_diversity({})
