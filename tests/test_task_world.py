"""The procedural task world (worlds/steps.py) and the heads (models/heads.py), end to end on the metrics."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vidlang.data.crosstask import (
    read_annotations,
    read_tasks,
    read_video_list,
    step_targets,
)
from vidlang.data.features import open_store
from vidlang.data.qa import answer_indices, build_answer_vocab
from vidlang.errors import ConfigError, DataError
from vidlang.evaluation.qa import answers_from_logits
from vidlang.evaluation.segmentation import frame_accuracy
from vidlang.evaluation.step_localization import (
    average_recall,
    crosstask_recall,
    localize_steps,
)
from vidlang.models.heads import AnswerClassifier, FrameClassifier, frame_loss
from vidlang.worlds.steps import StepWorldConfig, write_step_world

SMALL = StepWorldConfig(num_videos=40, seed=3)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("steps")
    write_step_world(out, SMALL)  # ~1.5 s on an idle core
    return out, json.loads((out / "world.json").read_text())


def test_deterministic_and_reused(world, tmp_path):
    out, w = world
    again = write_step_world(tmp_path / "w", SMALL)
    assert (again / "world.json").read_bytes() == (out / "world.json").read_bytes()
    for vid in list(w["videos"])[:5]:
        assert (again / "features" / f"{vid}.npy").read_bytes() == (out / "features" / f"{vid}.npy").read_bytes()
    stamp = (again / "world.json").stat().st_mtime_ns
    write_step_world(again, SMALL)
    assert (again / "world.json").stat().st_mtime_ns == stamp  # same meta: reused, not rebuilt
    other = write_step_world(tmp_path / "o", StepWorldConfig(num_videos=40, seed=4))
    assert (other / "world.json").read_bytes() != (out / "world.json").read_bytes()
    with pytest.raises(ConfigError, match="step_frames"):
        StepWorldConfig(step_frames=(5, 2)).check()


def test_layout_labels_and_order(world):
    out, w = world
    store = open_store(out / "features")
    assert len(store) == 40 and store.fps == 4.0 and store.dim == 192
    assert {v["split"] for v in w["videos"].values()} == {"train", "validate"}
    for vid, v in w["videos"].items():
        labels = np.array(v["labels"])
        assert store[vid].shape[0] == v["n_frames"] == len(labels)
        assert labels[0] == 0 and labels[-1] == 0  # background before the first and after the last step
        task = w["tasks"][v["task"]]
        steps = [s["step"] for s in v["segments"]]
        assert steps == sorted(set(steps)) and len(steps) >= 2  # in order, each at most once
        rebuilt = np.zeros_like(labels)
        for s in v["segments"]:
            rebuilt[s["start_frame"]:s["end_frame"]] = s["step_id"]
            assert task["step_ids"][s["step"] - 1] == s["step_id"]
        np.testing.assert_array_equal(rebuilt, labels)
        for a, b in zip(v["segments"], v["segments"][1:]):
            assert b["start_frame"] - a["end_frame"] >= SMALL.background_frames[0]
    assert all(len(w["tasks"][t]["steps"]) in range(3, 6) for t in w["tasks"])
    qa = w["qa"]
    assert {q["type"] for q in qa} == {"object", "colour", "motion"}
    attrs = {(v, s["start"]): w["tasks"][w["videos"][v]["task"]]["attributes"][s["step"] - 1]
             for v in w["videos"] for s in w["videos"][v]["segments"]}
    for q in qa:
        a = attrs[(q["video_id"], q["start"])]
        if q["type"] == "colour":
            assert q["answer"] == a["colour"] and q["answer"] not in q["question"]


def test_crosstask_readers_and_oracle_recall(world):
    out, w = world
    tasks = read_tasks(out / "tasks.txt")
    assert [list(t.steps) for t in tasks.values()] == [d["steps"] for d in w["tasks"].values()]
    ann = read_annotations(out / "annotations", tasks)
    val = read_video_list(out / "videos_val.csv")
    truth, pred = {}, {}
    for task, vids in val.items():
        truth[task], pred[task] = {}, {}
        for vid in vids:
            v, K = w["videos"][vid], tasks[task].n_steps
            yt = step_targets(ann[(task, vid)], v["n_frames"], K, fps=SMALL.fps)
            onehot = np.zeros((v["n_frames"], K))
            for s in v["segments"]:
                onehot[s["start_frame"]:s["end_frame"], s["step"] - 1] = 5.0
            truth[task][vid], pred[task][vid] = yt, localize_steps(onehot)
            assert yt.sum() == sum(s["end_frame"] - s["start_frame"] for s in v["segments"])
    # Skipped steps still get a frame (the DP places every step), in a background gap; present ones are all hit.
    assert average_recall(crosstask_recall(truth, pred)) == 1.0


def _frames(w, store, split):
    ids = [v for v in w["videos"] if w["videos"][v]["split"] == split]
    return [torch.from_numpy(np.array(store[v])) for v in ids], [torch.tensor(w["videos"][v]["labels"]) for v in ids]


def test_frame_classifier_learns_the_world(world):
    torch.manual_seed(0)
    out, w = world
    store = open_store(out / "features")
    n_classes = 1 + max(i for t in w["tasks"].values() for i in t["step_ids"])
    xs, ys = _frames(w, store, "train")
    vx, vy = _frames(w, store, "validate")
    head = FrameClassifier(192, n_classes)
    opt = torch.optim.Adam(head.parameters(), lr=0.01)
    x, y = torch.cat(xs)[None], torch.cat(ys)[None]
    for _ in range(150):
        opt.zero_grad()
        frame_loss(head(x), y).backward()
        opt.step()
    with torch.no_grad():
        preds = [head(v[None])[0].argmax(-1).numpy() for v in vx]
    acc = frame_accuracy(preds, [v.numpy() for v in vy])
    background = frame_accuracy([np.zeros_like(v.numpy()) for v in vy], [v.numpy() for v in vy])
    assert acc > background + 0.2 and acc > 0.7, (acc, background)


def test_answer_classifier_on_colour_questions(world):
    torch.manual_seed(0)
    out, w = world
    store = open_store(out / "features")
    qa = [q for q in w["qa"] if q["type"] == "colour"]
    vocab = build_answer_vocab((q["answer"] for q in qa if w["videos"][q["video_id"]]["split"] == "train"), 5)

    def batch(split):
        items = [q for q in qa if w["videos"][q["video_id"]]["split"] == split]
        feats = [store[q["video_id"]][round(q["start"] * 4):round(q["end"] * 4)] for q in items]
        T = max(len(f) for f in feats)
        x = torch.zeros(len(feats), T, 192)
        mask = torch.zeros(len(feats), T, dtype=torch.bool)
        for i, f in enumerate(feats):
            x[i, :len(f)], mask[i, :len(f)] = torch.from_numpy(np.array(f)), True
        return x, mask, items

    x, mask, items = batch("train")
    y = torch.from_numpy(answer_indices([q["answer"] for q in items], vocab))
    head = AnswerClassifier(192, len(vocab), hidden=32)
    opt = torch.optim.Adam(head.parameters(), lr=0.01)
    keep = y >= 0  # out-of-vocabulary answers cannot be learned
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x, mask)[keep], y[keep]).backward()
        opt.step()
    vx, vmask, vitems = batch("validate")
    with torch.no_grad():
        answers = answers_from_logits(head(vx, vmask).numpy(), vocab)
    acc = np.mean([a == q["answer"] for a, q in zip(answers, vitems)])
    assert acc > 0.6, acc


def test_heads_check_shapes():
    head = FrameClassifier(8, 3)
    assert head(torch.zeros(2, 5, 8)).shape == (2, 5, 3)
    with pytest.raises(DataError, match=r"\(B, T, 8\)"):
        head(torch.zeros(5, 8))
    logits = torch.tensor([[[9.0, 0, 0], [0, 9.0, 0]]])
    full = frame_loss(logits, torch.tensor([[0, 2]]))
    masked = frame_loss(logits, torch.tensor([[0, 2]]), torch.tensor([[True, False]]))
    assert masked < 1e-3 < full  # the wrong frame is masked out
    qa = AnswerClassifier(8, 4, question_dim=3)
    x, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = qa(x, mask, torch.zeros(2, 3))
    x2 = x.clone()
    x2[0, 2:] = 100.0  # padded frames must not change the answer
    assert torch.allclose(qa(x2, mask, torch.zeros(2, 3)), out)
    with pytest.raises(DataError, match="question"):
        qa(x, mask)
    with pytest.raises(ConfigError):
        AnswerClassifier(0, 4)
    assert math.isfinite(float(out.detach().sum()))
