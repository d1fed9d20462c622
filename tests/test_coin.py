"""COIN readers, per-frame labels and frame accuracy: small cases, a plain loop, real annotations."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from vidlang.data.coin import (
    CoinSegment,
    CoinVideo,
    check_taxonomy,
    frame_labels,
    read_coin,
    read_taxonomy,
)
from vidlang.errors import DataError
from vidlang.evaluation.segmentation import (
    frame_accuracy,
    per_video_accuracy,
    resample_labels,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COIN = SHARED / "coin"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data {path} not present")
    return path


def labels_loop(entry: dict, fps: float = 10.0) -> list[int]:
    """Plain reading of the protocol: frame i at i / fps seconds, in [start, end) of a step, else 0."""
    n = math.floor(entry["duration"] * fps + 1e-6)
    out = [0] * n
    for a in entry["annotation"]:
        s, e = a["segment"]
        for i in range(n):
            if s <= i / fps < e:
                out[i] = int(a["id"])
    return out


def accuracy_loop(preds, truths) -> float:
    ok = n = 0
    for p, t in zip(preds, truths):
        for a, b in zip(p, t):
            ok += a == b
            n += 1
    return ok / n


ENTRY = {"recipe_type": 7, "class": "Foo", "duration": 3.05, "start": 0.2, "end": 3.0, "subset": "testing",
         "annotation": [{"id": "12", "segment": [1.5, 2.0], "label": "b"},
                        {"id": "11", "segment": [0.2, 1.0], "label": "a"}]}


def test_frame_labels_small(tmp_path):
    v = read_coin_obj({"database": {"vid": ENTRY}}, tmp_path)["vid"]
    assert [s.step_id for s in v.segments] == [11, 12]  # sorted by start
    y = frame_labels(v)
    assert len(y) == 30 and y.tolist() == labels_loop(ENTRY)
    assert y[2] == 11 and y[9] == 11 and y[10] == 0 and y[15] == 12 and y[20] == 0 and y[1] == 0
    assert frame_labels(v, fps=2).tolist() == [0, 11, 0, 12, 0, 0]
    with pytest.raises(DataError, match="overlaps"):
        frame_labels(CoinVideo("o", 1, "x", (CoinSegment(1, 0, 2, ""), CoinSegment(2, 1, 3, "")), 4.0))


def read_coin_obj(obj, folder: Path) -> dict:
    p = folder / "c.json.gz"
    p.write_bytes(gzip.compress(json.dumps(obj).encode()))
    return read_coin(p)


def test_read_coin_formats_and_errors(tmp_path):
    official = read_coin_obj({"database": {"vid": ENTRY}}, tmp_path)
    pdpp = read_coin_obj([{"vid": ENTRY}], tmp_path)
    assert official == pdpp and official["vid"].task_id == 7 and official["vid"].subset == "testing"
    (tmp_path / "bad.json").write_text('[{"v": {"recipe_type": 1,\n "class": }}]')
    with pytest.raises(DataError, match=r"bad.json: invalid JSON at line 2"):
        read_coin(tmp_path / "bad.json")
    bad = json.loads(json.dumps(ENTRY))
    bad["annotation"][0]["segment"] = [2.5, 9.0]
    (tmp_path / "b.json").write_text(json.dumps([{"vidX": bad}]))
    with pytest.raises(DataError, match=r"b.json: video 'vidX' annotation 0: segment \[2.5, 9.0\]"):
        read_coin(tmp_path / "b.json")
    bad["annotation"][0] = {"id": "x1", "segment": [0, 1]}
    (tmp_path / "b.json").write_text(json.dumps({"database": {"vidY": bad}}))
    with pytest.raises(DataError, match=r"vidY.*step id 'x1'"):
        read_coin(tmp_path / "b.json")
    (tmp_path / "t.csv").write_text("Target Id,Target Label,Action Id,Action Label\n7,Foo,11,a\n7,Foo,zz,b\n")
    with pytest.raises(DataError, match=r"t.csv:3"):
        read_taxonomy(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text("Target Id,Target Label,Action Id,Action Label\n7,Foo,11,a\n7,Foo,12,c\n")
    with pytest.raises(DataError, match=r"step 12 .*'b'.*'c'"):
        check_taxonomy(official, read_taxonomy(tmp_path / "t.csv"))


def test_frame_accuracy_small_and_loop():
    t = [np.array([0, 0, 3, 3, 0]), np.array([5, 5, 0])]
    p = [np.array([0, 3, 3, 0, 0]), np.array([5, 0, 0])]
    assert frame_accuracy(p, t) == 5 / 8  # 3 of 5 + 2 of 3
    assert frame_accuracy(p, t, ignore=0) == 2 / 4
    assert per_video_accuracy(p, t).tolist() == [0.6, 2 / 3]
    rng = np.random.default_rng(0)
    t = [rng.integers(0, 4, int(rng.integers(1, 50))) for _ in range(20)]
    p = [np.where(rng.random(len(x)) < 0.6, x, rng.integers(0, 4, len(x))) for x in t]
    assert frame_accuracy(p, t) == pytest.approx(accuracy_loop(p, t))
    with pytest.raises(DataError, match="video 1"):
        frame_accuracy([t[0], t[1][:-1]], t[:2])
    with pytest.raises(DataError, match="one prediction per video"):
        frame_accuracy(p[:3], t)


def test_resample_labels_to_annotation_rate():
    # 1 label a second -> 10 fps: each second's label covers its 10 frames; past the end, the last label.
    assert resample_labels([0, 5, 7], 1.0, 10.0, 32).tolist() == [0] * 10 + [5] * 10 + [7] * 12
    assert resample_labels([1, 2, 3, 4, 5, 6], 4.0, 2.0, 3).tolist() == [1, 3, 5]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 9, 37)
    loop = [x[min(int(i / 10.0 * 3.0 + 1e-9), 36)] for i in range(130)]
    assert resample_labels(x, 3.0, 10.0, 130).tolist() == loop
    with pytest.raises(DataError, match="non-empty"):
        resample_labels([], 1.0, 10.0, 5)


# ----------------------------------------------------------------------------- real files
def test_real_coin_and_taxonomy():
    train = read_coin(need(COIN / "coin_train_70.json.gz"))
    test = read_coin(COIN / "coin_test_30.json.gz")
    assert len(train) == 7064 and len(test) == 3006 and not set(train) & set(test)
    assert sum(len(v.segments) for v in train.values()) == 27826
    assert sum(len(v.segments) for v in test.values()) == 11583
    assert {v.subset for v in train.values()} == {"training"} and {v.subset for v in test.values()} == {"testing"}
    assert len({v.task_id for v in (train | test).values()}) == 178
    tax = read_taxonomy(COIN / "taxonomy_task_step.csv")
    assert len(tax) == 778 and min(tax) == 1 and max(tax) == 778
    check_taxonomy(train, tax)
    check_taxonomy(test, tax)
    assert len({s.step_id for v in (train | test).values() for s in v.segments}) == 768


def test_real_one_video_by_hand():
    """NLy71UrHElw: 26.795 s -> 267 frames; steps 373/374/375 at [21, 22), [23, 24), [25, 26) s."""
    v = read_coin(need(COIN / "coin_train_70.json.gz"))["NLy71UrHElw"]
    y = frame_labels(v)
    assert len(y) == 267 and (y[210:220] == 373).all() and (y[230:240] == 374).all() and (y[250:260] == 375).all()
    assert (y != 0).sum() == 30
    shifted = np.concatenate([np.zeros(10, np.int64), y[:-10]])  # 1 s late: no step frame right, 57 frames busy
    assert frame_accuracy([y], [y]) == 1.0
    assert frame_accuracy([np.zeros_like(y)], [y]) == 237 / 267
    assert frame_accuracy([shifted], [y]) == 210 / 267
    assert frame_accuracy([shifted], [y], ignore=0) == 0.0


def test_real_test_split_oracle_shifted_background():
    path = need(COIN / "coin_test_30.json.gz")
    videos = read_coin(path)
    raw = {k: e for d in json.loads(gzip.decompress(path.read_bytes())) for k, e in d.items()}
    truths = [frame_labels(v) for v in videos.values()]
    assert all(y.tolist() == labels_loop(raw[k]) for k, y in zip(list(videos)[:300], truths))
    assert sum(map(len, truths)) == 4263319
    assert frame_accuracy(truths, truths) == 1.0
    background = [np.zeros_like(y) for y in truths]
    assert frame_accuracy(background, truths) == 2503029 / 4263319  # 0.5871: the all-background baseline
    shifted = [np.concatenate([np.zeros(10, np.int64), y[:-10]]) if len(y) > 10 else np.zeros_like(y) for y in truths]
    assert frame_accuracy(shifted, truths) == pytest.approx(accuracy_loop(shifted, truths))
    assert frame_accuracy(shifted, truths) == pytest.approx(SHIFTED_1S, abs=1e-4)


SHIFTED_1S = 0.94680  # a 1 s lag costs ~5% of frames
