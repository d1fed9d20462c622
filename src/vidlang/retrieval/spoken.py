"""The spoken field of an index: what is said in each clip, matched against the query as text.

``vidlang index ... --transcripts transcripts.jsonl`` (the file ``vidlang transcribe`` writes) gives every
clip the utterances whose midpoint lies in its span. Each utterance, and the clip's whole transcript when
it has more than one, is a *unit*, embedded with all-MiniLM-L6-v2 (mean-pooled, L2-normalised:
:mod:`vidlang.text.sentence`). A clip's spoken score for a query is the best cosine over its units; a clip
with no speech has none (``has`` False), never a NaN.

Search combines the two fields (:func:`combine`): ``(1 - w) * visual' + w * max(spoken, 0)``, where
``visual'`` is the visual score (TACo's s1 + 0.5 s2 [+ s3]) min-max normalised over the clips scored for
this query (TACo scores have no fixed range), and the spoken cosine is already on a fixed scale (unit
vectors; negative cosines count as 0). A clip without speech gets only its visual part.

    INDEX/spoken_vectors.npy  (U, 384) float32 unit vectors      INDEX/spoken_rows.npy   (U,) int32 clip row
    INDEX/spoken_spans.npy    (U, 2) float64 seconds of the unit INDEX/spoken_texts.json  the units' texts
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidlang.errors import ConfigError, DataError

__all__ = ["DEFAULT_SPOKEN_WEIGHT", "SpokenField", "SpokenMatch", "build_spoken_field", "combine", "load_spoken",
           "resolve_weight"]

DEFAULT_SPOKEN_WEIGHT = 0.5  # the spoken field's share when the index has one (a stated prior, not tuned)
_FILES = ("spoken_vectors.npy", "spoken_rows.npy", "spoken_spans.npy", "spoken_texts.json")


@dataclass
class SpokenMatch:
    """Per index row: the best cosine of the query to the row's units, that unit, and whether the row has speech."""

    score: np.ndarray  # (N,) float64; 0 where ``has`` is False
    unit: np.ndarray  # (N,) int64; -1 where ``has`` is False
    has: np.ndarray  # (N,) bool


@dataclass
class SpokenField:
    vectors: np.ndarray  # (U, d) float32 unit vectors
    rows: np.ndarray  # (U,) int32
    spans: np.ndarray  # (U, 2) float64
    texts: list[str]
    meta: dict = field(default_factory=dict)

    def match(self, query_vector: np.ndarray, num_rows: int) -> SpokenMatch:
        """The best unit of every row for one query vector (d,)."""
        sims = self.vectors @ np.asarray(query_vector, np.float32).reshape(-1)
        score = np.full(num_rows, -np.inf)
        np.maximum.at(score, self.rows, sims.astype(np.float64))
        has = np.isfinite(score)
        unit = np.full(num_rows, -1, np.int64)
        for u in np.argsort(-sims, kind="stable")[::-1]:  # the best unit of a row is written last
            unit[self.rows[u]] = u
        score[~has] = 0.0
        return SpokenMatch(score, unit, has)

    def save(self, folder: Path) -> None:
        for name, arr in zip(_FILES[:3], (self.vectors, self.rows, self.spans)):
            np.save(folder / name, arr, allow_pickle=False)
        (folder / _FILES[3]).write_text(json.dumps(self.texts, ensure_ascii=False), encoding="utf-8")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_spoken_field(video_ids: list[str], segments: np.ndarray, transcripts: str | Path,
                       encoder: str | None = None, device: str = "cpu") -> SpokenField:
    """Units of every row (``video_ids[i]`` cut to ``segments[i]``, NaN = the video's start/end) from a
    transcript file (any format :func:`vidlang.data.narration.read_transcripts` reads), embedded."""
    from vidlang.data.narration import read_transcripts
    from vidlang.text.pretrained import DEFAULT_TEXT_ENCODER
    from vidlang.text.sentence import sentence_encoder

    path = Path(transcripts)
    streams = read_transcripts(path)
    if streams and not set(streams) & set(video_ids):
        raise DataError(f"transcripts {path} name none of the index's videos (e.g. {next(iter(streams))!r} "
                        f"is not among {video_ids[:3]}...): were they made from the same videos?")
    rows, spans, texts = [], [], []
    for i, vid in enumerate(video_ids):
        lo, hi = (bound if np.isnan(x) else float(x) for x, bound in zip(segments[i], (-np.inf, np.inf)))
        said = [u for u in streams.get(vid, []) if lo <= (u.start + u.end) / 2 <= hi and u.text.strip()]
        units = [(u.start, u.end, u.text.strip()) for u in said]
        if len(said) > 1:
            units.append((said[0].start, said[-1].end, " ".join(t for _, _, t in units)))
        for start, end, text in units:
            rows.append(i), spans.append((start, end)), texts.append(text)
    enc = sentence_encoder(encoder or DEFAULT_TEXT_ENCODER, device)
    vectors = enc.encode(texts) if texts else np.zeros((0, enc.dim), np.float32)
    meta = {**enc.describe(), "transcripts": str(path.resolve()), "transcripts_sha256": _sha256(path),
            "units": len(texts), "clips_with_speech": len(set(rows)), "clips": len(video_ids),
            "default_weight": DEFAULT_SPOKEN_WEIGHT}
    return SpokenField(vectors, np.asarray(rows, np.int32), np.asarray(spans, np.float64).reshape(-1, 2), texts, meta)


