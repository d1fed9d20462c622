"""VideoQA readers, answer vocabulary, QA accuracy (the 0.3984 reproduction) and top-k accuracy."""
from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vidlang.data.qa import (
    QAPair,
    answer_indices,
    build_answer_vocab,
    read_activitynet_qa,
    read_answer_list,
    read_msvd_mapping,
    read_msvd_qa,
)
from vidlang.errors import DataError
from vidlang.evaluation.classification import topk_accuracy
from vidlang.evaluation.qa import answers_from_logits, qa_accuracy

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ANET, MSVD = SHARED / "activitynet-qa", SHARED / "msvd-qa"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data {path} not present")
    return path


def dump(path: Path, obj) -> Path:
    data = json.dumps(obj).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def qa_loop(preds: list[dict], answers: list[dict]) -> tuple[int, dict]:
    """The official eval.py logic, re-read: exact match, counted per type over all answers."""
    gt = {a["question_id"]: a for a in answers}
    correct = {}
    for p in preds:
        if p["answer"] == gt[p["question_id"]]["answer"]:
            t = gt[p["question_id"]]["type"]
            correct[t] = correct.get(t, 0) + 1
    return sum(correct.values()), correct


def topk_loop(scores, labels, k):
    hits = 0
    for row, y in zip(scores, labels):
        better = sum(1 for c, v in enumerate(row) if c != y and v >= row[y])
        hits += better < k
    return hits / len(labels)


# ----------------------------------------------------------------------------- small cases
Q = [{"video_name": "a", "question": "is it red", "question_id": "v_a_0"},
     {"video_name": "a", "question": "what moves", "question_id": "v_a_1"},
     {"video_name": "b", "question": "how many", "question_id": "v_b_0"}]
A = [{"answer": "yes", "type": 3, "question_id": "v_a_0"}, {"answer": "dog", "type": 0, "question_id": "v_a_1"},
     {"answer": "2", "type": 7, "question_id": "v_b_0"}]


def test_activitynet_qa_small(tmp_path):
    qa = read_activitynet_qa(dump(tmp_path / "q.json.gz", Q), dump(tmp_path / "a.json", A))
    assert qa[1] == QAPair("v_a_1", "a", "what moves", "dog", 0)
    s = qa_accuracy({"v_a_0": "yes", "v_a_1": "Dog"}, qa)  # case matters; v_b_0 missing -> wrong
    assert (s.correct, s.total) == (1, 3) and s.overall == pytest.approx(1 / 3)
    assert s.per_type == {3: 1.0, 0: 0.0, 7: 0.0} and s.free == 0.5
    with pytest.raises(DataError, match="not in the ground truth"):
        qa_accuracy({"v_zz": "yes"}, qa)
    with pytest.raises(DataError, match="predicted twice"):
        qa_accuracy([{"question_id": "v_a_0", "answer": "yes"}] * 2, qa)
    dump(tmp_path / "a2.json", A[:2])
    with pytest.raises(DataError, match=r"q.json.gz: record 2: question 'v_b_0' has no answer"):
        read_activitynet_qa(tmp_path / "q.json.gz", tmp_path / "a2.json")
    dump(tmp_path / "a3.json", A[:2] + [{"answer": "2", "type": 9, "question_id": "v_b_0"}])
    with pytest.raises(DataError, match=r"a3.json: record 2: type 9"):
        read_activitynet_qa(tmp_path / "q.json.gz", tmp_path / "a3.json")
    dump(tmp_path / "a4.json", A[:2] + [{"answer": 2, "type": 7, "question_id": "v_b_0"}])
    with pytest.raises(DataError, match=r"a4.json: record 2: 'answer' must be a string"):
        read_activitynet_qa(tmp_path / "q.json.gz", tmp_path / "a4.json")


def test_msvd_small_and_vocab(tmp_path):
    recs = [{"answer": "man", "id": 0, "question": "Who runs?", "video_id": 2},
            {"answer": "dog", "id": 1, "question": "what barks?", "video_id": 1}]
    (tmp_path / "map.txt").write_text("x_1_2 vid1\ny_3_4 vid2")
    qa = read_msvd_qa(dump(tmp_path / "t.json", recs), read_msvd_mapping(tmp_path / "map.txt"))
    assert [(q.video_id, q.qtype) for q in qa] == [("y_3_4", "who"), ("x_1_2", "what")]
    assert read_msvd_qa(tmp_path / "t.json")[0].video_id == "vid2"
    (tmp_path / "map.txt").write_text("x_1_2 vid1\ny_3_4 v2\n")
    with pytest.raises(DataError, match=r"map.txt:2"):
        read_msvd_mapping(tmp_path / "map.txt")
    dump(tmp_path / "bad.json", recs + [{"answer": "x", "id": 2, "question": "why", "video_id": "3"}])
    with pytest.raises(DataError, match=r"bad.json: record 2: video_id '3'"):
        read_msvd_qa(tmp_path / "bad.json")
    assert build_answer_vocab(["b", "a", "c", "a", "b", "d"], 3) == ["a", "b", "c"]  # ties alphabetical
    assert answer_indices(["c", "zz", "a"], ["a", "b", "c"]).tolist() == [2, -1, 0]
    logits = np.array([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0]])
    assert answers_from_logits(logits, ["a", "b", "c"]) == ["b", "a"]


