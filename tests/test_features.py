"""Feature stores: every backend round-trips, and every bad input raises a DataError naming it."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from vidlang.data.features import FeatureStore, natural_key, open_store
from vidlang.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RNG = np.random.default_rng(0)


def feats(t: int, d: int = 8) -> np.ndarray:
    return RNG.standard_normal((t, d)).astype(np.float32)


def write_store(kind: str, root: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` in one backend's layout and return the path to open."""
    if kind == "npy":
        root.mkdir(parents=True, exist_ok=True)
        for vid, a in arrays.items():
            np.save(root / f"{vid}.npy", a)
        return root
    if kind == "stacked":
        root.mkdir(parents=True, exist_ok=True)
        np.save(root / "features.npy", np.stack(list(arrays.values())))
        (root / "video_ids.txt").write_text("\n".join(arrays) + "\n")
        return root
    if kind == "hdf5":
        path = root.with_suffix(".h5")
        with h5py.File(path, "w") as f:
            for vid, a in arrays.items():
                f.create_dataset(vid, data=a)
        return path
    if kind == "pickle":
        path = root.with_suffix(".pkl")
        path.write_bytes(pickle.dumps(arrays))
        return path
    raise AssertionError(kind)


def open_kind(kind: str, path: Path, **kw) -> FeatureStore:
    return open_store(path, allow_pickle=(kind == "pickle"), **kw)


VARIABLE = ["npy", "hdf5", "pickle"]  # backends that hold a different T per video


@pytest.mark.parametrize("kind", VARIABLE)
def test_round_trip_variable_lengths(tmp_path, kind):
    arrays = {"video10": feats(3), "video2": feats(7), "video1": feats(1)}
    store = open_kind(kind, write_store(kind, tmp_path / "s", arrays))
    assert isinstance(store, FeatureStore)
    assert store.ids == ["video1", "video2", "video10"]  # natural order
    assert len(store) == 3 and store.dim == 8 and "video2" in store and "video3" not in store
    for vid, a in arrays.items():
        out = store[vid]
        assert out.dtype == np.float32 and out.shape == a.shape
        np.testing.assert_array_equal(out, a)
    man = store.manifest()
    json.dumps(man)
    assert man["num_videos"] == 3 and man["dim"] == 8 and man["format"]
    assert len(man["sha256_of_ids"]) == 64


def test_stacked_round_trip_and_file_order(tmp_path):
    arrays = {"b": feats(5), "a": feats(5), "c": feats(5)}
    store = open_store(write_store("stacked", tmp_path / "s", arrays))
    assert store.ids == ["b", "a", "c"]  # row order of video_ids.txt
    assert store.dim == 8 and store.manifest()["format"] == "stacked_npy"
    for vid, a in arrays.items():
        np.testing.assert_array_equal(store[vid], a)
    store["a"][0, 0] = 99.0  # reads are copies: the memory map is never written
    assert store["a"][0, 0] == arrays["a"][0, 0]


def test_stacked_count_mismatch(tmp_path):
    root = write_store("stacked", tmp_path / "s", {"a": feats(2), "b": feats(2)})
    (root / "video_ids.txt").write_text("a\nb\nc\n")
    with pytest.raises(DataError, match=r"2 rows.*video_ids.txt lists 3"):
        open_store(root)


def test_stacked_missing_ids_file(tmp_path):
    root = write_store("stacked", tmp_path / "s", {"a": feats(2)})
    (root / "video_ids.txt").unlink()
    with pytest.raises(DataError, match="video_ids.txt"):
        open_store(root)


def test_stacked_duplicate_ids(tmp_path):
    root = write_store("stacked", tmp_path / "s", {"a": feats(2), "b": feats(2)})
    (root / "video_ids.txt").write_text("a\na\n")
    with pytest.raises(DataError, match="duplicate"):
        open_store(root)


def test_one_dimensional_is_one_step(tmp_path):
    store = open_store(write_store("npy", tmp_path / "s", {"v": np.arange(8, dtype=np.float64)}))
    out = store["v"]
    assert out.shape == (1, 8) and out.dtype == np.float32


def test_meta_json_and_fps_override(tmp_path):
    root = write_store("npy", tmp_path / "s", {"v": feats(4)})
    (root / "meta.json").write_text(json.dumps({"fps": 1.5, "extractor": "s3d"}))
    store = open_store(root)
    assert store.fps == 1.5 and store.meta["extractor"] == "s3d"
    assert open_store(root, fps=2.0).fps == 2.0
    assert store.manifest()["fps"] == 1.5
    assert open_store(write_store("npy", tmp_path / "t", {"v": feats(4)})).fps is None


