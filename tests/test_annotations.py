"""Annotation readers on small fixtures, bad-input handling, and the real shared files."""
from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from vidlang.data.annotations import read_activitynet, read_annotations, read_jsonl, read_msrvtt, read_youcook2
from vidlang.data.idlists import filter_clips, read_id_list
from vidlang.data.records import Clip
from vidlang.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

MSRVTT = {
    "info": {"year": 2016},
    "videos": [{"video_id": "video0", "split": "train", "category": 9},
               {"video_id": "video1", "split": "validate", "category": 3},
               {"video_id": "video2", "split": "test", "category": 1}],
    "sentences": [{"video_id": "video1", "caption": " a dog runs ", "sen_id": 0},
                  {"video_id": "video0", "caption": "a man drives", "sen_id": 1},
                  {"video_id": "video0", "caption": "a car on a road", "sen_id": 2},
                  {"video_id": "video2", "caption": "people sing", "sen_id": 3}],
}
DEV = {"video5": {"split": "train", "captions": ["one", "two"]},
       "video6": {"split": "train", "captions": ["three"]}}
YOUCOOK = {"database": {
    "vidA": {"subset": "training", "duration": 60.0,
             "annotations": [{"segment": [1, 5], "sentence": "crack the eggs"},
                             {"segment": [6, 12.5], "sentence": "whisk them"}]},
    "vidB": {"subset": "validation", "duration": 30.0,
             "annotations": [{"segment": [0, 3], "sentence": "slice bread"}]},
}}
ANET = {"v_a": {"duration": 20.0, "timestamps": [[0, 5.5], [4, 20]],
                "sentences": ["A man walks in.", " He sits down. "]},
        "v_b": {"duration": 9.0, "timestamps": [[1, 2]], "sentences": ["Rain falls."]}}


def dump(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


# ----------------------------------------------------------------------------- MSR-VTT
def test_msrvtt_official(tmp_path):
    clips = read_msrvtt(dump(tmp_path / "train_val_videodatainfo.json", MSRVTT))
    assert clips[0] == Clip("video1", "a dog runs", split="validate")  # stripped, file order
    assert [c.video_id for c in clips] == ["video1", "video0", "video0", "video2"]
    train = read_msrvtt(tmp_path / "train_val_videodatainfo.json", split="train")
    assert [c.caption for c in train] == ["a man drives", "a car on a road"]
    assert all(c.split == "train" and c.start is None for c in train)


def test_msrvtt_zip(tmp_path):
    zpath = tmp_path / "train_val_annotation.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("train_val_videodatainfo.json", json.dumps(MSRVTT))
        z.writestr("readme.txt", "hello")
    assert len(read_msrvtt(zpath, split="test")) == 1
    assert read_annotations(zpath) == read_msrvtt(dump(tmp_path / "x.json", MSRVTT))


def test_msrvtt_dev_format_and_folder(tmp_path):
    dump(tmp_path / "annotations.json", DEV)
    clips = read_msrvtt(tmp_path / "annotations.json")
    assert [(c.video_id, c.caption) for c in clips] == [("video5", "one"), ("video5", "two"), ("video6", "three")]
    assert read_msrvtt(tmp_path) == clips  # the folder holding annotations.json
    assert read_msrvtt(tmp_path, split="validate") == []


def test_msrvtt_unknown_split(tmp_path):
    with pytest.raises(ConfigError, match="'val'"):
        read_msrvtt(dump(tmp_path / "a.json", MSRVTT), split="val")


def test_msrvtt_caption_of_unknown_video(tmp_path):
    bad = {**MSRVTT, "sentences": MSRVTT["sentences"] + [{"video_id": "video9", "caption": "x"}]}
    with pytest.raises(DataError, match="video9"):
        read_msrvtt(dump(tmp_path / "a.json", bad))
    counter = Counter()
    assert len(read_msrvtt(tmp_path / "a.json", skip_bad=True, counter=counter)) == 4
    assert counter == {"unknown_video": 1}


def test_msrvtt_wrong_schema(tmp_path):
    with pytest.raises(DataError, match="neither"):
        read_msrvtt(dump(tmp_path / "a.json", [1, 2]))


def test_bad_json_names_file(tmp_path):
    (tmp_path / "broken.json").write_text('{"videos": [')
    with pytest.raises(DataError, match="broken.json"):
        read_msrvtt(tmp_path / "broken.json")
    with pytest.raises(DataError, match="does not exist"):
        read_msrvtt(tmp_path / "absent.json")


# ----------------------------------------------------------------------------- bad captions
def test_empty_caption_raises_or_is_counted(tmp_path):
    path = dump(tmp_path / "dev.json", {"vidX": {"split": "train", "captions": ["ok", "   "]}})
    with pytest.raises(DataError, match=r"dev\.json.*vidX.*empty") as e:
        read_msrvtt(path)
    assert "data.skip_bad=true" in str(e.value)
    counter = Counter()
    assert read_msrvtt(path, skip_bad=True, counter=counter) == [Clip("vidX", "ok", split="train")]
    assert counter["empty_caption"] == 1


def test_invalid_utf8_caption_names_file_and_video(tmp_path):
    text = json.dumps({"vidU": {"split": "train", "captions": ["fine", "caf@"]},
                       "vidV": {"split": "train", "captions": ["also fine"]}})
    path = tmp_path / "latin1.json"
    path.write_bytes(text.encode().replace(b"@", b"\xe9"))  # a latin-1 byte, not UTF-8
    with pytest.raises(DataError, match=r"latin1\.json.*vidU.*UTF-8"):
        read_msrvtt(path)
    counter = Counter()
    clips = read_msrvtt(path, skip_bad=True, counter=counter)
    assert [c.caption for c in clips] == ["fine", "also fine"] and counter == {"bad_utf8": 1}


def test_utf8_text_and_bom_are_fine(tmp_path):
    path = tmp_path / "u.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"v": {"captions": ["caf\u00e9 \u2603"]}},
                                                   ensure_ascii=False).encode())
    assert read_msrvtt(path)[0].caption == "caf\u00e9 \u2603"


