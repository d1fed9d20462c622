"""Feature stores: map a video id to a float32 (T, D) feature sequence.

Backends (picked by :func:`open_store` from the path):

- a folder of ``<video_id>.npy`` files, memory-mapped on read;
- a folder with one stacked ``features.npy`` (N, T, D) plus ``video_ids.txt``;
- an HDF5 file (``.h5``/``.hdf5``) with one dataset per video id;
- a UniVL-style pickle ``{video_id: ndarray}`` (``.pkl``/``.pickle``), only with ``allow_pickle=True``.

Every read is validated (shape, dim, NaN/inf, T > 0); a bad read raises
:class:`~vidlang.errors.DataError` naming the video id and the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections import Counter
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vidlang.errors import DataError

__all__ = ["FeatureStore", "open_store", "natural_key", "validate_features", "check_extractor", "ENTRY_SUFFIX"]

# Errors numpy/h5py/pickle raise on unreadable or truncated files.
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, TypeError, pickle.UnpicklingError)


@runtime_checkable
class FeatureStore(Protocol):
    ids: list[str]
    dim: int
    fps: float | None
    path: Path
    meta: dict

    def __getitem__(self, video_id: str) -> np.ndarray: ...
    def __contains__(self, video_id: object) -> bool: ...
    def __len__(self) -> int: ...
    def manifest(self) -> dict: ...


def natural_key(s: str) -> list:
    """Sort key putting ``video2`` before ``video10``."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", s) if p]


def validate_features(arr: Any, video_id: str, dim: int | None, source: Path | str) -> np.ndarray:
    """Check one video's features and return them as a fresh float32 (T, D) array."""
    try:
        arr = np.array(arr, dtype=np.float32)  # copies out of any memory map
    except (TypeError, ValueError) as e:
        raise DataError(f"features of video {video_id!r} in {source} are not numeric: {e}") from e
    if arr.ndim == 1:
        arr = arr[None, :]  # (D,) -> one time step
    if arr.ndim != 2:
        raise DataError(
            f"features of video {video_id!r} in {source} have shape {arr.shape}; expected (T, {dim or 'D'})"
        )
    if dim is not None and arr.shape[1] != dim:
        raise DataError(
            f"features of video {video_id!r} in {source} have shape {arr.shape}; expected dim {dim}"
        )
    if arr.shape[0] == 0:
        raise DataError(f"features of video {video_id!r} in {source} are empty (T == 0)")
    if not np.isfinite(arr).all():
        raise DataError(f"features of video {video_id!r} in {source} contain NaN or inf")
    return arr


def _read_meta(folder: Path) -> dict:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot parse {meta_path}: {e}") from e
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path} must hold a JSON object, not {type(meta).__name__}")
    return meta


# `vidlang extract` writes ``<video_id>.npy`` plus ``<video_id>.meta.json``, whose "extractor" dict
# (backbone, weights hash, sampling, frame size, ...) must be equal across a store.
ENTRY_SUFFIX = ".meta.json"


def differing_keys(a: dict, b: dict) -> str:
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    return "; ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys)


def check_extractor(folder: Path, ids: list[str], meta: dict) -> dict | None:
    """The common ``extractor`` record of an npy-folder store, or None if it has no such records.

    Raises DataError when two videos (or a video and ``meta.json``) were extracted differently,
    or when an extracted store holds a video without its record.
    """
    records: dict[str, dict] = {}
    for vid in ids:
        side = folder / f"{vid}{ENTRY_SUFFIX}"
        if side.is_file():
            try:
                rec = json.loads(side.read_bytes().decode("utf-8"))["extractor"]
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"cannot read the extractor record {side}: {e}") from e
            if not isinstance(rec, dict):
                raise DataError(f"{side}: 'extractor' must be a JSON object, not {type(rec).__name__}")
            records[vid] = rec
    stored = meta.get("extractor") if isinstance(meta.get("extractor"), dict) else None  # a free-form string: no check
    if not records and stored is None:
        return None
    unrecorded = [v for v in ids if v not in records]
    if unrecorded:
        raise DataError(f"feature store {folder} mixes extracted features with {len(unrecorded)} videos that have "
                        f"no extractor record (<id>{ENTRY_SUFFIX}), e.g. {unrecorded[:3]}; re-extract them or "
                        "move them to another store")
    first, ref = next(iter(records.items()))
    for vid, rec in records.items():
        if rec != ref:
            raise DataError(f"feature store {folder} mixes features from different extractors: videos {first!r} "
                            f"and {vid!r} differ in {differing_keys(ref, rec)}")
    if stored is not None and stored != ref:
        raise DataError(f"feature store {folder}: meta.json and video {first!r} name different extractors "
                        f"({differing_keys(stored, ref)})")
    return ref