def test_bad_meta_json(tmp_path):
    root = write_store("npy", tmp_path / "s", {"v": feats(4)})
    (root / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json"):
        open_store(root)
    (root / "meta.json").write_text(json.dumps({"fps": -1}))
    with pytest.raises(DataError, match="fps"):
        open_store(root)


def test_hdf5_attrs_nested_and_pickling(tmp_path):
    path = tmp_path / "f.hdf5"
    with h5py.File(path, "w") as f:
        f.attrs["fps"] = 1.0
        f.attrs["extractor"] = "i3d"
        f.create_dataset("top", data=feats(2))
        f.create_group("grp").create_dataset("inner", data=feats(3))
    store = open_store(path)
    assert store.ids == ["grp/inner", "top"] and store.fps == 1.0 and store.meta["extractor"] == "i3d"
    json.dumps(store.manifest())
    assert store["grp/inner"].shape == (3, 8)
    clone = pickle.loads(pickle.dumps(store))  # as a DataLoader worker would get it
    np.testing.assert_array_equal(clone["top"], store["top"])


def test_pickle_refused_without_opt_in(tmp_path):
    path = write_store("pickle", tmp_path / "s", {"v": feats(2)})
    with pytest.raises(DataError, match="allow_pickle=True") as e:
        open_store(path)
    assert "s.pkl" in str(e.value) and "arbitrary code" in str(e.value)
    assert open_store(path, allow_pickle=True)["v"].shape == (2, 8)


def test_pickle_not_a_dict(tmp_path):
    path = tmp_path / "x.pickle"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="x.pickle"):
        open_store(path, allow_pickle=True)


@pytest.mark.parametrize("kind", VARIABLE)
@pytest.mark.parametrize("bad, pattern", [
    (np.zeros((2, 3, 8), np.float32), r"'bad'.*\(2, 3, 8\)"),
    (np.zeros((4, 5), np.float32), r"'bad'.*\(4, 5\).*expected dim 8"),
    (np.zeros((0, 8), np.float32), r"'bad'.*empty"),
    (np.array([[0.0] * 7 + [np.nan]], np.float32), r"'bad'.*NaN"),
    (np.array([[np.inf] * 8], np.float32), r"'bad'.*inf"),
])
def test_bad_arrays(tmp_path, kind, bad, pattern):
    store = open_kind(kind, write_store(kind, tmp_path / "s", {"a_good": feats(3), "bad": bad}))
    assert store.dim == 8
    store["a_good"]
    with pytest.raises(DataError, match=pattern):
        store["bad"]


@pytest.mark.parametrize("kind", VARIABLE + ["stacked"])
def test_missing_id_names_id_and_store(tmp_path, kind):
    path = write_store(kind, tmp_path / "s", {"v": feats(2)})
    store = open_kind(kind, path)
    with pytest.raises(DataError, match="nope") as e:
        store["nope"]
    assert str(path) in str(e.value)


def test_stacked_nan(tmp_path):
    a = feats(2)
    a[1, 3] = np.nan
    store = open_store(write_store("stacked", tmp_path / "s", {"ok": feats(2), "broken": a}))
    store["ok"]
    with pytest.raises(DataError, match="'broken'.*NaN"):
        store["broken"]


def test_truncated_npy_names_file(tmp_path):
    root = write_store("npy", tmp_path / "s", {"a": feats(4), "b": feats(40)})
    data = (root / "b.npy").read_bytes()
    (root / "b.npy").write_bytes(data[: len(data) // 2])
    (root / "c.npy").write_bytes(b"garbage")
    store = open_store(root)
    assert store.ids == ["a", "b", "c"] and store.dim == 8
    for vid in ("b", "c"):
        with pytest.raises(DataError, match=f"{vid}.npy"):
            store[vid]


def test_truncated_hdf5_names_file(tmp_path):
    path = write_store("hdf5", tmp_path / "s", {"v": feats(2)})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="s.h5"):
        open_store(path)


@pytest.mark.parametrize("name, pattern", [
    ("absent", "does not exist"),
    ("feats.csv", "unknown feature store"),
    ("empty_dir", "no .npy files"),
])
def test_open_errors(tmp_path, name, pattern):
    path = tmp_path / name
    if name == "feats.csv":
        path.write_text("x")
    elif name == "empty_dir":
        path.mkdir()
    with pytest.raises(DataError, match=pattern):
        open_store(path)


def test_bad_fps_argument(tmp_path):
    with pytest.raises(DataError, match="fps"):
        open_store(write_store("npy", tmp_path / "s", {"v": feats(2)}), fps=0)


def test_natural_key():
    assert sorted(["v10", "v2", "a", "v1b", "v1"], key=natural_key) == ["a", "v1", "v1b", "v2", "v10"]


def test_manifest_hash_tracks_ids(tmp_path):
    s1 = open_store(write_store("npy", tmp_path / "a", {"x": feats(2), "y": feats(2)}))
    s2 = open_store(write_store("npy", tmp_path / "b", {"x": feats(3), "y": feats(1)}))
    s3 = open_store(write_store("npy", tmp_path / "c", {"x": feats(2), "z": feats(2)}))
    assert s1.manifest()["sha256_of_ids"] == s2.manifest()["sha256_of_ids"] != s3.manifest()["sha256_of_ids"]


def test_real_msrvtt_ae128_dev():
    root = SHARED / "msrvtt-ae128-dev"
    if not (root / "features.npy").exists():
        pytest.skip("shared msrvtt-ae128-dev data not present")
    store = open_store(root)
    assert len(store) == 800 and store.dim == 128 and store.ids[:2] == ["video0", "video1"]
    assert store.ids[-1] == "video799" and store.fps is None
    row = np.load(root / "features.npy", mmap_mode="r")[676]
    np.testing.assert_array_equal(store["video676"], row)
    assert store["video676"].shape == (50, 128)
