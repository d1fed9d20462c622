"""Utterance streams, MV-GPT (present, future) pairs, and caption datasets.

Transcript readers turn time-stamped text into per-video utterance streams
``{video_id: [Utterance(start, end, text), ...]}`` sorted by start:

- HowTo100M caption json ``{video_id: {"start": [...], "end": [...], "text": [...]}}`` (or UniVL's
  ``caption.pickle`` of the same dict, only with ``allow_pickle=True``);
- YouCook2 ``youcookii_annotations_trainval.json`` and ActivityNet Captions (their sentences and
  segments, via :mod:`vidlang.data.annotations`);
- JSON lines with ``video_id``, ``text`` (or ``caption``), ``start``, ``end``.

:func:`pair_utterances` makes MV-GPT pretraining pairs (methods.md §2.3): segments are merged in
time order into units of at least ``min_words`` words; each unit U is paired with the next unit W
(merged the same way; the last unit of a video may be shorter and is then only ever a future),
giving ``Clip(video_id, caption=W, start/end=U's span, transcript=U)``: frames come from U's span.

:class:`CaptionDataset` yields (segment features, transcript tokens, target tokens) items and
:func:`collate_captions` pads them into a :class:`~vidlang.data.records.CaptionBatch`. For caption
evaluation, :func:`eval_clips` keeps one clip per :func:`clip_key` and :func:`references` collects
all of a key's captions (MSR-VTT: the 20 captions of a video).
"""
from __future__ import annotations

import os
import pickle
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from vidlang.data.annotations import (
    ClipMaker,
    load_json,
    parse_activitynet,
    parse_youcook2,
    jsonl_records,
)
from vidlang.data.dataset import (
    VideoTextDataset,
    cut_segment,
    pad_videos,
    sample_frames,
)
from vidlang.data.features import FeatureStore
from vidlang.data.records import CaptionBatch, Clip
from vidlang.errors import ConfigError, DataError

__all__ = ["Utterance", "read_howto100m", "read_transcript_jsonl", "read_transcripts", "streams_from_clips",
           "merge_utterances", "pair_utterances", "clip_key", "eval_clips", "references",
           "CaptionDataset", "collate_captions", "TRANSCRIPT_FORMATS"]

PathLike = str | os.PathLike
TRANSCRIPT_FORMATS = ("howto100m", "youcook2", "activitynet", "jsonl")
TRANSCRIPT_EXPECTED = ("HowTo100M {video_id: {start, end, text}} json, YouCook2 or ActivityNet Captions json, "
                       "or .jsonl (one {video_id, text, start, end} object a line)")


class Utterance(NamedTuple):
    start: float
    end: float
    text: str


Streams = dict[str, list[Utterance]]


# ----------------------------------------------------------------------------- readers
def _add(streams: Streams, make: ClipMaker, vid: Any, text: Any, start: Any, end: Any) -> None:
    """Validate one segment and append it; empty text is always skipped and counted."""
    if isinstance(text, str) and not text.strip():
        make.counter["empty_utterance"] += 1
        return
    if start is None or end is None:
        make.bad("bad_segment", f"video {vid!r}: utterance without start/end time", vid)
        return
    clip = make.clip(vid, text, start, end)
    if clip is not None:
        streams.setdefault(clip.video_id, []).append(Utterance(clip.start, clip.end, clip.caption))


def _sorted(streams: Streams) -> Streams:
    return {v: sorted(u, key=lambda x: (x.start, x.end)) for v, u in streams.items()}


def read_howto100m(path: PathLike, *, skip_bad: bool = False, counter: Counter | None = None,
                   allow_pickle: bool = False) -> Streams:
    """HowTo100M ASR captions: ``{video_id: {"start": [], "end": [], "text": []}}`` (json or pickle)."""
    path = Path(path)
    if path.suffix.lower() in (".pkl", ".pickle"):
        if not allow_pickle:
            raise DataError(f"refusing to unpickle {path}: a pickle can run arbitrary code; pass "
                            "allow_pickle=True if you trust it, or convert it to json")
        try:
            with open(path, "rb") as f:
                data = pickle.load(f)  # noqa: S301 - only with allow_pickle=True
        except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
            raise DataError(f"cannot unpickle transcript file {path}: {e}") from e
    else:
        data = load_json(path, TRANSCRIPT_EXPECTED)
    return _parse_howto100m(data, path, skip_bad, counter)


