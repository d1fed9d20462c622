"""A sharded clip store for pretraining scale: memory-mapped ``.npy`` shards with an index.

Layout of a store folder (written by :func:`write_shards`, read by :class:`ShardedStore`)::

    meta.json                 format, version, dim, dtype, fps, num_clips, and per shard its name,
                              clip count, frame count and file sizes (written last: no meta, no store)
    shard-00000.npy           (frames, D) features of the shard's clips, concatenated in time
    shard-00000.idx.npy       (clips + 1, 2) int64: row i = [first frame, first byte] of entry i
    shard-00000.jsonl         one JSON object per clip: key, video_id, caption, start, end,
                              transcript, and ``asr`` (the ASR segments inside the clip's span)

Reading entry i of a shard is two slices of memory maps (no parsing of the shard), so a stream
can start at any position (exact resume) and DataLoader workers can read any entry. Only a few
shards are mapped at a time (``max_open``), so memory does not grow with the number of clips.
docs/shards-notes.md gives the measurement that chose this format over WebDataset tar shards.
Streaming (seeded shard order, DDP and worker split, resume) is in :mod:`vidlang.data.shard_stream`.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vidlang.data.dataset import cut_segment
from vidlang.data.features import FeatureStore
from vidlang.data.narration import Utterance, clip_key, read_transcripts
from vidlang.data.records import Clip
from vidlang.errors import ConfigError, DataError
from vidlang.io import atomic_write_text

__all__ = ["FORMAT", "ShardWriter", "write_shards", "ShardedStore", "open_shards", "clip_records"]

FORMAT, VERSION = "vidlang-shards", 1
DTYPES = ("float32", "float16")
META = "meta.json"
PathLike = str | os.PathLike


def shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def _files(folder: Path, name: str) -> dict[str, Path]:
    return {"npy": folder / f"{name}.npy", "idx": folder / f"{name}.idx.npy", "jsonl": folder / f"{name}.jsonl"}


def _is_store(folder: Path) -> bool:
    try:
        return json.loads((folder / META).read_bytes()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


# ----------------------------------------------------------------------------- writing
class ShardWriter:
    """Append clips (features + a JSON record) into shards of ``shard_size`` clips; ``close()``
    writes meta.json. Holds one shard in memory at a time."""

    def __init__(self, out: PathLike, dim: int, *, shard_size: int = 4096, dtype: str = "float32",
                 fps: float | None = None, source: dict | None = None, overwrite: bool = False):
        if shard_size < 1:
            raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, not {dtype!r}")
        self.out = Path(out)
        if self.out.exists() and any(self.out.iterdir()):
            if not overwrite:
                raise DataError(f"{self.out} is not empty; pass overwrite=True (CLI: --overwrite) to replace it")
            if not _is_store(self.out):
                raise DataError(f"refusing to overwrite {self.out}: it is not a {FORMAT} store (or one whose "
                                "writing never finished: it has no meta.json); remove it yourself")
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.dim, self.shard_size, self.dtype, self.fps, self.source = int(dim), shard_size, dtype, fps, source
        self.shards: list[dict] = []
        self._feats: list[np.ndarray] = []
        self._lines: list[bytes] = []

    def add(self, features: np.ndarray, record: Mapping[str, Any]) -> None:
        feats = np.asarray(features, dtype=np.float32)
        where = f"clip {record.get('key', record.get('video_id'))!r}"
        if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] != self.dim:
            raise DataError(f"{where}: features of shape {feats.shape}; expected (T > 0, {self.dim})")
        with np.errstate(over="ignore"):  # checked just below
            stored = feats.astype(self.dtype)
        if not np.isfinite(stored).all():
            raise DataError(f"{where}: features are not finite as {self.dtype} (|x| > 65504 overflows float16)")
        self._feats.append(stored)
        self._lines.append(json.dumps(dict(record), ensure_ascii=False).encode("utf-8") + b"\n")
        if len(self._lines) == self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._lines:
            return
        name = shard_name(len(self.shards))
        files = _files(self.out, name)
        index = np.zeros((len(self._lines) + 1, 2), np.int64)
        index[1:, 0] = np.cumsum([f.shape[0] for f in self._feats])
        index[1:, 1] = np.cumsum([len(b) for b in self._lines])
        np.save(files["npy"], np.concatenate(self._feats))
        np.save(files["idx"], index)
        files["jsonl"].write_bytes(b"".join(self._lines))
        self.shards.append({"name": name, "clips": len(self._lines), "frames": int(index[-1, 0]),
                            "bytes": {k: f.stat().st_size for k, f in files.items()}})
        self._feats, self._lines = [], []

    def close(self) -> Path:
        self._flush()
        if not self.shards:
            raise DataError(f"no clips were written to {self.out}")
        meta = {"format": FORMAT, "version": VERSION, "dim": self.dim, "dtype": self.dtype, "fps": self.fps,
                "num_clips": sum(s["clips"] for s in self.shards), "shard_size": self.shard_size,
                "source": self.source, "shards": self.shards}
        atomic_write_text(self.out / META, json.dumps(meta, indent=1))
        return self.out


def _overlapping(utterances: list[Utterance], start: float | None, end: float | None) -> list[list]:
    lo = -np.inf if start is None else start
    hi = np.inf if end is None else end
    return [[u.start, u.end, u.text] for u in utterances if u.end > lo and u.start < hi]


def clip_records(store: FeatureStore, clips: Iterable[Clip] | None = None,
                 transcripts: Mapping[str, list[Utterance]] | None = None) -> Iterator[tuple[np.ndarray, dict]]:
    """(features of the clip's segment, record) for each clip (default: one whole-video clip per
    video of ``store``). With ``transcripts``, ``asr`` holds the utterances overlapping the clip's
    span, and a clip without its own transcript gets their text joined as ``transcript``."""
    if clips is None:
        clips = (Clip(v, "") for v in store.ids)
    for clip in clips:
        feats = cut_segment(store[clip.video_id], clip.start, clip.end, store.fps, clip.video_id)
        record = {"key": clip_key(clip), "video_id": clip.video_id, "caption": clip.caption or None,
                  "start": clip.start, "end": clip.end, "transcript": clip.transcript}
        if transcripts is not None:
            record["asr"] = _overlapping(transcripts.get(clip.video_id, []), clip.start, clip.end)
            if record["transcript"] is None and record["asr"]:
                record["transcript"] = " ".join(seg[2] for seg in record["asr"])
        yield feats, record


def write_shards(store: FeatureStore, out: PathLike, *, clips: Iterable[Clip] | None = None,
                 transcripts: PathLike | Mapping[str, list[Utterance]] | None = None, shard_size: int = 4096,
                 dtype: str = "float32", overwrite: bool = False) -> ShardedStore:
    """Write ``store`` (optionally cut into ``clips``, with ASR ``transcripts``: a file any
    :func:`~vidlang.data.narration.read_transcripts` format, or its streams) as a sharded store."""
    if transcripts is not None and not isinstance(transcripts, Mapping):
        transcripts = read_transcripts(transcripts)
    source = {"store": store.manifest(), "transcripts": None if transcripts is None else len(transcripts)}
    writer = ShardWriter(out, store.dim, shard_size=shard_size, dtype=dtype, fps=store.fps, source=source,
                         overwrite=overwrite)
    for feats, record in clip_records(store, clips, transcripts):
        writer.add(feats, record)
    return ShardedStore(writer.close())


# ----------------------------------------------------------------------------- reading
class _Shard:
    """One shard's memory maps, checked against meta.json and its index on open."""

    def __init__(self, folder: Path, info: dict, dim: int, dtype: str):
        self.name, self.clips = info["name"], info["clips"]
        self.files = files = _files(folder, self.name)
        for kind, f in files.items():
            if not f.is_file():
                raise DataError(f"shard file {f} is missing")
            if f.stat().st_size != info["bytes"].get(kind):
                raise DataError(f"shard file {f} has {f.stat().st_size} bytes; meta.json says "
                                f"{info['bytes'].get(kind)} (truncated or rewritten)")
        try:
            self.index = np.load(files["idx"], allow_pickle=False)
            # plain ndarray views of the maps: slicing a np.memmap costs several times more
            self.features = np.load(files["npy"], mmap_mode="r", allow_pickle=False).view(np.ndarray)
            self.text = np.memmap(files["jsonl"], dtype=np.uint8, mode="r").view(np.ndarray)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"cannot read shard {self.name} of {folder}: {e}") from e
        idx = self.index
        if idx.shape != (self.clips + 1, 2) or idx.dtype != np.int64:
            raise DataError(f"index {files['idx']} has shape {idx.shape} {idx.dtype}; expected ({self.clips + 1}, 2) int64")
        bad = np.flatnonzero((np.diff(idx[:, 0]) <= 0) | (np.diff(idx[:, 1]) <= 0))
        if idx[0].any() or bad.size:
            raise DataError(f"index {files['idx']}: entry {int(bad[0]) if bad.size else 0} has a bad offset "
                            "(offsets must start at 0 and increase)")
        if self.features.shape != (idx[-1, 0], dim) or self.features.dtype != np.dtype(dtype):
            raise DataError(f"shard {files['npy']} holds {self.features.shape} {self.features.dtype}; its index "
                            f"and meta.json expect ({idx[-1, 0]}, {dim}) {dtype}")
        if idx[-1, 1] != len(self.text):
            raise DataError(f"index {files['idx']} ends at byte {idx[-1, 1]} but {files['jsonl']} has {len(self.text)}")
        self.offsets = idx.tolist()  # Python ints: faster to look up one entry than numpy scalars

    def read(self, i: int) -> tuple[np.ndarray, dict]:
        (f0, b0), (f1, b1) = self.offsets[i], self.offsets[i + 1]
        feats = np.array(self.features[f0:f1], dtype=np.float32)
        if not np.isfinite(feats).all():
            raise DataError(f"shard {self.files['npy']}, entry {i}: features contain NaN or inf")
        try:
            record = json.loads(bytes(self.text[b0:b1]).decode("utf-8"))
            if not isinstance(record, dict) or not isinstance(record.get("video_id"), str):
                raise ValueError("expected an object with a 'video_id' string")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise DataError(f"shard {self.files['jsonl']}, entry {i} (line {i + 1}): bad record: {e}") from e
        return feats, record


