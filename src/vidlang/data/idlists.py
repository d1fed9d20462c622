"""Id lists (split files) and filtering clips by them: a list that does not belong to its annotations is an error."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

from vidlang.data.annotations import PathLike, is_utf8, read_text
from vidlang.data.records import Clip
from vidlang.errors import ConfigError, DataError

MIN_SPLIT_MATCH = 0.5  # an id list of which fewer of the videos are annotated belongs to other annotations


def read_id_list(path: PathLike) -> list[str]:
    """Video ids, one per line (blank lines and ``#`` comments ignored), or the ``video_id``
    column of a CSV with a header (e.g. CLIP4Clip's ``MSRVTT_JSFUSION_test.csv``).

    Duplicates are dropped, keeping first-appearance order.
    """
    path = Path(path)
    text = read_text(path)
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise DataError(f"id list {path} is empty; expected one video id a line (or a CSV with a video_id column)")
    if "," in lines[0]:  # CSV with a header row
        reader = csv.DictReader(io.StringIO("\n".join(lines)))
        if "video_id" not in (reader.fieldnames or []):
            raise DataError(f"{path} looks like CSV but has no 'video_id' column: {reader.fieldnames}")
        ids = [(row.get("video_id") or "").strip() for row in reader]
        if any(not i for i in ids):
            raise DataError(f"{path} has a row with an empty video_id (data row {ids.index('') + 1})")
    else:
        ids = lines
    for n, vid in enumerate(ids, 1):
        if not is_utf8(vid):
            raise DataError(f"{path}: id {n} ({vid!r}) is not valid UTF-8")
    return list(dict.fromkeys(ids))


def read_id_sentences(path: PathLike) -> dict[str, str] | None:
    """``{video_id: sentence}`` from an id-list CSV with a ``sentence`` column (JSFusion's
    ``MSRVTT_JSFUS_test.csv``: key, vid_key, video_id, sentence), or None when the file has none.
    A video listed twice with different sentences is a DataError."""
    path = Path(path)
    lines = [ln for ln in (x.strip() for x in read_text(path).splitlines()) if ln and not ln.startswith("#")]
    if not lines or "," not in lines[0]:
        return None
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    if not {"video_id", "sentence"} <= set(reader.fieldnames or []):
        return None
    out: dict[str, str] = {}
    for n, row in enumerate(reader, 1):
        vid, sentence = (row.get("video_id") or "").strip(), (row.get("sentence") or "").strip()
        if not vid or not sentence:
            raise DataError(f"{path}: data row {n} has an empty video_id or sentence")
        if out.setdefault(vid, sentence) != sentence:
            raise DataError(f"{path}: video {vid!r} is listed with two sentences (data row {n})")
    return out


# ----------------------------------------------------------------------------- YouCook2
def filter_clips(clips: Iterable[Clip], ids: Iterable[str], split: str | None = None,
                 min_match: float = MIN_SPLIT_MATCH) -> list[Clip]:
    """Keep the clips whose video_id is in ``ids``, in their original order.

    When fewer than ``min_match`` of the (non-empty) ``ids`` have a clip, the list does not belong to
    these annotations: ConfigError naming ``split`` (the id-list file) and the counts. ``min_match=0``
    turns the check off.
    """
    clips, keep = list(clips), set(ids)
    out = [c for c in clips if c.video_id in keep]
    if keep:
        matched = len(keep & {c.video_id for c in out})
        if min_match > 0 and (matched == 0 or matched < len(keep) * min_match):
            raise ConfigError(
                f"split {split or '(id list)'}: only {matched} of its {len(keep)} listed video ids are in the "
                f"annotations (need at least {min_match:.0%}); is it the split of another annotation file?")
    return out
