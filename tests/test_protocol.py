"""Numbers measured on the right data: held-out validation, a test split scored once, evaluate
refusing training videos, the best pointer agreeing with the run after a kill."""
from __future__ import annotations

import json

import pytest

from conftest import tiny_config, tiny_overrides
from vidlang import checkpoint as ckpt
from vidlang.cli import main
from vidlang.config import DataConfig
from vidlang.data.sources import open_source, split_clips
from vidlang.errors import ConfigError


def test_empty_validation_split_is_an_error_naming_the_setting(tmp_path, data_dir, capsys):
    code = main(["train", "taco-demo", *tiny_overrides(tmp_path / "run", data_dir), "data.val_split=", "train.steps=2"])
    assert code == 2
    assert "data.val_split is empty" in capsys.readouterr().err
    assert not (tmp_path / "run" / "latest").exists()


@pytest.mark.parametrize("val", ["all", "train", "index:10:20"])
def test_validation_that_shares_training_videos_is_refused(data_dir, val):
    cfg = DataConfig(root=str(data_dir), train_split="train", val_split=val)
    with pytest.raises(ConfigError, match="data.val_split .* shares .* videos with data.train_split"):
        split_clips(open_source(cfg), cfg)


def test_carve_holds_out_training_videos_by_seed(data_dir):
    cfg = DataConfig(root=str(data_dir), train_split="train", val_split="carve:4")
    a, b = split_clips(open_source(cfg), cfg, seed=0), split_clips(open_source(cfg), cfg, seed=1)
    held = {c.video_id for c in a.validation}
    assert len(held) == 4 and not held & {c.video_id for c in a.train}
    assert len({c.video_id for c in a.train}) == 16 - 4
    assert held != {c.video_id for c in b.validation}  # another seed, another carve
    with pytest.raises(ConfigError, match="carve:N"):
        split_clips(open_source(cfg), DataConfig(root=str(data_dir), val_split="carve:x"))


def test_test_split_is_scored_once_at_the_end_and_never_chooses(tmp_path, data_dir):
    from vidlang.train import train

    out = tmp_path / "run"
    cfg = tiny_config(out, data_dir, "data.val_split=carve:4", "data.test_split=validate")
    summary = train(cfg, progress=False)
    result = json.loads((out / "results" / "test.json").read_text())
    assert result["split"] == "test:validate" and result["extra"]["checkpoint"] == f"step-{summary['best']['step']:06d}"
    assert summary["test"]["metrics"] == result["metrics"]
    assert all("test" not in str(h) for h in summary["history"])  # validation history holds carve scores only
    meta = ckpt.read_meta(ckpt.find_checkpoint(out))
    assert meta["data_manifest"]["validation"]["split"] == "carve:4"
    assert meta["data_manifest"]["test"]["videos"] == 8


def test_validation_and_test_split_cannot_be_one(tmp_path, data_dir):
    cfg = DataConfig(root=str(data_dir), train_split="train", val_split="validate", test_split="validate")
    with pytest.raises(ConfigError, match="a test split never chooses"):
        split_clips(open_source(cfg), cfg)


def test_evaluate_refuses_the_videos_a_checkpoint_trained_on(trained_run, data_dir, capsys):
    run = str(trained_run["out_dir"])
    assert (ckpt.find_checkpoint(run) / ckpt.TRAIN_IDS).read_text().split() == sorted(f"video{i}" for i in range(16))
    assert main(["evaluate", run, "--data", str(data_dir)]) == 2
    assert "16 of the 24 videos to score were in the training split" in capsys.readouterr().err
    assert main(["evaluate", run, "--data", str(data_dir), "--allow-train-overlap", "--json"]) == 0
    result = json.loads(open(json.loads(capsys.readouterr().out)["result_file"]).read())
    assert result["extra"]["train_overlap"] == 16 and len(result["extra"]["video_ids"]) == 24


def test_evaluate_records_which_ids_it_scored(trained_run, data_dir, tmp_path, capsys):
    split = tmp_path / "val.txt"
    split.write_text("".join(f"video{i}\n" for i in range(16, 24)))
    assert main(["evaluate", str(trained_run["out_dir"]), "--data", str(data_dir), "--split", str(split)]) == 0
    printed = capsys.readouterr().out
    assert "scored 8 videos (ids sha256" in printed and "none in the checkpoint's training split" in printed


def test_a_kill_between_saving_and_pointing_best_is_repaired_on_resume(tmp_path, data_dir):
    from vidlang.train import train

    out = tmp_path / "run"
    train(tiny_config(out, data_dir, "train.steps=6", "train.eval_every=3", "train.save_every=3"), progress=False)
    best_step = ckpt.read_meta(ckpt.find_checkpoint(out))["best"]["step"]
    (out / "best").write_text("step-000000-gone")  # as if killed before the pointer was written
    train(tiny_config(out, data_dir, "train.steps=6", "train.eval_every=3", "train.save_every=3"), progress=False)
    assert (out / "best").read_text().strip() == f"step-{best_step:06d}"