class ShardedStore:
    """A :func:`write_shards` folder: ``read(k, i)`` is entry i of shard k, ``locate(c)`` turns a
    global clip index into (k, i). Shards are mapped lazily, at most ``max_open`` at once."""

    def __init__(self, path: PathLike, max_open: int = 4):
        self.path, self.max_open = Path(path), max(1, max_open)
        meta_file = self.path / META
        if not meta_file.is_file():
            raise DataError(f"{self.path} is not a sharded store (no {META}: not written, or written only in part)")
        try:
            meta = json.loads(meta_file.read_bytes().decode("utf-8"))
            self.shards = [dict(s) for s in meta["shards"]]
            for s in self.shards:
                s["name"], s["clips"], s["bytes"] = str(s["name"]), int(s["clips"]), dict(s["bytes"])
            self.dim, self.dtype, self.num_clips = int(meta["dim"]), str(meta["dtype"]), int(meta["num_clips"])
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"cannot read {meta_file}: {e!r}") from e
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise DataError(f"{meta_file} is not a {FORMAT} v{VERSION} store (format {meta.get('format')!r}, "
                            f"version {meta.get('version')!r})")
        if self.dtype not in DTYPES or not self.shards or any(s["clips"] < 1 for s in self.shards):
            raise DataError(f"{meta_file}: dtype {self.dtype!r} or a shard's clip count is bad")
        self.sizes = np.array([s["clips"] for s in self.shards], np.int64)
        if int(self.sizes.sum()) != self.num_clips:
            raise DataError(f"{meta_file} says {self.num_clips} clips but its shards hold {int(self.sizes.sum())}")
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self.fps, self.meta = meta.get("fps"), meta
        self._open: OrderedDict[int, _Shard] = OrderedDict()

    def __len__(self) -> int:
        return self.num_clips

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def shard(self, k: int) -> _Shard:
        shard = self._open.pop(k, None)
        if shard is None:
            shard = _Shard(self.path, self.shards[k], self.dim, self.dtype)
            while len(self._open) >= self.max_open:  # unmap the least recently used
                self._open.popitem(last=False)
        self._open[k] = shard
        return shard

    def read(self, k: int, i: int) -> dict:
        """Entry i of shard k: its record plus ``video`` (float32 (T, D)), ``clip_index``, ``shard``, ``entry``."""
        if not (0 <= k < self.num_shards and 0 <= i < self.shards[k]["clips"]):
            raise DataError(f"{self.path} has no entry {i} in shard {k}")
        feats, record = self.shard(k).read(i)
        return {**record, "video": feats, "clip_index": int(self.starts[k]) + i, "shard": self.shards[k]["name"],
                "entry": i}

    def locate(self, clip_index: int) -> tuple[int, int]:
        if not 0 <= clip_index < self.num_clips:
            raise DataError(f"clip index {clip_index} is outside {self.path} (0..{self.num_clips - 1})")
        k = int(np.searchsorted(self.starts, clip_index, side="right")) - 1
        return k, clip_index - int(self.starts[k])

    def __iter__(self) -> Iterator[dict]:
        for k in range(self.num_shards):
            for i in range(self.shards[k]["clips"]):
                yield self.read(k, i)

    def video_ids(self) -> set[str]:
        """Every record's ``video_id``, read from the shards' jsonl only (no features)."""
        ids: set[str] = set()
        for k in range(self.num_shards):
            shard = self.shard(k)
            for i, line in enumerate(bytes(shard.text).splitlines()):
                try:
                    ids.add(str(json.loads(line)["video_id"]))
                except (ValueError, KeyError, TypeError) as e:
                    raise DataError(f"shard {shard.files['jsonl']}, entry {i} (line {i + 1}): bad record: {e!r}") from e
        return ids

    def verify(self) -> int:
        """Read every entry (raises DataError at the first bad one); returns the number of clips."""
        return sum(1 for _ in self)

    def manifest(self) -> dict:
        return {"path": str(self.path), "format": FORMAT, "num_clips": self.num_clips, "num_shards": self.num_shards,
                "dim": self.dim, "dtype": self.dtype, "fps": self.fps, "source": self.meta.get("source")}

    def __getstate__(self) -> dict:  # DataLoader workers map their own shards
        return {**self.__dict__, "_open": OrderedDict()}

    def __repr__(self) -> str:
        return f"ShardedStore({str(self.path)!r}, clips={self.num_clips}, shards={self.num_shards}, dim={self.dim})"


def open_shards(path: PathLike, max_open: int = 4) -> ShardedStore:
    return ShardedStore(path, max_open)
