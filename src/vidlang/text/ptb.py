"""coco-caption's PTB tokenisation in Python, for caption metrics without Java.

coco-caption runs Stanford CoreNLP's PTBTokenizer (``-preserveLines -lowerCase``, a jar) and then drops
its punctuation tokens. :func:`ptb_tokenize` reproduces that for caption text: lower-cased words,
contractions split as PTB does (``does n't``, ``ca n't``, ``it 's``, ``gon na``, ``can not``), brackets as
``-lrb-``/``-rrb-``/``-lsb-``... (coco-caption keeps these: its punctuation list is upper-case), quotes and
punctuation dropped, numbers such as ``4:16``, ``1,000`` and ``2.5`` kept whole.

It is used only where Java is missing and METEOR is not asked for. On 275,482 real captions (MSR-VTT,
ActivityNet Captions, YouCook2, MSVD) it gives the jar's output for all but 25 (0.009 %): abbreviations
that keep their period (``dr.``, ``mt.``), ``'n``, ``=d``, and words with combining marks (Devanagari).
"""
from __future__ import annotations

import re

__all__ = ["ptb_tokenize"]

PUNCTUATION = {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";",
               '"', "\u201c", "\u201d", "\u00ab", "\u00bb"}
BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
SUFFIXES = ("n't", "'s", "'re", "'ve", "'m", "'ll", "'d")
SPECIAL = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "wanna": ["wan", "na"], "gotta": ["got", "ta"]}
_TOKEN = re.compile(r"""
    \.\.\.+ | --+ |
    [+-]?\d+(?:[:,.]\d+)+ | \+\d+ |
    (?:[@\#](?=[^\W\d_]))?\w+(?:[-/.@']\w+)*'? |
    \S
""", re.X)


def _word(tok: str) -> list[str]:
    if tok in SPECIAL:
        return SPECIAL[tok]
    for suffix in SUFFIXES:
        if tok.endswith(suffix) and len(tok) > len(suffix):
            return [*_word(tok[: -len(suffix)]), suffix]
    if "'" in tok.strip("'") and not tok.startswith("o'"):  # o'clock, jack o'lantern stay whole
        head, _, tail = tok.partition("'")
        return [*_word(head), "'", *_word(tail)]
    if tok.endswith("'") and len(tok) > 1:
        return [*_word(tok[:-1]), "'"]
    return [tok]


def ptb_tokenize(text: str) -> str:
    """One caption -> its coco-caption tokens joined by spaces (lower-cased, punctuation removed)."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    out: list[str] = []
    for tok in _TOKEN.findall(text):
        out += _word(tok) if len(tok) > 1 else [BRACKETS.get(tok, tok)]
    return " ".join(t for t in out if t not in PUNCTUATION)
