"""Shared building blocks: video encoder, text encoder and fusion encoder.

TACo (``taco.py``) and MV-GPT (``mvgpt.py``) are assembled from these.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from cachetools import LRUCache
from torch import nn
from torch.nn import functional as F

from vidlang.errors import ConfigError


@dataclass
class Encoded:
    """A token sequence with its padding mask (True = real token) and a pooled vector."""

    tokens: torch.Tensor  # (B, N, d)
    mask: torch.Tensor  # (B, N) bool
    pooled: torch.Tensor  # (B, d)


class SelfAttention(nn.Module):
    """Multi-head attention into ``F.scaled_dot_product_attention`` (its fused kernels), with
    ``nn.MultiheadAttention``'s parameter names and init (one packed q/k/v projection): older checkpoints load."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"{heads} heads do not divide width {width}")
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rows: int | None = None) -> torch.Tensor:
        """x (B, N, d), mask (B, N) True = real token; only the first ``rows`` rows query (None = all)."""
        b, n, d = x.shape
        h = self.heads
        if rows is None:
            q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        else:
            w, bias = self.in_proj_weight, self.in_proj_bias
            q = F.linear(x[:, :rows], w[:d], bias[:d]).view(b, rows, h, d // h).transpose(1, 2)
            k, v = F.linear(x, w[d:], bias[d:]).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        keep = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class EncoderLayer(nn.Module):
    """A post-norm BERT layer: ``x = LN(x + drop(attn(x)))``, ``x = LN(x + drop(W2 gelu(W1 x)))``.

    As in BERT (and TACo's and MV-GPT's BERT/ViViT encoders), the 4x-wide feed-forward activation is not dropped
    out (``nn.TransformerEncoderLayer`` drops it). Parameter names are ``nn.TransformerEncoderLayer``'s.
    """

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn = SelfAttention(width, heads, dropout)
        self.linear1, self.linear2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, rows: int | None = None) -> torch.Tensor:
        """``rows``: compute only the first rows' outputs (their keys and values still see every token)."""
        h = self.norm1((x if rows is None else x[:, :rows]) + self.dropout1(self.self_attn(x, mask, rows)))
        return self.norm2(h + self.dropout2(self.linear2(F.gelu(self.linear1(h)))))


