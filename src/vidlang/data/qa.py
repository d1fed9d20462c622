"""Open-ended VideoQA readers (ActivityNet-QA, MSVD-QA) and the answer vocabulary.

- :func:`read_activitynet_qa`: the official ``{split}_q.json`` + ``{split}_a.json`` pair (plain or
  ``.gz``), joined on ``question_id``; ``qtype`` is the official int type (0 Motion, 1 Spatial,
  2 Temporal, 3 Yes/No, 4 Color, 5 Object, 6 Location, 7 Number, 8 Other).
- :func:`read_msvd_qa`: ``{split}_qa.json`` records ``{answer, id, question, video_id}``; ``qtype`` is
  the question's first word (what / who / how / when / where). ``video_id`` N becomes ``vid<N>``, or
  the clip name when a ``youtube_mapping.txt`` (:func:`read_msvd_mapping`) is given.
- :func:`build_answer_vocab`: the K most frequent training answers (ties: alphabetical), and
  :func:`answer_indices`, which maps answers outside the vocabulary to -1 (always scored wrong).

Errors name the file and the record index (or line) at fault.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidlang.data.coin import read_json_maybe_gz
from vidlang.errors import DataError

__all__ = [
    "ANET_QA_TYPES",
    "QAPair",
    "answer_indices",
    "build_answer_vocab",
    "read_activitynet_qa",
    "read_answer_list",
    "read_msvd_mapping",
    "read_msvd_qa",
]

PathLike = str | os.PathLike
ANET_QA_TYPES = {0: "motion", 1: "spatial", 2: "temporal", 3: "yes_no", 4: "color", 5: "object",
                 6: "location", 7: "number", 8: "other"}


@dataclass(frozen=True)
class QAPair:
    question_id: str
    video_id: str
    question: str
    answer: str
    qtype: int | str


def _records(path: Path, keys: Sequence[str]) -> list[dict]:
    data = read_json_maybe_gz(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict) or any(k not in rec for k in keys):
            raise DataError(f"{path}: record {i} needs the keys {list(keys)}, got {rec!r:.200}")
        for k in keys:
            if k in ("question", "answer", "question_id", "video_name") and not isinstance(rec[k], str):
                raise DataError(f"{path}: record {i}: {k!r} must be a string, got {rec[k]!r}")
    return data


def read_activitynet_qa(question_path: PathLike, answer_path: PathLike) -> list[QAPair]:
    """Join ``*_q.json`` and ``*_a.json`` (in question-file order); both must hold the same question ids."""
    qp, ap = Path(question_path), Path(answer_path)
    questions = _records(qp, ("video_name", "question", "question_id"))
    answers = _records(ap, ("answer", "type", "question_id"))
    by_id: dict[str, dict] = {}
    for i, a in enumerate(answers):
        if a["question_id"] in by_id:
            raise DataError(f"{ap}: record {i}: question id {a['question_id']!r} appears twice")
        if a["type"] not in ANET_QA_TYPES or isinstance(a["type"], bool):
            raise DataError(f"{ap}: record {i}: type {a['type']!r} is not one of 0..8")
        by_id[a["question_id"]] = a
    out, seen = [], set()
    for i, q in enumerate(questions):
        qid = q["question_id"]
        if qid in seen:
            raise DataError(f"{qp}: record {i}: question id {qid!r} appears twice")
        seen.add(qid)
        if qid not in by_id:
            raise DataError(f"{qp}: record {i}: question {qid!r} has no answer in {ap}")
        a = by_id[qid]
        out.append(QAPair(qid, q["video_name"], q["question"], a["answer"], int(a["type"])))
    extra = set(by_id) - seen
    if extra:
        raise DataError(f"{ap}: {len(extra)} answers have no question in {qp}, e.g. {sorted(extra)[:3]}")
    return out


def read_msvd_mapping(path: PathLike) -> dict[int, str]:
    """``youtube_mapping.txt`` lines ``<ytid>_<start>_<end> vid<N>`` -> ``{N: clip name}``."""
    path = Path(path)
    try:
        lines = path.read_bytes().decode("utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    out: dict[int, str] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        cols = line.split()
        if len(cols) != 2 or not cols[1].startswith("vid") or not cols[1][3:].isdigit():
            raise DataError(f"{path}:{n}: expected '<clip> vid<N>', got {line!r}")
        if int(cols[1][3:]) in out:
            raise DataError(f"{path}:{n}: {cols[1]} appears twice")
        out[int(cols[1][3:])] = cols[0]
    return out


def read_msvd_qa(path: PathLike, mapping: dict[int, str] | None = None) -> list[QAPair]:
    """MSVD-QA ``{split}_qa.json`` -> QAPairs; ``qtype`` = first word of the question."""
    path = Path(path)
    out = []
    for i, rec in enumerate(_records(path, ("answer", "id", "question", "video_id"))):
        vid = rec["video_id"]
        if not isinstance(vid, int) or isinstance(vid, bool):
            raise DataError(f"{path}: record {i}: video_id {vid!r} is not an integer")
        if mapping is not None and vid not in mapping:
            raise DataError(f"{path}: record {i}: video_id {vid} is not in the youtube mapping")
        words = rec["question"].split()
        if not words:
            raise DataError(f"{path}: record {i}: empty question")
        out.append(QAPair(str(rec["id"]), mapping[vid] if mapping is not None else f"vid{vid}",
                          rec["question"], rec["answer"], words[0].lower()))
    return out


def read_answer_list(path: PathLike) -> list[str]:
    """One answer per line (e.g. HME's ``answer_set.txt``); duplicates are an error."""
    path = Path(path)
    try:
        lines = path.read_bytes().decode("utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    seen: dict[str, int] = {}
    for n, a in enumerate(lines, 1):
        if a in seen:
            raise DataError(f"{path}:{n}: answer {a!r} already on line {seen[a]}")
        seen[a] = n
    return list(seen)


def build_answer_vocab(answers: Iterable[str], k: int) -> list[str]:
    """The ``k`` most frequent answers, by count then alphabetically (deterministic)."""
    if k < 1:
        raise DataError(f"answer vocabulary size must be >= 1, got {k}")
    counts = Counter(answers)
    if not counts:
        raise DataError("cannot build an answer vocabulary from no answers")
    return [a for a, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:k]]


def answer_indices(answers: Iterable[Any], vocab: Sequence[str]) -> np.ndarray:
    """Class index of each answer, -1 where it is outside ``vocab`` (a classifier can never get it right)."""
    index = {a: i for i, a in enumerate(vocab)}
    if len(index) != len(vocab):
        raise DataError("answer vocabulary holds duplicates")
    return np.array([index.get(a, -1) for a in answers], dtype=np.int64)
