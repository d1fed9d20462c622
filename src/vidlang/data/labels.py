"""Per-video class labels (action / category classification).

``read_labels(path)`` reads:
- a JSON object ``{video_id: label}`` (labels are strings or integers);
- MSR-VTT's official ``videodatainfo`` json (or a zip holding it): each video's ``category``
  (0..19, named by ``category.txt`` where the zip has it).
Malformed input is a DataError naming the file and the video.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from vidlang.data.annotations import load_json
from vidlang.errors import DataError

MSRVTT_CATEGORIES = 20


def read_labels(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"label file not found: {path}")
    data = _msrvtt_from_zip(path) if path.suffix == ".zip" else load_json(path)
    if isinstance(data, dict) and isinstance(data.get("videos"), list):
        return _msrvtt(data, path)
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a JSON object {{video_id: label}} or an MSR-VTT videodatainfo json")
    out = {}
    for vid, label in data.items():
        if not isinstance(label, (str, int)) or isinstance(label, bool) or str(label).strip() == "":
            raise DataError(f"{path}: video {vid!r} has label {label!r}; expected a string or an integer")
        out[str(vid)] = str(label)
    return out


def _msrvtt_from_zip(path: Path):
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("videodatainfo.json")), None)
            if name is None:
                raise DataError(f"{path}: no *videodatainfo.json inside")
            return json.loads(z.read(name).decode("utf-8"))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def _msrvtt(data: dict, path: Path) -> dict[str, str]:
    out = {}
    for i, video in enumerate(data["videos"]):
        vid, cat = video.get("video_id") if isinstance(video, dict) else None, video.get("category") if isinstance(video, dict) else None
        if not isinstance(vid, str) or not isinstance(cat, int) or not 0 <= cat < MSRVTT_CATEGORIES:
            raise DataError(f"{path}: videos[{i}] needs a video_id and a category in 0..{MSRVTT_CATEGORIES - 1}, "
                            f"got {video!r:.80}")
        out[vid] = str(cat)
    return out
