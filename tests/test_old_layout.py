"""Checkpoints written by the flat layout (commit e3c9cdb) still load and give the same outputs.

tests/fixtures/old-layout/ was written by its make_fixture.py at that commit: a tiny TACo and a tiny
MV-GPT on the conftest data, with a 33-word BERT, and the similarity matrix and captions they gave then.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from conftest import make_data

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "old-layout"


def test_old_taco_checkpoint_scores_the_same(tmp_path, monkeypatch):
    from vidlang.api import load_model
    from vidlang.data.annotations import read_annotations
    from vidlang.data.features import open_store
    from vidlang.evaluation.retrieval import similarity

    monkeypatch.chdir(REPO)  # the fixture's config names its text encoder relative to the repo root
    data = make_data(tmp_path / "data")
    expected = json.loads((FIXTURE / "expected.json").read_text())
    loaded = load_model(FIXTURE / "taco")
    clips = [c for c in read_annotations(data / "annotations.json") if c.split == "validate"]
    sim, text_to_video = similarity(loaded.model, loaded.dataset(clips, open_store(data)), loaded.cfg.eval)
    assert text_to_video == expected["text_to_video"]
    torch.testing.assert_close(sim, torch.tensor(expected["similarity"]), rtol=1e-5, atol=1e-5)


def test_old_mvgpt_checkpoint_captions_the_same(tmp_path, monkeypatch):
    from vidlang.api import caption, load_model

    monkeypatch.chdir(REPO)
    data = make_data(tmp_path / "data")
    expected = json.loads((FIXTURE / "expected.json").read_text())
    captioner = load_model(FIXTURE / "mvgpt")
    feats = np.load(data / "features.npy")[16:20]
    assert caption(captioner, list(feats)) == expected["captions"]