class TransformerStack(nn.Module):
    """``layers`` :class:`EncoderLayer` s; ``mask`` (B, N) True = real token. ``key``: the config key of
    ``heads``, named when it does not divide the width."""

    def __init__(self, width: int, heads: int, layers: int, dropout: float, key: str = "heads"):
        super().__init__()
        if width % heads:
            raise ConfigError(f"{key}={heads} does not divide the width {width}")
        self.layers = nn.ModuleList(EncoderLayer(width, heads, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class VideoEncoder(nn.Module):
    """Frame features -> linear projection + temporal position embedding -> N self-attention layers.

    The pooled output is the mean of the video tokens (TACo's x̄).
    """

    def __init__(self, in_dim: int, width: int, layers: int, heads: int, max_positions: int, dropout: float):
        super().__init__()
        self.in_dim = in_dim
        self.project = nn.Linear(in_dim, width)
        self.position = nn.Embedding(max_positions, width)
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.layers = TransformerStack(width, heads, layers, dropout, "model.video_heads") if layers > 0 else None
        nn.init.normal_(self.position.weight, std=0.02)  # BERT-style: N(0, 1) would drown the features

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> Encoded:
        steps = features.shape[1]
        if steps > self.position.num_embeddings:
            raise ValueError(f"{steps} frames exceed max_video_positions={self.position.num_embeddings}")
        x = self.project(features) + self.position.weight[:steps]
        x = self.dropout(self.norm(x))
        if self.layers is not None:
            x = self.layers(x, mask)
        x = x * mask.unsqueeze(-1).to(x.dtype)
        return Encoded(x, mask, masked_mean(x, mask))


# Frozen encoder outputs per token sequence, per encoder, LRU-bounded (a training set of MSR-VTT's
# 180k captions fits; a server shrinks its own with TextEncoder.limit_cache).
FROZEN_CACHE_SIZE = 200_000
_FROZEN_OUTPUTS: dict[str, LRUCache] = {}


class TextEncoder(nn.Module):
    """A Hugging Face BERT-family encoder, projected to the joint width.

    ``trainable_layers``: -1 fine-tunes everything (the paper); 0 freezes the encoder,
    whose outputs are then cached per token sequence (exact: frozen means eval mode);
    N > 0 fine-tunes only the top N layers. Cached outputs never depend on the batch that first met a
    caption: a task warms the cache with all its captions in one canonical batching (:meth:`warm_cache`),
    and a caption met later is computed alone, unpadded (a resumed run refills the cache bit for bit). The pooled output is the ``[CLS]`` token (TACo's ȳ).
    """

    def __init__(self, name_or_path: str, width: int | None, trainable_layers: int = -1, config_only: bool = False,
                 pooling: str = "cls", cache_frozen_layers: bool = False):
        super().__init__()
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the unused BERT pooler is reported as 'unexpected' otherwise

        from vidlang.text.pretrained import resolve_text_encoder

        path = resolve_text_encoder(name_or_path)
        if config_only:  # weights come from a vidlang checkpoint right after
            self.bert = AutoModel.from_config(AutoConfig.from_pretrained(path), add_pooling_layer=False)
        else:
            self.bert = AutoModel.from_pretrained(path, add_pooling_layer=False)
        hidden = self.bert.config.hidden_size
        self.width = width or hidden
        self.project = nn.Identity() if self.width == hidden else nn.Linear(hidden, self.width)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"text pooling must be 'cls' or 'mean', not {pooling!r}")
        self.pooling = pooling
        self.trainable_layers = trainable_layers
        # frozen outputs depend only on the pretrained weights: share them across models of a process
        shared = trainable_layers == 0 and not config_only
        self._cache = _FROZEN_OUTPUTS.setdefault(str(path), LRUCache(FROZEN_CACHE_SIZE)) if shared \
            else LRUCache(FROZEN_CACHE_SIZE)
        # N > 0 trainable layers: the output of the frozen layers below them, cached per token sequence
        self.cache_frozen_layers = cache_frozen_layers
        self._lower_cache = (_FROZEN_OUTPUTS.setdefault(f"{path}@{trainable_layers}", LRUCache(FROZEN_CACHE_SIZE))
                             if cache_frozen_layers and not config_only else LRUCache(FROZEN_CACHE_SIZE))
        if trainable_layers >= 0:
            self.bert.requires_grad_(False)
            if trainable_layers > 0:
                for layer in self.bert.encoder.layer[-trainable_layers:]:
                    layer.requires_grad_(True)

    @property
    def frozen(self) -> bool:
        return self.trainable_layers == 0

    def limit_cache(self, size: int) -> None:
        """Give this encoder its own LRU cache of at most ``size`` frozen outputs (e.g. for a server)."""
        self._cache = LRUCache(max(1, int(size)))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.bert.eval()
        return self

    def _bert(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.cache_frozen_layers and self.trainable_layers > 0:
            return self._top_layers(input_ids, attention_mask)
        if not self.frozen:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._cached(input_ids, attention_mask, *self._frozen_part())

    def _frozen_part(self):
        """(cache, compute) of what is cached: the whole frozen encoder, or the frozen layers below
        the top ``trainable_layers`` (run in eval mode: no dropout); None when nothing is cached."""
        if self.frozen:
            return self._cache, lambda ids, mask: self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        if not (self.cache_frozen_layers and self.trainable_layers > 0):
            return None
        n_frozen = self.bert.config.num_hidden_layers - self.trainable_layers

        def lower_layers(ids, mask):
            was = self.bert.training
            self.bert.eval()
            hidden = self.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[n_frozen]
            self.bert.train(was)
            return hidden

        return self._lower_cache, lower_layers

    def _top_layers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Only the top ``trainable_layers`` layers run, on the cached output of the frozen ones."""
        x = self._cached(input_ids, attention_mask, *self._frozen_part())
        additive = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.bert.encoder.layer[self.bert.config.num_hidden_layers - self.trainable_layers:]:
            out = layer(x, attention_mask=additive)
            x = out[0] if isinstance(out, tuple) else out
        return x * attention_mask[..., None].to(x.dtype)

    def warm_cache(self, sequences: Iterable[Sequence[int]], batch_size: int = 128) -> int:
        """Compute the cached outputs of these token sequences (unpadded) in one canonical batching:
        equal-length sequences together (no padding), sorted, in chunks of ``batch_size``. A
        sequence's output then depends only on the whole set, so a resumed run that warms with
        the same set refills the cache bit for bit, at batched speed (sequences met later are
        computed alone). Returns how many were computed; a no-op when nothing is cached."""
        part = self._frozen_part()
        if part is None:
            return 0
        cache, compute = part
        by_length: dict[int, list[tuple[int, ...]]] = {}
        for seq in {tuple(int(t) for t in s) for s in sequences if len(s)}:
            by_length.setdefault(len(seq), []).append(seq)
        computed = 0
        device = next(self.bert.parameters()).device
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for length in sorted(by_length):
                group = sorted(by_length[length])
                for a in range(0, len(group), batch_size):
                    chunk = group[a:a + batch_size]
                    if all(cache.get(k) is not None for k in chunk):
                        continue
                    ids = torch.tensor(chunk, dtype=torch.long, device=device)
                    hidden = compute(ids, torch.ones_like(ids))
                    for k, row in zip(chunk, hidden):
                        if cache.get(k) is None:
                            cache[k] = row.detach().clone()
                            computed += 1
        return computed

    def _cached(self, input_ids, attention_mask, cache: dict, compute) -> torch.Tensor:
        lengths = attention_mask.sum(1).tolist()
        keys = [tuple(row[:n].tolist()) for row, n in zip(input_ids, lengths)]
        found = {k: v for k in keys if (v := cache.get(k)) is not None}  # held here: the LRU may evict
        missing = list({k: i for i, k in reversed(list(enumerate(keys))) if k not in found}.values())
        # Each caption alone and unpadded: its output then depends on its tokens only, not on the batch that
        # first met it (a padded batch changes the last bits), so a resumed process refills the cache bit for
        # bit. Full precision even under autocast: the cache is shared by every later run.
        with torch.no_grad(), torch.autocast(input_ids.device.type, enabled=False):
            for i in missing:
                ids = input_ids[i : i + 1, : lengths[i]]
                found[keys[i]] = cache[keys[i]] = compute(ids, torch.ones_like(ids))[0].detach()
        hidden = input_ids.new_zeros((*input_ids.shape, self.bert.config.hidden_size), dtype=torch.float32)
        for i, key in enumerate(keys):
            hidden[i, : lengths[i]] = found[key]
        return hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        tokens = self.project(self._bert(input_ids, attention_mask))
        mask = attention_mask.bool()
        return Encoded(tokens, mask, tokens[:, 0] if self.pooling == "cls" else masked_mean(tokens, mask))


class FusionEncoder(nn.Module):
    """Joint self-attention over ``[text tokens; video tokens]`` with token-type and position embeddings.

    Returns the output at the text ``[CLS]`` position (index 0), z^cls.
    """

    def __init__(self, width: int, layers: int, heads: int, max_positions: int, dropout: float):
        super().__init__()
        self.token_type = nn.Embedding(2, width)  # 0 = text, 1 = video
        self.position = nn.Embedding(max_positions, width)
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.layers = TransformerStack(width, heads, layers, dropout, "model.fusion_heads")
        nn.init.normal_(self.token_type.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, text: Encoded, video: Encoded) -> torch.Tensor:
        """z^cls only. The last layer computes just the [CLS] row (its keys/values still see every
        token): the same output as ``fuse(...).pooled``, without the other rows' attention and FFN."""
        x, mask = self._embed(text, video)
        *first, last = self.layers.layers
        for layer in first:
            x = layer(x, mask)
        return last(x, mask, rows=1)[:, 0]

    def fuse(self, text: Encoded, video: Encoded) -> Encoded:
        """ALL output tokens ``[text; video]`` with their mask; pooled = the ``[CLS]`` output (MV-GPT)."""
        x, mask = self._embed(text, video)
        x = self.layers(x, mask)
        return Encoded(x, mask, x[:, 0])

    def _embed(self, text: Encoded, video: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([text.tokens, video.tokens], 1)
        mask = torch.cat([text.mask, video.mask], 1)
        if x.shape[1] > self.position.num_embeddings:
            raise ValueError(f"fusion sequence of {x.shape[1]} exceeds {self.position.num_embeddings} positions")
        types = torch.cat([torch.zeros_like(text.mask), torch.ones_like(video.mask)], 1).long()
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)  # count real tokens only: padding-invariant
        x = x + self.token_type(types) + self.position(positions)
        return self.dropout(self.norm(x)), mask


def select(encoded: Encoded, index: torch.Tensor) -> Encoded:
    """Rows ``index`` of an encoded batch (used to build fusion pairs)."""
    return Encoded(encoded.tokens[index], encoded.mask[index], encoded.pooled[index])
