"""YouCook2 retrieval csv / splits / recipe names, gzipped annotation json, HowTo100M per-video ASR csv."""
from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from vidlang.data.annotations import read_youcook2
from vidlang.data.howto100m import read_howto100m_csv
from vidlang.data.narration import Utterance
from vidlang.data.youcook2 import (
    read_durations,
    read_recipe_names,
    read_split_list,
    read_youcook2_retrieval,
)
from vidlang.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
YC, HT = SHARED / "youcook2", SHARED / "howto100m-asr-100"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data {path} not present")
    return path


def test_small_files_and_errors(tmp_path):
    (tmp_path / "r.csv").write_text("end,start,task,text,video_id\n60,47,226,pick the ends,xH\n5,9,226,oops,xH\n")
    with pytest.raises(DataError, match=r"r.csv:3: bad row"):
        read_youcook2_retrieval(tmp_path / "r.csv")
    (tmp_path / "r.csv").write_text("end,start,task,text,video_id\n60,47,226,\"pick, the ends\",-xH\n")
    (clip, task), = read_youcook2_retrieval(tmp_path / "r.csv")
    assert (clip.video_id, clip.caption, clip.start, clip.end, task) == ("-xH", "pick, the ends", 47.0, 60.0, "226")
    (tmp_path / "l.txt").write_text("405/sdB8\n405-fn9\n")
    with pytest.raises(DataError, match=r"l.txt:2"):
        read_split_list(tmp_path / "l.txt")
    (tmp_path / "a.csv").write_text("start,end,text\n0.4,3.9,check pic\n3.9,x,bowl\n")
    with pytest.raises(DataError, match=r"a.csv:3"):
        read_howto100m_csv(tmp_path / "a.csv")
    (tmp_path / "a.csv").write_text("start,end,text\n3.9,5,bowl\n0.4,3.9,check pic\n1,2,\n")
    counter = Counter()
    assert read_howto100m_csv(tmp_path / "a.csv", counter) == {
        "a": [Utterance(0.4, 3.9, "check pic"), Utterance(3.9, 5.0, "bowl")]}
    assert counter == {"empty_utterance": 1}


def test_real_youcook2():
    val = read_youcook2(need(YC / "youcookii_annotations_trainval.json.gz"), split="val")
    train = read_youcook2(YC / "youcookii_annotations_trainval.json.gz", split="train")
    assert len(train) == 10337 and len(val) == 3492
    rows = read_youcook2_retrieval(YC / "validation_youcook.csv")
    assert len(rows) == 3350 and len({c.video_id for c, _ in rows}) == 436
    official = {(c.video_id, c.start, c.end, c.caption) for c in val}
    assert all((c.video_id, c.start, c.end, c.caption) in official for c, _ in rows)
    lists = {sp: read_split_list(YC / "splits" / f"{sp}_list.txt") for sp in ("train", "val", "test")}
    assert {sp: len(v) for sp, v in lists.items()} == {"train": 1333, "val": 457, "test": 210}
    recipe_of = {v: r for r, v in lists["val"]}
    assert all(recipe_of[c.video_id] == task for c, task in rows)
    names = read_recipe_names(YC / "label_foodtype.csv")
    assert len(names) == 110 and names["101"] == "BLT"
    assert len({r for sp in ("train", "val") for r, _ in lists[sp]}) == 89 and all(r in names for r, _ in lists["train"])
    dur = read_durations(YC / "splits" / "val_duration_totalframe.csv")
    assert len(dur) == 457 and dur["TMpt-41UTOk"] == (563.02, 16889)
    assert sum(v.startswith("-") for _, v in lists["train"] + lists["val"]) == 23


def test_real_howto100m_csv():
    streams = read_howto100m_csv(need(HT / "small_train_captions"))
    assert len(streams) == 100 and sum(map(len, streams.values())) == 11173
    assert sum(len(u.text.split()) for s in streams.values() for u in s) == 46794
    assert sum(b.start < a.end for s in streams.values() for a, b in itertools.pairwise(s)) == 3039
    assert streams["-tCQ4tCQdWE"][0] == Utterance(0.41, 3.91, "check pic tonight pick")