def _parse_howto100m(data: Any, path: Path, skip_bad: bool, counter: Counter | None) -> Streams:
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a HowTo100M caption file (expected {{video_id: {{start, end, text}}}})")
    make = ClipMaker(path, skip_bad, counter)
    streams: Streams = {}
    for vid, rec in data.items():
        cols = [rec.get(k) if isinstance(rec, dict) else None for k in ("start", "end", "text")]
        cols = [c.tolist() if isinstance(c, np.ndarray) else c for c in cols]
        if not all(isinstance(c, list) for c in cols) or len({len(c) for c in cols}) != 1:
            make.bad("bad_record", f"video {vid!r} needs 'start', 'end' and 'text' lists of one length", vid)
            continue
        for s, e, t in zip(*cols):
            _add(streams, make, vid, t, s, e)
    return _sorted(streams)


def read_transcript_jsonl(path: PathLike, *, skip_bad: bool = False, counter: Counter | None = None) -> Streams:
    """One JSON object per line: ``video_id``, ``text`` (or ``caption``), ``start``, ``end``."""
    path = Path(path)
    make = ClipMaker(path, skip_bad, counter)
    streams: Streams = {}
    for rec in jsonl_records(path, make, ("video_id",)):
        if not ({"text", "caption"} & set(rec)):
            make.bad("bad_line", "needs 'text' (or 'caption') beside 'video_id'")
            continue
        _add(streams, make, rec["video_id"], rec.get("text", rec.get("caption")), rec.get("start"), rec.get("end"))
    return _sorted(streams)


def streams_from_clips(clips: Iterable[Clip], counter: Counter | None = None) -> Streams:
    """Group timed clips (e.g. YouCook2 segments) into utterance streams; untimed clips are counted."""
    counter = counter if counter is not None else Counter()
    streams: Streams = {}
    for c in clips:
        if c.start is None or c.end is None:
            counter["untimed_utterance"] += 1
            continue
        if not c.caption.strip():
            counter["empty_utterance"] += 1
            continue
        streams.setdefault(c.video_id, []).append(Utterance(float(c.start), float(c.end), c.caption))
    return _sorted(streams)


def read_transcripts(path: PathLike, fmt: str | None = None, *, skip_bad: bool = False,
                     counter: Counter | None = None, allow_pickle: bool = False) -> Streams:
    """Read utterance streams; ``fmt`` is one of ``TRANSCRIPT_FORMATS``, or None to detect it."""
    path = Path(path)
    if fmt is not None and fmt not in TRANSCRIPT_FORMATS:
        raise ConfigError(f"unknown transcript format {fmt!r}; expected one of {TRANSCRIPT_FORMATS}")
    counter = counter if counter is not None else Counter()
    name = path.name.lower()
    if fmt == "jsonl" or (fmt is None and name.endswith(".jsonl")):
        return read_transcript_jsonl(path, skip_bad=skip_bad, counter=counter)
    if fmt == "howto100m" or (fmt is None and name.endswith((".pkl", ".pickle"))):
        return read_howto100m(path, skip_bad=skip_bad, counter=counter, allow_pickle=allow_pickle)
    data = load_json(path, TRANSCRIPT_EXPECTED)  # parsed once, then handed to the format's parser
    first = next(iter(data.values()), None) if isinstance(data, dict) else None
    if fmt == "youcook2" or (fmt is None and isinstance(data, dict) and "database" in data):
        clips = parse_youcook2(data, path, None, skip_bad, counter)
    elif fmt == "activitynet" or (fmt is None and isinstance(first, dict) and "timestamps" in first):
        clips = parse_activitynet(data, path, False, skip_bad, counter)
    elif fmt is None and isinstance(first, dict) and "text" in first and "start" in first:
        return _parse_howto100m(data, path, skip_bad, counter)
    else:
        raise DataError(f"cannot tell the transcript format of {path}: expected HowTo100M "
                        "{video_id: {start, end, text}}, YouCook2, ActivityNet Captions or .jsonl")
    return streams_from_clips(clips, counter)


# ----------------------------------------------------------------------------- pairing
def _words(text: str) -> list[str]:
    return text.split()


