"""Stage one of search: a FAISS inner-product index over the clips' s1 vectors (exact, IVF or HNSW)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vidlang.errors import ConfigError

FAISS_KINDS = ("auto", "exact", "ivf", "hnsw", "none")


@dataclass
class FaissSettings:
    """Stage one of search: ``exact`` (IndexFlatIP), ``ivf`` (IndexIVFFlat), ``hnsw`` (IndexHNSWFlat);
    ``auto`` is exact below ``exact_threshold`` clips and IVF above."""

    kind: str = "auto"
    exact_threshold: int = 100_000
    nlist: int | None = None  # IVF cells (default ~4·sqrt(N))
    nprobe: int = 16  # IVF cells visited per query
    hnsw_m: int = 32
    ef_search: int = 128  # HNSW search breadth


def faiss_module():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConfigError("a FAISS index needs faiss: pip install 'vidlang[search]' (or use faiss='none')") from e
    return faiss


def build_faiss(vectors: np.ndarray, settings: FaissSettings, seed: int = 0):
    """An inner-product FAISS index over ``vectors`` (N, d), or None for kind ``none``."""
    kind = settings.kind
    if kind not in FAISS_KINDS:
        raise ConfigError(f"faiss kind must be one of {FAISS_KINDS}, not {kind!r}")
    n, d = vectors.shape
    if kind == "auto":
        kind = "exact" if n < settings.exact_threshold else "ivf"
    if kind == "none":
        return None
    faiss = faiss_module()
    if kind == "exact":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = settings.ef_search
    else:
        nlist = settings.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))  # FAISS wants >= 39 points a cell
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(seed).choice(n, min(n, nlist * 256), replace=False))
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
        index.nprobe = min(settings.nprobe, nlist)
    for start in range(0, n, 65536):
        index.add(np.ascontiguousarray(vectors[start:start + 65536], dtype=np.float32))
    return index
