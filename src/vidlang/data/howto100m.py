"""HowTo100M ASR in the per-video csv layout (MIL-NCE ``caption_root``): ``<video_id>.csv`` with the
header ``start,end,text``, one caption line a row, times in seconds.

:func:`read_howto100m_csv` reads one file or a folder of them into the utterance streams of
:mod:`vidlang.data.narration` (``{video_id: [Utterance(start, end, text), ...]}`` sorted by start).
YouTube's rolling captions overlap and repeat words; they are kept as they are. Empty text is
skipped and counted (as the json reader does); a malformed row raises DataError naming file and line.
"""
from __future__ import annotations

import csv
import io
import os
from collections import Counter
from pathlib import Path

from vidlang.data.annotations import ClipMaker
from vidlang.data.narration import Streams, Utterance
from vidlang.errors import DataError

__all__ = ["read_howto100m_csv"]

PathLike = str | os.PathLike


def _read_one(path: Path, counter: Counter) -> list[Utterance]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != ["start", "end", "text"]:
        raise DataError(f"{path}:1: expected the header 'start,end,text'")
    out = []
    for n, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != 3:
            raise DataError(f"{path}:{n}: expected 3 columns 'start,end,text', got {len(row)}")
        if not row[2].strip():
            counter["empty_utterance"] += 1
            continue
        clip = ClipMaker(Path(f"{path}:{n}"), False, counter).clip(path.stem, row[2], row[0], row[1])
        out.append(Utterance(clip.start, clip.end, clip.caption))
    return sorted(out, key=lambda u: (u.start, u.end))


def read_howto100m_csv(path: PathLike, counter: Counter | None = None) -> Streams:
    """One ``<video_id>.csv`` or a folder of them -> utterance streams."""
    path = Path(path)
    counter = counter if counter is not None else Counter()
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise DataError(f"{path} holds no <video_id>.csv files")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"{path} does not exist")
    return {f.stem: _read_one(f, counter) for f in files}