def test_non_string_caption(tmp_path):
    with pytest.raises(DataError, match="'v'.*int"):
        read_msrvtt(dump(tmp_path / "a.json", {"v": {"captions": [3]}}))


# ----------------------------------------------------------------------------- id lists
def test_id_list_plain(tmp_path):
    path = tmp_path / "test_1k.txt"
    path.write_text("# MSR-VTT 1k-A\nvideo7010\n\n  video7011  \nvideo7010\n")
    assert read_id_list(path) == ["video7010", "video7011"]


def test_id_list_csv(tmp_path):
    path = tmp_path / "MSRVTT_JSFUSION_test.csv"
    path.write_text("key,vid_key,video_id,sentence\n"
                    "ret0,msr9770,video9770,a person is connecting something to system\n"
                    "ret1,msr7606,video7606,\"a little girl, does gymnastics\"\n")
    assert read_id_list(path) == ["video9770", "video7606"]


def test_id_list_csv_without_column(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("key,sentence\nk,hello\n")
    with pytest.raises(DataError, match=r"x\.csv.*video_id"):
        read_id_list(path)


def test_id_list_empty(tmp_path):
    (tmp_path / "e.txt").write_text("# only a comment\n\n")
    with pytest.raises(DataError, match=r"e\.txt.*empty"):
        read_id_list(tmp_path / "e.txt")


def test_filter_clips_keeps_order():
    clips = [Clip("b", "1"), Clip("a", "2"), Clip("c", "3"), Clip("b", "4")]
    assert [c.caption for c in filter_clips(clips, ["b", "c"])] == ["1", "3", "4"]
    assert filter_clips(clips, []) == []


# ----------------------------------------------------------------------------- YouCook2
def test_youcook2(tmp_path):
    path = dump(tmp_path / "youcookii_annotations_trainval.json", YOUCOOK)
    clips = read_youcook2(path)
    assert clips == [Clip("vidA", "crack the eggs", 1.0, 5.0, "training"),
                     Clip("vidA", "whisk them", 6.0, 12.5, "training"),
                     Clip("vidB", "slice bread", 0.0, 3.0, "validation")]
    assert [c.video_id for c in read_youcook2(path, split="validation")] == ["vidB"]
    assert read_youcook2(path, split="val") == read_youcook2(path, split="validation")
    assert read_annotations(path, split="training") == clips[:2]
    with pytest.raises(ConfigError):
        read_youcook2(path, split="dev")


def test_youcook2_bad_segment(tmp_path):
    bad = {"database": {"vidC": {"subset": "training", "annotations": [
        {"segment": [9, 2], "sentence": "backwards"}, {"segment": [1], "sentence": "short"},
        {"segment": [0, 1], "sentence": "good"}]}}}
    path = dump(tmp_path / "yc.json", bad)
    with pytest.raises(DataError, match=r"yc\.json.*vidC.*start 9.0 is after end 2.0"):
        read_youcook2(path)
    counter = Counter()
    assert read_youcook2(path, skip_bad=True, counter=counter) == [Clip("vidC", "good", 0.0, 1.0, "training")]
    assert counter == {"bad_segment": 2}


# ----------------------------------------------------------------------------- ActivityNet
def test_activitynet_paragraph_and_sentences(tmp_path):
    path = dump(tmp_path / "train.json", ANET)
    paras = read_activitynet(path)
    assert paras == [Clip("v_a", "A man walks in. He sits down."), Clip("v_b", "Rain falls.")]
    sents = read_activitynet(path, paragraph=False)
    assert sents == [Clip("v_a", "A man walks in.", 0.0, 5.5), Clip("v_a", "He sits down.", 4.0, 20.0),
                     Clip("v_b", "Rain falls.", 1.0, 2.0)]
    assert read_annotations(path) == paras
    assert read_annotations(path, paragraph=False) == sents


def test_activitynet_length_mismatch(tmp_path):
    path = dump(tmp_path / "a.json", {"v_x": {"duration": 3, "timestamps": [[0, 1]], "sentences": ["a", "b"]}})
    with pytest.raises(DataError, match=r"'v_x'.*2 sentences but 1 timestamps"):
        read_activitynet(path)


def test_activitynet_empty_sentence_in_paragraph(tmp_path):
    path = dump(tmp_path / "a.json", {"v_x": {"timestamps": [[0, 1], [1, 2]], "sentences": ["Hi.", " "]}})
    with pytest.raises(DataError, match="'v_x'.*empty"):
        read_activitynet(path)
    counter = Counter()
    assert read_activitynet(path, skip_bad=True, counter=counter) == [Clip("v_x", "Hi.")]
    assert counter == {"empty_caption": 1}


# ----------------------------------------------------------------------------- JSON lines
def test_jsonl(tmp_path):
    path = tmp_path / "clips.jsonl"
    path.write_text('{"video_id": "a", "caption": "x", "start": 1, "end": 2.5, "split": "train"}\n\n'
                    '{"video_id": "b", "caption": " y "}\n')
    expected = [Clip("a", "x", 1.0, 2.5, "train"), Clip("b", "y")]
    assert read_jsonl(path) == expected
    assert read_annotations(path) == expected


@pytest.mark.parametrize("line", ['{"video_id": "a", "caption": ', '[1, 2]', '{"caption": "no id"}'])
def test_jsonl_bad_line_names_file_and_line(tmp_path, line):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"video_id": "a", "caption": "x"}\n' + line + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl.*line 2"):
        read_jsonl(path)
    counter = Counter()
    assert read_jsonl(path, skip_bad=True, counter=counter) == [Clip("a", "x")]
    assert counter == {"bad_line": 1}


