"""Bad input, one case per class (docs/bad-input.md): every refusal is a short message naming the
file, line, id or key, with exit code 2 (a traceback only with --debug); every skip under --skip-bad
names its item, on the terminal and in the result JSON."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    make_data,
    read_annotations_json,
    tiny_config,
    tiny_overrides,
    write_annotations,
    write_recipe,
)
from safetensors.torch import load_file, save_file

from vidlang.cli import main
from vidlang.errors import ConfigError, DataError

HELD_OUT = [f"video{i}" for i in range(16, 24)]  # the trained run's validation videos


def _split(tmp_path: Path) -> Path:
    path = tmp_path / "held_out.txt"
    path.write_text("\n".join(HELD_OUT) + "\n")
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _refused(capsys, *argv: str, names: list[str]) -> str:
    """The command exits 2 with one short message naming every string of ``names``, no traceback."""
    code, _, err = _run(capsys, *argv)
    assert code == 2, err
    assert err.startswith("vidlang: error:") and "Traceback" not in err, err
    for name in names:
        assert name in err, (name, err)
    return err


def _copy_checkpoint(run: Path, dst: Path) -> Path:
    src = run / (run / "latest").read_text().strip()
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("results"))
    return dst


# ----------------------------------------------------------------------------- 1. skips are named
def test_skip_bad_names_each_skipped_item(tmp_path, trained_run, capsys):
    root = make_data(tmp_path / "data")
    feats = np.load(root / "features.npy")
    feats[20, 1, 3] = np.nan
    np.save(root / "features.npy", feats)
    out = tmp_path / "result.json"
    code, printed, err = _run(capsys, "evaluate", str(trained_run["out_dir"]), "--data", str(root), "--split",
                              str(_split(tmp_path)), "--skip-bad", "--out", str(out))
    assert code == 0, err
    assert "bad_features: id 'video20'" in printed and "NaN" in printed
    items = json.loads(out.read_text())["extra"]["skipped_items"]
    assert [i["id"] for i in items] == ["video20"] * 3 and {i["reason"] for i in items} == {"bad_features"}


# ----------------------------------------------------------------------------- 2. no silent drops
def test_annotated_video_without_features_is_named_or_a_named_skip(tmp_path, trained_run, capsys):
    root = make_data(tmp_path / "data")
    ann = read_annotations_json(root)
    ann["ghost9"] = {"split": "validate", "captions": ["a man throws a ball"]}
    write_annotations(root, ann)
    args = ["evaluate", str(trained_run["out_dir"]), "--data", str(root), "--allow-train-overlap",
            "--out", str(tmp_path / "r.json")]
    _refused(capsys, *args, names=["ghost9", "missing from feature store"])
    code, printed, _ = _run(capsys, *args, "--skip-bad")
    assert code == 0 and "missing_video: id 'ghost9'" in printed


def test_empty_captions_list_is_named(tmp_path):
    root = make_data(tmp_path / "data")
    ann = read_annotations_json(root)
    ann["video5"]["captions"] = []
    write_annotations(root, ann)
    from vidlang.tasks.taco import build_experiment

    with pytest.raises(DataError, match=r"annotations\.json: video 'video5' has an empty 'captions' list"):
        build_experiment(tiny_config(tmp_path / "run", root))


@pytest.mark.parametrize("start, end, what", [
    (-2.0, 1.0, "negative"), (3.0, 1.0, "after end"), (99.0, 100.0, "past the end"),
])
def test_bad_segment_times_are_named(tmp_path, trained_run, capsys, start, end, what):
    root = make_data(tmp_path / "data")
    (root / "meta.json").write_text(json.dumps({"fps": 1.0}))  # 6 features: 6 seconds
    lines = [{"video_id": v, "caption": "a man throws a ball", "start": 0.0, "end": 2.0} for v in HELD_OUT]
    lines[3] |= {"start": start, "end": end}
    ann = tmp_path / "segments.jsonl"
    ann.write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = ["evaluate", str(trained_run["out_dir"]), "--data", str(root), "--annotations", str(ann),
            "--out", str(tmp_path / "r.json")]
    err = _refused(capsys, *args, names=[HELD_OUT[3]])
    assert what in err and (what == "past the end" or "line 4" in err)
    code, printed, _ = _run(capsys, *args, "--skip-bad")
    assert code == 0 and f"id '{HELD_OUT[3]}'" in printed


def test_evaluate_skips_an_empty_caption_by_name(tmp_path, trained_run, capsys):
    root = make_data(tmp_path / "data")
    ann = read_annotations_json(root)
    ann["video17"]["captions"][1] = "   "
    write_annotations(root, ann)
    args = ["evaluate", str(trained_run["out_dir"]), "--data", str(root), "--split", str(_split(tmp_path)),
            "--out", str(tmp_path / "r.json")]
    _refused(capsys, *args, names=["video17", "empty caption"])
    code, printed, _ = _run(capsys, *args, "--skip-bad")
    assert code == 0 and "empty_caption: id 'video17'" in printed


# ----------------------------------------------------------------------------- 3. errors name the place
def test_jsonl_error_names_the_line(tmp_path, trained_run, capsys):
    root = make_data(tmp_path / "data")
    ann = tmp_path / "captions.jsonl"
    ann.write_text('{"video_id": "video16", "caption": "a dog"}\n\n{"video_id": "video17", "caption": ""}\n')
    _refused(capsys, "evaluate", str(trained_run["out_dir"]), "--data", str(root), "--annotations", str(ann),
             names=["captions.jsonl, line 3", "video17"])


@pytest.mark.parametrize("content, names", [
    ("", ["empty.json is empty", "expected", "MSR-VTT"]),  # an empty file
    ("[1, 2]", ["empty.json", "found a JSON list", "expected", "YouCook2"]),  # an unknown format
])
def test_annotation_file_errors_name_file_and_format(tmp_path, trained_run, capsys, content, names):
    root = make_data(tmp_path / "data")
    (tmp_path / "empty.json").write_text(content)
    _refused(capsys, "evaluate", str(trained_run["out_dir"]), "--data", str(root), "--annotations",
             str(tmp_path / "empty.json"), names=names)


def test_empty_feature_folder_and_empty_recipe_are_named(tmp_path, trained_run, data_dir, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    _refused(capsys, "evaluate", str(trained_run["out_dir"]), "--data", str(data_dir), "--features", str(empty),
             names=[str(empty), "no .npy files"])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("\n")
    _refused(capsys, "train", str(recipe), names=["recipe.yaml is empty", "expected a mapping"])


def test_foreign_weights_folder_is_recognised(tmp_path, capsys, data_dir):
    folder = tmp_path / "hf-model"
    folder.mkdir()
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    _refused(capsys, "evaluate", str(folder), "--data", str(data_dir), names=["pytorch_model.bin", "not a vidlang checkpoint"])


# ----------------------------------------------------------------------------- 4. messages, not tracebacks
@pytest.mark.parametrize("text, names", [
    ("train:\n  steps: [3\n", ["recipe.yaml", "not valid YAML", "line"]),
    ("train: !!python/object/apply:os.system ['true']\n", ["recipe.yaml", "refused"]),
    ("- train\n", ["recipe.yaml", "holds a list", "expected a mapping"]),
    ("train:\n  lr: .nan\n", ["recipe.yaml", "'train.lr'", "finite"]),
])
def test_bad_recipe_is_a_message_and_exit_2(tmp_path, data_dir, capsys, text, names):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    _refused(capsys, "train", str(recipe), *tiny_overrides(tmp_path / "run", data_dir), names=names)


def test_debug_shows_the_traceback(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train: !!python/object/apply:os.system ['true']\n")
    code, _, err = _run(capsys, "train", str(recipe), "--debug")
    assert code == 2 and "Traceback" in err and "refused" in err


@pytest.mark.parametrize("damage, names", [
    (lambda f: (f / "config.yaml").unlink(), ["lacks config.yaml"]),
    (lambda f: (f / "config.yaml").write_text("- 1\n- 2\n"), ["config.yaml", "holds a list"]),
])
def test_checkpoint_without_a_usable_config(tmp_path, trained_run, data_dir, capsys, damage, names):
    folder = _copy_checkpoint(trained_run["out_dir"], tmp_path / "ckpt")
    damage(folder)
    _refused(capsys, "evaluate", str(folder), "--data", str(data_dir), names=[str(folder), *names])


# ----------------------------------------------------------------------------- 5. values refused by key
@pytest.mark.parametrize("override, key", [
    ("train.lr=-1e-3", "train.lr"), ("train.lr=nan", "train.lr"), ("train.batch_size=0", "train.batch_size"),
    ("train.steps=-1", "train.steps"), ("data.max_frames=0", "data.max_frames"),
    ("decode.beam_size=0", "decode.beam_size"), ("mvgpt.mask_prob=1.5", "mvgpt.mask_prob"),
])
def test_values_are_refused_by_key(tmp_path, data_dir, capsys, override, key):
    recipe = write_recipe(tmp_path / "recipe.yaml", data_dir)
    _refused(capsys, "train", str(recipe), *tiny_overrides(tmp_path / "run", data_dir), override, names=[f"'{key}'"])
    assert not (tmp_path / "run").exists()


def test_string_override_keeps_its_text(tmp_path, data_dir):
    assert tiny_config(tmp_path / "r", data_dir, "train.out_dir=007").train.out_dir == "007"


# ----------------------------------------------------------------------------- 6. no silent wrong result
def test_nan_weights_are_named_on_load(tmp_path, trained_run, data_dir, capsys):
    folder = _copy_checkpoint(trained_run["out_dir"], tmp_path / "ckpt")
    weights = load_file(str(folder / "model.safetensors"))
    weights["fusion_head.weight"][0, 0] = float("nan")
    save_file(weights, str(folder / "model.safetensors"))
    _refused(capsys, "evaluate", str(folder), "--data", str(data_dir), "--split", str(_split(tmp_path)),
             names=["fusion_head.weight", "model.safetensors", "NaN"])


@pytest.fixture(scope="module")
def captioner(tmp_path_factory, data_dir) -> Path:
    from helpers import MVGPT_TINY

    from vidlang.config import load_config
    from vidlang.train import train

    out = tmp_path_factory.mktemp("captioner") / "run"
    train(load_config(None, [*MVGPT_TINY, f"data.root={data_dir}", "data.train_split=train", "data.val_split=none",
                             "train.steps=2", "train.save_every=2", "train.eval_every=0", "train.threads=1",
                             "train.batch_size=8", "data.max_frames=6", f"train.out_dir={out}"]), progress=False)
    return out


def test_empty_captions_are_never_a_success(tmp_path, captioner, data_dir, capsys, monkeypatch):
    from vidlang.models.mvgpt import MVGPT

    monkeypatch.setattr(MVGPT, "generate", lambda self, video, *a, **k: [[] for _ in range(video.shape[0])])
    _refused(capsys, "caption", str(captioner), "--data", str(data_dir), "--split", str(_split(tmp_path)),
             "--no-meteor", "--out", str(tmp_path / "c.json"), names=["empty caption", str(captioner)])
    np.save(tmp_path / "one.npy", np.ones((6, 8), np.float32))
    _refused(capsys, "caption", str(captioner), "--features", str(tmp_path / "one.npy"), names=["empty caption", "one.npy"])


# ----------------------------------------------------------------------------- 7. resume with a changed config
def test_resume_with_a_changed_config_is_refused_naming_the_keys(tmp_path, data_dir):
    from vidlang.train import train

    out = tmp_path / "run"
    quick = ("train.eval_every=0", "train.save_every=2")
    train(tiny_config(out, data_dir, "train.steps=2", *quick), progress=False)
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.0001 -> 0\.05.*train\.resume=force"):
        train(tiny_config(out, data_dir, "train.steps=4", "train.lr=0.05", *quick), progress=False)
    assert "lr: 0.05" not in (out / "config.yaml").read_text()  # the run's config still tells the truth
    # more steps, other logging: not a change of the run
    train(tiny_config(out, data_dir, "train.steps=4", "train.log_every=7", *quick), progress=False)
    # forced: resumes and trains at the new lr from there on
    train(tiny_config(out, data_dir, "train.steps=6", "train.lr=0.05", "train.resume=force", *quick), progress=False)
    from vidlang import checkpoint as ckpt

    state = ckpt.load_state(out / "step-000006")
    assert state["scheduler"]["base_lrs"][0] == pytest.approx(0.05)
    assert "lr: 0.05" in (out / "config.yaml").read_text()
