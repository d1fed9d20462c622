"""Open-ended VideoQA on MV-GPT's multimodal encoder: frames + question -> one of K answers.

The question takes the place of MV-GPT's transcript: the encoder (visual encoder, BERT, fusion) reads
``[question; frames]`` and the :class:`~vidlang.models.heads.AnswerClassifier` reads the masked mean of
all its outputs. ``finetune=False`` keeps the whole MV-GPT frozen (a probe); ``True`` trains its visual
encoder and fusion (BERT follows the encoder checkpoint's ``model.text_trainable_layers``). The
caption decoder is kept (frozen, unused) so the MV-GPT checkpoint loads as it was saved.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidlang.config import config_from_dict
from vidlang.errors import DataError
from vidlang.models.heads import AnswerClassifier
from vidlang.models.mvgpt import MVGPT


class VideoQAModel(nn.Module):
    def __init__(self, video_dim: int, num_answers: int, encoder_config: dict, output_vocab: list[int] | None = None,
                 hidden: int = 0, dropout: float = 0.0, finetune: bool = False):
        super().__init__()
        self.video_dim, self.finetune = video_dim, finetune
        self.mvgpt = MVGPT(config_from_dict(encoder_config), video_dim, load_text_weights=False)
        self.mvgpt.decoder.set_output_vocab(output_vocab)
        self.mvgpt.requires_grad_(False)
        if finetune:
            for part in (self.mvgpt.visual, self.mvgpt.fusion):
                part.requires_grad_(True)
        self.head = AnswerClassifier(self.mvgpt.width, num_answers, hidden=hidden, dropout=dropout)
        self.meta = {"head": "answers", "video_dim": video_dim, "num_answers": num_answers,
                     "encoder": "mvgpt", "encoder_config": encoder_config, "output_vocab": output_vocab,
                     "hidden": hidden, "dropout": dropout, "finetune": finetune}

    @classmethod
    def from_meta(cls, meta: dict) -> VideoQAModel:
        p = meta["probe"]
        model = cls(p["video_dim"], p["num_answers"], p["encoder_config"], p["output_vocab"], p["hidden"],
                    p["dropout"], p["finetune"])
        model.meta.update(p)  # with the answer list and the priors the task kept there
        return model

    def load_encoder(self, state: dict[str, torch.Tensor]) -> None:
        self.mvgpt.load_state_dict(state)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.finetune:
            self.mvgpt.eval()  # a frozen encoder: no dropout
        return self

    def logits(self, batch) -> torch.Tensor:
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            enc = self.mvgpt.encode(batch.video, batch.video_mask, batch.question_ids, batch.question_mask)
        return self.head(enc.tokens, enc.mask)

    def forward(self, batch, *unused) -> dict:
        logits = self.logits(batch)
        known = batch.labels >= 0  # answers outside the K-answer vocabulary teach nothing
        if not known.any():
            raise DataError("a training batch holds no answer of the vocabulary (raise probe.num_answers)")
        loss = F.cross_entropy(logits[known], batch.labels[known])
        return {"loss": loss, "objective": loss}
