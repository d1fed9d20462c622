"""The one record type of vidlang's data layer, and the collated batch."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Clip:
    """One (video segment, caption) pair.

    ``start``/``end`` are seconds inside the video; ``None`` means the whole video.
    """

    video_id: str
    caption: str
    start: float | None = None
    end: float | None = None
    split: str | None = None


@dataclass
class Batch:
    """A collated batch of clips (B pairs).

    video:          (B, T, D) float32 features, zero where masked
    video_mask:     (B, T) bool, True on real frames
    input_ids:      (B, L) long WordPiece ids ([CLS] ... [SEP], padded)
    attention_mask: (B, L) long
    token_weights:  (B, L) float, normalised IDF weight of each token of interest
                    (each row sums to 1, or is all zero when the caption has none)
    video_ids:      the B video ids; ``clip_index`` indexes the dataset's clip list
    """

    video: torch.Tensor
    video_mask: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_weights: torch.Tensor
    video_ids: list[str] = field(default_factory=list)
    clip_index: torch.Tensor | None = None

    def to(self, device) -> "Batch":
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return Batch(**{k: move(v) for k, v in self.__dict__.items()})

    def __len__(self) -> int:
        return self.video.shape[0]