def load_spoken(folder: Path, meta: dict | None, num_rows: int) -> SpokenField | None:
    """The spoken field of an index folder (None when it was built without transcripts)."""
    if not isinstance(meta, dict):
        return None
    try:
        vectors, rows, spans = (np.load(folder / name, allow_pickle=False) for name in _FILES[:3])
        texts = json.loads((folder / _FILES[3]).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the spoken field of index {folder}: {e}") from e
    u = len(texts)
    if vectors.shape != (u, meta.get("dim")) or rows.shape != (u,) or spans.shape != (u, 2) \
            or (u and not (0 <= rows.min() and rows.max() < num_rows)) or not np.isfinite(vectors).all():
        raise DataError(f"the spoken field of index {folder} is inconsistent ({u} texts, vectors {vectors.shape}, "
                        f"rows {rows.shape}, {num_rows} clips)")
    return SpokenField(vectors.astype(np.float32), rows.astype(np.int64), spans, texts, meta)


def resolve_weight(spoken: SpokenField | None, weight: float | None) -> float:
    """``weight`` checked (0..1); None: the default when the index has a spoken field, else 0."""
    if weight is None:
        return DEFAULT_SPOKEN_WEIGHT if spoken is not None else 0.0
    if not 0.0 <= float(weight) <= 1.0:
        raise ConfigError(f"spoken_weight must be in [0, 1], got {weight}")
    if weight > 0 and spoken is None:
        raise ConfigError("spoken_weight > 0 needs an index built with transcripts "
                          "(vidlang index ... --transcripts transcripts.jsonl)")
    return float(weight)


def combine(visual: np.ndarray, spoken: np.ndarray, has: np.ndarray, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """(combined scores, True where the spoken part outweighs the visual part) for one query's scored rows.

    ``visual`` is min-max normalised over these rows (all equal: 1); ``spoken`` (cosines) counts from 0 up,
    and only where ``has``."""
    visual = np.asarray(visual, np.float64)
    lo, hi = (visual.min(), visual.max()) if len(visual) else (0.0, 0.0)
    v = (visual - lo) / (hi - lo) if hi > lo else np.ones_like(visual)
    s = np.where(has, np.clip(spoken, 0.0, None), 0.0)
    v_part, s_part = (1.0 - weight) * v, weight * s
    return v_part + s_part, s_part > v_part