def merge_utterances(stream: list[Utterance], min_words: int = 10, max_words: int | None = 64,
                     counter: Counter | None = None) -> list[Utterance]:
    """Merge consecutive segments into units of at least ``min_words`` words (time order).

    A unit spans from its first segment's start to its last one's end. The trailing segments may
    form a last, shorter unit. Units longer than ``max_words`` words keep their first
    ``max_words`` (counted as ``truncated_utterance``). Empty segments are dropped and counted.
    """
    if min_words < 1 or (max_words is not None and max_words < min_words):
        raise ConfigError(f"need 1 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}")
    counter = counter if counter is not None else Counter()
    units: list[Utterance] = []
    buf: list[Utterance] = []

    def flush() -> None:
        words = [w for u in buf for w in _words(u.text)]
        if max_words is not None and len(words) > max_words:
            words = words[:max_words]
            counter["truncated_utterance"] += 1
        units.append(Utterance(min(u.start for u in buf), max(u.end for u in buf), " ".join(words)))
        buf.clear()

    count = 0
    for u in sorted(stream, key=lambda x: (x.start, x.end)):
        n = len(_words(u.text))
        if n == 0:
            counter["empty_utterance"] += 1
            continue
        buf.append(u)
        count += n
        if count >= min_words:
            flush()
            count = 0
    if buf:
        flush()
    return units


def pair_utterances(streams: Mapping[str, list[Utterance]], *, min_words: int = 10, max_words: int | None = 64,
                    max_gap: float | None = None, split: str | None = None,
                    counter: Counter | None = None) -> list[Clip]:
    """MV-GPT (present U, future W) pairs as ``Clip(video_id, caption=W, start, end, split, transcript=U)``.

    Units come from :func:`merge_utterances`; every unit with at least ``min_words`` words is a
    present, its successor the future. ``max_gap`` (seconds) drops pairs whose future starts that
    long after the present ends (``gap_too_long``). Videos with fewer than two units are counted
    as ``too_few_utterances``; pairs made as ``pairs``.
    """
    counter = counter if counter is not None else Counter()
    clips: list[Clip] = []
    for vid, stream in streams.items():
        units = merge_utterances(stream, min_words, max_words, counter)
        if len(units) < 2:
            counter["too_few_utterances"] += 1
            continue
        for u, w in zip(units, units[1:]):
            if len(_words(u.text)) < min_words:  # only the last unit can be short
                continue
            if max_gap is not None and w.start - u.end > max_gap:
                counter["gap_too_long"] += 1
                continue
            clips.append(Clip(vid, w.text, u.start, u.end, split, transcript=u.text))
            counter["pairs"] += 1
    return clips


# ----------------------------------------------------------------------------- evaluation helpers
def attach_transcripts(clips: list[Clip], streams: Streams) -> list[Clip]:
    """Give each clip the text of its video's utterances whose midpoint lies in the clip's span
    (all of them for an untimed clip), joined by spaces; None when there is none."""
    out = []
    for c in clips:
        lo = -np.inf if c.start is None else c.start
        hi = np.inf if c.end is None else c.end
        words = [u.text for u in streams.get(c.video_id, []) if lo <= (u.start + u.end) / 2 <= hi]
        out.append(Clip(c.video_id, c.caption, c.start, c.end, c.split, " ".join(words) or None))
    return out


def clip_key(clip: Clip) -> str:
    """The id a caption is scored under: the video id, plus ``@start-end`` for a segment."""
    if clip.start is None and clip.end is None:
        return clip.video_id
    fmt = lambda t: "" if t is None else f"{float(t):.2f}"  # noqa: E731
    return f"{clip.video_id}@{fmt(clip.start)}-{fmt(clip.end)}"


def eval_clips(clips: Iterable[Clip]) -> list[Clip]:
    """One clip per :func:`clip_key` (the first), in first-appearance order: one item per video/segment."""
    seen: dict[str, Clip] = {}
    for c in clips:
        seen.setdefault(clip_key(c), c)
    return list(seen.values())


def references(clips: Iterable[Clip]) -> dict[str, list[str]]:
    """``{clip_key: [every caption of that key]}`` (MSR-VTT: all 20 of a video); empty ones left out."""
    out: dict[str, list[str]] = {}
    for c in clips:
        refs = out.setdefault(clip_key(c), [])
        if c.caption.strip():
            refs.append(c.caption)
    return out


