"""TACo: token-aware cascade contrastive learning (Yang, Bisk, Gao; ICCV 2021).

Video encoder f_θv over frame features, BERT text encoder f_θt, fusion encoder f_θm.
Trained with L1 (sentence) + λ_t·L2 (token, nouns and verbs, IDF-weighted) + L3 (fusion,
on cascade-sampled hard negatives). Inference sums s1 + 0.5·s2 + s3 (§1.5).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vidlang import losses
from vidlang.config import ModelConfig, TacoConfig
from vidlang.data.records import Batch
from vidlang.distributed import Shard
from vidlang.errors import ConfigError
from vidlang.models.blocks import (
    Encoded,
    FusionEncoder,
    TextEncoder,
    VideoEncoder,
    select,
)


class TACo(nn.Module):
    def __init__(self, cfg: ModelConfig, video_dim: int, *, load_text_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        self.video_dim = video_dim
        self.text = TextEncoder(
            cfg.text_encoder, cfg.width or None, cfg.text_trainable_layers, not load_text_weights, cfg.text_pooling,
            cfg.text_cache_frozen,
        )
        self.width = width = self.text.width
        self.video = VideoEncoder(
            video_dim, width, cfg.video_layers, cfg.video_heads, cfg.max_video_positions, cfg.dropout
        )
        self.fusion = FusionEncoder(
            width, cfg.fusion_layers, cfg.fusion_heads, cfg.max_video_positions + cfg.max_text_positions, cfg.dropout
        )
        self.fusion_head = nn.Linear(width, 1)  # w ∈ R^{1×d}, with bias
        if cfg.learned_temperature > 0:  # log(1/τ) of s1 and of s2, learned (CLIP)
            start = torch.tensor(-math.log(cfg.learned_temperature))
            self.log_inv_tau = nn.Parameter(torch.stack([start, start]))
        else:
            self.log_inv_tau = None

    # -- encoders ---------------------------------------------------------------------------------
    def _normalise(self, enc: Encoded) -> Encoded:
        if not self.cfg.normalize:
            return enc
        return Encoded(F.normalize(enc.tokens, dim=-1), enc.mask, F.normalize(enc.pooled, dim=-1))

    def encode_video(self, features: torch.Tensor, mask: torch.Tensor) -> Encoded:
        return self.video(features, mask)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        return self.text(input_ids, attention_mask)

    def sentence_vectors(self, enc: Encoded) -> torch.Tensor:
        """The pooled vectors s1 dots (L2-normalised when the model normalises), before any temperature."""
        return self._normalise(enc).pooled

    # -- the three scores -------------------------------------------------------------------------
    def _scale(self, scores: torch.Tensor, which: int) -> torch.Tensor:
        """Scores divided by the learned temperature ``which`` (0: s1, 1: s2), capped at 1/τ = 100."""
        if self.log_inv_tau is None:
            return scores
        return scores * self.log_inv_tau[which].clamp(max=math.log(100.0)).exp()

    def sentence_scores(self, video: Encoded, text: Encoded) -> torch.Tensor:
        """s1 (texts, videos)."""
        return self._scale(losses.sentence_scores(self._normalise(video).pooled, self._normalise(text).pooled), 0)

    def token_similarities(self, video: Encoded, text: Encoded) -> torch.Tensor:
        """s(x_j, y_i^p) for every text token p (texts, videos, tokens)."""
        v, t = self._normalise(video), self._normalise(text)
        return self._scale(losses.token_scores(v.tokens, v.mask, t.tokens), 1)

    def fusion_scores(self, video: Encoded, text: Encoded, video_index, text_index) -> torch.Tensor:
        """s3 = w·z^cls for the pairs (video_index[p], text_index[p])."""
        z = self.fusion(select(text, text_index), select(video, video_index))
        return self.fusion_head(z).squeeze(-1)

    # -- training objective -----------------------------------------------------------------------
    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.cfg.normalize else x

    def pretrained_text_parameters(self):
        """The pretrained text encoder's weights (the optimizer gives them ``train.text_lr``)."""
        return self.text.bert.parameters()

    @staticmethod
    def _negatives_of_groups(s1, token_sim, weights, targets, loss_cfg: TacoConfig, generator):
        """L3's negatives when several texts share a video: for each text the top-K' other videos, and for
        its video the top-K' texts of other videos, by the cascade score (or by a uniform draw: random)."""
        own = targets[None, :] == torch.arange(s1.shape[1], device=s1.device)[:, None]  # (videos, texts)
        if loss_cfg.negatives == "cascade":
            scores = losses.alignment_scores(s1, token_sim, weights)
        else:
            scores = torch.rand(s1.shape, generator=generator).to(s1.device)
        neg_videos = losses.hard_negatives(scores, loss_cfg.num_negatives, positives=own.T)
        neg_texts = losses.hard_negatives(scores.T, loss_cfg.num_negatives, positives=own)[targets]
        return neg_videos, neg_texts

    def forward(self, batch: Batch, loss_cfg: TacoConfig, generator: torch.Generator | None = None,
                shard: Shard | None = None) -> dict:
        """L1 + λ_t·L2 + L3 on a batch of B distinct videos with one caption each, or (``batch.text_video``
        set, ``taco.captions_per_video`` > 1) several captions per video, each a positive of its video.

        Under torchrun ``batch`` is this rank's rows ``shard.rows`` of the global batch, and the losses
        are those of the global batch (docs/distributed.md): L1 whole on every rank from gathered
        pooled vectors, L2 and L3 split by anchor. ``out["objective"]`` is what to call backward on
        (the global loss scaled for DDP's gradient averaging); ``out["loss"]`` is the global loss.
        """
        shard = shard or Shard.single(len(batch))
        many = shard.world > 1
        targets = batch.text_video  # each text's video column; None: the diagonal
        if targets is None:
            video = self.encode_video(batch.video, batch.video_mask)
        elif many:
            raise ConfigError("taco.captions_per_video > 1 trains in one process only, not under torchrun")
        else:  # each video once, from the first of its rows
            video = self.encode_video(batch.video[batch.video_rows], batch.video_mask[batch.video_rows])
        text = self.encode_text(batch.input_ids, batch.attention_mask)
        reduction = "sum" if loss_cfg.paper_literal else "mean"
        symmetric = loss_cfg.symmetric and not loss_cfg.paper_literal
        out: dict[str, torch.Tensor | int] = {}
        total = video.pooled.new_zeros(())

        # L1 is cheap: every rank computes it whole (gradient flows only to the local rows)
        pooled_v, pooled_t = shard.gather(video.pooled), shard.gather(text.pooled)
        s1 = self._scale(losses.sentence_scores(self._unit(pooled_v), self._unit(pooled_t)), 0)
        if loss_cfg.sentence_weight:
            out["l1"] = losses.sentence_loss(s1, loss_cfg.tau_sentence, symmetric, reduction, targets)  # Eq. 3
            total = total + loss_cfg.sentence_weight * out["l1"]

        weights = batch.token_weights.to(s1.dtype)
        need_tokens = loss_cfg.token_weight or (loss_cfg.fusion_weight and loss_cfg.negatives == "cascade")
        if need_tokens or loss_cfg.fusion_weight:  # every video's tokens: L2 rows and fusion pairs use them
            all_videos = Encoded(shard.gather(video.tokens, sum_grads=True), shard.gather(video.mask, pad_value=False),
                                 pooled_v)
        # s(x_j, y_i^p) for this rank's texts i and every video j: (local texts, videos, tokens)
        token_sim = self.token_similarities(all_videos, text) if need_tokens else None
        if loss_cfg.token_weight:
            # token_loss puts text i's positive at column i: rotate so it is (columns are a softmax set)
            rows = token_sim.roll(-shard.offset, dims=1) if many else token_sim
            l2, used = losses.token_loss(rows, weights, loss_cfg.tau_token, "sum", targets)  # Eq. 4
            count = int(shard.all_sum(torch.tensor(used, device=s1.device))) if many else used
            if reduction == "mean" and count:
                l2 = l2 / count
            out["l2"], out["l2_texts"] = l2, count
            total = total + loss_cfg.token_weight * l2

        if loss_cfg.fusion_weight:
            n, local = shard.total, shard.rows
            all_texts = Encoded(shard.gather(text.tokens, sum_grads=True), shard.gather(text.mask, pad_value=False),
                                pooled_t)
            if loss_cfg.negatives not in ("cascade", "random"):
                raise ValueError(f"taco.negatives must be 'cascade' or 'random', not {loss_cfg.negatives!r}")
            if targets is not None:  # several texts per video: a text's negatives are never its video's
                neg_videos, neg_texts = self._negatives_of_groups(s1, token_sim, weights, targets, loss_cfg, generator)
            elif loss_cfg.negatives == "cascade":  # §1.4: reuse s1 and the token maxima, no extra pass
                scores = losses.alignment_scores(s1[local], token_sim, weights)  # (local texts, videos)
                neg_videos = losses.hard_negatives(scores, loss_cfg.num_negatives, shard.offset)
                if many:  # every text against this rank's videos, for the texts of each local video
                    with torch.no_grad():
                        detached = Encoded(all_texts.tokens.detach(), all_texts.mask, pooled_t)
                        video_cols = self.token_similarities(video, detached)  # (texts, local videos, tokens)
                        columns = losses.alignment_scores(s1[:, local], video_cols, shard.gather(weights))
                    neg_texts = losses.hard_negatives(columns.T, loss_cfg.num_negatives, shard.offset)
                else:
                    neg_texts = losses.hard_negatives(scores.T, loss_cfg.num_negatives, 0)
            else:  # random: the same draw on every rank; each keeps its anchors' rows
                neg_videos, neg_texts = losses.random_negatives(n, loss_cfg.num_negatives, generator, s1.device)
                neg_videos, neg_texts = neg_videos[local], neg_texts[local]
            b, k = len(neg_videos), neg_videos.shape[1]
            anchors = torch.arange(shard.offset, shard.offset + b, device=s1.device)
            own_videos = anchors if targets is None else targets  # (text, its video) pairs are the anchors
            video_index = torch.cat([own_videos, neg_videos.reshape(-1), own_videos.repeat_interleave(k)])
            text_index = torch.cat([anchors, anchors.repeat_interleave(k), neg_texts.reshape(-1)])
            logits = self.fusion_scores(all_videos, all_texts, video_index, text_index)
            pos, neg_v, neg_t = logits[:b], logits[b : b + b * k].view(b, k), logits[b + b * k :].view(b, k)
            l3 = losses.fusion_loss(pos, neg_v, neg_t, reduction)  # Eq. 5
            if many and reduction == "mean":
                l3 = l3 * (b / n)  # this rank's share of the mean over all n anchors
            out["l3"] = l3
            total = total + loss_cfg.fusion_weight * l3

        if not many:
            out["loss"] = out["objective"] = total
            return out
        # DDP averages gradients over ranks: scale by the world size so they are the global loss's
        out["objective"] = shard.world * total
        loss = total.new_zeros(()).detach()
        for key, weight in (("l1", loss_cfg.sentence_weight), ("l2", loss_cfg.token_weight), ("l3", loss_cfg.fusion_weight)):
            if key in out:  # L1 is already whole; the L2 and L3 shares are summed over ranks
                out[key] = out[key].detach() if key == "l1" else shard.all_sum(out[key])
                loss = loss + weight * out[key]
        out["loss"] = loss
        return out
