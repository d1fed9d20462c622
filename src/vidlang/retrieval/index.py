"""A search index: every clip of a feature store encoded once by a TACo checkpoint.

    INDEX/
      index.json        format, checkpoint (path, sha256 of its weights, step, git commit, config
                        sha256), store manifest (path, fps, extractor meta.json), the store's extractor
                        record (every video's, or None), FAISS settings
      video_ids.txt     one video id per clip (a video may hold several clips)
      segments.npy      (N, 2) float64 clip start/end in seconds; NaN = start/end of the video
      frames.npy        (N, T) int32 source feature index of each encoded frame; -1 on padding
      pooled.npy        (N, d) float32 pooled video embeddings x̄ (before any normalisation)
      tokens.npy        (N, T, d) float16 (or float32) video tokens, memory-mapped on load
      mask.npy          (N, T) bool, True on real frames
      faiss.index       FAISS inner-product index over the s1 vectors (absent with ``faiss="none"``)
      spoken_*          with ``transcripts``: the clips' speech as a second text field (retrieval/spoken.py)

The folder is written under a temporary name and renamed, so a reader never sees half an index.
No pickle anywhere: ``.npy`` files are loaded with ``allow_pickle=False``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidlang.data.dataset import cut_segment, sample_frames
from vidlang.data.features import FeatureStore, open_store
from vidlang.data.records import Clip
from vidlang.errors import CheckpointError, ConfigError, DataError
from vidlang.evaluation.scoring import EncodedSet
from vidlang.inference import LoadedModel, encode_video, load_model
from vidlang.models.blocks import Encoded
from vidlang.retrieval.spoken import SpokenField, build_spoken_field, load_spoken
from vidlang.retrieval.stage_one import FaissSettings, build_faiss, faiss_module

FORMAT = 1
_ARRAYS = ("segments", "frames", "pooled", "tokens", "mask")
_HASHES: dict[tuple, str] = {}


@dataclass
class ClipIndex:
    """Encoded clips plus the model that encoded them (needed for the query side and fusion)."""

    loaded: LoadedModel
    video_ids: list[str]
    segments: np.ndarray  # (N, 2) float64
    frames: np.ndarray  # (N, T) int32
    pooled: np.ndarray  # (N, d) float32
    tokens: np.ndarray  # (N, T, d) float16/float32, often a memory map
    mask: np.ndarray  # (N, T) bool
    fps: float | None = None
    meta: dict = field(default_factory=dict)
    faiss_index: Any = None
    path: Path | None = None
    spoken: SpokenField | None = None  # the clips' transcripts, when built with them

    def __len__(self) -> int:
        return len(self.video_ids)

    def encoded(self, rows: np.ndarray | list[int]) -> EncodedSet:
        """Rows of the index as an :class:`EncodedSet` (float32, on the model's device)."""
        rows = np.asarray(rows, dtype=np.int64)
        device = next(self.loaded.model.parameters()).device
        as_t = lambda a, dtype: torch.from_numpy(np.ascontiguousarray(a[rows])).to(device, dtype)  # noqa: E731
        return EncodedSet(Encoded(as_t(self.tokens, torch.float32), as_t(self.mask, torch.bool),
                                  as_t(self.pooled, torch.float32)))

    def clip_span(self, row: int) -> tuple[float | None, float | None]:
        start, end = self.segments[row]
        return (None if math.isnan(start) else float(start)), (None if math.isnan(end) else float(end))


# -- checkpoint identity -------------------------------------------------------------------------
def _sha256(file: Path) -> str:
    st = file.stat()
    key = (str(file.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def checkpoint_identity(loaded: LoadedModel) -> dict:
    """What ties an index to its checkpoint: the sha256 of the weights, plus provenance."""
    folder = Path(loaded.checkpoint)
    config = folder / "config.yaml"
    return {
        "path": str(folder.resolve()),
        "weights_sha256": _sha256(folder / "model.safetensors"),
        "config_sha256": _sha256(config) if config.is_file() else None,
        "step": loaded.meta.get("step"),
        "git_commit": loaded.meta.get("git_commit"),
        "model": loaded.meta.get("model"),
        "video_dim": loaded.meta.get("video_dim"),
    }


def _check_checkpoint(meta: dict, loaded: LoadedModel, where: Path) -> None:
    built = meta.get("checkpoint", {})
    given = checkpoint_identity(loaded)
    if built.get("weights_sha256") != given["weights_sha256"]:
        raise CheckpointError(
            f"index {where} was built with checkpoint {built.get('path')} (step {built.get('step')}), "
            f"not with {given['path']} (step {given['step']}): their weights differ; rebuild the index")


# -- building ------------------------------------------------------------------------------------
def read_clips(path: str | Path) -> list[Clip]:
    """A clip list: one ``video_id`` or ``video_id start end`` (seconds) per line; ``#`` comments."""
    path, clips = Path(path), []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read clip list {path}: {e}") from e
    for n, line in enumerate(lines, 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        try:
            if len(parts) == 1:
                clips.append(Clip(parts[0], ""))
            elif len(parts) == 3:
                clips.append(Clip(parts[0], "", float(parts[1]), float(parts[2])))
            else:
                raise ValueError(f"{len(parts)} fields")
        except ValueError as e:
            raise DataError(f"{path}:{n}: expected 'video_id' or 'video_id start end', got {line!r} ({e})") from e
    if not clips:
        raise DataError(f"clip list {path} holds no clips")
    return clips


def s1_vectors(loaded: LoadedModel, pooled: torch.Tensor) -> np.ndarray:
    """The vectors whose inner product is s1 (normalised iff the model normalises)."""
    enc = Encoded(pooled[:, None], torch.ones(len(pooled), 1, dtype=torch.bool), pooled)
    return np.ascontiguousarray(loaded.model._normalise(enc).pooled.detach().cpu().numpy(), dtype=np.float32)


def _arrays(folder: Path | None, n: int, steps: int, width: int, token_dtype: str) -> dict[str, np.ndarray]:
    shapes = {"segments": ((n, 2), np.float64), "frames": ((n, steps), np.int32), "pooled": ((n, width), np.float32),
              "tokens": ((n, steps, width), np.dtype(token_dtype)), "mask": ((n, steps), np.bool_)}
    if folder is None:
        return {k: np.zeros(s, t) for k, (s, t) in shapes.items()}
    return {k: np.lib.format.open_memmap(folder / f"{k}.npy", "w+", t, s) for k, (s, t) in shapes.items()}


def _source_frames(clip: Clip, n: int, fps: float | None, max_frames: int) -> np.ndarray:
    """Source feature indices of the frames the model sees (the dataset's own cut and subsampling)."""
    index = np.arange(n)[:, None]
    return sample_frames(cut_segment(index, clip.start, clip.end, fps, clip.video_id), max_frames)[:, 0]


def _store_manifest(store: Any) -> dict:
    """The store's provenance; its meta.json (e.g. extractor metadata) is read defensively."""
    try:
        manifest = dict(store.manifest())
    except Exception as e:  # noqa: BLE001 - a store view may lack manifest()
        manifest = {"path": str(getattr(store, "path", "")), "num_videos": len(store.ids), "manifest_error": str(e)}
    meta = manifest.get("meta", getattr(store, "meta", None))
    manifest["meta"] = meta if isinstance(meta, dict) else {}
    return json.loads(json.dumps(manifest, default=str))  # JSON-safe


def store_extractor(store: Any, meta: dict) -> dict | None:
    """The extractor record shared by every video of the store (open_store refuses a mixed store), or None."""
    if isinstance(meta.get("extractor"), dict):
        return meta["extractor"]
    path, ids = getattr(store, "path", None), getattr(store, "ids", [])
    if path is None or not ids:
        return None
    try:
        rec = json.loads((Path(path) / f"{ids[0]}.meta.json").read_bytes().decode("utf-8")).get("extractor")
    except (OSError, ValueError, AttributeError):
        return None
    return rec if isinstance(rec, dict) else None


@torch.no_grad()
def build_index(
    loaded: LoadedModel,
    store: FeatureStore | str | Path,
    out: str | Path | None = None,
    *,
    clips: list[Clip] | None = None,
    faiss: FaissSettings | str = "auto",
    token_dtype: str = "float16",
    batch_size: int = 256,
    skip_bad: bool = False,
    overwrite: bool = False,
    fps: float | None = None,
    progress: bool = False,
    transcripts: str | Path | None = None,
) -> ClipIndex:
    """Encode every clip (default: every whole video of ``store``) once; write ``out`` atomically.
    ``transcripts``: a transcript file (e.g. from ``vidlang transcribe``) kept as the spoken field.

    ``out=None`` keeps the index in memory. ``token_dtype`` float16 halves the disk of the token
    features (s2 and s3 then differ from float32 by ~1e-3 relative); float32 reproduces them exactly.
    """
    settings = FaissSettings(kind=faiss) if isinstance(faiss, str) else faiss
    if getattr(loaded, "members", None):
        import warnings

        warnings.warn(f"{loaded.checkpoint} is one of {1 + len(loaded.members)} models of its run (train.members): "
                      "the index and search use this one alone, while `vidlang evaluate` averages all of them",
                      stacklevel=2)
    if token_dtype not in ("float16", "float32"):
        raise ConfigError(f"token_dtype must be float16 or float32, not {token_dtype!r}")
    store = open_store(store, fps=fps) if isinstance(store, (str, Path)) else store
    fps = fps if fps is not None else getattr(store, "fps", None)
    if store.dim != loaded.model.video_dim:
        raise DataError(f"feature store {getattr(store, 'path', '')} has dim {store.dim}, "
                        f"but checkpoint {loaded.checkpoint} expects {loaded.model.video_dim}")
    clips = [Clip(v, "") for v in store.ids] if clips is None else list(clips)
    if not clips:
        raise DataError(f"nothing to index in {getattr(store, 'path', 'the store')}")
    out = Path(out) if out is not None else None
    if out is not None and out.exists() and not overwrite:
        raise DataError(f"{out} already exists: pass overwrite=True (CLI: --overwrite) to replace it")
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}" if out is not None else None
    try:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        max_frames = loaded.cfg.data.max_frames
        arrays = _arrays(tmp, len(clips), max_frames, loaded.model.width, token_dtype)
        kept, skipped, row = [], {}, 0
        from tqdm.auto import tqdm

        for start in tqdm(range(0, len(clips), batch_size), desc="index", unit="batch", disable=not progress):
            feats, frames = [], []
            for clip in clips[start:start + batch_size]:
                try:
                    video = store[clip.video_id]
                    idx = _source_frames(clip, len(video), fps, max_frames)
                except DataError as e:
                    if not skip_bad:
                        raise
                    skipped[clip.video_id] = str(e)
                    continue
                feats.append(video[idx])
                frames.append(idx)
                kept.append(clip)
            if not feats:
                continue
            enc = encode_video(loaded, feats, batch_size=len(feats)).encoded
            rows, steps = slice(row, row + len(feats)), enc.tokens.shape[1]
            arrays["tokens"][rows, :steps] = enc.tokens.cpu().numpy().astype(token_dtype)
            arrays["mask"][rows, :steps] = enc.mask.cpu().numpy()
            arrays["pooled"][rows] = enc.pooled.cpu().numpy()
            arrays["frames"][rows] = -1
            for i, (idx, clip) in enumerate(zip(frames, kept[-len(feats):])):
                arrays["frames"][row + i, : len(idx)] = idx
                arrays["segments"][row + i] = [np.nan if clip.start is None else clip.start,
                                               np.nan if clip.end is None else clip.end]
            row += len(feats)
        if row == 0:
            raise DataError(f"every clip was skipped as bad (e.g. {next(iter(skipped.items()))})")
        if row < len(clips):  # some clips were skipped: keep the first ``row`` rows
            arrays = _truncate(arrays, row, tmp)
        vectors = np.concatenate([s1_vectors(loaded, torch.from_numpy(np.asarray(arrays["pooled"][i:i + 65536])))
                                  for i in range(0, row, 65536)])
        index = build_faiss(vectors, settings)
        meta = {
            "format": FORMAT, "num_clips": row, "max_frames": max_frames, "width": loaded.model.width,
            "token_dtype": token_dtype, "normalize": bool(loaded.model.cfg.normalize), "fps": fps,
            "checkpoint": checkpoint_identity(loaded), "store": (manifest := _store_manifest(store)),
            "extractor": store_extractor(store, manifest["meta"]),  # what `vidlang serve` runs on uploads
            "faiss": {**settings.__dict__, "built": None if index is None else type(index).__name__},
            "skipped": skipped,
        }
        ids = [c.video_id for c in kept]
        spoken = None if transcripts is None else build_spoken_field(ids, np.asarray(arrays["segments"]), transcripts)
        meta["spoken"] = None if spoken is None else spoken.meta
        if tmp is None:
            return ClipIndex(loaded, ids, *(arrays[k] for k in _ARRAYS), fps=fps, meta=meta, faiss_index=index,
                             spoken=spoken)
        if spoken is not None:
            spoken.save(tmp)
        for a in arrays.values():
            a.flush()
        del arrays
        _finish(tmp, out, ids, index, meta)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_index(out, loaded)


def _truncate(arrays: dict[str, np.ndarray], rows: int, tmp: Path | None) -> dict[str, np.ndarray]:
    """The first ``rows`` rows of each array (files rewritten chunk by chunk, never all in memory)."""
    if tmp is None:
        return {k: a[:rows] for k, a in arrays.items()}
    out = {}
    for k, a in arrays.items():
        part = tmp / f"{k}.part.npy"
        new = np.lib.format.open_memmap(part, "w+", a.dtype, (rows, *a.shape[1:]))
        for start in range(0, rows, 4096):
            new[start:start + 4096] = a[start:min(start + 4096, rows)]
        new.flush()
        del new
        os.replace(part, tmp / f"{k}.npy")
        out[k] = np.load(tmp / f"{k}.npy", mmap_mode="r+", allow_pickle=False)
    return out


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():  # replace: move the old one aside first, so ``out`` is never half-written
        old = out.parent / f".old-{out.name}-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _finish(tmp: Path, out: Path, ids: list[str], index: Any, meta: dict) -> None:
    """Write the small files into ``tmp``, make everything durable, rename ``tmp`` to ``out``."""
    (tmp / "video_ids.txt").write_text("".join(f"{v}\n" for v in ids), encoding="utf-8")
    if index is not None:
        faiss_module().write_index(index, str(tmp / "faiss.index"))
    (tmp / "index.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    for f in tmp.iterdir():  # durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _publish(tmp, out)


def save_index(index: ClipIndex, out: str | Path, overwrite: bool = False) -> Path:
    """Write an (in-memory) index to ``out``, atomically."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists: pass overwrite=True (CLI: --overwrite) to replace it")
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for k in _ARRAYS:
            np.save(tmp / f"{k}.npy", np.asarray(getattr(index, k)), allow_pickle=False)
        if index.spoken is not None:
            index.spoken.save(tmp)
        _finish(tmp, out, index.video_ids, index.faiss_index, index.meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_index(path: str | Path, model: LoadedModel | str | Path | None = None, *, which: str = "best",
               mmap: bool = True, device: str = "cpu") -> ClipIndex:
    """Open an index folder. ``model``: the loaded model or a checkpoint/run folder to search with;
    it must hold the very weights the index was built with (CheckpointError otherwise). ``None``
    loads the checkpoint recorded in the index (on ``device``)."""
    path = Path(path)
    try:
        meta = json.loads((path / "index.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not a vidlang index (cannot read index.json: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path / 'index.json'} has format {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                        f"expected {FORMAT}")
    if model is None:
        recorded = meta.get("checkpoint", {}).get("path")
        if not recorded or not Path(recorded).exists():
            raise CheckpointError(f"index {path} was built with checkpoint {recorded}, which is gone: give the checkpoint")
        model = recorded
    loaded = model if isinstance(model, LoadedModel) else load_model(model, which, kind="taco", device=device)
    _check_checkpoint(meta, loaded, path)
    arrays = {}
    for k in _ARRAYS:
        try:
            arrays[k] = np.load(path / f"{k}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {path / f'{k}.npy'}: {e}") from e
    try:
        ids = (path / "video_ids.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path / 'video_ids.txt'}: {e}") from e
    n, steps = len(ids), arrays["tokens"].shape[1] if arrays["tokens"].ndim == 3 else -1
    expected = {"segments": (n, 2), "frames": (n, steps), "pooled": (n, loaded.model.width),
                "tokens": (n, steps, loaded.model.width), "mask": (n, steps)}
    for k, shape in expected.items():
        if arrays[k].shape != shape:
            raise DataError(f"{path / f'{k}.npy'} has shape {arrays[k].shape}, expected {shape} ({n} clips)")
    index = None
    if (path / "faiss.index").is_file():
        try:
            index = faiss_module().read_index(str(path / "faiss.index"))
        except RuntimeError as e:
            raise DataError(f"cannot read {path / 'faiss.index'}: {e}") from e
        if index.ntotal != n:
            raise DataError(f"{path / 'faiss.index'} holds {index.ntotal} vectors, expected {n}")
    return ClipIndex(loaded, ids, *(arrays[k] for k in _ARRAYS), fps=meta.get("fps"), meta=meta,
                     faiss_index=index, path=path, spoken=load_spoken(path, meta.get("spoken"), n))
