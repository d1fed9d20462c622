"""Annotation readers: MSR-VTT, YouCook2, ActivityNet Captions, JSON lines and id lists.

Every reader returns ``list[Clip]`` with stripped captions. Files are read as bytes and
decoded here, so non-UTF-8 text gets an error naming the file (and the video id where the
bad bytes sit inside a caption). Bad records (empty caption, bad UTF-8, start > end...)
raise :class:`DataError` naming the file, line and video id unless ``skip_bad=True``, in which case
they are skipped and counted in ``counter`` under a reason key (a :class:`~vidlang.data.records.Skips`
also names each skipped item).
"""
from __future__ import annotations

import gzip
import json
import math
import os
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vidlang.data.records import Clip, Skips, record_skip
from vidlang.errors import ConfigError, DataError

__all__ = [
    "read_msrvtt", "read_youcook2", "read_activitynet", "read_jsonl", "read_annotations", "read_annotation_files",
]

PathLike = str | os.PathLike
# An id list must find at least this share of its ids (annotated, and in the feature store where one
# is given), else it belongs to other annotations (e.g. MSR-VTT 1k-A test ids vs train_val only).
MSRVTT_SPLITS = ("train", "validate", "test")
YOUCOOK2_SUBSETS = {"training": "training", "train": "training", "validation": "validation",
                    "val": "validation", "validate": "validation", "testing": "testing", "test": "testing"}


# ----------------------------------------------------------------------------- low-level reading
def read_text(path: Path) -> str:
    """Read a file (the single json inside a .zip, or a .gz) and decode it as UTF-8.

    Undecodable bytes become lone surrogates (``surrogateescape``) so that the record
    holding them can be named later; :func:`is_utf8` spots them.
    """
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.lower().endswith(".json")]
                if len(names) != 1:
                    raise DataError(f"{path} should hold exactly one .json file, found {names}")
                data = z.read(names[0])
        elif path.suffix.lower() == ".gz":
            data = gzip.decompress(path.read_bytes())
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read annotation file {path}: {e}") from e
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


ANNOTATION_FORMATS = ("MSR-VTT json ('videos' + 'sentences', or {video_id: {split, captions}}), "
                      "YouCook2 json ('database'), ActivityNet Captions json ({video_id: {timestamps, sentences}}) "
                      "or .jsonl (one {video_id, caption} object a line)")


def load_json(path: Path, expected: str = ANNOTATION_FORMATS) -> Any:
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path} is empty; expected {expected}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"cannot parse JSON in {path} (line {e.lineno}, column {e.colno}: {e.msg}); "
                        f"expected {expected}") from e


