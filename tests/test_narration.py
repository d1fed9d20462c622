"""Tests of vidlang.data.narration: transcript readers, MV-GPT pairing and caption datasets."""
from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from vidlang.data import narration as N
from vidlang.data.annotations import read_msrvtt
from vidlang.data.features import open_store
from vidlang.data.records import CaptionBatch, Clip
from vidlang.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
U = N.Utterance


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


@pytest.fixture(scope="module")
def tokenizer():
    from vidlang.text.pretrained import load_tokenizer

    return load_tokenizer()


# ----------------------------------------------------------------------------- readers
def test_howto100m_json_reader_sorts_and_counts_empty(tmp_path):
    data = {"vidA": {"start": [5.0, 1.0, 3.0], "end": [6.0, 2.5, 4.0], "text": ["third one", "first one", "  "]},
            "vidB": {"start": [0], "end": [1], "text": ["hello"]}}
    path = tmp_path / "caption.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    counter = Counter()
    streams = N.read_transcripts(path, counter=counter)
    assert streams == {"vidA": [U(1.0, 2.5, "first one"), U(5.0, 6.0, "third one")], "vidB": [U(0.0, 1.0, "hello")]}
    assert counter == Counter(empty_utterance=1)


def test_howto100m_bad_records_raise_or_are_counted(tmp_path):
    path = tmp_path / "caption.json"
    path.write_text(json.dumps({"good": {"start": [0], "end": [1], "text": ["ok"]},
                                "short": {"start": [0, 1], "end": [1], "text": ["a", "b"]},
                                "backwards": {"start": [3], "end": [2], "text": ["x"]}}), encoding="utf-8")
    with pytest.raises(DataError, match="'short'"):
        N.read_howto100m(path)
    counter = Counter()
    assert list(N.read_howto100m(path, skip_bad=True, counter=counter)) == ["good"]
    assert counter == Counter(bad_record=1, bad_segment=1)


def test_howto100m_pickle_needs_allow_pickle(tmp_path):
    path = tmp_path / "caption.pickle"
    path.write_bytes(pickle.dumps({"v": {"start": np.array([0.0]), "end": np.array([2.0]), "text": ["hi there"]}}))
    with pytest.raises(DataError, match="allow_pickle"):
        N.read_transcripts(path)
    assert N.read_transcripts(path, allow_pickle=True) == {"v": [U(0.0, 2.0, "hi there")]}


def test_jsonl_reader_takes_text_or_caption(tmp_path):
    path = tmp_path / "asr.jsonl"
    lines = [{"video_id": "v", "text": "b", "start": 2, "end": 3}, {"video_id": "v", "caption": "a", "start": 0, "end": 1},
             {"video_id": "v", "text": "", "start": 4, "end": 5}, {"video_id": "w", "text": "untimed"}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="start/end"):
        N.read_transcripts(path)
    counter = Counter()
    assert N.read_transcripts(path, skip_bad=True, counter=counter) == {"v": [U(0.0, 1.0, "a"), U(2.0, 3.0, "b")]}
    assert counter == Counter(empty_utterance=1, bad_segment=1)


def test_youcook2_segments_become_a_stream(tmp_path):
    db = {"database": {"yc1": {"subset": "training", "duration": 100, "annotations": [
        {"segment": [40, 50], "sentence": "add the salt"}, {"segment": [10, 20], "sentence": "cut the onion"}]}}}
    path = tmp_path / "youcookii_annotations_trainval.json"
    path.write_text(json.dumps(db), encoding="utf-8")
    assert N.read_transcripts(path) == {"yc1": [U(10.0, 20.0, "cut the onion"), U(40.0, 50.0, "add the salt")]}
    with pytest.raises(ConfigError, match="unknown transcript format"):
        N.read_transcripts(path, fmt="srt")


def test_activitynet_real_file_pairs():
    path = SHARED / "activitynet-captions" / "train.json"
    if not path.is_file():
        pytest.skip("shared ActivityNet Captions data not present")
    with pytest.raises(DataError, match="after end"):  # the real file has 2 backwards segments
        N.read_transcripts(path)
    counter = Counter()
    streams = N.read_transcripts(path, skip_bad=True, counter=counter)
    assert len(streams) == 10009 and counter["bad_segment"] == 2
    pairs = N.pair_utterances(streams, counter=counter)
    assert len(pairs) == counter["pairs"] > 15000
    for c in pairs[:500]:
        assert len(c.transcript.split()) >= 10 and c.caption and c.start <= c.end


# ----------------------------------------------------------------------------- pairing
def test_merge_and_pair_by_hand():
    stream = [U(0, 1, words(4, "a")), U(1, 2, words(7, "b")), U(2, 3, ""), U(3, 4, words(12, "c")),
              U(5, 6, words(3, "d")), U(6, 7, words(2, "e"))]
    counter = Counter()
    units = N.merge_utterances(stream, min_words=10, counter=counter)
    assert [(u.start, u.end, len(u.text.split())) for u in units] == [(0, 2, 11), (3, 4, 12), (5, 7, 5)]
    assert counter == Counter(empty_utterance=1)
    pairs = N.pair_utterances({"v": stream}, min_words=10, split="train")
    assert pairs == [Clip("v", units[1].text, 0, 2, "train", transcript=units[0].text),
                     Clip("v", units[2].text, 3, 4, "train", transcript=units[1].text)]


