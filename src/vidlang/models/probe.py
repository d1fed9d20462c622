"""A task head on a video encoder: the linear probe (frozen encoder) or a fine-tuned head.

The encoder is the input the head reads: ``raw`` (the stored features, mean-pooled over frames),
``taco`` (TACo's video encoder, pooled x̄) or ``mvgpt`` (MV-GPT's visual encoder, mean-pooled), built
from the encoder checkpoint's own config, which the probe keeps in its meta so its folder loads alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidlang.config import config_from_dict
from vidlang.errors import ConfigError
from vidlang.models.blocks import masked_mean
from vidlang.models.heads import AnswerClassifier

ENCODERS = ("raw", "taco", "mvgpt")


class ProbeModel(nn.Module):
    def __init__(self, encoder_kind: str, video_dim: int, num_classes: int, encoder_config: dict | None = None,
                 hidden: int = 0, dropout: float = 0.0, finetune: bool = False):
        super().__init__()
        if encoder_kind not in ENCODERS:
            raise ConfigError(f"probe.encoder must be one of {', '.join(ENCODERS)}, not {encoder_kind!r}")
        self.encoder_kind, self.video_dim, self.finetune = encoder_kind, video_dim, finetune
        self.encoder = None
        width = video_dim
        if encoder_kind != "raw":
            from vidlang.models.blocks import VideoEncoder

            m = config_from_dict(encoder_config or {}).model
            width = m.width or 384  # 0 = the text encoder's width (MiniLM: 384)
            self.encoder = VideoEncoder(video_dim, width, m.video_layers, m.video_heads, m.max_video_positions, m.dropout)
            self.encoder.requires_grad_(finetune)
        self.head = AnswerClassifier(width, num_classes, hidden=hidden, dropout=dropout)
        self.meta = {"encoder": encoder_kind, "video_dim": video_dim, "num_classes": num_classes,
                     "encoder_config": encoder_config, "hidden": hidden, "dropout": dropout, "finetune": finetune}

    @classmethod
    def from_meta(cls, meta: dict) -> ProbeModel:
        p = meta["probe"]
        return cls(p["encoder"], p["video_dim"], p["num_classes"], p["encoder_config"], p["hidden"], p["dropout"],
                   p["finetune"])

    def load_encoder(self, state: dict[str, torch.Tensor]) -> None:
        """Take the video encoder's weights from a TACo (``video.*``) or MV-GPT (``visual.*``) state dict."""
        prefix = "video." if self.encoder_kind == "taco" else "visual."
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        self.encoder.load_state_dict(own)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder is not None and not self.finetune:
            self.encoder.eval()  # a frozen encoder: no dropout
        return self

    def pooled(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            return masked_mean(video, mask)
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            out = self.encoder(video, mask)
        return out.pooled if self.encoder_kind == "taco" else masked_mean(out.tokens, out.mask)

    def forward(self, batch, *unused) -> dict:
        logits = self.head(self.pooled(batch.video, batch.video_mask))
        loss = F.cross_entropy(logits, batch.labels)
        return {"loss": loss, "objective": loss, "logits": logits.detach()}