class ClipMaker:
    """Builds validated Clips for one file; raises or skips+counts bad records."""

    def __init__(self, path: Path, skip_bad: bool, counter: Counter | None):
        self.path, self.skip_bad = path, skip_bad
        self.counter = counter if counter is not None else Skips()
        self.line: int | None = None  # line readers (JSON lines) set the line being read

    def bad(self, reason: str, message: str, video_id: Any = None) -> None:
        """Raise a DataError naming the file (and line), or count and name the item when skipping."""
        where = f"{self.path}, line {self.line}" if self.line is not None else f"{self.path}"
        if not self.skip_bad:
            raise DataError(f"{where}: {message} (--skip-bad / data.skip_bad=true skips such records, naming each)")
        record_skip(self.counter, reason, video_id=video_id if isinstance(video_id, str) else None,
                    file=self.path, line=self.line, message=message)

    def caption(self, video_id: str, caption: Any) -> str | None:
        if not isinstance(caption, str):
            self.bad("bad_caption", f"video {video_id!r}: caption is a {type(caption).__name__}, not a string", video_id)
            return None
        caption = caption.strip()
        if not caption:
            self.bad("empty_caption", f"video {video_id!r} has an empty caption", video_id)
            return None
        if not is_utf8(caption):
            self.bad("bad_utf8", f"video {video_id!r} has a caption that is not valid UTF-8: {caption!r}", video_id)
            return None
        return caption

    def time(self, video_id: str, value: Any, what: str) -> float | None | bool:
        """A finite float, None when absent, or False when bad."""
        if value is None:
            return None
        try:
            t = float(value)
        except (TypeError, ValueError):
            t = math.nan
        if not math.isfinite(t):
            self.bad("bad_segment", f"video {video_id!r}: {what} time {value!r} is not a finite number", video_id)
            return False
        if t < 0:
            self.bad("bad_segment", f"video {video_id!r}: {what} time {value!r} is negative", video_id)
            return False
        return t

    def clip(self, video_id: Any, caption: Any, start: Any = None, end: Any = None,
             split: str | None = None, duration: Any = None) -> Clip | None:
        """A validated Clip, or None (after raising or counting). ``duration``: the video's length in
        seconds when the annotation gives it; a segment ending after it is bad."""
        if not isinstance(video_id, str) or not video_id.strip() or not is_utf8(video_id):
            self.bad("bad_video_id", f"bad video id {video_id!r}")
            return None
        text = self.caption(video_id, caption)
        if text is None:
            return None
        s, e = self.time(video_id, start, "start"), self.time(video_id, end, "end")
        if s is False or e is False:
            return None
        if s is not None and e is not None and s > e:
            self.bad("bad_segment", f"video {video_id!r}: segment start {s} is after end {e}", video_id)
            return None
        if isinstance(duration, (int, float)) and e is not None and e > duration:
            self.bad("bad_segment", f"video {video_id!r}: segment [{s}, {e}] ends after the video's duration "
                                    f"{duration}", video_id)
            return None
        return Clip(video_id, text, s, e, split)


def _check_split(split: str | None, allowed: Iterable[str], reader: str) -> None:
    if split is not None and split not in allowed:
        raise ConfigError(f"{reader}: unknown split {split!r}; expected one of {sorted(set(allowed))}")


