"""MV-GPT's sentence decoder: a GPT-2-style transformer decoder with cross-attention (methods.md §2.2, §2.6.2).

Each layer is pre-LN, as GPT-2: ``x += SelfAttn(LN(x))`` (causal), ``x += CrossAttn(LN(x), memory)``,
``x += MLP(LN(x))``, and a final LN. Words use the text encoder's WordPiece embedding matrix E
(§2.6.3: one vocabulary for MLM-D and generation), projected when the widths differ, and the
output projection is tied to it: ``logits = W_out(h) · Eᵀ + b``.

A :class:`DecoderCache` keeps every layer's self-attention keys/values and the cross-attention
keys/values of the memory, so decoding feeds one new token per step (``decoding.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vidlang.errors import ConfigError
from vidlang.models.blocks import Encoded

KV = tuple[torch.Tensor, torch.Tensor]  # (B, heads, S, head_dim) keys and values


@dataclass
class DecoderCache:
    """Keys/values of the tokens decoded so far (per layer) and of the memory (per layer)."""

    self_kv: list[KV]
    cross_kv: list[KV]
    memory_mask: torch.Tensor  # (B, N) bool

    @property
    def length(self) -> int:
        return self.self_kv[0][0].shape[2] if self.self_kv else 0

    def reorder(self, index: torch.Tensor) -> "DecoderCache":
        """Rows ``index`` of the cache (beam search keeps the surviving beams)."""
        pick = lambda kv: (kv[0].index_select(0, index), kv[1].index_select(0, index))  # noqa: E731
        return DecoderCache([pick(kv) for kv in self.self_kv], [pick(kv) for kv in self.cross_kv],
                            self.memory_mask.index_select(0, index))


class _Layer(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln_self, self.ln_cross, self.ln_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.self_out = nn.Linear(width, width)
        self.cross_q = nn.Linear(width, width)
        self.cross_kv = nn.Linear(width, 2 * width)
        self.cross_out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, d) -> (B, h, S, d/h)
        b, s, d = x.shape
        return x.view(b, s, self.heads, d // self.heads).transpose(1, 2)

    def _attend(self, q, k, v, mask) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return out.transpose(1, 2).flatten(2)

    def memory_kv(self, memory: torch.Tensor) -> KV:
        k, v = self.cross_kv(memory).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x, past: KV | None, self_mask, cross: KV, cross_mask) -> tuple[torch.Tensor, KV]:
        q, k, v = (self._split(t) for t in self.qkv(self.ln_self(x)).chunk(3, dim=-1))
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        x = x + self.drop(self.self_out(self._attend(q, k, v, self_mask)))
        q = self._split(self.cross_q(self.ln_cross(x)))
        x = x + self.drop(self.cross_out(self._attend(q, *cross, cross_mask)))
        x = x + self.drop(self.mlp(self.ln_mlp(x)))
        return x, (k, v)


class CaptionDecoder(nn.Module):
    """Transformer decoder over WordPiece ids, reading ``memory`` (the multimodal encoder's outputs).

    ``word_embeddings``: the (V, e) input embedding of the text encoder (BERT's). With
    ``share=True`` it is borrowed, not registered here: its owner (the TextEncoder) saves it, so a
    checkpoint holds it once and the encoder and decoder train one matrix. With ``share=False`` the
    decoder registers it as its own (a standalone decoder, used in tests).
    """

    def __init__(self, word_embeddings: nn.Embedding, width: int, layers: int, heads: int, max_positions: int,
                 dropout: float = 0.1, *, share: bool = True):
        super().__init__()
        if width % heads:
            raise ConfigError(f"mvgpt.decoder_heads={heads} does not divide the decoder width {width}")
        if share:
            self._borrowed = (word_embeddings,)  # a tuple: nn.Module does not register it
        else:
            self.word_embeddings = word_embeddings
        self.vocab_size, embed_dim = word_embeddings.weight.shape
        self.width, self.max_positions = width, max_positions
        same = embed_dim == width
        self.embed_in = nn.Identity() if same else nn.Linear(embed_dim, width, bias=False)
        self.embed_out = nn.Identity() if same else nn.Linear(width, embed_dim, bias=False)
        self.out_bias = nn.Parameter(torch.zeros(self.vocab_size))
        self.position = nn.Embedding(max_positions, width)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(_Layer(width, heads, dropout) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        nn.init.normal_(self.position.weight, std=0.02)
        # An optional output vocabulary (set_output_vocab); not saved with the weights (the run's meta holds it).
        self.register_buffer("vocab_ids", None, persistent=False)
        self.register_buffer("vocab_lookup", None, persistent=False)
        self.register_buffer("vocab_mask", None, persistent=False)

    @property
    def embedding(self) -> nn.Embedding:
        return self._borrowed[0] if hasattr(self, "_borrowed") else self.word_embeddings

    def set_output_vocab(self, ids: list[int] | None) -> None:
        """Restrict the output distribution to the token ``ids`` (e.g. every WordPiece of the training
        texts: ``mvgpt.output_vocab=train``); None restores the full vocabulary. Training then
        projects onto these rows of E alone (its cost scales with the vocabulary) and decoding
        can emit nothing else."""
        if ids is None:
            self.vocab_ids = self.vocab_lookup = self.vocab_mask = None
            return
        ids_t = torch.tensor(sorted(set(int(i) for i in ids)), dtype=torch.long)
        if len(ids_t) == 0 or ids_t[0] < 0 or ids_t[-1] >= self.vocab_size:
            raise ConfigError(f"an output vocabulary needs 1..{self.vocab_size} ids in [0, {self.vocab_size})")
        device = self.out_bias.device
        self.vocab_ids = ids_t.to(device)
        self.vocab_lookup = torch.full((self.vocab_size,), -100, dtype=torch.long, device=device)
        self.vocab_lookup[self.vocab_ids] = torch.arange(len(ids_t), device=device)
        self.vocab_mask = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
        self.vocab_mask[self.vocab_ids] = True

    def output_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Token ids -> rows of :meth:`lm_logits` (``subset=True``); ids outside the vocabulary -> -100 (ignored)."""
        return labels if self.vocab_lookup is None else self.vocab_lookup[labels]

    def lm_logits(self, hidden: torch.Tensor, subset: bool = False) -> torch.Tensor:
        """The output projection tied to the word embeddings: W_out(h) · Eᵀ + b. With an output
        vocabulary: ``subset`` gives its columns only (training), else the full width with -inf
        outside it (decoding)."""
        if subset and self.vocab_ids is not None:
            return F.linear(self.embed_out(hidden), self.embedding.weight[self.vocab_ids], self.out_bias[self.vocab_ids])
        logits = F.linear(self.embed_out(hidden), self.embedding.weight, self.out_bias)
        return logits if self.vocab_mask is None else logits.masked_fill(~self.vocab_mask, float("-inf"))

    def start_cache(self, memory: Encoded) -> DecoderCache:
        """An empty cache holding the memory's cross-attention keys/values (computed once)."""
        return DecoderCache([], [layer.memory_kv(memory.tokens) for layer in self.layers], memory.mask)

    def forward(self, input_ids: torch.Tensor | None, memory: Encoded, cache: DecoderCache | None = None,
                start_pos: int | None = None, *, inputs_embeds: torch.Tensor | None = None, causal: bool = True,
                padding_mask: torch.Tensor | None = None, only: torch.Tensor | None = None, subset: bool = False,
                ) -> tuple[torch.Tensor, DecoderCache]:
        """Logits (B, n, V) of the n new tokens, and the cache extended by them.

        ``start_pos`` is the position of the first new token (default: the cache's length).
        ``inputs_embeds`` (B, n, width) replace the word embeddings (MLM-D reads the encoder's text
        outputs). ``causal=False`` lets every token see every other (MLM-D); ``padding_mask`` (B, n)
        true on real tokens hides padding from self-attention (needed only when not causal).
        ``only`` (B, n) bool: logits of those positions alone, flattened to (P, V), over the output
        vocabulary (training: the vocabulary projection dominates the cost, and padded or unmasked
        positions need none); targets then go through :meth:`output_targets`. ``subset``: every
        position's logits over the output vocabulary alone (decoding; column j is ``vocab_ids[j]``).
        """
        cache = cache if cache is not None else self.start_cache(memory)
        past = cache.length
        start = past if start_pos is None else start_pos
        if cache.self_kv and start != past:
            raise ValueError(f"start_pos={start} but the cache holds {past} tokens")
        x = self.embed_in(self.embedding(input_ids)) if inputs_embeds is None else inputs_embeds
        n = x.shape[1]
        if start + n > self.max_positions:
            raise ConfigError(f"decoder input reaches position {start + n} > its {self.max_positions} positions "
                              "(raise mvgpt.max_target_len or lower the decode length)")
        x = self.drop(x + self.position.weight[start:start + n])

        keys = past + n  # self-attention mask: (n, keys) or (B, 1, n, keys), True = may attend
        self_mask = None
        if causal and n > 1:
            self_mask = torch.ones(n, keys, dtype=torch.bool, device=x.device).tril(past)
        if padding_mask is not None:
            real = torch.cat([padding_mask.new_ones(len(x), past), padding_mask], 1).bool()[:, None, None, :]
            self_mask = real if self_mask is None else self_mask & real
        cross_mask = cache.memory_mask[:, None, None, :]

        new_kv = []
        for i, layer in enumerate(self.layers):
            past_kv = cache.self_kv[i] if cache.self_kv else None
            x, kv = layer(x, past_kv, self_mask, cache.cross_kv[i], cross_mask)
            new_kv.append(kv)
        hidden = self.ln_final(x)
        logits = self.lm_logits(hidden, subset) if only is None else self.lm_logits(hidden[only.bool()], subset=True)
        return logits, DecoderCache(new_kv, cache.cross_kv, cache.memory_mask)
