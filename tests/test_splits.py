"""Split id lists must belong to the annotations they are applied to; evaluation protocols
(MSR-VTT 1k-A as published vs all captions, paragraph vs clip) and the recipes' data pairings."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from vidlang.config import DataConfig, load_config
from vidlang.data.annotations import read_annotation_files, read_annotations
from vidlang.data.idlists import filter_clips, read_id_list, read_id_sentences
from vidlang.data.records import Clip
from vidlang.data.sources import apply_protocol, open_source, resolve_protocol
from vidlang.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def official(videos: dict[str, str], per_video: int = 3) -> dict:
    """An official-schema MSR-VTT json: ``videos`` is {video_id: split}; captions "<id> cap <k>"."""
    sentences = [{"video_id": v, "caption": f"{v} cap {k}", "sen_id": n * per_video + k}
                 for n, v in enumerate(videos) for k in range(per_video)]
    return {"videos": [{"video_id": v, "split": s} for v, s in videos.items()], "sentences": sentences}


def store(root: Path, ids: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "features.npy", np.zeros((len(ids), 2, 4), np.float32))
    (root / "video_ids.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture
def msrvtt(tmp_path):
    """A miniature MSR-VTT: train_val holds video0-5, test holds video6-9; features for all ten."""
    train_val = tmp_path / "train_val_videodatainfo.json"
    train_val.write_text(json.dumps(official({f"video{i}": "train" if i < 4 else "validate" for i in range(6)})))
    test = tmp_path / "test_videodatainfo.json"
    test.write_text(json.dumps(official({f"video{i}": "test" for i in range(6, 10)})))
    (tmp_path / "test_1kA.txt").write_text("video6\nvideo7\nvideo8\n")
    (tmp_path / "train_9k.txt").write_text("\n".join(f"video{i}" for i in (0, 1, 2, 3, 4, 5, 9)) + "\n")
    return {"train_val": train_val, "test": test, "features": store(tmp_path / "features", [f"video{i}" for i in range(10)]),
            "test_1kA": tmp_path / "test_1kA.txt", "train_9k": tmp_path / "train_9k.txt"}


# ----------------------------------------------------------------------------- split / annotation pairing
def test_test_ids_against_train_val_only_is_an_error_naming_the_file_and_counts(msrvtt):
    """The old msrvtt.yaml: 1k-A test ids with train_val annotations matched nothing and validation
    was silently switched off."""
    source = open_source(DataConfig(features=str(msrvtt["features"]), annotations=str(msrvtt["train_val"])))
    with pytest.raises(ConfigError, match=r"test_1kA\.txt: 3 video ids listed, 0 annotated, 0 annotated and in"):
        source.split(str(msrvtt["test_1kA"]))


def test_both_annotation_files_give_the_full_splits(msrvtt):
    both = f"{msrvtt['train_val']},{msrvtt['test']}"
    source = open_source(DataConfig(features=str(msrvtt["features"]), annotations=both))
    test = source.split(str(msrvtt["test_1kA"]))
    train = source.split(str(msrvtt["train_9k"]))
    assert {c.video_id for c in test} == {"video6", "video7", "video8"} and len(test) == 9
    assert len({c.video_id for c in train}) == 7  # video9 comes from the test file
    assert source.split_counts[str(msrvtt["train_9k"])] == {"listed": 7, "annotated": 7, "matched": 7}
    assert source.manifest()["split_counts"][str(msrvtt["test_1kA"])]["matched"] == 3


def test_a_partial_match_warns_and_is_counted_and_below_half_is_an_error(msrvtt, tmp_path):
    source = open_source(DataConfig(features=str(msrvtt["features"]), annotations=str(msrvtt["train_val"])))
    with pytest.warns(UserWarning, match="1 of 7 listed videos lack annotations"):
        train = source.split(str(msrvtt["train_9k"]))  # 6 of 7: the 9k list shrinks, but not silently
    assert len({c.video_id for c in train}) == 6
    assert source.split_counts[str(msrvtt["train_9k"])] == {"listed": 7, "annotated": 6, "matched": 6}
    few = tmp_path / "few.txt"
    few.write_text("video0\nvideo6\nvideo7\n")  # 1 of 3 < 50%
    with pytest.raises(ConfigError, match=r"few\.txt: 3 video ids listed, 1 annotated, 1 annotated.*50%"):
        source.split(str(few))
    half = tmp_path / "half.txt"
    half.write_text("video0\nvideo6\n")  # exactly 50% passes
    with pytest.warns(UserWarning):
        assert len(source.split(str(half))) == 3


def test_annotated_but_missing_features_counts_as_unmatched(msrvtt, tmp_path):
    both = f"{msrvtt['train_val']},{msrvtt['test']}"
    features = store(tmp_path / "few_features", ["video0", "video6"])
    source = open_source(DataConfig(features=str(features), annotations=both))
    with pytest.raises(ConfigError, match=r"3 video ids listed, 3 annotated, 1 annotated and in the feature store"):
        source.split(str(msrvtt["test_1kA"]))
    with pytest.raises(ConfigError, match=r"split validate: 2 video ids listed, 2 annotated, 0"):
        source.split("validate")  # a split name of the annotations is checked against the store too


def test_filter_clips_refuses_an_id_list_of_other_annotations():
    clips = [Clip("a", "1"), Clip("b", "2"), Clip("c", "3")]
    with pytest.raises(ConfigError, match=r"split lists/x\.txt: only 1 of its 3 listed video ids"):
        filter_clips(clips, ["a", "y", "z"], "lists/x.txt")
    assert [c.caption for c in filter_clips(clips, ["a", "b", "z"])] == ["1", "2"]  # 2 of 3 pass
    assert filter_clips(clips, ["y"], min_match=0) == []  # the check turned off


def test_a_video_in_two_annotation_files_is_an_error(msrvtt, tmp_path):
    again = tmp_path / "again.json"
    again.write_text(json.dumps(official({"video3": "test"})))
    with pytest.raises(DataError, match="video3.*annotated in both"):
        read_annotation_files(f"{msrvtt['train_val']},{again}")


def test_gz_annotations_and_activitynet_clips(tmp_path):
    youcook = {"database": {"v1": {"subset": "training", "annotations": [{"segment": [0, 2], "sentence": "cut"}]}}}
    path = tmp_path / "yc.json.gz"
    path.write_bytes(gzip.compress(json.dumps(youcook).encode()))
    assert read_annotations(path) == [Clip("v1", "cut", 0.0, 2.0, "training")]
    assert read_annotations(path, paragraph=False) == read_annotations(path)  # nothing to undo
    with pytest.raises(ConfigError, match="paragraph"):
        read_annotations(path, paragraph=True)
    anet = tmp_path / "anet.json"
    anet.write_text(json.dumps({"v_a": {"duration": 9, "timestamps": [[0, 4], [4, 9]], "sentences": ["A.", "B."]}}))
    store(tmp_path / "f", ["v_a"])
    para = open_source(DataConfig(features=str(tmp_path / "f"), annotations=str(anet), paragraph=True))
    clip = open_source(DataConfig(features=str(tmp_path / "f"), annotations=str(anet)))
    assert [c.caption for c in para.clips] == ["A. B."] and para.protocol == "paragraph"
    assert [(c.caption, c.start) for c in clip.clips] == [("A.", 0.0), ("B.", 4.0)] and clip.protocol == "clip"


# ----------------------------------------------------------------------------- protocols
def test_jsfusion_keeps_one_sentence_per_test_video(msrvtt, tmp_path):
    both = f"{msrvtt['train_val']},{msrvtt['test']}"
    cfg = DataConfig(features=str(msrvtt["features"]), annotations=both, protocol="1k-A-jsfusion")
    source = open_source(cfg)
    clips, stamp = source.eval_split(str(msrvtt["test_1kA"]))  # a plain id list: the first caption
    assert stamp == "1k-A-jsfusion:first-caption"
    assert [(c.video_id, c.caption) for c in clips] == [(f"video{i}", f"video{i} cap 0") for i in (6, 7, 8)]
    csv = tmp_path / "MSRVTT_JSFUS_test.csv"
    csv.write_text("key,vid_key,video_id,sentence\nret0,msr7,video7,a dog runs\nret1,msr6,video6,people sing\n"
                   "ret2,msr8,video8,video8 cap 2\n")
    assert read_id_list(csv) == ["video7", "video6", "video8"]
    clips, stamp = source.eval_split(str(csv))
    assert stamp == "1k-A-jsfusion"
    assert {c.video_id: c.caption for c in clips} == {"video6": "people sing", "video7": "a dog runs",
                                                      "video8": "video8 cap 2"}
    all_captions = open_source(DataConfig(features=str(msrvtt["features"]), annotations=both))
    clips, stamp = all_captions.eval_split(str(csv))
    assert stamp == "all-captions" and len(clips) == 9  # every caption of the three videos


def test_id_sentences_need_one_sentence_per_video(tmp_path):
    plain = tmp_path / "ids.txt"
    plain.write_text("video1\n")
    assert read_id_sentences(plain) is None
    two = tmp_path / "two.csv"
    two.write_text("video_id,sentence\nvideo1,a\nvideo1,b\n")
    with pytest.raises(DataError, match="video1.*two sentences"):
        read_id_sentences(two)
    clips = [Clip("video1", "x"), Clip("video2", "y")]
    short = tmp_path / "short.csv"
    short.write_text("video_id,sentence\nvideo1,a\n")
    with pytest.raises(DataError, match="short.csv: 1 videos have no sentence.*video2"):
        apply_protocol(clips, "1k-A-jsfusion", str(short))


def test_protocols_that_contradict_the_annotations_are_refused():
    whole, seg = [Clip("a", "x")], [Clip("a", "x", 0.0, 1.0)]
    assert resolve_protocol(DataConfig(), whole) == "all-captions"
    assert resolve_protocol(DataConfig(), seg) == "clip"
    assert resolve_protocol(DataConfig(paragraph=True), whole) == "paragraph"
    for cfg, clips, msg in [(DataConfig(protocol="paragraph"), whole, "disagree"),
                            (DataConfig(protocol="clip"), whole, "segment"),
                            (DataConfig(protocol="1k-A-jsfusion"), seg, "whole-video"),
                            (DataConfig(protocol="1k-A"), whole, "must be one of")]:
        with pytest.raises(ConfigError, match=msg):
            resolve_protocol(cfg, clips)


# ----------------------------------------------------------------------------- the recipes
def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


def recipe(name: str):
    return load_config(REPO / "configs" / "taco" / name)


def test_msrvtt_recipe_reads_both_files_so_1kA_and_9k_ids_match():
    cfg = recipe("msrvtt.yaml")
    files = [REPO / p for p in cfg.data.annotations.split(",")]
    assert [f.name for f in files] == ["train_val_annotation.zip", "test_videodatainfo.json.zip"]
    assert cfg.data.protocol == "1k-A-jsfusion"
    for f in files:
        need(f)
    clips = read_annotation_files(",".join(map(str, files)))
    videos = {c.video_id for c in clips}
    assert len(videos) == 10_000 and len(clips) == 200_000
    test_ids = [f"video{i}" for i in range(7010, 10_000)][:1000]  # 1k-A is drawn from the test videos
    assert len(filter_clips(clips, test_ids, "1k-A")) == 20_000
    only_train_val = read_annotations(files[0])
    with pytest.raises(ConfigError, match="only 0 of its 1000"):
        filter_clips(only_train_val, test_ids, "1k-A")


def test_youcook2_and_activitynet_recipes_point_at_shared_files():
    yc = recipe("youcook2.yaml")
    assert yc.data.protocol == "clip" and (yc.data.train_split, yc.data.val_split) == ("training", "validation")
    clips = read_annotations(need(REPO / yc.data.annotations))
    by_split = {s: [c for c in clips if c.split == s] for s in ("training", "validation")}
    assert (len(by_split["training"]), len(by_split["validation"])) == (10_337, 3_492)
    anet = recipe("activitynet.yaml")
    assert anet.data.paragraph and anet.data.protocol == "paragraph"
    train_json = REPO / anet.data.annotations.split(",")[0]
    assert len(read_annotations(need(train_json))) == 10_009
