"""IDF weights of a caption's tokens of interest, mapped onto WordPiece tokens.

TACo's token-level loss L2 (methods.md §1.3 Eq. 4, §1.8 item 4) weights each
token of interest (default: spaCy NOUN or VERB) by its IDF, normalised per sentence.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from cachetools import LRUCache

from vidlang.errors import CheckpointError, ConfigError, DataError
from vidlang.text.pos import (
    DEFAULT_TAGGER,
    DEFAULT_TAGS,
    Tag,
    TagCache,
    check_tags,
    default_tagger,
    tag_captions,
)

_STATE_FORMAT = 1


def compute_idf(tagged: Sequence[Sequence[Tag]]) -> dict[str, float]:
    """``idf(w) = log(|D| / (1 + df(w)))`` over the tagged training captions D.

    ``df(w)`` is the number of captions containing the lowercased word ``w``;
    every word gets an IDF, whatever its POS. Duplicate captions count as
    separate documents. Words in (nearly) every caption get IDF <= 0.
    """
    if not tagged:
        raise DataError("no training captions to compute IDF from")
    df = Counter(w for words in tagged for w in {t[2] for t in words})
    n = len(tagged)
    return {w: math.log(n / (1 + c)) for w, c in df.items()}


def _tagger_label(nlp) -> str:
    """Name of the spaCy model behind ``nlp``, used to label the tag cache."""
    if nlp is None:
        return DEFAULT_TAGGER
    meta = getattr(nlp, "meta", None) or {}
    if "name" in meta:
        return f"{meta.get('lang', 'xx')}_{meta['name']}"
    return type(nlp).__name__


class TokenWeighter:
    """Maps a caption and its WordPiece offsets to per-token IDF weights.

    Weighting rule (the choice taken for "all sub-word pieces get the word's weight"):
    every WordPiece of a token of interest carries that word's IDF *before*
    normalisation, then the weights are divided by their sum over all pieces of
    the sentence. So a word split in three pieces carries three times its IDF in
    total, and each of its pieces the same weight. Weights sum to 1, or are all
    zero when the caption has no token of interest (L2 skips it; counted in
    ``stats["no_token_of_interest"]``).

    Details:
    - A WordPiece belongs to a word if their character spans overlap; special
      tokens (offsets (0, 0)) belong to none. A piece overlapping two words of
      interest takes the larger weight.
    - A word missing from the IDF table gets the largest IDF seen (a rare word).
    - An IDF <= ``min_weight`` (a word in nearly every caption) is raised to
      ``min_weight``: it still counts, barely.
    - Truncated offsets are fine: the weights are normalised over the pieces given.
    - Captions not pre-tagged (``fit``) are tagged on demand and memoised in an LRU of ``memo_size``
      captions (bounded: a server sees unboundedly many queries; see ``limit_memo``).
    """

    def __init__(
        self,
        idf: dict[str, float],
        tags: tuple[str, ...] = DEFAULT_TAGS,
        tagged: dict[str, list[Tag]] | None = None,
        nlp=None,
        min_weight: float = 1e-6,
        memo_size: int = 200_000,
    ):
        if not idf:
            raise ConfigError("TokenWeighter needs a non-empty IDF table")
        if not min_weight > 0:
            raise ConfigError(f"min_weight must be > 0, got {min_weight!r}")
        self.idf = {str(w): float(v) for w, v in idf.items()}
        self.tags = check_tags(tags)
        self.min_weight = float(min_weight)
        self.max_idf = max(self.idf.values())
        self._tagged: dict[str, list[Tag]] = dict(tagged or {})  # the training captions, given
        self._memo: LRUCache = LRUCache(max(1, int(memo_size)))  # tagged on demand
        self._nlp = nlp
        self.stats: Counter = Counter()

    @classmethod
    def fit(
        cls,
        train_captions: list[str],
        tags: Iterable[str] = DEFAULT_TAGS,
        nlp=None,
        cache_path: Path | str | None = None,
        min_weight: float = 1e-6,
    ) -> "TokenWeighter":
        """Tag the training captions (through the on-disk cache if given) and compute IDF."""
        tags = check_tags(tags)
        if not train_captions:
            raise DataError("no training captions to compute IDF from")
        if cache_path is not None:
            cache = TagCache.load(cache_path, tagger=_tagger_label(nlp))
            tagged = cache.get_or_tag(train_captions, nlp)
            if cache.misses:
                cache.save(cache_path)
        else:
            unique = list(dict.fromkeys(train_captions))
            by_caption = dict(zip(unique, tag_captions(unique, nlp)))
            tagged = [by_caption[c] for c in train_captions]
        idf = compute_idf(tagged)
        return cls(idf, tags, tagged=dict(zip(train_captions, tagged)), nlp=nlp, min_weight=min_weight)

    def tag(self, captions: Iterable[str]) -> None:
        """Pre-tag captions (e.g. the validation set) in one batched spaCy call."""
        missing = [c for c in dict.fromkeys(captions) if c not in self._tagged and c not in self._memo]
        if missing:
            if self._nlp is None:
                self._nlp = default_tagger()
            self._memo.update(zip(missing, tag_captions(missing, self._nlp)))
            self.stats["tagged"] += len(missing)

    def limit_memo(self, size: int) -> None:
        """Keep at most ``size`` captions tagged on demand (least recently used dropped first)."""
        self._memo = LRUCache(max(1, int(size)))

    def _tags_of(self, caption: str) -> list[Tag]:
        tags = self._tagged.get(caption)
        if tags is None:
            tags = self._memo.get(caption)
        if tags is None:  # never tagged, or dropped from the memo since
            self.tag([caption])
            tags = self._memo[caption]
        return tags

    def word_weight(self, word: str) -> float:
        """Un-normalised weight of a (lowercased) word of interest."""
        return max(self.idf.get(word, self.max_idf), self.min_weight)

    def __call__(self, caption: str, offsets) -> np.ndarray:
        """float32 weights, one per token of ``offsets`` (the tokenizer's offset mapping)."""
        offs = np.asarray(offsets, dtype=np.int64)
        if offs.size == 0:
            offs = offs.reshape(0, 2)
        if offs.ndim != 2 or offs.shape[1] != 2:
            raise DataError(f"offsets for caption {caption!r} must be (num_tokens, 2), got shape {offs.shape}")
        if len(offs) and offs[:, 1].max() > len(caption):
            raise DataError(f"offsets reach char {offs[:, 1].max()} past the end of caption {caption!r} ({len(caption)} chars)")
        self.stats["captions"] += 1
        if not self.tags:
            self.stats["no_token_of_interest"] += 1
            return np.zeros(len(offs), np.float32)
        weights = np.zeros(len(offs), np.float64)
        real = offs[:, 1] > offs[:, 0]  # special tokens and padding have empty spans
        for start, end, word, pos in self._tags_of(caption):
            if pos in self.tags:
                hit = real & (offs[:, 0] < end) & (offs[:, 1] > start)
                weights[hit] = np.maximum(weights[hit], self.word_weight(word))
        total = weights.sum()
        if total <= 0:
            self.stats["no_token_of_interest"] += 1
            return np.zeros(len(offs), np.float32)
        return (weights / total).astype(np.float32)

    def batch(self, captions: Sequence[str], offset_mapping) -> np.ndarray:
        """(B, L) float32 weights for a padded batch; ``offset_mapping`` is (B, L, 2)."""
        offs = np.asarray(offset_mapping, dtype=np.int64)
        if offs.ndim != 3 or offs.shape[0] != len(captions) or offs.shape[2] != 2:
            raise DataError(f"offset_mapping must be ({len(captions)}, L, 2), got shape {offs.shape}")
        self.tag(captions)
        return np.stack([self(c, o) for c, o in zip(captions, offs)]) if len(captions) else np.zeros((0, offs.shape[1]), np.float32)

    def state_dict(self) -> dict:
        """JSON-able state (IDF table, tags, min_weight) to save beside a checkpoint."""
        return {"format": _STATE_FORMAT, "tags": list(self.tags), "min_weight": self.min_weight, "idf": dict(self.idf)}

    @classmethod
    def from_state_dict(cls, d: dict, nlp=None) -> "TokenWeighter":
        try:
            if d["format"] != _STATE_FORMAT:
                raise ValueError(f"format {d['format']!r}, expected {_STATE_FORMAT}")
            idf, tags, min_weight = d["idf"], d["tags"], d["min_weight"]
            if not isinstance(idf, dict):
                raise TypeError("idf is not a mapping")
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"bad TokenWeighter state: {e}") from e
        return cls(idf, tuple(tags), nlp=nlp, min_weight=min_weight)
