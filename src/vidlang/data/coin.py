"""COIN (Tang et al., CVPR 2019) readers: database entries, taxonomy, per-frame step labels.

- :func:`read_coin`: the official ``COIN.json`` (``{"database": {video_id: entry}}``) or PDPP's
  ``coin_{train_70,test_30}.json`` (a list of one-key ``{video_id: entry}`` dicts), plain or ``.gz``.
  An entry has ``recipe_type`` (task id), ``class`` (task name), ``annotation``
  (``[{"id": step id as str, "segment": [start, end], "label"}]``), ``start``/``end`` (the
  annotated region), ``duration`` and ``subset``. Segments come back sorted by start.
- :func:`read_taxonomy`: ``taxonomy_task_step.csv`` (``Target Id,Target Label,Action Id,Action Label``).
- :func:`frame_labels`: the action-segmentation ground truth at the official 10 fps (the COIN
  ``link.txt`` note): frame i (time i / fps, ``floor(duration * fps)`` frames) takes the step id of
  the segment with ``start <= i / fps < end``, else 0 = background (COIN step ids are 1..778).

Errors name the file and the video id (and the csv line for the taxonomy).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidlang.errors import DataError

__all__ = [
    "BACKGROUND",
    "CoinSegment",
    "CoinStep",
    "CoinVideo",
    "check_taxonomy",
    "frame_labels",
    "read_coin",
    "read_taxonomy",
]

PathLike = str | os.PathLike
BACKGROUND = 0


@dataclass(frozen=True)
class CoinSegment:
    step_id: int
    start: float
    end: float
    label: str


@dataclass(frozen=True)
class CoinVideo:
    video_id: str
    task_id: int
    task: str
    segments: tuple[CoinSegment, ...]
    duration: float
    start: float | None = None  # the annotated region
    end: float | None = None
    subset: str | None = None


@dataclass(frozen=True)
class CoinStep:
    step_id: int
    label: str
    task_id: int
    task: str


def read_json_maybe_gz(path: Path) -> Any:
    try:
        raw = path.read_bytes()
        if path.suffix.lower() == ".gz":
            raw = gzip.decompress(raw)
        return json.loads(raw.decode("utf-8-sig"))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e


def _number(value: Any, where: str, what: str) -> float:
    if isinstance(value, bool):
        raise DataError(f"{where}: {what} {value!r} is not a number")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {what} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise DataError(f"{where}: {what} {value!r} is not finite")
    return x


def _video(vid: str, rec: Any, where: str) -> CoinVideo:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: entry is a {type(rec).__name__}, not an object")
    for key in ("recipe_type", "class", "annotation", "duration"):
        if key not in rec:
            raise DataError(f"{where}: missing {key!r}")
    duration = _number(rec["duration"], where, "duration")
    task_id = _number(rec["recipe_type"], where, "recipe_type")
    if not isinstance(rec["annotation"], list) or not rec["annotation"]:
        raise DataError(f"{where}: 'annotation' must be a non-empty list")
    segs = []
    for j, ann in enumerate(rec["annotation"]):
        at = f"{where} annotation {j}"
        if not isinstance(ann, dict) or not isinstance(ann.get("segment"), list) or len(ann["segment"]) != 2:
            raise DataError(f"{at}: needs 'id', 'segment' [start, end] and 'label'")
        try:
            step = int(ann.get("id"))
        except (TypeError, ValueError):
            raise DataError(f"{at}: step id {ann.get('id')!r} is not an integer") from None
        s, e = (_number(x, at, "segment time") for x in ann["segment"])
        if not 0 <= s <= e <= duration + 1e-6 or step < 1:
            raise DataError(f"{at}: segment [{s}, {e}] of step {step} is not inside [0, {duration}] "
                            "(or step id < 1)")
        segs.append(CoinSegment(step, s, e, str(ann.get("label", ""))))
    segs.sort(key=lambda x: (x.start, x.end))
    region = [None if rec.get(k) is None else _number(rec[k], where, k) for k in ("start", "end")]
    return CoinVideo(vid, int(task_id), str(rec["class"]), tuple(segs), duration, region[0], region[1],
                     rec.get("subset"))


def read_coin(path: PathLike, subset: str | None = None) -> dict[str, CoinVideo]:
    """COIN entries -> ``{video_id: CoinVideo}`` in file order; ``subset`` keeps one subset value."""
    path = Path(path)
    data = read_json_maybe_gz(path)
    if isinstance(data, dict) and isinstance(data.get("database"), dict):
        items = list(data["database"].items())
    elif isinstance(data, list):
        items = []
        for n, d in enumerate(data):
            if not isinstance(d, dict) or len(d) != 1:
                raise DataError(f"{path}: item {n} is not a one-key {{video_id: entry}} object")
            items.extend(d.items())
    else:
        raise DataError(f"{path} is neither a COIN {{'database': ...}} file nor a PDPP list of entries")
    out: dict[str, CoinVideo] = {}
    for vid, rec in items:
        if vid in out:
            raise DataError(f"{path}: video {vid!r} appears twice")
        v = _video(vid, rec, f"{path}: video {vid!r}")
        if subset is None or v.subset == subset:
            out[vid] = v
    if not out:
        raise DataError(f"{path} holds no videos" + (f" of subset {subset!r}" if subset else ""))
    return out


def read_taxonomy(path: PathLike) -> dict[int, CoinStep]:
    """``taxonomy_task_step.csv`` -> ``{step_id: CoinStep}``."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header != ["Target Id", "Target Label", "Action Id", "Action Label"]:
        raise DataError(f"{path}:1: expected the header 'Target Id,Target Label,Action Id,Action Label', got {header}")
    steps: dict[int, CoinStep] = {}
    for n, row in enumerate(rows, 2):
        if not row:
            continue
        try:
            if len(row) != 4:
                raise ValueError
            task_id, step_id = int(row[0]), int(row[2])
        except ValueError:
            raise DataError(f"{path}:{n}: expected 'task id,task,step id,step', got {row}") from None
        if step_id in steps:
            raise DataError(f"{path}:{n}: step id {step_id} appears twice")
        steps[step_id] = CoinStep(step_id, row[3].strip(), task_id, row[1].strip())
    if not steps:
        raise DataError(f"{path} lists no steps")
    return steps


