"""TACo: token-aware cascade contrastive learning (Yang, Bisk, Gao; ICCV 2021).

Video encoder f_θv over frame features, BERT text encoder f_θt, fusion encoder f_θm.
Trained with L1 (sentence) + λ_t·L2 (token, nouns and verbs, IDF-weighted) + L3 (fusion,
on cascade-sampled hard negatives). Inference sums s1 + 0.5·s2 + s3 (§1.5).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidlang import losses
from vidlang.config import LossConfig, ModelConfig
from vidlang.data.records import Batch
from vidlang.models.blocks import Encoded, FusionEncoder, TextEncoder, VideoEncoder, select


class TACo(nn.Module):
    def __init__(self, cfg: ModelConfig, video_dim: int, *, load_text_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        self.video_dim = video_dim
        self.text = TextEncoder(
            cfg.text_encoder, cfg.width or None, cfg.text_trainable_layers, not load_text_weights, cfg.text_pooling
        )
        self.width = width = self.text.width
        self.video = VideoEncoder(
            video_dim, width, cfg.video_layers, cfg.video_heads, cfg.max_video_positions, cfg.dropout
        )
        self.fusion = FusionEncoder(
            width, cfg.fusion_layers, cfg.fusion_heads, cfg.max_video_positions + cfg.max_text_positions, cfg.dropout
        )
        self.fusion_head = nn.Linear(width, 1)  # w ∈ R^{1×d}, with bias

    # -- encoders ---------------------------------------------------------------------------------
    def _normalise(self, enc: Encoded) -> Encoded:
        if not self.cfg.normalize:
            return enc
        return Encoded(F.normalize(enc.tokens, dim=-1), enc.mask, F.normalize(enc.pooled, dim=-1))

    def encode_video(self, features: torch.Tensor, mask: torch.Tensor) -> Encoded:
        return self.video(features, mask)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        return self.text(input_ids, attention_mask)

    # -- the three scores -------------------------------------------------------------------------
    def sentence_scores(self, video: Encoded, text: Encoded) -> torch.Tensor:
        """s1 (texts, videos)."""
        return losses.sentence_scores(self._normalise(video).pooled, self._normalise(text).pooled)

    def token_similarities(self, video: Encoded, text: Encoded) -> torch.Tensor:
        """s(x_j, y_i^p) for every text token p (texts, videos, tokens)."""
        v, t = self._normalise(video), self._normalise(text)
        return losses.token_scores(v.tokens, v.mask, t.tokens)

    def fusion_scores(self, video: Encoded, text: Encoded, video_index, text_index) -> torch.Tensor:
        """s3 = w·z^cls for the pairs (video_index[p], text_index[p])."""
        z = self.fusion(select(text, text_index), select(video, video_index))
        return self.fusion_head(z).squeeze(-1)

    # -- training objective -----------------------------------------------------------------------
    def forward(self, batch: Batch, loss_cfg: LossConfig, generator: torch.Generator | None = None) -> dict:
        """L1 + λ_t·L2 + L3 on a batch of B distinct videos with one caption each."""
        video = self.encode_video(batch.video, batch.video_mask)
        text = self.encode_text(batch.input_ids, batch.attention_mask)
        reduction = "sum" if loss_cfg.paper_literal else "mean"
        symmetric = loss_cfg.symmetric and not loss_cfg.paper_literal
        out: dict[str, torch.Tensor | int] = {}
        total = video.pooled.new_zeros(())

        s1 = self.sentence_scores(video, text)
        if loss_cfg.sentence_weight:
            out["l1"] = losses.sentence_loss(s1, loss_cfg.tau_sentence, symmetric, reduction)  # Eq. 3
            total = total + loss_cfg.sentence_weight * out["l1"]

        weights = batch.token_weights.to(s1.dtype)
        need_tokens = loss_cfg.token_weight or (loss_cfg.fusion_weight and loss_cfg.negatives == "cascade")
        token_sim = self.token_similarities(video, text) if need_tokens else None
        if loss_cfg.token_weight:
            out["l2"], out["l2_texts"] = losses.token_loss(token_sim, weights, loss_cfg.tau_token, reduction)  # Eq. 4
            total = total + loss_cfg.token_weight * out["l2"]

        if loss_cfg.fusion_weight:
            n = len(batch)
            if loss_cfg.negatives == "cascade":  # §1.4: reuse s1 and the token maxima, no extra pass
                scores = losses.alignment_scores(s1, token_sim, weights)
                neg_videos, neg_texts = losses.hard_negatives(scores, loss_cfg.num_negatives)
            elif loss_cfg.negatives == "random":
                neg_videos, neg_texts = losses.random_negatives(n, loss_cfg.num_negatives, generator, s1.device)
            else:
                raise ValueError(f"loss.negatives must be 'cascade' or 'random', not {loss_cfg.negatives!r}")
            k = neg_videos.shape[1]
            arange = torch.arange(n, device=s1.device)
            video_index = torch.cat([arange, neg_videos.reshape(-1), arange.repeat_interleave(k)])
            text_index = torch.cat([arange, arange.repeat_interleave(k), neg_texts.reshape(-1)])
            logits = self.fusion_scores(video, text, video_index, text_index)
            pos, neg_v, neg_t = logits[:n], logits[n : n + n * k].view(n, k), logits[n + n * k :].view(n, k)
            out["l3"] = losses.fusion_loss(pos, neg_v, neg_t, reduction)  # Eq. 5
            total = total + loss_cfg.fusion_weight * out["l3"]

        out["loss"] = total
        return out
