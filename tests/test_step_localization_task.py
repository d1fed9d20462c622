"""Step localization as a task (tasks/step_localization.py): zero-shot TACo and a trained frame head,
decoded with the Zhukov DP and scored with the official CrossTask recall, beside its baselines."""
from __future__ import annotations

import json

import numpy as np
import pytest
from step_world_helpers import small_world, world_config

from vidlang.data.step_world import read_step_world
from vidlang.evaluation.step_localization import uniform_assignment
from vidlang.tasks.step_localization import random_assignment, recall_of, step_truth


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return small_world(tmp_path_factory.mktemp("steps"))


@pytest.fixture(scope="module")
def taco_run(world, tmp_path_factory):
    from vidlang.train import train

    out = tmp_path_factory.mktemp("taco") / "run"
    train(world_config("taco", world, out, "train.steps=60", "train.eval_every=60", "train.save_every=60"), progress=False)
    return out


def held_out_ids(world):
    return sorted(v for v, s in read_step_world(world).videos.items() if s.split == "validate")


def test_recall_of_the_oracle_is_100_and_evenly_spread_equals_a_plain_loop(world):
    w = read_step_world(world)
    ids = held_out_ids(world)

    def oracle(vid, t, k):  # the first frame of each shown step; absent steps on frames no step covers
        y, truth = np.zeros((t, k), np.uint8), step_truth(w.videos[vid], k)
        for s in range(k):
            y[truth[:, s].argmax() if truth[:, s].any() else 0, s] = 1
        return y

    assert recall_of(w, ids, oracle)["recall"] == pytest.approx(100.0)
    hits, present = {}, {}
    for vid in ids:  # official get_recalls, written out: per task, hits over steps present
        v = w.videos[vid]
        k = len(w.tasks[v.task]["steps"])
        y = uniform_assignment(len(v.labels), k)
        for s in v.segments:
            hits[v.task] = hits.get(v.task, 0) + int(y[s["start_frame"]:s["end_frame"], s["step"] - 1].sum())
        present[v.task] = present.get(v.task, 0) + len({s["step"] for s in v.segments})
    expected = 100 * np.mean([hits[t] / present[t] for t in sorted(hits)])
    assert recall_of(w, ids, lambda vid, t, k: uniform_assignment(t, k))["recall"] == pytest.approx(expected)


def test_random_assignment_places_each_step_once_in_order():
    y = random_assignment(20, 5, np.random.default_rng(0))
    assert (y.sum(0) == 1).all() and (np.diff(y.argmax(0)) > 0).all()


def test_zero_shot_taco_beats_random_frames_and_the_cli_stamps_the_protocol(taco_run, world, tmp_path):
    from vidlang.cli import main

    result = tmp_path / "r.json"
    assert main(["evaluate", str(taco_run), "--task", "step_localization", "--data", str(world), "--split", "validate",
                 "--out", str(result)]) == 0
    data = json.loads(result.read_text())
    m = data["metrics"]
    assert "zero-shot TACo" in data["scoring"] and data["split"] == "world:validate"
    assert data["extra"]["train_overlap"] == 0
    assert m["recall"] > m["random_recall"] + 10, m


def test_trained_frame_head_beats_evenly_spread_steps(world, tmp_path):
    from vidlang.train import train

    summary = train(world_config("step_localization", world, tmp_path / "run", "probe.encoder=raw", "train.steps=60",
                                 "train.eval_every=30", "train.save_every=30"), progress=False)
    best = summary["best"]["metrics"]
    assert best["recall"] > best["evenly_spread_recall"] + 10, best