def _check_fps(fps: Any, source: str) -> float | None:
    if fps is None:
        return None
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = float("nan")
    if not (np.isfinite(value) and value > 0):
        raise DataError(f"fps from {source} must be a positive number, got {fps!r}")
    return value


class _Store:
    """Shared logic: id lookup, read validation, provenance manifest."""

    format = "base"

    def __init__(self, path: Path, ids: list[str], dim: int, fps: float | None, meta: dict):
        if not ids:
            raise DataError(f"feature store {path} holds no videos")
        dup = [v for v, n in Counter(ids).items() if n > 1]
        if dup:
            raise DataError(f"feature store {path} lists {len(dup)} duplicate video ids, e.g. {dup[:5]}")
        try:
            dim = int(dim)
        except (TypeError, ValueError):
            raise DataError(f"feature store {path}: dim must be an integer, got {dim!r}") from None
        self.path, self.ids, self.dim, self.meta = path, ids, dim, meta
        self.fps = fps
        self._index = {v: i for i, v in enumerate(ids)}

    def _raw(self, video_id: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _file_of(self, video_id: str) -> Path:
        return self.path

    def __getitem__(self, video_id: str) -> np.ndarray:
        if video_id not in self._index:
            raise DataError(f"video {video_id!r} is not in feature store {self.path}")
        try:
            raw = self._raw(video_id)
        except DataError:
            raise
        except _READ_ERRORS as e:
            raise DataError(
                f"cannot read features of video {video_id!r} from {self._file_of(video_id)}: {e}"
            ) from e
        return validate_features(raw, video_id, self.dim, self._file_of(video_id))

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._index

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, videos={len(self)}, dim={self.dim}, fps={self.fps})"

    def manifest(self) -> dict:
        return {
            "path": str(self.path),
            "format": self.format,
            "num_videos": len(self.ids),
            "dim": self.dim,
            "fps": self.fps,
            "sha256_of_ids": hashlib.sha256("\n".join(self.ids).encode("utf-8")).hexdigest(),
            "meta": self.meta,
        }


def _npy_shape(file: Path) -> tuple[int, ...]:
    """Shape of a .npy file from a memory map (cheap: no data is read)."""
    return tuple(np.load(file, mmap_mode="r", allow_pickle=False).shape)


class NpyFolderStore(_Store):
    """A folder of ``<video_id>.npy`` files, each (T, D) or (D,)."""

    format = "npy_folder"

    def __init__(self, path: Path, fps: float | None, meta: dict):
        files = {f.stem: f for f in path.glob("*.npy")}
        if not files:
            raise DataError(f"feature folder {path} holds no .npy files")
        ids = sorted(files, key=natural_key)
        self._files = files
        check_extractor(path, ids, meta)
        dim = meta.get("dim")
        if dim is None:  # the first file with a readable header gives D
            for vid in ids:
                try:
                    shape = _npy_shape(files[vid])
                except _READ_ERRORS:
                    continue
                if len(shape) in (1, 2):
                    dim = shape[-1]
                    break
            else:
                raise DataError(f"no .npy file in {path} has a readable (T, D) header")
        super().__init__(path, ids, dim, fps, meta)

    def _file_of(self, video_id: str) -> Path:
        return self._files.get(video_id, self.path)

    def _raw(self, video_id: str) -> np.ndarray:
        return np.load(self._files[video_id], mmap_mode="r", allow_pickle=False)


