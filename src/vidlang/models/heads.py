"""Small task heads on top of (frozen or fine-tuned) video features.

- :class:`FrameClassifier`: a linear map per frame, (B, T, D) -> (B, T, C) logits over C classes
  (a task's steps plus background at index 0: COIN segmentation, CrossTask's trained head).
- :class:`AnswerClassifier`: masked mean over time, then an optional hidden layer, then K answer
  logits: (B, T, D) or (B, D) -> (B, K) (open-ended VideoQA over the K most frequent answers).
- :func:`frame_loss`: cross-entropy over real (unmasked) frames only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidlang.errors import ConfigError, DataError
from vidlang.models.blocks import masked_mean

__all__ = ["AnswerClassifier", "FrameClassifier", "frame_loss"]


def _check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


class FrameClassifier(nn.Module):
    """Per-frame linear classifier (with optional dropout on the input features)."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        _check_dims(in_dim=in_dim, num_classes=num_classes)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 3 or frames.shape[-1] != self.linear.in_features:
            raise DataError(f"FrameClassifier expects (B, T, {self.linear.in_features}) features, "
                            f"got {tuple(frames.shape)}")
        return self.linear(self.dropout(frames))


class AnswerClassifier(nn.Module):
    """Pooled video (and optionally question) features -> K answer logits.

    ``question`` (B, Q), when given, is concatenated to the pooled video vector; ``question_dim``
    must then be set. ``hidden=0`` makes the head linear.
    """

    def __init__(self, in_dim: int, num_answers: int, hidden: int = 0, question_dim: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        _check_dims(in_dim=in_dim, num_answers=num_answers)
        if hidden < 0 or question_dim < 0:
            raise ConfigError(f"hidden and question_dim must be >= 0, got {hidden}, {question_dim}")
        self.in_dim, self.question_dim = in_dim, question_dim
        width = in_dim + question_dim
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden:
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_answers))
        self.mlp = nn.Sequential(*layers)

    def forward(self, video: torch.Tensor, mask: torch.Tensor | None = None,
                question: torch.Tensor | None = None) -> torch.Tensor:
        if video.ndim == 3:
            if mask is None:
                mask = torch.ones(video.shape[:2], dtype=torch.bool, device=video.device)
            if mask.shape != video.shape[:2]:
                raise DataError(f"mask {tuple(mask.shape)} does not match video {tuple(video.shape[:2])}")
            video = masked_mean(video, mask)
        if video.ndim != 2 or video.shape[-1] != self.in_dim:
            raise DataError(f"AnswerClassifier expects (B, T, {self.in_dim}) or (B, {self.in_dim}) video "
                            f"features, got {tuple(video.shape)}")
        if (question is None) != (self.question_dim == 0):
            raise DataError("pass question features exactly when the head was built with question_dim > 0")
        if question is not None:
            if question.shape != (video.shape[0], self.question_dim):
                raise DataError(f"question features {tuple(question.shape)}, expected ({video.shape[0]}, "
                                f"{self.question_dim})")
            video = torch.cat([video, question], dim=-1)
        return self.mlp(video)


def frame_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the frames where ``mask`` is True (all frames when None)."""
    if logits.shape[:-1] != labels.shape:
        raise DataError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    keep = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask.bool()
    if not keep.any():
        raise DataError("frame_loss: no unmasked frame")
    return F.cross_entropy(logits[keep], labels[keep])
