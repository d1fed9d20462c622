"""The extraction job: videos -> frame features -> an npy-folder feature store.

Store layout (read by :func:`vidlang.data.features.open_store`):

- ``<video_id>.npy``: float32 (T, D), one row per sampled frame (or per window);
- ``<video_id>.meta.json``: that video's record: ``extractor`` (backbone, weights hash, sampling mode,
  fps, num_frames, window, stride, pool, frame size, dim), source file, decoded-video info, vidlang version;
- ``meta.json``: ``fps`` (features per second, so clip segments can be cut; null for ``num_frames``),
  ``dim`` and the ``extractor``;
- ``extract_summary.json``: the last run's done / skipped-existing / failed (with reasons).

Every file is written atomically, the ``.npy`` before its record, so a video counts as done only
once both exist and agree; an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from vidlang.data.features import ENTRY_SUFFIX, differing_keys, validate_features
from vidlang.errors import ConfigError, DataError
from vidlang.extract.backbones import Backbone, load_backbone
from vidlang.extract.video import Sampling, decode_video, list_videos, window_indices
from vidlang.io import atomic_write_bytes, atomic_write_text

__all__ = ["extract_features", "extractor_record", "format_summary", "SUMMARY_FILE"]

SUMMARY_FILE = "extract_summary.json"
UNTRAINED_WARNING = "features from an UNTRAINED backbone (fixed random weights): for tests and demos only"


def _version() -> str:
    from vidlang.version import __version__

    return __version__


def _decode_job(path: Path, sampling: Sampling, frame_size: int) -> tuple[np.ndarray | None, Any]:
    """Runs in a worker: (frames, info), or (None, reason) for a video that cannot be decoded."""
    try:
        return decode_video(path, sampling, frame_size)
    except DataError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - FFmpeg/OS errors of one bad file must not stop the run
        return None, f"cannot decode {path}: {type(e).__name__}: {e}"


def _decoded(items: list[tuple[str, Path]], sampling: Sampling, frame_size: int,
             workers: int) -> Iterator[tuple[str, Path, np.ndarray | None, Any]]:
    """Decode videos (in ``workers`` processes; 0 = here), yielding as they finish."""
    if workers == 0:
        for vid, path in items:
            yield vid, path, *_decode_job(path, sampling, frame_size)
        return
    # fork: workers inherit the imported modules (spawn would re-import torch in each); they use only PyAV/numpy.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pending = iter(items)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        running: dict = {}
        try:
            while True:
                while len(running) < 2 * workers and (item := next(pending, None)) is not None:
                    running[pool.submit(_decode_job, item[1], sampling, frame_size)] = item
                if not running:
                    return
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    vid, path = running.pop(fut)
                    yield vid, path, *fut.result()
        finally:
            for fut in running:
                fut.cancel()


def embed_frames(backbone: Backbone, frames: np.ndarray, sampling: Sampling, batch_size: int) -> np.ndarray:
    feats = np.concatenate([backbone(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)])
    if sampling.mode != "windows":
        return feats
    windows = window_indices(len(feats), sampling)
    if sampling.pool == "stack":
        return np.stack([feats[idx].reshape(-1) for idx in windows])
    return np.stack([feats[idx].mean(axis=0) for idx in windows])


def extractor_record(bb: Backbone, sampling: Sampling, frame_size: int) -> dict:
    """What a store records about how its features were made (equal records = same features)."""
    return {**bb.describe(), "frame_dim": bb.dim, "dim": bb.dim * (sampling.frames_per_window
            if sampling.pool == "stack" else 1), "sampling": sampling.mode, "fps": sampling.fps,
            "num_frames": sampling.num_frames, "window": sampling.window, "stride": sampling.stride,
            "pool": sampling.pool, "frame_size": frame_size}


def _entry_complete(out: Path, vid: str, extractor: dict) -> bool:
    """True when ``vid`` has a readable record for this extractor and features of the recorded shape."""
    try:
        rec = json.loads((out / f"{vid}{ENTRY_SUFFIX}").read_bytes().decode("utf-8"))
        if rec.get("extractor") != extractor:
            return False
        arr = validate_features(np.load(out / f"{vid}.npy", allow_pickle=False), vid, extractor["dim"], out)
        return arr.shape[0] == rec.get("num_features")
    except (OSError, ValueError, EOFError, UnicodeDecodeError, AttributeError, DataError):
        return False


def _prepare_store(out: Path, extractor: dict, sampling: Sampling) -> None:
    """Create the store or check that it was written by this same extractor, then write meta.json."""
    meta_file = out / "meta.json"
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"cannot parse {meta_file}: {e}") from e
        old = meta.get("extractor") if isinstance(meta, dict) else None
        old = old if isinstance(old, dict) else None  # a hand-written store may name its extractor in a string
        if old is None and any(out.glob("*.npy")):
            raise DataError(f"{out} already holds features not written by vidlang extract; choose another --out")
        if old is not None and old != extractor:
            raise DataError(f"refusing to mix extractors in feature store {out}: its features were extracted "
                            f"differently (stored vs this run: {differing_keys(old, extractor)}); write to another --out")
    elif out.is_dir() and any(out.glob("*.npy")):
        raise DataError(f"{out} already holds .npy files but no meta.json (not written by vidlang extract); "
                        "choose another --out")
    meta = {"format": "vidlang-extract", "fps": sampling.features_per_second, "dim": extractor["dim"],
            "extractor": extractor, "vidlang_version": _version()}
    if not extractor["trained"]:
        meta["warning"] = UNTRAINED_WARNING
    atomic_write_text(meta_file, json.dumps(meta, indent=2) + "\n")


def _write_entry(out: Path, vid: str, path: Path, feats: np.ndarray, info: dict, extractor: dict,
                 sampling: Sampling) -> None:
    (out / f"{vid}{ENTRY_SUFFIX}").unlink(missing_ok=True)  # a stale record must not vouch for new features
    buf = io.BytesIO()
    np.save(buf, feats.astype(np.float32), allow_pickle=False)
    atomic_write_bytes(out / f"{vid}.npy", buf.getvalue())
    rate = sampling.features_per_second
    if rate is None and info.get("duration"):
        rate = len(feats) / info["duration"]
    record = {"video_id": vid, "source": str(path), "num_features": int(feats.shape[0]), "dim": int(feats.shape[1]),
              "features_fps": rate, "extractor": extractor, "video": info, "vidlang_version": _version(),
              "extracted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(out / f"{vid}{ENTRY_SUFFIX}", json.dumps(record, indent=2) + "\n")


def extract_features(
    videos: str | os.PathLike | Sequence[str | os.PathLike],
    backbone: str | Backbone | None,
    out: str | os.PathLike,
    *,
    weights: str | None = None,
    fps: float | None = None,
    num_frames: int | None = None,
    window: float | None = None,
    stride: float | None = None,
    pool: str = "mean",
    frame_size: int | None = None,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "cpu",
    dim: int = 64,
    progress: bool = True,
    on_video: Callable[[str, str], None] | None = None,
) -> dict:
    """Extract frame features of ``videos`` (folder, list file, video file or list of paths) into ``out``.

    Sampling: ``fps`` (default 1 frame/s), or ``num_frames`` per video, or ``window``/``stride``
    seconds at ``fps`` pooled by ``pool`` ("mean" | "stack"); see :mod:`vidlang.extract.video`.
    ``backbone``: "efficientnet-lite0" | "tiny" | "clip" | "resnet" (with ``weights``), a Backbone, or None
    (efficientnet-lite0 when installed); ``frame_size`` defaults to the backbone's decode size (its input
    size, or 256 for efficientnet-lite0, which centre-crops 224 as timm does). Videos decode in ``workers`` processes; the backbone runs here in
    batches of ``batch_size`` frames. Finished videos are skipped; bad videos are reported and skipped.
    ``on_video(video_id, status)`` is called after each video ("done" | "failed").
    Returns the summary dict, also written to ``out/extract_summary.json``.
    """
    from tqdm.auto import tqdm

    sampling = Sampling.from_args(fps=fps, num_frames=num_frames, window=window, stride=stride, pool=pool)
    for name, value, low in (("batch_size", batch_size, 1), ("workers", workers, 0)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    items = list_videos(videos)  # bad input fails before the (slow) model load
    bb = load_backbone(backbone, weights, device=device, dim=dim)
    frame_size = getattr(bb, "decode_size", bb.input_size) if frame_size is None else frame_size
    if not isinstance(frame_size, int) or frame_size < 8:
        raise ConfigError(f"frame_size must be an integer >= 8, got {frame_size!r}")
    extractor = extractor_record(bb, sampling, frame_size)
    out = Path(out)
    _prepare_store(out, extractor, sampling)

    skipped = [vid for vid, _ in items if _entry_complete(out, vid, extractor)]
    done_before = set(skipped)
    todo = [(vid, p) for vid, p in items if vid not in done_before]
    summary: dict[str, Any] = {"store": str(out), "extractor": extractor, "weights": bb.weights, "videos": len(items),
                               "done": [], "skipped_existing": skipped, "failed": {}, "vidlang_version": _version()}
    if not bb.trained:
        summary["warning"] = UNTRAINED_WARNING
    start = time.time()
    bar = tqdm(total=len(todo), unit="video", desc="extract", disable=not progress, file=sys.stderr)
    try:
        for vid, path, frames, info in _decoded(todo, sampling, frame_size, workers):
            if frames is not None:
                feats = embed_frames(bb, frames, sampling, batch_size)
                if np.isfinite(feats).all():
                    _write_entry(out, vid, path, feats, info, extractor, sampling)
                    summary["done"].append(vid)
                else:
                    info = f"backbone {bb.name} produced NaN/inf features for {path}"
            if vid not in summary["done"]:
                summary["failed"][vid] = info
                if progress:
                    bar.write(f"skipped {vid}: {info}", file=sys.stderr)
            bar.update(1)
            bar.set_postfix(failed=len(summary["failed"]), refresh=False)
            if on_video is not None:
                on_video(vid, "done" if vid in summary["done"] else "failed")
    except BaseException as e:
        summary["interrupted"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        bar.close()
        summary["seconds"] = round(time.time() - start, 3)
        summary["counts"] = {k: len(summary[k]) for k in ("done", "skipped_existing", "failed")}
        atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    """A few human-readable lines: counts, then each failed video with its reason."""
    c = summary["counts"]
    lines = [f"{summary['extractor']['backbone']}: extracted {c['done']}, skipped {c['skipped_existing']} already "
             f"done, failed {c['failed']} of {summary['videos']} videos -> {summary['store']} "
             f"({summary['seconds']:.1f} s)"]
    lines += [f"  failed {vid}: {reason}" for vid, reason in summary["failed"].items()]
    if "warning" in summary:
        lines.append(f"warning: {summary['warning']}")
    lines.append(f"summary: {Path(summary['store']) / SUMMARY_FILE}")
    return "\n".join(lines)