def test_topk_small_and_loop():
    s = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.3], [0.9, 0.05, 0.05]])
    assert topk_accuracy(s, [2, 0, 0], ks=(1, 2)) == {1: 1 / 3, 2: 2 / 3}  # the constant row never counts
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, (200, 12)).astype(float)
    y = rng.integers(0, 12, 200)
    got = topk_accuracy(s, y)
    assert got[1] == pytest.approx(topk_loop(s, y, 1)) and got[5] == pytest.approx(topk_loop(s, y, 5))
    with pytest.raises(DataError, match="labels"):
        topk_accuracy(s, y + 12)
    with pytest.raises(DataError, match="NaN"):
        topk_accuracy(np.full((1, 2), np.nan), [0])


# ----------------------------------------------------------------------------- real files
def test_real_activitynet_qa_official_example():
    qa = read_activitynet_qa(need(ANET / "val_q.json.gz"), ANET / "val_a.json.gz")
    preds = json.loads(gzip.decompress((ANET / "pred_val_example.json.gz").read_bytes()))
    s = qa_accuracy(preds, qa)
    assert (s.correct, s.total) == (7172, 18000) and round(s.overall, 4) == 0.3984
    expect = {0: 0.1878, 1: 0.2233, 2: 0.0350, 3: 0.7634, 4: 0.3367, 5: 0.2216, 6: 0.2875, 7: 0.6403, 8: 0.3580}
    assert {t: round(a, 4) for t, a in s.per_type.items()} == expect
    assert round(s.free, 4) == 0.5055 and round(s.free_as_printed, 4) == 0.7583
    answers = json.loads(gzip.decompress((ANET / "val_a.json.gz").read_bytes()))
    total, per = qa_loop(preds, answers)
    assert total == s.correct and all(per.get(t, 0) == s.counts[t][0] for t in range(9))


def test_real_activitynet_qa_splits_and_vocab():
    splits = {sp: read_activitynet_qa(need(ANET / f"{sp}_q.json.gz"), ANET / f"{sp}_a.json.gz")
              for sp in ("train", "val", "test")}
    assert {sp: len(v) for sp, v in splits.items()} == {"train": 32000, "val": 18000, "test": 8000}
    assert Counter(q.qtype for q in splits["test"]) == dict(enumerate([800, 800, 800, 2094, 697, 318, 386, 606, 1499]))
    vids = {sp: {q.video_id for q in v} for sp, v in splits.items()}
    assert not (vids["train"] & vids["val"]) and not (vids["val"] & vids["test"])
    vocab = build_answer_vocab((q.answer for q in splits["train"]), 1000)
    assert vocab[:4] == ["yes", "no", "1", "male"]
    val = splits["val"]
    idx = answer_indices([q.answer for q in val], vocab)
    in_vocab = float((idx >= 0).mean())
    # An oracle classifier over the K answers: right exactly when the answer is in the vocabulary.
    oracle = {q.question_id: (q.answer if i >= 0 else "<unk>") for q, i in zip(val, idx)}
    assert in_vocab == 14788 / 18000  # 0.8216: the ceiling of a 1000-way classifier on val
    assert qa_accuracy(oracle, val).overall == in_vocab


def test_real_msvd_qa():
    mapping = read_msvd_mapping(need(MSVD / "youtube_mapping.txt"))
    assert len(mapping) == 1970 and mapping[1] == "-4wsuPCjDBc_5_15"
    splits = {sp: read_msvd_qa(MSVD / f"{sp}_qa.json.gz", mapping) for sp in ("train", "val", "test")}
    assert {sp: len(v) for sp, v in splits.items()} == {"train": 30933, "val": 6415, "test": 13157}
    assert sum(q.video_id == "klteYv1Uv9A_27_33" for q in splits["test"]) == 23
    first = Counter(q.qtype for sp in splits.values() for q in sp)
    assert first == {"what": 31629, "who": 17199, "how": 1291, "when": 270, "where": 116}
    answer_set = read_answer_list(MSVD / "answer_set.txt")
    assert len(answer_set) == 1000
    test = splits["test"]
    in_set = answer_indices([q.answer for q in test], answer_set) >= 0
    assert int(in_set.sum()) == 11949  # README: 90.8% of test answers are in HME's 1,000
    # Our top-1000 equals HME's list except for the order among answers seen twice (the cut falls in that tie).
    counts = Counter(q.answer for q in splits["train"])
    ours = build_answer_vocab((q.answer for q in splits["train"]), 1000)
    assert {a for a in ours if counts[a] > 2} == {a for a in answer_set if counts[a] > 2}
    assert counts[ours[-1]] == 2 and min(counts[a] for a in answer_set) == 2
    s = qa_accuracy({q.question_id: q.answer if ok else "" for q, ok in zip(test, in_set)}, test)
    assert s.correct == 11949 and s.free is None and set(s.per_type) == set(first)
