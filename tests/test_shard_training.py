"""Training from a sharded store (data.shards): TACo and MV-GPT stream their training clips from
`vidlang shard` output through the Task/Experiment hook, validation stays on the val split, and a
resumed run continues the stream where the checkpoint left it."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from test_train import assert_same_weights, weights

from vidlang import checkpoint as ckpt
from vidlang.config import load_config
from vidlang.data.features import open_store
from vidlang.data.records import Clip
from vidlang.data.shards import write_shards
from vidlang.errors import ConfigError
from vidlang.tasks.taco import build_experiment
from vidlang.train import train

MVGPT_TINY = ["task=mvgpt", "model.width=32", "model.video_heads=2", "model.fusion_heads=2", "model.fusion_layers=1",
              "model.text_trainable_layers=0", "model.dropout=0", "mvgpt.decoder_layers=1", "mvgpt.decoder_heads=2",
              "mvgpt.objective=caption", "decode.max_len=6", "decode.method=greedy", "data.max_frames=6",
              "train.batch_size=8", "train.steps=4", "train.warmup_steps=1", "train.eval_every=4",
              "train.save_every=2", "train.threads=1", "data.train_split=train", "data.val_split=validate",
              "eval.metric=val_loss"]


def train_clips(data_dir: Path) -> list[Clip]:
    """The tiny world's training captions as clips, in video order (so a shard holds runs of one video)."""
    import json

    ann = json.loads((data_dir / "annotations.json").read_text())
    return [Clip(v, c) for v, a in ann.items() if a["split"] == "train" for c in a["captions"]]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("shards") / "train"
    write_shards(open_store(data_dir), out, clips=train_clips(data_dir), shard_size=8)
    return out


def finite_losses(run: Path) -> list[float]:
    state = ckpt.load_state(run / (run / "latest").read_text().strip())
    return [h["val_loss"] if "val_loss" in h else h["t2v_R@1"] for h in state["history"]]


def test_taco_trains_from_shards_and_drops_repeated_videos(tmp_path, data_dir, shard_dir):
    summary = train(tiny_config(tmp_path / "run", data_dir, f"data.shards={shard_dir}"), progress=False)
    assert summary["steps"] == 6 and [h["step"] for h in summary["history"]] == [3, 6]
    assert summary["history"][-1]["num_videos"] == 8  # validation: the val split, not the shards
    assert all(math.isfinite(v) for h in summary["history"] for v in h.values())
    # 48 clips (3 per video) in shards of 8 in video order: a batch of 8 repeats videos, and they are dropped
    dropped = summary["counts"]["stream_duplicate_videos_dropped"]
    assert dropped > 0 and summary["counts"]["clips"] == 6 * 8 - dropped
    state = ckpt.load_state(tmp_path / "run" / "step-000006")
    assert state["stream"]["index"] + 6 * state["stream"]["epoch"] >= 6 and state["stream"]["num_clips"] == 48
    meta = ckpt.read_meta(tmp_path / "run" / "step-000006")
    assert meta["data_manifest"]["train_shards"]["num_clips"] == 48
    assert (tmp_path / "run" / "step-000006" / ckpt.TRAIN_IDS).read_text().split() == sorted(
        {c.video_id for c in train_clips(data_dir)})


def test_resume_restores_the_stream_position(tmp_path, data_dir, shard_dir):
    straight, split = tmp_path / "straight", tmp_path / "split"
    extra = f"data.shards={shard_dir}"
    train(tiny_config(straight, data_dir, extra), progress=False)
    train(tiny_config(split, data_dir, extra, "train.steps=3"), progress=False)
    saved = ckpt.load_state(split / "step-000003")["stream"]
    assert (saved["epoch"], saved["index"]) == (0, 3)
    # the position restored from the checkpoint gives the batch an uninterrupted stream gives 4th
    cfg = tiny_config(split, data_dir, extra)
    exp = build_experiment(cfg)
    fresh, resumed = (exp.train_stream(8, cfg.train.seed, 0, 0, 1) for _ in range(2))
    for _ in range(3):
        next(fresh)
    resumed.load_state(saved)
    want, got = next(fresh), next(resumed)
    assert got.clip_index.tolist() == want.clip_index.tolist() and got.video_ids == want.video_ids
    train(tiny_config(split, data_dir, extra), progress=False)  # resumes at step 3
    assert ckpt.load_state(split / "step-000006")["stream"] == ckpt.load_state(straight / "step-000006")["stream"]
    assert_same_weights(weights(split), weights(straight))


def test_mvgpt_trains_from_shards(tmp_path, data_dir, shard_dir):
    cfg = load_config(None, [*MVGPT_TINY, f"data.root={data_dir}", f"train.out_dir={tmp_path / 'run'}",
                             f"data.shards={shard_dir}"])
    summary = train(cfg, progress=False)
    assert summary["steps"] == 4 and math.isfinite(summary["history"][-1]["val_loss"])
    assert summary["counts"]["clips"] == 4 * 8  # MV-GPT keeps repeated videos: its loss has no negatives
    assert ckpt.load_state(tmp_path / "run" / "step-000004")["stream"]["index"] >= 1


def test_shards_that_hold_validation_videos_or_another_width_are_refused(tmp_path, data_dir):
    whole = write_shards(open_store(data_dir), tmp_path / "whole", shard_size=8)  # every video, val ones too
    with pytest.raises(ConfigError, match="holds 8 validation/test videos"):
        build_experiment(tiny_config(tmp_path / "r", data_dir, f"data.shards={whole.path}"))
    cfg = load_config(None, [*MVGPT_TINY, f"data.root={data_dir}", f"train.out_dir={tmp_path / 'm'}",
                             f"data.shards={whole.path}", "mvgpt.output_vocab=train"])
    from vidlang.tasks.mvgpt import build_caption_experiment

    with pytest.raises(ConfigError, match="output_vocab=train"):
        build_caption_experiment(cfg)
    assert torch.get_num_threads() >= 1


def test_scst_from_shards_is_refused_by_name(tmp_path, data_dir, shard_dir):
    from vidlang.tasks.mvgpt import build_caption_experiment

    cfg = load_config(None, [*MVGPT_TINY, f"data.root={data_dir}", f"train.out_dir={tmp_path / 'run'}",
                             f"data.shards={shard_dir}", "mvgpt.scst_steps=2"])
    with pytest.raises(ConfigError, match="mvgpt.scst_steps.*data.shards"):
        build_caption_experiment(cfg)
