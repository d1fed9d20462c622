"""Caption metrics as coco-caption reports them: BLEU-1..4, METEOR 1.5, ROUGE-L and CIDEr-D.

Everything goes through ``pycocoevalcap`` (MV-GPT §2.4 reports B-4 / C / M / R-L): the Stanford
PTB tokenizer (lower-cased, punctuation dropped), then ``Bleu(4)``, ``Meteor``, ``Rouge`` and
``Cider`` against *all* references of each id. SPICE is off (it downloads CoreNLP models).
Scores are fractions (CIDEr 0.60 = the "60" some papers print).

Needs Java: the tokenizer and METEOR are jars. :func:`preflight` says what is missing; no other
METEOR is ever substituted. Without Java and with ``meteor=False``, the tokenisation is done by
:mod:`vidlang.text.ptb` (a Python copy of the jar's, with a warning) and BLEU/ROUGE-L/CIDEr still run.
METEOR's JVM takes ~7 s to start, so a :class:`CaptionScorer` keeps one alive across calls
(``with CaptionScorer() as s: ...``); :func:`caption_metrics` is one-shot.

Also here: :class:`CiderD`, a vectorised CIDEr-D (the formula of pycocoevalcap's CiderScorer, with
its n-gram counting) for scoring many candidate captions against many references at once, as
the caption baselines need. It is tested equal to pycocoevalcap's ``Cider``.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidlang.errors import DataError, VidlangError

__all__ = ["preflight", "tokenize", "CaptionScorer", "CaptionScores", "caption_metrics", "caption_diversity",
           "CiderD", "METRICS"]

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
_JAVA_HINT = "install a Java runtime, e.g. `apt-get install default-jre-headless` (Debian/Ubuntu)"
_PIP_HINT = "pip install pycocoevalcap==1.2 (or pip install 'vidlang[caption]')"
_checked: set[bool] = set()  # preflight(meteor) values that passed in this process


def _package_dir() -> Path:
    try:
        import pycocoevalcap
    except ImportError as e:
        raise VidlangError(f"caption metrics need pycocoevalcap: {_PIP_HINT}") from e
    return Path(list(pycocoevalcap.__path__)[0])


def preflight(meteor: bool = True) -> None:
    """Raise :class:`VidlangError` unless the coco-caption metrics can run here.

    Checks: pycocoevalcap importable; ``java`` on PATH and starting; the tokenizer jar present and
    its folder writable (PTBTokenizer writes its temp file there, inside site-packages); with
    ``meteor``, the METEOR jar and its paraphrase table present. Passed checks are remembered.
    """
    if meteor in _checked:
        return
    pkg = _package_dir()
    java = shutil.which("java")
    if java is None and not meteor:  # BLEU/ROUGE/CIDEr only: the Python PTB tokenizer (vidlang.text.ptb)
        _checked.add(meteor)
        return
    if java is None:
        raise VidlangError(f"caption metrics need Java for the PTB tokenizer and METEOR, and `java` is not "
                           f"on PATH: {_JAVA_HINT}")
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VidlangError(f"`{java} -version` failed ({e}): {_JAVA_HINT}") from e
    if proc.returncode != 0:
        raise VidlangError(f"`{java} -version` exited with {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace').strip()[:300]}; {_JAVA_HINT}")
    need = [pkg / "tokenizer" / "stanford-corenlp-3.4.1.jar"]
    if meteor:
        need += [pkg / "meteor" / "meteor-1.5.jar", pkg / "meteor" / "data" / "paraphrase-en.gz"]
    for f in need:
        if not f.is_file():
            raise VidlangError(f"{f} is missing: the pycocoevalcap install is incomplete; reinstall: {_PIP_HINT}")
    folder = pkg / "tokenizer"
    try:  # a real write: os.access says yes to root on a read-only mount
        fd, tmp = tempfile.mkstemp(dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise VidlangError(f"pycocoevalcap's PTB tokenizer writes temp files into {folder}, which is not "
                           f"writable ({e}); install pycocoevalcap into a writable environment "
                           "(e.g. a virtualenv you own) or make that folder writable") from e
    _checked.add(meteor)


def _clean(text: str) -> str:
    """One line: every whitespace run (newlines, U+2028, ...) becomes one space."""
    return " ".join(text.split())


def tokenize(texts: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """PTB-tokenise ``{id: [sentences]}`` with one JVM call (lower-cased, punctuation removed)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    preflight(meteor=False)
    if shutil.which("java") is None:  # no Java: the same tokenisation in Python (see vidlang.text.ptb)
        from vidlang.text.ptb import ptb_tokenize

        warnings.warn("no Java: caption metrics use vidlang.text.ptb, a Python copy of coco-caption's PTB "
                      f"tokenizer (identical on 99.99% of real captions); for the jar and METEOR, {_JAVA_HINT}",
                      UserWarning, stacklevel=2)
        return {k: [ptb_tokenize(_clean(s)) for s in v] for k, v in texts.items()}
    out: dict[Hashable, list[str]] = {k: [""] * len(v) for k, v in texts.items()}
    slots = [(k, i) for k, v in texts.items() for i, s in enumerate(v) if _clean(s)]
    if not slots:
        return out
    # Keys are slot numbers, so ids of any type and order survive the round trip.
    feed = {n: [{"caption": _clean(texts[k][i])}] for n, (k, i) in enumerate(slots)}
    got = PTBTokenizer().tokenize(feed)
    if len(got) != len(slots):
        raise VidlangError(f"the PTB tokenizer returned {len(got)} lines for {len(slots)} sentences")
    for n, (k, i) in enumerate(slots):
        out[k][i] = got[n][0]
    return out


