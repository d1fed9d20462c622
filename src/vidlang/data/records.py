"""The one record type of vidlang's data layer, and the collated batch."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch


class Skips(Counter):
    """What ``skip_bad`` left out: a Counter of reasons, and each skipped item named in ``items``
    (reason, video id, file, line, message) in ``named``, for the terminal and the result JSON."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.named: list[dict[str, Any]] = []

    def add(self, reason: str, *, video_id: Any = None, file: Any = None, line: int | None = None,
            message: str = "", count: int = 1) -> None:
        self[reason] += count
        item = {"reason": reason, "id": video_id, "file": str(file) if file is not None else None, "line": line,
                "message": message}
        self.named.append({k: v for k, v in item.items() if v not in (None, "")})


def named_skips(counter: Counter) -> list[dict[str, Any]]:
    """The named items of a :class:`Skips` (none for a plain Counter)."""
    return list(counter.named) if isinstance(counter, Skips) else []


def record_skip(counter: Counter, reason: str, **item: Any) -> None:
    """Count ``reason`` in ``counter``, naming the item when it is a :class:`Skips`."""
    if isinstance(counter, Skips):
        counter.add(reason, **item)
    else:
        counter[reason] += item.get("count", 1)


def describe_skip(item: dict[str, Any]) -> str:
    """One line for the terminal: ``reason: id 'v3' (file, line 7): message``."""
    where = ", ".join(x for x in (item.get("file"), f"line {item['line']}" if "line" in item else None) if x)
    what = f"id {item['id']!r}" if "id" in item else "item"
    return f"{item['reason']}: {what}{f' ({where})' if where else ''}{': ' + item['message'] if item.get('message') else ''}"


@dataclass(frozen=True)
class Clip:
    """One (video segment, caption) pair.

    ``start``/``end`` are seconds inside the video; ``None`` means the whole video.
    ``transcript`` is text the model reads beside the frames (MV-GPT): the ASR of the segment for
    captioning, or the present utterance in pretraining, where ``caption`` is then the future one.
    """

    video_id: str
    caption: str
    start: float | None = None
    end: float | None = None
    split: str | None = None
    transcript: str | None = None


class TensorBatch:
    """Moving to a device and the batch size, shared by the batch types."""

    def to(self, device):
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return type(self)(**{k: move(v) for k, v in self.__dict__.items()})

    def __len__(self) -> int:
        return self.video.shape[0]


@dataclass
class Batch(TensorBatch):
    """A collated batch of clips (B pairs).

    video:          (B, T, D) float32 features, zero where masked
    video_mask:     (B, T) bool, True on real frames
    input_ids:      (B, L) long WordPiece ids ([CLS] ... [SEP], padded)
    attention_mask: (B, L) long
    token_weights:  (B, L) float, normalised IDF weight of each token of interest
                    (each row sums to 1, or is all zero when the caption has none)
    video_ids:      the B video ids; ``clip_index`` indexes the dataset's clip list
    duplicates_dropped: clips dropped from this batch because their video was already in it
                    (a sharded stream has no unique-video sampler: shard_stream.UniqueVideos)
    text_video:     (B,) long, set when some videos have several rows (several captions as positives):
                    row i's video among the batch's distinct videos; None when every video is once
    video_rows:     (V,) long, the first row of each distinct video (None with text_video)
    """

    video: torch.Tensor
    video_mask: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_weights: torch.Tensor
    video_ids: list[str] = field(default_factory=list)
    clip_index: torch.Tensor | None = None
    duplicates_dropped: int = 0
    text_video: torch.Tensor | None = None
    video_rows: torch.Tensor | None = None



@dataclass
class CaptionBatch(TensorBatch):
    """A collated batch for captioning and generative pretraining (MV-GPT), B items.

    video:           (B, T, D) float32 features (or flattened raw frames for ViViT), zero where masked
    video_mask:      (B, T) bool
    transcript_ids:  (B, L) encoder text: [CLS] transcript [SEP] ([CLS] [SEP] when there is none)
    transcript_mask: (B, L) long
    target_ids:      (B, M) the text to generate: [CLS] caption [SEP]; in pretraining the future utterance
    target_mask:     (B, M) long
    """

    video: torch.Tensor
    video_mask: torch.Tensor
    transcript_ids: torch.Tensor
    transcript_mask: torch.Tensor
    target_ids: torch.Tensor
    target_mask: torch.Tensor
    video_ids: list[str] = field(default_factory=list)
    clip_index: torch.Tensor | None = None