def test_pairing_counts_short_videos_gaps_and_truncation():
    streams = {"one": [U(0, 1, words(12))],  # a single unit: no pair
               "gap": [U(0, 1, words(10)), U(100, 101, words(10)), U(101, 102, words(10))],
               "long": [U(0, 1, words(30)), U(1, 2, words(10))]}
    counter = Counter()
    pairs = N.pair_utterances(streams, max_words=20, max_gap=5.0, counter=counter)
    assert [(c.video_id, c.start) for c in pairs] == [("gap", 100), ("long", 0)]
    assert counter == Counter(too_few_utterances=1, gap_too_long=1, truncated_utterance=1, pairs=2)
    assert len(pairs[1].transcript.split()) == 20
    with pytest.raises(ConfigError):
        N.merge_utterances([], min_words=10, max_words=5)


def test_references_and_eval_clips():
    clips = [Clip("v1", "a"), Clip("v1", "b"), Clip("v2", "c"), Clip("v2", " "),
             Clip("yc", "cut", 1.0, 2.0), Clip("yc", "add", 3.0, 4.5), Clip("yc", "chop", 1.0, 2.0)]
    assert N.references(clips) == {"v1": ["a", "b"], "v2": ["c"], "yc@1.00-2.00": ["cut", "chop"],
                                   "yc@3.00-4.50": ["add"]}
    assert [N.clip_key(c) for c in N.eval_clips(clips)] == ["v1", "v2", "yc@1.00-2.00", "yc@3.00-4.50"]


# ----------------------------------------------------------------------------- dataset
def test_caption_dataset_items_and_collate(data_dir, tokenizer):
    clips = read_msrvtt(data_dir)
    clips = [Clip(c.video_id, c.caption, split=c.split, transcript=None if i % 2 else "some speech here")
             for i, c in enumerate(clips)]
    long = Clip("video0", words(20), transcript="w " * 50)
    ds = N.CaptionDataset(clips + [long], open_store(data_dir), tokenizer, 4, 8, 12)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert len(ds) == len(clips) + 1 and ds.keys[0] == "video0"
    item = ds[0]
    assert item["video"].shape == (4, 8)  # 6 frames subsampled to 4
    assert item["transcript_ids"].tolist() == tokenizer("some speech here")["input_ids"]
    assert ds[1]["transcript_ids"].tolist() == [cls, sep]
    last = ds[len(ds) - 1]
    assert len(last["target_ids"]) == 12 and last["target_ids"][-1] == sep and len(last["transcript_ids"]) == 8
    assert ds.counts == Counter(no_transcript=len(clips) // 2, target_truncated=1, transcript_truncated=1)
    batch = N.collate_captions([ds[0], ds[1], last])
    assert isinstance(batch, CaptionBatch) and len(batch) == 3
    assert batch.transcript_ids.shape == (3, 8) and batch.target_ids.shape[0] == 3
    assert batch.transcript_mask[1].tolist() == [1, 1] + [0] * 6 and batch.transcript_ids[1, 2:].eq(0).all()
    assert batch.target_mask.sum(1).tolist() == [len(ds[i]["target_ids"]) for i in (0, 1, len(ds) - 1)]
    assert batch.video_mask.all() and batch.clip_index.tolist() == [0, 1, len(ds) - 1]
    off = N.CaptionDataset(clips, open_store(data_dir), tokenizer, use_transcript=False)
    assert off[0]["transcript_ids"].tolist() == [cls, sep]


def test_caption_dataset_skips_or_raises_on_bad_clips(data_dir, tokenizer):
    clips = [Clip("video0", "a man"), Clip("video1", "  "), Clip("nope", "x")]
    with pytest.raises(DataError, match="empty captions"):
        N.CaptionDataset(clips, open_store(data_dir), tokenizer)
    ds = N.CaptionDataset(clips, open_store(data_dir), tokenizer, skip_bad=True)
    assert len(ds) == 1 and ds.skipped == Counter(empty_caption=1, missing_video=1)


def test_caption_dataset_cuts_the_present_span(tmp_path, tokenizer):
    folder = tmp_path / "store"
    folder.mkdir()
    np.save(folder / "v.npy", np.arange(20, dtype=np.float32)[:, None].repeat(3, 1))
    (folder / "meta.json").write_text(json.dumps({"fps": 2.0}), encoding="utf-8")
    pairs = N.pair_utterances({"v": [U(1.0, 3.0, words(10)), U(4.0, 6.0, words(10, "x"))]})
    ds = N.CaptionDataset(pairs, open_store(folder), tokenizer, max_frames=32)
    assert ds[0]["video"][:, 0].tolist() == [2, 3, 4, 5]  # frames [floor(1*2), ceil(3*2)) of the present
    assert ds.keys == ["v@1.00-3.00"]


def test_msrvtt_dev_caption_training_and_evaluation(tokenizer):
    root = SHARED / "msrvtt-ae128-dev"
    if not (root / "features.npy").is_file():
        pytest.skip("shared msrvtt-ae128-dev not present")
    clips = [c for c in read_msrvtt(root) if c.video_id in {f"video{i}" for i in range(700, 710)}]
    train = N.CaptionDataset(clips, open_store(root), tokenizer)
    assert len(train) == 200  # one item per (video, caption)
    evaluation = N.CaptionDataset(N.eval_clips(clips), open_store(root), tokenizer)
    refs = N.references(clips)
    assert len(evaluation) == 10 and set(evaluation.keys) == set(refs)
    assert all(len(r) == 20 for r in refs.values())
    batch = N.collate_captions([evaluation[i] for i in range(3)])
    assert batch.video.shape == (3, 32, 128) and torch.isfinite(batch.video).all()