def _check_inputs(predictions: Mapping, references: Mapping) -> None:
    if not references:
        raise DataError("caption metrics got no references")
    missing = [k for k in references if k not in predictions]
    extra = [k for k in predictions if k not in references]
    if missing or extra:
        raise DataError(f"predictions and references must cover the same ids: {len(missing)} ids have no "
                        f"prediction (e.g. {missing[:5]}), {len(extra)} predictions have no references "
                        f"(e.g. {extra[:5]})")
    for k, p in predictions.items():
        if not isinstance(p, str):
            raise DataError(f"prediction for id {k!r} is a {type(p).__name__}, not a string")
    for k, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise DataError(f"references of id {k!r} must be a list of strings, got {type(refs).__name__}")
        if not all(isinstance(r, str) for r in refs):
            raise DataError(f"references of id {k!r} hold a non-string: {list(refs)[:3]!r}")
        if not any(_clean(r) for r in refs):
            raise DataError(f"id {k!r} has no non-empty reference caption")


@dataclass
class CaptionScores:
    """Corpus scores (``METRICS`` names -> float) and the per-id ones (id -> name -> float)."""

    corpus: dict[str, float]
    per_video: dict[Hashable, dict[str, float]] = field(default_factory=dict)


class CaptionScorer:
    """Scores captions with the coco-caption metrics; keeps one METEOR JVM for its lifetime.

    ``meteor=False`` leaves METEOR out of the results (say so when reporting); it never falls
    back to another METEOR. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, meteor: bool = True):
        preflight(meteor)
        self.use_meteor = meteor
        self._meteor: Any = None

    def __enter__(self) -> "CaptionScorer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the METEOR JVM, if started."""
        m, self._meteor = self._meteor, None
        if m is not None:
            with m.lock:
                m.meteor_p.stdin.close()
                m.meteor_p.kill()
                m.meteor_p.wait()

    def _meteor_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        from pycocoevalcap.meteor.meteor import Meteor

        if self._meteor is None:
            self._meteor = Meteor()
        try:
            score, scores = self._meteor.compute_score(gts, res)
        except (ValueError, OSError) as e:  # the JVM died: empty line, broken pipe
            proc = self._meteor.meteor_p
            err = proc.stderr.read().decode(errors="replace")[-500:] if proc.poll() is not None else ""
            self._meteor = None
            raise VidlangError(f"METEOR (java -jar meteor-1.5.jar) failed: {e}; {err}".strip()) from e
        return float(score), [float(s) for s in scores]

    def score(self, predictions: Mapping[Hashable, str],
              references: Mapping[Hashable, Sequence[str]]) -> CaptionScores:
        """Score ``predictions`` (id -> caption) against ``references`` (id -> all its captions)."""
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        _check_inputs(predictions, references)
        ids = list(references)
        toks = tokenize({**{("ref", k): [r for r in references[k] if _clean(r)] for k in ids},
                         **{("hyp", k): [predictions[k]] for k in ids}})
        gts = {i: toks[("ref", k)] for i, k in enumerate(ids)}
        res = {i: toks[("hyp", k)] for i, k in enumerate(ids)}
        corpus: dict[str, float] = {}
        per: dict[str, list[float]] = {}
        with contextlib.redirect_stdout(io.StringIO()):  # BLEU prints its counts
            bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            corpus[f"BLEU-{n + 1}"], per[f"BLEU-{n + 1}"] = float(bleu[n]), list(bleu_each[n])
        if self.use_meteor:
            corpus["METEOR"], per["METEOR"] = self._meteor_score(gts, res)
        rouge, rouge_each = Rouge().compute_score(gts, res)
        corpus["ROUGE-L"], per["ROUGE-L"] = float(rouge), list(rouge_each)
        cider, cider_each = Cider().compute_score(gts, res)  # CIDEr-D (clipped, length penalty)
        corpus["CIDEr"], per["CIDEr"] = float(cider), list(cider_each)
        per_video = {k: {m: float(v[i]) for m, v in per.items()} for i, k in enumerate(ids)}
        return CaptionScores(corpus, per_video)


