"""A per-frame head on a video encoder: COIN segmentation, CrossTask's trained step head.

Like :class:`~vidlang.models.probe.ProbeModel` (same encoders: ``raw`` stored features, or TACo's /
MV-GPT's video encoder, frozen or fine-tuned), but the head is a :class:`FrameClassifier` on every
frame's token instead of one class per video. Videos longer than the encoder's positions are
encoded in consecutive windows of ``max_video_positions`` frames.
"""
from __future__ import annotations

import torch

from vidlang.models.heads import FrameClassifier, frame_loss
from vidlang.models.probe import ProbeModel


class FrameProbe(ProbeModel):
    def __init__(self, encoder_kind: str, video_dim: int, num_classes: int, encoder_config: dict | None = None,
                 hidden: int = 0, dropout: float = 0.0, finetune: bool = False):
        super().__init__(encoder_kind, video_dim, num_classes, encoder_config, 0, dropout, finetune)
        self.head = FrameClassifier(self.head.in_dim, num_classes, dropout)
        self.meta["head"] = "frames"

    @classmethod
    def from_meta(cls, meta: dict) -> FrameProbe:
        model = super().from_meta(meta)
        model.meta.update(meta["probe"])  # with what the task kept there (e.g. the majority class)
        return model

    def tokens(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D) features -> (B, T, width) frame tokens of the encoder (the features for ``raw``)."""
        if self.encoder is None:
            return video
        window = self.encoder.position.num_embeddings
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            parts = [self.encoder(video[:, a : a + window], mask[:, a : a + window]).tokens
                     for a in range(0, video.shape[1], window)]
        return torch.cat(parts, dim=1)

    def frame_logits(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(video, mask))

    def forward(self, batch, *unused) -> dict:
        logits = self.frame_logits(batch.video, batch.video_mask)
        loss = frame_loss(logits, batch.labels, batch.video_mask)
        return {"loss": loss, "objective": loss}
