"""Segmentation as a task (tasks/segmentation.py): a linear frame head on the task world, frame accuracy."""
from __future__ import annotations

import json

import numpy as np
import pytest
from step_world_helpers import small_world, world_config

from vidlang.errors import DataError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return small_world(tmp_path_factory.mktemp("steps"))


@pytest.fixture(scope="module")
def seg_run(world, tmp_path_factory):
    from vidlang.train import train

    out = tmp_path_factory.mktemp("seg") / "run"
    summary = train(world_config("segmentation", world, out, "train.steps=60", "train.eval_every=30",
                                 "train.save_every=30"), progress=False)
    return out, summary


def test_linear_frame_head_beats_the_majority_class_on_held_out_videos(seg_run):
    _, summary = seg_run
    best = summary["best"]["metrics"]
    assert best["num_videos"] == 8
    assert best["frame_acc"] > best["majority_frame_acc"] + 10
    assert best["frame_acc_no_bg"] > 0


def test_evaluate_cli_scores_the_head_and_stamps_split_and_protocol(seg_run, world, tmp_path):
    from vidlang.cli import main

    out, summary = seg_run
    result = tmp_path / "r.json"
    assert main(["evaluate", str(out), "--task", "segmentation", "--data", str(world), "--split", "validate",
                 "--out", str(result)]) == 0
    data = json.loads(result.read_text())
    assert data["split"] == "world:validate" and "frame accuracy with background" in data["scoring"]
    assert data["extra"]["train_overlap"] == 0 and len(data["extra"]["ids_sha256"]) == 16
    assert data["metrics"]["frame_acc"] == pytest.approx(summary["best"]["metrics"]["frame_acc"])
    assert main(["evaluate", str(out), "--task", "segmentation", "--data", str(world), "--split", "train",
                 "--out", str(tmp_path / "t.json")]) == 2  # its own training videos: refused


def test_frame_accuracy_counts_background_and_equals_a_plain_loop(seg_run, world):
    from vidlang.data.features import open_store
    from vidlang.data.step_world import read_step_world
    from vidlang.tasks.segmentation import (
        FrameLabelledVideos,
        evaluate,
        frame_scores,
        load_frame_probe,
    )

    out, _ = seg_run
    model, _ = load_frame_probe(out)
    w = read_step_world(world)
    ds = FrameLabelledVideos(sorted(v for v, s in w.videos.items() if s.split == "validate"), open_store(world / "features"), w)
    right = total = 0
    for _, logits, labels in frame_scores(model, ds):
        for t in range(len(labels)):
            right += int(np.argmax(logits[t]) == labels[t])
            total += 1
    assert evaluate(model, ds)["frame_acc"] == pytest.approx(100 * right / total)


def test_labels_that_do_not_match_the_features_are_an_error(world, tmp_path):
    from vidlang.train import train

    data = json.loads((world / "world.json").read_text())
    data["videos"]["steps00001"]["labels"] = data["videos"]["steps00001"]["labels"][:-1]
    (tmp_path / "world.json").write_text(json.dumps(data))
    cfg = world_config("segmentation", world, tmp_path / "run", f"data.annotations={tmp_path / 'world.json'}")
    with pytest.raises(DataError, match="steps00001"):
        train(cfg, progress=False)
