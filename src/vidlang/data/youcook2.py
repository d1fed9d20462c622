"""YouCook2 files beside the annotation json (which :func:`vidlang.data.annotations.read_youcook2` reads):

- :func:`read_youcook2_retrieval`: the 3,350-clip text->video retrieval set of HowTo100M / MIL-NCE
  (``validation_youcook.csv``: ``end,start,task,text,video_id``) -> Clips (split "validation");
- :func:`read_split_list`: ``splits/{train,val,test}_list.txt`` lines ``<recipe_type>/<video_id>``;
- :func:`read_durations`: ``splits/*_duration_totalframe.csv`` (``vid_id,duration,total_frame``);
- :func:`read_recipe_names`: ``label_foodtype.csv`` (``recipe_id,name``, no header).

Errors name the file and line.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from vidlang.data.records import Clip
from vidlang.errors import DataError

__all__ = ["read_durations", "read_recipe_names", "read_split_list", "read_youcook2_retrieval"]

PathLike = str | os.PathLike


def _rows(path: Path) -> list[list[str]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    return list(csv.reader(io.StringIO(text)))


def _float(value: str, where: str, what: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise DataError(f"{where}: {what} {value!r} is not a number") from None
    if not math.isfinite(x) or x < 0:
        raise DataError(f"{where}: {what} {value!r} must be a finite number >= 0")
    return x


def read_youcook2_retrieval(path: PathLike) -> list[tuple[Clip, str]]:
    """``validation_youcook.csv`` -> ``[(Clip(video_id, text, start, end, "validation"), recipe_type), ...]``."""
    path = Path(path)
    rows = _rows(path)
    if not rows or [c.strip() for c in rows[0]] != ["end", "start", "task", "text", "video_id"]:
        raise DataError(f"{path}:1: expected the header 'end,start,task,text,video_id'")
    out = []
    for n, row in enumerate(rows[1:], 2):
        if not row:
            continue
        where = f"{path}:{n}"
        if len(row) != 5:
            raise DataError(f"{where}: expected 5 columns, got {len(row)}")
        end, start = _float(row[0], where, "end"), _float(row[1], where, "start")
        text, vid, task = row[3].strip(), row[4].strip(), row[2].strip()
        if start > end or not text or not vid or not task.isdigit():
            raise DataError(f"{where}: bad row {row} (need start <= end, a text, a video id and a recipe id)")
        out.append((Clip(vid, text, start, end, "validation"), task))
    if not out:
        raise DataError(f"{path} holds no clips")
    return out


def read_split_list(path: PathLike) -> list[tuple[str, str]]:
    """``<recipe_type>/<video_id>`` lines -> ``[(recipe_type, video_id), ...]``."""
    path = Path(path)
    out = []
    for n, row in enumerate(_rows(path), 1):
        line = ",".join(row).strip()
        if not line:
            continue
        recipe, sep, vid = line.partition("/")
        if not sep or not recipe.isdigit() or not vid or "/" in vid:
            raise DataError(f"{path}:{n}: expected '<recipe_type>/<video_id>', got {line!r}")
        out.append((recipe, vid))
    return out


def read_durations(path: PathLike) -> dict[str, tuple[float, int]]:
    """``vid_id,duration,total_frame`` -> ``{video_id: (seconds, frames)}``."""
    path = Path(path)
    rows = _rows(path)
    if not rows or rows[0] != ["vid_id", "duration", "total_frame"]:
        raise DataError(f"{path}:1: expected the header 'vid_id,duration,total_frame'")
    out = {}
    for n, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != 3 or not row[2].isdigit():
            raise DataError(f"{path}:{n}: expected 'vid_id,duration,total_frame', got {row}")
        out[row[0]] = (_float(row[1], f"{path}:{n}", "duration"), int(row[2]))
    return out


def read_recipe_names(path: PathLike) -> dict[str, str]:
    """``label_foodtype.csv`` (``recipe_id,name``) -> ``{recipe_id: name}``."""
    path = Path(path)
    out = {}
    for n, row in enumerate(_rows(path), 1):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip().isdigit() or not row[1].strip():
            raise DataError(f"{path}:{n}: expected 'recipe_id,name', got {row}")
        out[row[0].strip()] = row[1].strip()
    return out