class StackedNpyStore(_Store):
    """One ``features.npy`` (N, T, D), row i belonging to line i of ``video_ids.txt``."""

    format = "stacked_npy"

    def __init__(self, path: Path, fps: float | None, meta: dict):
        feat_file, ids_file = path / "features.npy", path / "video_ids.txt"
        for f in (feat_file, ids_file):
            if not f.is_file():
                raise DataError(f"stacked feature store {path} needs {f.name}, which is missing")
        try:
            ids = [ln.strip() for ln in ids_file.read_bytes().decode("utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError as e:
            raise DataError(f"{ids_file} is not valid UTF-8: {e}") from e
        try:
            self._array = np.load(feat_file, mmap_mode="r", allow_pickle=False)
        except _READ_ERRORS as e:
            raise DataError(f"cannot read {feat_file}: {e}") from e
        if self._array.ndim != 3:
            raise DataError(f"{feat_file} has shape {self._array.shape}; expected (N, T, D)")
        if self._array.shape[0] != len(ids):
            raise DataError(
                f"{feat_file} has {self._array.shape[0]} rows but {ids_file} lists {len(ids)} ids"
            )
        self._file = feat_file
        super().__init__(path, ids, self._array.shape[2], fps, meta)

    def _file_of(self, video_id: str) -> Path:
        return self._file

    def _raw(self, video_id: str) -> np.ndarray:
        return self._array[self._index[video_id]]


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class HDF5Store(_Store):
    """An HDF5 file with one (T, D) dataset per video id (nested groups give ``a/b`` ids).

    The file is opened once per process on first read, so DataLoader workers each get their own handle.
    """

    format = "hdf5"

    def __init__(self, path: Path, fps: float | None, meta: dict):
        try:
            import h5py
        except ImportError as e:  # pragma: no cover - depends on the install
            raise DataError(f"reading {path} needs h5py: pip install 'vidlang[hdf5]'") from e
        self._h5py = h5py
        shapes: dict[str, tuple] = {}

        def visit(name: str, obj: Any) -> None:  # must return None, or h5py stops visiting
            if isinstance(obj, h5py.Dataset):
                shapes[name] = obj.shape

        try:
            with h5py.File(path, "r") as f:
                f.visititems(visit)
                meta = {**{k: _jsonable(v) for k, v in f.attrs.items()}, **meta}
        except _READ_ERRORS as e:
            raise DataError(f"cannot open HDF5 feature file {path}: {e}") from e
        ids = sorted(shapes, key=natural_key)
        dims = [s[-1] for s in shapes.values() if len(s) in (1, 2)]
        if ids and not dims:
            raise DataError(f"no dataset in {path} has a (T, D) shape")
        if fps is None:
            fps = _check_fps(meta.get("fps"), f"{path} attributes")
        self._handle, self._pid = None, None
        super().__init__(path, ids, meta.get("dim", dims[0] if dims else 0), fps, meta)

    def _raw(self, video_id: str) -> np.ndarray:
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = self._h5py.File(self.path, "r"), os.getpid()
        return self._handle[video_id][()]

    def __getstate__(self) -> dict:  # h5py handles cannot be pickled into workers
        return {**self.__dict__, "_handle": None, "_pid": None, "_h5py": None}

    def __setstate__(self, state: dict) -> None:
        import h5py

        self.__dict__.update(state, _h5py=h5py)


class PickleStore(_Store):
    """A pickled ``{video_id: ndarray}`` dict (UniVL's format), loaded into memory."""

    format = "pickle"

    def __init__(self, path: Path, fps: float | None, meta: dict):
        try:
            with open(path, "rb") as f:
                data = pickle.load(f)  # noqa: S301 - only reached with allow_pickle=True
        except _READ_ERRORS as e:
            raise DataError(f"cannot unpickle feature file {path}: {e}") from e
        if not isinstance(data, dict):
            raise DataError(f"{path} holds a {type(data).__name__}; expected a dict {{video_id: array}}")
        self._data = {str(k): v for k, v in data.items()}
        ids = sorted(self._data, key=natural_key)
        shapes = [np.shape(v) for v in self._data.values()]
        dims = [s[-1] for s in shapes if len(s) in (1, 2)]
        if ids and not dims:
            raise DataError(f"no entry in {path} has a (T, D) shape")
        super().__init__(path, ids, meta.get("dim", dims[0] if dims else 0), fps, meta)

    def _raw(self, video_id: str) -> Any:
        return self._data[video_id]


def open_store(path: str | os.PathLike, *, fps: float | None = None, allow_pickle: bool = False) -> FeatureStore:
    """Open a feature store, detecting its backend from ``path``.

    ``fps`` (features per second) overrides any ``fps`` in the folder's ``meta.json``
    or the HDF5 file's attributes. Pickle files are refused unless ``allow_pickle=True``.
    """
    path = Path(path)
    fps = _check_fps(fps, "the fps argument")
    if not path.exists():
        raise DataError(f"feature store {path} does not exist")
    if path.is_dir():
        meta = _read_meta(path)
        fps = fps if fps is not None else _check_fps(meta.get("fps"), str(path / "meta.json"))
        if (path / "video_ids.txt").exists() or (path / "features.npy").exists():
            return StackedNpyStore(path, fps, meta)
        return NpyFolderStore(path, fps, meta)
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return HDF5Store(path, fps, {})
    if suffix in (".pkl", ".pickle"):
        if not allow_pickle:
            raise DataError(
                f"refusing to unpickle {path}: loading a pickle can run arbitrary code. "
                "If you trust this file, pass allow_pickle=True (CLI: --allow-pickle), "
                "or convert it to a folder of .npy files or an HDF5 file."
            )
        return PickleStore(path, fps, {})
    raise DataError(
        f"unknown feature store {path}: expected a folder of .npy files, a folder with "
        "features.npy + video_ids.txt, an .h5/.hdf5 file, or a .pkl/.pickle file"
    )