def check_taxonomy(videos: dict[str, CoinVideo], taxonomy: dict[int, CoinStep]) -> None:
    """Raise DataError at the first video whose task or step disagrees with the taxonomy."""
    for v in videos.values():
        for s in v.segments:
            ref = taxonomy.get(s.step_id)
            if ref is None:
                raise DataError(f"video {v.video_id!r}: step id {s.step_id} is not in the taxonomy")
            if (ref.task_id, ref.task, ref.label) != (v.task_id, v.task, s.label):
                raise DataError(f"video {v.video_id!r}: step {s.step_id} ({v.task_id} {v.task!r}, {s.label!r}) "
                                f"disagrees with the taxonomy ({ref.task_id} {ref.task!r}, {ref.label!r})")


def frame_labels(video: CoinVideo, fps: float = 10.0, n_frames: int | None = None) -> np.ndarray:
    """(n_frames,) int64 step ids per frame, 0 = background; ``n_frames`` defaults to floor(duration * fps).

    Frame i covers ``start <= i / fps < end`` (computed as ``ceil(start * fps) <= i < ceil(end * fps)``
    with a 1e-6 guard against float error). Overlapping segments are an error.
    """
    if fps <= 0:
        raise DataError(f"fps must be positive, got {fps}")
    n = math.floor(video.duration * fps + 1e-6) if n_frames is None else int(n_frames)
    if n < 1:
        raise DataError(f"video {video.video_id!r}: {n} frames at {fps} fps (duration {video.duration})")
    y = np.zeros(n, dtype=np.int64)
    for s in video.segments:
        a, b = (min(n, max(0, math.ceil(t * fps - 1e-6))) for t in (s.start, s.end))
        if (y[a:b] != BACKGROUND).any():
            raise DataError(f"video {video.video_id!r}: segment [{s.start}, {s.end}] of step {s.step_id} "
                            "overlaps another segment")
        y[a:b] = s.step_id
    return y