def test_jsonl_bad_times(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"video_id": "a", "caption": "x", "start": "soon", "end": 2}\n')
    with pytest.raises(DataError, match="'a'.*start"):
        read_jsonl(path)


# ----------------------------------------------------------------------------- dispatch
def test_read_annotations_dispatch_errors(tmp_path):
    (tmp_path / "ids.txt").write_text("video1\n")
    with pytest.raises(DataError, match="read_id_list"):
        read_annotations(tmp_path / "ids.txt")
    with pytest.raises(DataError, match="cannot tell"):
        read_annotations(dump(tmp_path / "odd.json", {"a": 1}))
    with pytest.raises(ConfigError, match="paragraph"):
        read_annotations(dump(tmp_path / "m.json", MSRVTT), paragraph=True)
    assert read_annotations(tmp_path / "m.json", paragraph=False) == read_annotations(tmp_path / "m.json")  # a no-op
    assert len(read_annotations(tmp_path / "m.json", split="train")) == 2
    assert read_annotations(dump(tmp_path / "d.json", DEV)) == read_msrvtt(tmp_path / "d.json")


# ----------------------------------------------------------------------------- real shared files
def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data {path.name} not present")
    return path


def test_real_msrvtt_dev_annotations():
    clips = read_annotations(need(SHARED / "msrvtt-ae128-dev" / "annotations.json"))
    assert len(clips) == 16000 and len({c.video_id for c in clips}) == 800
    assert Counter(c.video_id for c in clips)["video676"] == 20


def test_real_msrvtt_zips():
    root = SHARED / "msrvtt-annotations"
    val = read_msrvtt(need(root / "train_val_annotation.zip"), split="validate")
    assert len(val) == 497 * 20 and {c.split for c in val} == {"validate"}
    ids = {c.video_id for c in val}
    assert "video6513" in ids and "video7009" in ids and "video6512" not in ids
    test = read_msrvtt(need(root / "test_videodatainfo.json.zip"))
    assert len(test) == 2990 * 20 and {c.split for c in test} == {"test"}


def test_real_activitynet():
    path = need(SHARED / "activitynet-captions" / "train.json")
    paras = read_activitynet(path)
    assert len(paras) == 10009 and paras[0].video_id == "v_QOlSCBRmfWY"
    assert paras[0].caption.startswith("A young woman") and "  " not in paras[0].caption
    # Two official segments run backwards (start > end): an error unless skipped.
    with pytest.raises(DataError, match="v_0bosp4-pyTM|v_rhOtqArO-3Y"):
        read_activitynet(path, paragraph=False)
    counter = Counter()
    sents = read_activitynet(path, paragraph=False, skip_bad=True, counter=counter)
    assert len(sents) == 37421 - 2 and counter == {"bad_segment": 2}
    assert all(c.start is not None and c.start <= c.end for c in sents)
