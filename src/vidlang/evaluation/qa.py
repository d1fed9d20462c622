"""Open-ended VideoQA accuracy, as the ActivityNet-QA official ``evaluation/eval.py`` defines it.

A prediction is right when its answer string equals the ground-truth answer exactly (no
normalisation). The denominator is every ground-truth question, so a missing prediction counts
wrong; a classifier over K answers predicts only in-vocabulary strings, so out-of-vocabulary
answers count wrong. Per-type accuracy divides by that type's question count. "free" is types
3..8 (ActivityNet-QA), computed correctly; ``free_as_printed`` reproduces the number the official
script prints, whose denominator takes ``list(type_count.values())[3:]`` in first-seen order (a bug).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from vidlang.data.qa import ANET_QA_TYPES, QAPair
from vidlang.errors import DataError

__all__ = ["QAScore", "answers_from_logits", "qa_accuracy"]
FREE_TYPES = (3, 4, 5, 6, 7, 8)


@dataclass
class QAScore:
    overall: float
    correct: int
    total: int
    per_type: dict = field(default_factory=dict)  # qtype -> accuracy
    counts: dict = field(default_factory=dict)  # qtype -> (correct, total)
    free: float | None = None  # ActivityNet-QA types 3..8
    free_as_printed: float | None = None  # the official script's (buggy) Free number


def _predictions(predictions: Mapping[str, str] | Iterable[dict]) -> dict[str, str]:
    if isinstance(predictions, Mapping):
        return dict(predictions)
    out: dict[str, str] = {}
    for i, p in enumerate(predictions):
        if not isinstance(p, dict) or "question_id" not in p or "answer" not in p:
            raise DataError(f"prediction {i} needs 'question_id' and 'answer', got {p!r:.200}")
        if p["question_id"] in out:
            raise DataError(f"prediction {i}: question {p['question_id']!r} is predicted twice")
        out[p["question_id"]] = p["answer"]
    return out


def qa_accuracy(predictions: Mapping[str, str] | Iterable[dict], truth: Sequence[QAPair]) -> QAScore:
    """Exact-match accuracy overall and per ``qtype``; predictions for unknown questions are an error."""
    preds = _predictions(predictions)
    gt = {q.question_id: q for q in truth}
    if len(gt) != len(truth):
        raise DataError("ground truth lists a question id twice")
    if not gt:
        raise DataError("no ground-truth questions")
    unknown = set(preds) - set(gt)
    if unknown:
        raise DataError(f"{len(unknown)} predictions are for questions not in the ground truth, "
                        f"e.g. {sorted(unknown)[:3]}")
    counts: dict = {}
    for q in truth:  # first-seen order, as the official script's dict
        ok = preds.get(q.question_id) == q.answer
        c, n = counts.get(q.qtype, (0, 0))
        counts[q.qtype] = (c + int(ok), n + 1)
    correct = sum(c for c, _ in counts.values())
    score = QAScore(correct / len(truth), correct, len(truth),
                    {t: c / n for t, (c, n) in counts.items()}, counts)
    if set(counts) <= set(ANET_QA_TYPES) and set(counts) & set(FREE_TYPES):
        fc = sum(counts[t][0] for t in FREE_TYPES if t in counts)
        score.free = fc / sum(counts[t][1] for t in FREE_TYPES if t in counts)
        official_corrects = [counts.get(t, (0, 0))[0] for t in range(9)]  # eval.py's dict is ordered 0..8
        printed_den = sum(n for _, n in list(counts.values())[3:])
        score.free_as_printed = sum(official_corrects[3:]) / printed_den if printed_den else None
    return score


def answers_from_logits(logits, vocab: Sequence[str]) -> list[str]:
    """Top-1 answer string per row of a (N, K) score matrix."""
    x = np.asarray(logits)
    if x.ndim != 2 or x.shape[1] != len(vocab):
        raise DataError(f"logits of shape {x.shape} do not match a vocabulary of {len(vocab)} answers")
    return [vocab[i] for i in x.argmax(axis=1)]
