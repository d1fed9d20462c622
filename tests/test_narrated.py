"""Tests of the narrated multi-step world (vidlang.worlds.narrated)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from vidlang.worlds import narrated as W
from vidlang.data.dataset import cut_segment
from vidlang.data.features import open_store
from vidlang.data.narration import CaptionDataset, collate_captions, read_howto100m
from vidlang.worlds.synthetic import clip_features
from vidlang.errors import ConfigError, DataError

CFG = W.NarratedConfig(num_scenes=12, steps=4, frames=8, size=16, captions_per_step=2, seed=5)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return W.write_narrated_world(tmp_path_factory.mktemp("narrated") / "w", CFG, raw_frames=True)


@pytest.fixture(scope="module")
def scenes(world):
    return json.loads((world.root / "scenes.json").read_text(encoding="utf-8"))


def test_layout_and_stores(world):
    feats, frames = open_store(world.features), open_store(world.frames)
    assert feats.fps == frames.fps == CFG.fps and feats.ids == frames.ids
    assert len(feats) == 12 and feats.dim == 192 and feats["scene00000"].shape == (4 * 8, 192)
    pix = frames["scene00003"]
    assert pix.shape == (32, 16 * 16 * 3) and pix.min() >= 0 and pix.max() <= 1
    assert world.train_ids == [f"scene{i:05d}" for i in range(10)] and len(world.val_ids) == 2
    streams = read_howto100m(world.transcripts)
    assert set(streams) == set(feats.ids) and all(len(s) == 8 for s in streams.values())  # 2 ASR chunks per step


def test_features_are_the_steps_concatenated(world):
    scene = W.generate_scene(CFG, 2)
    want = np.concatenate([clip_features(scene.frames[j * 8:(j + 1) * 8]) for j in range(4)])
    np.testing.assert_allclose(open_store(world.features)["scene00002"], want, rtol=1e-6)
    pix = open_store(world.frames)["scene00002"].reshape(32, 16, 16, 3)
    np.testing.assert_allclose(pix, scene.frames / 255.0, atol=1e-3)


def test_recipe_grammar_makes_the_future_follow_from_the_present(scenes):
    first = Counter()
    for rec in scenes.values():
        steps = rec["steps"]
        first[steps[0]["motion"]] += 1
        for a, b in zip(steps, steps[1:]):
            assert b == W.next_step(a)
            assert b["colour"] != a["colour"] and b["motion"] != a["motion"]
        assert all(not (s["motion"] == "spin" and s["shape"] in ("circle", "ring")) for s in steps)
    assert len(first) >= 6  # the first step is random: the future is not predictable from nothing
    big = [W.generate_scene(W.NarratedConfig(num_scenes=1, steps=2, seed=1), i).steps[0]["motion"] for i in range(60)]
    assert len(set(big)) == len(W.MOTION_CYCLE)


def test_narrations_fit_the_asr_chunking(scenes, world):
    streams = read_howto100m(world.transcripts)
    for vid, rec in scenes.items():
        for j, text in enumerate(rec["narrations"]):
            assert 10 <= len(text.split()) <= 18
            a, b = streams[vid][2 * j], streams[vid][2 * j + 1]
            assert len(a.text.split()) < 10 and len(b.text.split()) < 10
            assert f"{a.text} {b.text}" == text


def test_pretraining_pairs_are_consecutive_steps(world, scenes):
    counter = Counter()
    clips = world.pretrain_clips("train", counter=counter)
    assert len(clips) == 10 * 3 and counter == Counter(pairs=30)
    store = open_store(world.features)
    for k, c in enumerate(clips):
        j = k % 3
        narr = scenes[c.video_id]["narrations"]
        assert (c.transcript, c.caption, c.split) == (narr[j], narr[j + 1], "train")
        cut = cut_segment(store[c.video_id], c.start, c.end, store.fps, c.video_id)
        np.testing.assert_array_equal(cut, store[c.video_id][j * 8:(j + 1) * 8])  # exactly the present step
    assert {c.video_id for c in world.pretrain_clips("validate")} == set(world.val_ids)
    with pytest.raises(ConfigError):
        world.pretrain_clips("test")


def test_caption_clips_carry_their_steps_narration(world, scenes):
    clips = world.caption_clips("validate")
    assert len(clips) == 2 * 4 * 2
    for c in clips:
        j = int(round(c.start * CFG.fps)) // CFG.frames
        assert c.transcript == scenes[c.video_id]["narrations"][j]
        assert c.caption != c.transcript and c.split == "validate"
    assert all(c.transcript is None for c in world.caption_clips("validate", with_transcript=False))


def test_datasets_build_on_the_world(world):
    from vidlang.text.pretrained import load_tokenizer

    tok = load_tokenizer()
    ds = CaptionDataset(world.pretrain_clips(), open_store(world.frames), tok, max_frames=8)
    batch = collate_captions([ds[0], ds[1]])
    assert batch.video.shape == (2, 8, 768) and batch.transcript_ids[:, 0].eq(tok.cls_token_id).all()
    assert ds.counts["transcript_truncated"] == 0 and ds.counts["target_truncated"] == 0


def test_deterministic_and_reused(world, tmp_path):
    again = W.write_narrated_world(tmp_path / "again", CFG, raw_frames=True)
    for name in ("transcripts.json", "captions.jsonl", "scenes.json", "features/features.npy", "frames/features.npy"):
        assert (again.root / name).read_bytes() == (world.root / name).read_bytes()
    stamp = (again.root / "features" / "features.npy").stat().st_mtime_ns
    W.write_narrated_world(tmp_path / "again", CFG, raw_frames=True)
    assert (again.root / "features" / "features.npy").stat().st_mtime_ns == stamp  # reused, not rewritten
    other = W.write_narrated_world(tmp_path / "other", W.NarratedConfig(num_scenes=12, steps=4, frames=8, size=16,
                                                                       captions_per_step=2, seed=6))
    assert other.frames is None
    rebuilt = W.write_narrated_world(tmp_path / "again", CFG)  # raw_frames off now: no stale pixel store
    assert rebuilt.frames is None and not (rebuilt.root / "frames" / "features.npy").exists()
    with pytest.raises(DataError, match="not a complete narrated world"):
        W.NarratedWorld(tmp_path / "missing")
    assert (other.root / "transcripts.json").read_bytes() != (world.root / "transcripts.json").read_bytes()


@pytest.mark.parametrize("field, value", [("steps", 1), ("num_scenes", 0), ("omit_prob", 1.5), ("fps", "8")])
def test_bad_config(field, value, tmp_path):
    cfg = W.NarratedConfig(**{field: value})
    with pytest.raises(ConfigError, match=field):
        W.write_narrated_world(tmp_path / "x", cfg)
    with pytest.raises(ConfigError, match="val_fraction"):
        W.write_narrated_world(tmp_path / "x", W.NarratedConfig(num_scenes=2), val_fraction=1.0)
