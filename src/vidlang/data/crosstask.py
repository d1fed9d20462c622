"""CrossTask (Zhukov et al., CVPR 2019) readers: tasks, video lists, step annotations.

Files of the official ``crosstask_release``:

- ``tasks_primary.txt`` / ``tasks_related.txt``: blocks of 5 lines (id, title, URL, number of
  steps, comma-separated ordered steps) separated by a blank line;
- ``videos.csv`` / ``videos_val.csv``: ``task_id,youtube_id,url`` rows, no header;
- ``annotations/<task>_<video>.csv`` (a folder, or a zip holding that folder): ``step,start,end``
  rows, ``step`` 1-based into the task's step list, times in seconds.

Annotation segments may overlap and may be out of time order; :func:`read_annotation` returns
them sorted by (start, end). :func:`step_targets` turns them into the official ``Y_true[T, K]``
(``read_assignment`` of DmZhukov/CrossTask: seconds ``floor(start)`` .. ``ceil(end) - 1``).
Every reader raises :class:`DataError` naming the file and line of malformed input.
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidlang.errors import DataError

__all__ = [
    "CrossTaskTask",
    "Segment",
    "read_annotation",
    "read_annotations",
    "read_tasks",
    "read_video_list",
    "step_targets",
]

PathLike = str | os.PathLike


@dataclass(frozen=True)
class CrossTaskTask:
    task_id: str
    title: str
    url: str
    steps: tuple[str, ...]

    @property
    def n_steps(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class Segment:
    step: int  # 1-based index into the task's step list
    start: float
    end: float


def _lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid UTF-8: {e}") from e


def read_tasks(path: PathLike) -> dict[str, CrossTaskTask]:
    """``tasks_primary.txt`` (or ``tasks_related.txt``) -> ``{task_id: CrossTaskTask}`` in file order."""
    path = Path(path)
    lines = _lines(path)
    tasks: dict[str, CrossTaskTask] = {}
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        block = lines[i:i + 5]
        where = f"{path}:{i + 1}"
        if len(block) < 5 or any(not ln.strip() for ln in block):
            raise DataError(f"{where}: a task needs 5 non-empty lines (id, title, url, n_steps, steps)")
        task_id, title, url, n_line, step_line = (ln.strip() for ln in block)
        if not task_id.isdigit():
            raise DataError(f"{where}: task id {task_id!r} is not an integer")
        try:
            n_steps = int(n_line)
        except ValueError:
            raise DataError(f"{path}:{i + 4}: number of steps {n_line!r} is not an integer") from None
        steps = tuple(s.strip() for s in step_line.split(","))
        if len(steps) != n_steps or any(not s for s in steps):
            raise DataError(f"{path}:{i + 5}: task {task_id} declares {n_steps} steps but lists "
                            f"{len(steps)} ({step_line!r})")
        if task_id in tasks:
            raise DataError(f"{where}: task {task_id} appears twice")
        tasks[task_id] = CrossTaskTask(task_id, title, url, steps)
        i += 5
    if not tasks:
        raise DataError(f"{path} holds no tasks")
    return tasks


def read_video_list(path: PathLike) -> dict[str, list[str]]:
    """``videos.csv`` / ``videos_val.csv`` -> ``{task_id: [youtube_id, ...]}`` in file order.

    A video may belong to several tasks (it does in ``videos.csv``); a repeated (task, video) row is an error.
    """
    path = Path(path)
    out: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    for n, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        cols = line.strip().split(",")
        if len(cols) != 3 or not cols[0].isdigit() or not cols[1]:
            raise DataError(f"{path}:{n}: expected 'task_id,youtube_id,url', got {line!r}")
        task, vid = cols[0], cols[1]
        if (task, vid) in seen:
            raise DataError(f"{path}:{n}: video {vid} of task {task} is listed twice")
        seen.add((task, vid))
        out.setdefault(task, []).append(vid)
    if not out:
        raise DataError(f"{path} lists no videos")
    return out


def parse_annotation(text: str, source: str, n_steps: int | None = None) -> list[Segment]:
    """Parse ``step,start,end`` lines; ``source`` names the file in errors. Sorted by (start, end)."""
    segs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cols = line.strip().split(",")
        try:
            if len(cols) != 3:
                raise ValueError
            step, start, end = int(cols[0]), float(cols[1]), float(cols[2])
        except ValueError:
            raise DataError(f"{source}:{n}: expected 'step,start,end' (int, seconds, seconds), got {line!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            raise DataError(f"{source}:{n}: bad segment [{start}, {end}] (need 0 <= start <= end)")
        if step < 1 or (n_steps is not None and step > n_steps):
            raise DataError(f"{source}:{n}: step {step} is outside 1..{n_steps if n_steps is not None else 'n_steps'}")
        segs.append(Segment(step, start, end))
    return sorted(segs, key=lambda s: (s.start, s.end, s.step))


def read_annotation(path: PathLike, n_steps: int | None = None) -> list[Segment]:
    """One ``<task>_<video>.csv`` file -> its segments sorted by (start, end)."""
    path = Path(path)
    return parse_annotation("\n".join(_lines(path)), str(path), n_steps)


def _split_name(name: str, source: str) -> tuple[str, str]:
    stem = Path(name).name[:-len(".csv")]
    task, sep, vid = stem.partition("_")  # task ids are digits; YouTube ids may hold '_' and '-'
    if not sep or not task.isdigit() or not vid:
        raise DataError(f"{source}: annotation file name {name!r} is not '<task_id>_<video_id>.csv'")
    return task, vid


def read_annotations(path: PathLike, tasks: dict[str, CrossTaskTask] | None = None,
                     ) -> dict[tuple[str, str], list[Segment]]:
    """All annotation files of a folder or of ``annotations.zip`` -> ``{(task_id, video_id): segments}``.

    With ``tasks``, step indices are checked against each task's step count, and a file of a task
    not in ``tasks`` is an error.
    """
    path = Path(path)
    out: dict[tuple[str, str], list[Segment]] = {}

    def add(name: str, text: str, source: str) -> None:
        task, vid = _split_name(name, source)
        if tasks is not None and task not in tasks:
            raise DataError(f"{source}: task {task} is not among the {len(tasks)} tasks given")
        n_steps = tasks[task].n_steps if tasks is not None else None
        out[(task, vid)] = parse_annotation(text, source, n_steps)

    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        for f in files:
            add(f.name, "\n".join(_lines(f)), str(f))
    elif path.is_file():
        try:
            with zipfile.ZipFile(path) as z:
                for name in sorted(z.namelist()):
                    if not name.endswith(".csv"):
                        continue
                    try:
                        text = z.read(name).decode("utf-8-sig")
                    except UnicodeDecodeError as e:
                        raise DataError(f"{path}!{name} is not valid UTF-8: {e}") from e
                    add(name, text, f"{path}!{name}")
        except zipfile.BadZipFile as e:
            raise DataError(f"cannot read {path} as a zip: {e}") from e
    else:
        raise DataError(f"CrossTask annotations {path} do not exist")
    if not out:
        raise DataError(f"{path} holds no <task>_<video>.csv annotation files")
    return out


def step_targets(segments: list[Segment], n_frames: int, n_steps: int, fps: float = 1.0) -> np.ndarray:
    """The official ground truth ``Y[T, K]`` (uint8): frame t is in step k's segment when
    ``floor(start * fps) <= t < ceil(end * fps)``; segments past ``n_frames`` are cut (as the
    official ``read_assignment`` slices). Overlapping segments set several steps at one frame.
    """
    if n_frames < 1 or n_steps < 1:
        raise DataError(f"step_targets needs n_frames >= 1 and n_steps >= 1, got {n_frames}, {n_steps}")
    y = np.zeros((n_frames, n_steps), dtype=np.uint8)
    for s in segments:
        if not 1 <= s.step <= n_steps:
            raise DataError(f"segment {s} has a step outside 1..{n_steps}")
        y[math.floor(s.start * fps):math.ceil(s.end * fps), s.step - 1] = 1
    return y