# ----------------------------------------------------------------------------- MSR-VTT
def read_msrvtt(path: PathLike, split: str | None = None, *, skip_bad: bool = False,
                counter: Counter | None = None) -> list[Clip]:
    """MSR-VTT captions, one Clip per caption, whole video.

    Reads the official ``train_val_videodatainfo.json`` / ``test_videodatainfo.json`` (or their
    .zip), or the ``annotations.json`` of msrvtt-ae128-dev (``{video_id: {split, captions}}``);
    a folder holding ``annotations.json`` works too. ``split`` keeps one official split
    (train / validate / test).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "annotations.json"
    return _parse_msrvtt(load_json(path), path, split, skip_bad, counter)


def _parse_msrvtt(data: Any, path: Path, split: str | None, skip_bad: bool,
                  counter: Counter | None) -> list[Clip]:
    _check_split(split, MSRVTT_SPLITS, "read_msrvtt")
    make = ClipMaker(path, skip_bad, counter)
    clips: list[Clip] = []
    if isinstance(data, dict) and "videos" in data and "sentences" in data:  # official schema
        try:
            video_split = {v["video_id"]: v.get("split") for v in data["videos"]}
            sentences = [(s["video_id"], s["caption"]) for s in data["sentences"]]
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path}: malformed MSR-VTT record, missing {e}") from e
        for vid, caption in sentences:
            if vid not in video_split:
                make.bad("unknown_video", f"caption of video {vid!r}, which is not in 'videos'", vid)
                continue
            if split is None or video_split[vid] == split:
                clips.append(make.clip(vid, caption, split=video_split[vid]))
    elif isinstance(data, dict) and all(isinstance(v, dict) and "captions" in v for v in data.values()):
        for vid, rec in data.items():
            if split is not None and rec.get("split") != split:
                continue
            if not isinstance(rec["captions"], list):
                make.bad("bad_record", f"video {vid!r}: 'captions' is not a list", vid)
                continue
            if not rec["captions"]:
                make.bad("no_captions", f"video {vid!r} has an empty 'captions' list", vid)
                continue
            clips.extend(make.clip(vid, c, split=rec.get("split")) for c in rec["captions"])
    else:
        raise DataError(f"{path} is neither an official MSR-VTT json ('videos' + 'sentences') "
                        "nor a {video_id: {split, captions}} annotations.json")
    return [c for c in clips if c is not None]


# ----------------------------------------------------------------------------- id lists
def read_youcook2(path: PathLike, split: str | None = None, *, skip_bad: bool = False,
                  counter: Counter | None = None) -> list[Clip]:
    """YouCook2 ``youcookii_annotations_trainval.json``: one Clip per annotated segment.

    ``split`` is a subset name (training / validation / testing; train / val also accepted).
    """
    path = Path(path)
    return parse_youcook2(load_json(path), path, split, skip_bad, counter)


def parse_youcook2(data: Any, path: Path, split: str | None, skip_bad: bool,
                    counter: Counter | None) -> list[Clip]:
    _check_split(split, YOUCOOK2_SUBSETS, "read_youcook2")
    want = YOUCOOK2_SUBSETS[split] if split is not None else None
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise DataError(f"{path} is not a YouCook2 annotation file (no 'database' object)")
    make = ClipMaker(path, skip_bad, counter)
    clips: list[Clip] = []
    for vid, rec in data["database"].items():
        subset = rec.get("subset") if isinstance(rec, dict) else None
        if want is not None and subset != want:
            continue
        anns = rec.get("annotations") if isinstance(rec, dict) else None
        if not isinstance(anns, list):
            make.bad("bad_record", f"video {vid!r} has no 'annotations' list", vid)
            continue
        for ann in anns:
            seg = ann.get("segment") if isinstance(ann, dict) else None
            if not (isinstance(seg, list) and len(seg) == 2):
                make.bad("bad_segment", f"video {vid!r}: annotation without a [start, end] segment: {ann!r}", vid)
                continue
            clips.append(make.clip(vid, ann.get("sentence"), seg[0], seg[1], subset, duration=rec.get("duration")))
    return [c for c in clips if c is not None]


# ----------------------------------------------------------------------------- ActivityNet
def read_activitynet(path: PathLike, paragraph: bool = True, *, skip_bad: bool = False,
                     counter: Counter | None = None) -> list[Clip]:
    """ActivityNet Captions ``{vid: {duration, timestamps, sentences}}``.

    ``paragraph=True``: one whole-video Clip per video, sentences joined by a space.
    ``paragraph=False``: one Clip per sentence with its [start, end].
    """
    path = Path(path)
    return parse_activitynet(load_json(path), path, paragraph, skip_bad, counter)


def parse_activitynet(data: Any, path: Path, paragraph: bool, skip_bad: bool,
                       counter: Counter | None) -> list[Clip]:
    if not isinstance(data, dict):
        raise DataError(f"{path} is not an ActivityNet Captions file (expected a JSON object)")
    make = ClipMaker(path, skip_bad, counter)
    clips: list[Clip] = []
    for vid, rec in data.items():
        if not isinstance(rec, dict) or not isinstance(rec.get("sentences"), list) \
                or not isinstance(rec.get("timestamps"), list):
            make.bad("bad_record", f"video {vid!r} lacks 'sentences'/'timestamps' lists", vid)
            continue
        sents, stamps = rec["sentences"], rec["timestamps"]
        if len(sents) != len(stamps):
            make.bad("bad_record", f"video {vid!r} has {len(sents)} sentences but {len(stamps)} timestamps", vid)
            continue
        if paragraph:
            texts = [t for t in (make.caption(vid, s) for s in sents) if t is not None]
            clips.append(make.clip(vid, " ".join(texts)))
            continue
        for sent, seg in zip(sents, stamps):
            if not (isinstance(seg, list) and len(seg) == 2):
                make.bad("bad_segment", f"video {vid!r}: timestamp {seg!r} is not [start, end]", vid)
                continue
            clips.append(make.clip(vid, sent, seg[0], seg[1]))
    return [c for c in clips if c is not None]


# ----------------------------------------------------------------------------- JSON lines
def jsonl_records(path: Path, make: ClipMaker, needs: tuple[str, ...]) -> Iterator[dict]:
    """The JSON objects of a JSON-lines file, one a line (``make.line`` set to its number); a line that is
    not an object holding every key of ``needs`` is named through ``make.bad`` (raised, or skipped)."""
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path} is empty; expected one JSON object a line with {', '.join(map(repr, needs))}")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        make.line = n
        try:
            rec = json.loads(line)
        except ValueError as e:
            make.bad("bad_line", str(e))
            continue
        missing = [k for k in needs if k not in rec] if isinstance(rec, dict) else list(needs)
        if missing:
            make.bad("bad_line", f"needs a JSON object with {', '.join(map(repr, needs))} (missing {missing})")
            continue
        yield rec


def read_jsonl(path: PathLike, *, skip_bad: bool = False, counter: Counter | None = None) -> list[Clip]:
    """One JSON object per line: ``video_id``, ``caption``, optional ``start``, ``end``, ``split``."""
    path = Path(path)
    make = ClipMaker(path, skip_bad, counter)
    clips: list[Clip] = []
    for rec in jsonl_records(path, make, ("video_id", "caption")):
        split = rec.get("split")
        clip = make.clip(rec["video_id"], rec["caption"], rec.get("start"), rec.get("end"),
                         split if isinstance(split, str) else None)
        if clip is not None:
            clips.append(clip)
    return clips


# ----------------------------------------------------------------------------- dispatch
def read_annotations(path: PathLike, **kw: Any) -> list[Clip]:
    """Pick the reader from the file name, then the content; ``kw`` goes to that reader.

    ``paragraph=False`` is accepted (and means nothing) for formats other than ActivityNet."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir() or name.endswith((".zip", ".jsonl")):
        if kw.get("paragraph") is False:
            kw = {k: v for k, v in kw.items() if k != "paragraph"}  # no paragraphs in these formats
        return read_msrvtt(path, **kw) if not name.endswith(".jsonl") else read_jsonl(path, **kw)
    if name.endswith((".txt", ".csv")):
        raise DataError(f"{path} looks like an id list: read it with read_id_list and use filter_clips")
    data = load_json(path)
    parse = None
    if isinstance(data, dict):
        first = next(iter(data.values()), None)
        if "database" in data:
            parse, defaults = parse_youcook2, {"split": None}
        elif ("videos" in data and "sentences" in data) or (isinstance(first, dict) and "captions" in first):
            parse, defaults = _parse_msrvtt, {"split": None}
        elif isinstance(first, dict) and "timestamps" in first:
            parse, defaults = parse_activitynet, {"paragraph": True}
    if parse is None:
        found = (f"a JSON object whose first entry is {type(first).__name__}" if isinstance(data, dict)
                 else f"a JSON {type(data).__name__}")
        raise DataError(f"cannot tell the annotation format of {path}: found {found}; expected {ANNOTATION_FORMATS}")
    options = {**defaults, "skip_bad": False, "counter": None}
    if kw.get("paragraph") is False and "paragraph" not in options:
        kw = {k: v for k, v in kw.items() if k != "paragraph"}  # no paragraphs in this format: nothing to undo
    unknown = set(kw) - set(options)
    if unknown:
        raise ConfigError(f"{path}: option(s) {sorted(unknown)} do not apply to this format; "
                          f"it takes {sorted(options)}")
    return parse(data, path, **{**options, **kw})


def read_annotation_files(spec: PathLike, **kw: Any) -> list[Clip]:
    """Clips of one annotation file, or of several joined by ``,`` (MSR-VTT's 1k-A test videos are in
    ``test_videodatainfo.json``, its 9k training videos in both files). A video annotated in two of
    the files is a DataError naming both."""
    paths = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not paths:
        raise ConfigError("no annotation file given")
    clips: list[Clip] = []
    owner: dict[str, str] = {}
    for path in paths:
        part = read_annotations(path, **kw)
        for vid in dict.fromkeys(c.video_id for c in part):
            if owner.setdefault(vid, path) != path:
                raise DataError(f"video {vid!r} is annotated in both {owner[vid]} and {path}")
        clips.extend(part)
    return clips