# ----------------------------------------------------------------------------- dataset
class CaptionDataset(VideoTextDataset):
    """One item per clip: segment features, the transcript's tokens and the caption's (target) tokens.

    Text is ``[CLS] ... [SEP]`` WordPiece; a transcript of None or blank (or ``use_transcript=False``)
    gives ``[CLS] [SEP]`` (counted as ``no_transcript``). Text longer than ``max_words`` (transcript)
    or ``max_target_len`` (target) tokens is cut, keeping the final [SEP], and counted in
    ``counts`` (``transcript_truncated``, ``target_truncated``). Clips with an empty caption, a
    missing video or bad features raise, or with ``skip_bad`` are dropped and counted in
    ``skipped`` (as in :class:`VideoTextDataset`). ``keys[i]`` is ``clip_key(clips[i])``.
    """

    def __init__(self, clips: list[Clip], store: FeatureStore, tokenizer: Any, max_frames: int = 32,
                 max_words: int = 32, max_target_len: int = 32, use_transcript: bool = True,
                 skip_bad: bool = False, *, expected_dim: int | None = None):
        if max_target_len < 2:
            raise ConfigError(f"max_target_len must be >= 2 ([CLS] and [SEP]), got {max_target_len}")
        super().__init__(clips, store, tokenizer, max_frames=max_frames, max_words=max_words,
                         skip_bad=skip_bad, expected_dim=expected_dim)
        self.max_target_len, self.use_transcript = max_target_len, use_transcript
        self.counts: Counter = Counter()
        self.keys = [clip_key(c) for c in self.clips]
        self.targets = self._encode([c.caption for c in self.clips], max_target_len, "target")
        self.set_transcripts([c.transcript for c in self.clips])

    def set_transcripts(self, texts: list[str | None]) -> None:
        """Encode one encoder text per clip (its ASR, or e.g. retrieved captions), replacing the old
        ones and their counts."""
        if len(texts) != len(self.clips):
            raise ValueError(f"{len(texts)} transcripts for {len(self.clips)} clips")
        texts = [(t or "").strip() if self.use_transcript else "" for t in texts]
        for what in ("no_transcript", "transcript_truncated"):
            self.counts.pop(what, None)
        if any(not t for t in texts):
            self.counts["no_transcript"] = sum(1 for t in texts if not t)
        self.transcripts = self._encode(texts, self.max_words, "transcript")

    def _encode(self, texts: list[str], limit: int, what: str) -> list[list[int]]:
        """Token ids of each text, cut to ``limit`` (keeping the last, [SEP]) and counted."""
        out = []
        for a in range(0, len(texts), 4096):
            enc = self.tokenizer(texts[a:a + 4096], truncation=True, max_length=limit + 1)["input_ids"]
            for ids in enc:
                ids = list(ids)
                if len(ids) > limit:
                    ids = ids[:limit - 1] + ids[-1:]
                    self.counts[f"{what}_truncated"] += 1
                out.append(ids)
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        clip = self.clips[i]
        feats = cut_segment(self.store[clip.video_id], clip.start, clip.end, self.store.fps, clip.video_id)
        feats = sample_frames(feats, self.max_frames)
        return {
            "video": torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)),
            "transcript_ids": torch.tensor(self.transcripts[i], dtype=torch.long),
            "target_ids": torch.tensor(self.targets[i], dtype=torch.long),
            "video_id": clip.video_id,
            "clip_index": i,
        }


def _pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(seqs), max(s.shape[0] for s in seqs), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for k, s in enumerate(seqs):
        ids[k, :s.shape[0]], mask[k, :s.shape[0]] = s, 1
    return ids, mask


def collate_captions(items: list[dict[str, Any]]) -> CaptionBatch:
    """Pad video to the longest T (``video_mask`` True on real frames) and each text to its longest
    length (pad id 0, mask 0)."""
    video, video_mask = pad_videos(items)
    transcript_ids, transcript_mask = _pad([it["transcript_ids"] for it in items])
    target_ids, target_mask = _pad([it["target_ids"] for it in items])
    return CaptionBatch(video=video, video_mask=video_mask, transcript_ids=transcript_ids,
                        transcript_mask=transcript_mask, target_ids=target_ids, target_mask=target_mask,
                        video_ids=[it["video_id"] for it in items],
                        clip_index=torch.tensor([it["clip_index"] for it in items], dtype=torch.long))