def caption_metrics(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                    *, meteor: bool = True) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr (CIDEr-D) of ``predictions`` against all ``references``.

    Both are keyed by the same ids. Corpus-level BLEU as coco-caption computes it; the others are
    means over ids. CIDEr's IDF comes from the references, so a single id always scores 0.
    """
    with CaptionScorer(meteor=meteor) as scorer:
        return scorer.score(predictions, references).corpus


def caption_diversity(predictions: Mapping[Hashable, str]) -> dict[str, Any]:
    """How generic a set of captions is: ``distinct_per_100`` (distinct captions per 100 ids),
    ``top_share`` (the share of ids given the most frequent caption) and ``top_caption``.
    Captions are compared lower-cased with whitespace runs collapsed."""
    if not predictions:
        raise DataError("caption_diversity got no captions")
    counts: dict[str, int] = {}
    for p in predictions.values():
        key = _clean(p).lower()
        counts[key] = counts.get(key, 0) + 1
    top = max(counts, key=counts.get)  # the first-seen of the most frequent
    n = len(predictions)
    return {"distinct_per_100": 100.0 * len(counts) / n, "top_share": counts[top] / n, "top_caption": top}


# ----------------------------------------------------------------------------- vectorised CIDEr-D

class CiderD:
    """CIDEr-D of many candidates against a fixed reference corpus, vectorised with scipy.sparse.

    ``references``: one list of (already tokenised) captions per video; document frequencies
    come from them as in pycocoevalcap (each video one document, ``ref_len = log(#videos)``).
    :meth:`pair_scores` gives ``10 * mean_n(clipped cosine_n) * exp(-delta^2 / 2 sigma^2)`` for every
    (candidate, single reference) pair; a video's CIDEr-D is the mean over its references, which
    :meth:`video_scores` returns. The clipped dot product ``sum_g min(c_g, r_g) r_g idf_g^2`` is
    ``sum_t sum_g [c_g >= t] [r_g >= t] r_g idf_g^2``: one sparse product over (n, t) blocks.
    """

    def __init__(self, references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0):
        from pycocoevalcap.cider.cider_scorer import precook
        from scipy import sparse

        if not references or any(len(r) == 0 for r in references):
            raise DataError("CiderD needs at least one reference caption for every video")
        self.n, self.sigma, self._precook = n, sigma, precook
        self.num_videos = len(references)
        self.video_of_ref = np.repeat(np.arange(len(references)), [len(r) for r in references])
        df: list[dict[tuple, int]] = [{} for _ in range(n)]
        for refs in references:
            for g in {g for c in refs for g in precook(c, n)}:
                df[len(g) - 1][g] = df[len(g) - 1].get(g, 0) + 1
        self.vocab = [{g: i for i, g in enumerate(d)} for d in df]
        self.ref_len = float(np.log(float(len(references))))
        # idf of a known n-gram; an unseen one has df 0 -> ref_len (pycocoevalcap: log(max(1, df)))
        self.idf = [self.ref_len - np.log(np.maximum(1.0, np.array(list(d.values()), np.float64))) for d in df]
        counts = [precook(c, n) for refs in references for c in refs]
        self.ref_length = np.array([self._length(c) for c in counts])
        blocks = []  # (k, t, offset) of each block of rows of the stacked reference matrix
        rows_all, offset = [], 0
        for k in range(n):
            inv = self._inverse_norms(counts, k)
            tf = [(r, self.vocab[k][g], c) for r, cnt in enumerate(counts) for g, c in cnt.items() if len(g) == k + 1]
            top = max((c for _, _, c in tf), default=0)
            for t in range(1, top + 1):  # block (k, t): [r_g >= t] r_g idf_g^2 / |r|
                r, j, c = (np.array(a) for a in zip(*[x for x in tf if x[2] >= t]))
                vals = c * self.idf[k][j] ** 2 * inv[r]
                rows_all.append(sparse.csr_matrix((vals, (j, r)), shape=(len(self.vocab[k]), len(counts))))
                blocks.append((k, t, offset))
                offset += len(self.vocab[k])
        self._blocks = blocks
        self._refs = sparse.vstack(rows_all).tocsr() if rows_all else sparse.csr_matrix((0, len(counts)))

    @staticmethod
    def _length(counts: dict) -> float:
        return float(sum(c for g, c in counts.items() if len(g) == 2))  # as CiderScorer: bigram count

    def _inverse_norms(self, counts: list[dict], k: int) -> np.ndarray:
        """1 / L2 norm of each sentence's tf-idf vector of (k+1)-grams (0 where the norm is 0)."""
        out = np.zeros(len(counts))
        for r, c in enumerate(counts):
            s = sum((tf * (self.idf[k][self.vocab[k][g]] if g in self.vocab[k] else self.ref_len)) ** 2
                    for g, tf in c.items() if len(g) == k + 1)
            out[r] = 1.0 / np.sqrt(s) if s > 0 else 0.0
        return out

    def pair_scores(self, candidates: Sequence[str]) -> np.ndarray:
        """(C, R) CIDEr-D of each tokenised candidate against each single reference."""
        from scipy import sparse

        counts = [self._precook(c, self.n) for c in candidates]
        inv = [self._inverse_norms(counts, k) for k in range(self.n)]
        offsets = {(k, t): o for k, t, o in self._blocks}
        rows, cols, vals = [], [], []
        for i, cnt in enumerate(counts):  # block (k, t): [c_g >= t] / |c|
            for g, c in cnt.items():
                k = len(g) - 1
                j = self.vocab[k].get(g)
                t = 1
                while j is not None and t <= c and (k, t) in offsets:
                    rows.append(i), cols.append(offsets[(k, t)] + j), vals.append(inv[k][i])
                    t += 1
        cand = sparse.csr_matrix((vals, (rows, cols)), shape=(len(candidates), self._refs.shape[0]))
        cos = (cand @ self._refs).toarray()
        # lengths are integers: the Gaussian length penalty is a table lookup
        cand_len = np.array([self._length(c) for c in counts], dtype=np.int64)
        ref_len = self.ref_length.astype(np.int64)
        lo = int(min(cand_len.min(initial=0), ref_len.min()))
        hi = int(max(cand_len.max(initial=0), ref_len.max()))
        d = np.arange(lo - hi, hi - lo + 1, dtype=np.float64)
        table = np.exp(-(d ** 2) / (2 * self.sigma ** 2)) * (10.0 / self.n)
        cos *= table[(cand_len[:, None] - ref_len[None, :]) - (lo - hi)]
        return cos

    def video_scores(self, candidates: Sequence[str], chunk: int = 512) -> np.ndarray:
        """(C, V) CIDEr-D of each candidate as the caption of each video (mean over its references)."""
        from scipy import sparse

        r = len(self.video_of_ref)
        per_video = np.bincount(self.video_of_ref, minlength=self.num_videos).astype(np.float64)
        mean = sparse.csr_matrix((1.0 / per_video[self.video_of_ref], (np.arange(r), self.video_of_ref)),
                                 shape=(r, self.num_videos))
        out = np.zeros((len(candidates), self.num_videos))
        for a in range(0, len(candidates), chunk):
            out[a:a + chunk] = (mean.T @ self.pair_scores(candidates[a:a + chunk]).T).T
        return out
