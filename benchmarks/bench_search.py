"""Benchmark 4: search latency (p50/p99, queries/s) at 10k, 100k and 1M clips, and approximate recall.

The index is a vidlang.retrieval.index.ClipIndex with build_index's layout (pooled float32, tokens float16,
memory-mapped on load), written by save_index and opened by load_index, for the recipe's TACo
(runs/bench-msrvtt-ae128/taco, trained by bench_eval if missing). Encoding 1M clips through the
model is not what is timed here, so the clips are synthetic around real ones: each is one of the
800 real msrvtt-ae128-dev videos encoded by that model, plus Gaussian noise (0.5 x the per-dimension
std) on its 12 tokens; its pooled vector is the mean of its tokens, as the video encoder's is.
Queries: 100 real captions of video700..799, each timed as new to the process (MiniLM output cache and
POS-tag cache cleared before it), so latency = query encoding (MiniLM + spaCy) + FAISS + scoring (+ rerank);
queries/s = queries / the sum of their latencies (one query at a time, one thread).
Stage one: FAISS exact (IndexFlatIP) / IVF (nprobe 16) / HNSW (M 32, efSearch 128) over s1, top 1000
candidates; then s1 + 0.5 s2 on the candidates; then optionally the fusion rerank of the top 50.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

import common

TITLE = "4. Search latency and approximate recall"
CACHE = common.REPO / "runs" / "bench-search"


def cases(quick: bool, device: str) -> list[dict]:
    if quick:
        return [{"id": "n5000", "fn": "search_case", "kwargs": {"n": 5000, "kinds": ["exact", "ivf", "hnsw"], "queries": 20}}]
    return [{"id": f"n{n}", "fn": "search_case", "kwargs": {"n": n, "kinds": kinds, "queries": 100}}
            for n, kinds in ((10_000, ["exact", "ivf", "hnsw"]), (100_000, ["exact", "ivf", "hnsw"]),
                             (1_000_000, ["exact", "ivf"]))]


def _base_clips(loaded):
    """The real clips encoded by the model: tokens (800, T, d), masks; random ones without the data."""
    from vidlang.api import encode_video
    from vidlang.data.features import open_store

    if common.DATA.is_dir():
        store = open_store(common.DATA)
        enc = encode_video(loaded, [store[v] for v in store.ids]).encoded
        return enc.tokens.numpy(), enc.mask.numpy()
    g = np.random.default_rng(1)
    steps = loaded.cfg.data.max_frames
    return g.normal(size=(800, steps, loaded.model.width)).astype(np.float32), np.ones((800, steps), bool)


def make_index(loaded, n: int, out, seed: int = 0, chunk: int = 65536):
    """Write an n-clip index (exact FAISS) to ``out`` with save_index; returns its build time."""
    from vidlang.retrieval.index import FaissSettings, ClipIndex, build_faiss, checkpoint_identity, s1_vectors, save_index

    tic = time.perf_counter()
    base, base_mask = _base_clips(loaded)
    sigma = 0.5 * base[base_mask].std(0)
    steps, width = base.shape[1:]
    rng = np.random.default_rng(seed)
    tmp = out.parent / f".{out.name}-tokens.npy"
    out.parent.mkdir(parents=True, exist_ok=True)
    tokens = np.lib.format.open_memmap(tmp, "w+", np.float16, (n, steps, width))
    pooled = np.empty((n, width), np.float32)
    which = rng.integers(0, len(base), n)
    for s in range(0, n, chunk):
        rows = which[s:s + chunk]
        t = base[rows] + sigma * rng.standard_normal((len(rows), steps, width), dtype=np.float32)
        t *= base_mask[rows][..., None]
        tokens[s:s + len(rows)] = t
        pooled[s:s + len(rows)] = t.sum(1) / base_mask[rows].sum(1, keepdims=True)
    mask = base_mask[which]
    vectors = s1_vectors(loaded, torch.from_numpy(pooled))
    settings = FaissSettings("exact")
    meta = {"format": 1, "num_clips": n, "max_frames": steps, "width": width, "token_dtype": "float16",
            "normalize": bool(loaded.model.cfg.normalize), "fps": None, "checkpoint": checkpoint_identity(loaded),
            "store": {"synthetic": f"{len(base)} real msrvtt-ae128-dev clips + N(0, (0.5 std)^2) token noise, seed {seed}"},
            "faiss": {**settings.__dict__, "built": "IndexFlatIP"}, "skipped": {}}
    frames = np.where(mask, np.arange(steps, dtype=np.int32), -1).astype(np.int32)
    index = ClipIndex(loaded, [f"clip{i}" for i in range(n)], np.full((n, 2), np.nan), frames, pooled, tokens, mask,
                      meta=meta, faiss_index=build_faiss(vectors, settings))
    save_index(index, out, overwrite=True)
    del index, tokens
    tmp.unlink()
    return time.perf_counter() - tic


def open_index(loaded, n: int):
    from vidlang.errors import VidlangError
    from vidlang.retrieval.index import load_index

    out = CACHE / f"n{n}"
    built_s = None
    try:
        index = load_index(out, loaded)
    except VidlangError:  # missing, or built for other weights
        built_s = make_index(loaded, n, out)
        index = load_index(out, loaded)
    size = sum(f.stat().st_size for f in out.iterdir())
    return index, built_s, size


def query_texts(count: int) -> list[str]:
    import json

    ann = json.loads((common.DATA / "annotations.json").read_text()) if common.DATA.is_dir() else {}
    caps = [ann[f"video{i}"]["captions"][j] for j in range(20) for i in range(700, 800) if f"video{i}" in ann]
    caps = caps or [f"a man is cooking dish number {i} in a kitchen" for i in range(count + 5)]
    return list(dict.fromkeys(caps))[: count + 5]


def search_case(device: str, n: int, kinds: list[str], queries: int, rerank_topk: int = 50, candidates: int = 1000) -> dict:
    from bench_eval import ensure_checkpoint
    from vidlang.api import encode_text, load_model
    from vidlang.retrieval.index import FaissSettings, build_faiss, s1_vectors
    from vidlang.retrieval.query import search
    from vidlang.text.pos import tag_captions

    loaded = load_model(ensure_checkpoint()["checkpoint"])
    index, built_s, disk = open_index(loaded, n)
    qs = query_texts(queries)
    warm, qs = qs[:5], qs[5:]
    tag_s = [common.timed(lambda q=q: tag_captions([q]))[0] for q in qs[:20]]  # spaCy, per query

    def forget():  # every timed query is new to the process: no cached MiniLM output or POS tags
        loaded.model.text._cache.clear()
        loaded.weighter._tagged.clear()

    variants, build = {"exact": index}, {}
    if any(k != "exact" for k in kinds):
        vectors = np.ascontiguousarray(index.faiss_index.reconstruct_n(0, n))  # the s1 vectors
        for kind in kinds:
            if kind == "exact":
                continue
            settings = FaissSettings(kind, nlist=min(max(1, min(int(4 * n ** 0.5), n // 39)), 1024), nprobe=16,
                                     hnsw_m=32, ef_search=128)
            tic = time.perf_counter()
            variants[kind] = dataclasses.replace(index, faiss_index=build_faiss(vectors, settings))
            build[kind] = {"seconds": round(time.perf_counter() - tic, 2),
                           **{k: v for k, v in settings.__dict__.items() if k != "exact_threshold"}}
    mem = common.PeakMemory(device).start()
    results, hits = {}, {}
    for kind, idx in variants.items():
        for rerank in (False, True):
            name = f"{kind}{'+rerank' if rerank else ''}"
            run = lambda q: search(idx, q, k=10, rerank=rerank, rerank_topk=rerank_topk,  # noqa: E731
                                   candidates=candidates, explain=False)
            for q in warm * (3 if not results else 1):  # the first variant also warms the process
                run(q)
            lat, found = [], []
            for q in qs:
                forget()
                seconds, h = common.timed(lambda q=q: run(q))
                lat.append(seconds)
                found.append([x.clip_index for x in h])
            results[name] = {"p50_ms": round(1000 * common.percentile(lat, 50), 2),
                             "p99_ms": round(1000 * common.percentile(lat, 99), 2),
                             "mean_ms": round(1000 * float(np.mean(lat)), 2), "qps": round(len(qs) / sum(lat), 1)}
            hits[name] = found
    memory = mem.stop()
    # recall@10: stage one (FAISS top 10 by s1) and the final top 10, approximate vs exact
    text = encode_text(loaded, qs)
    qv = s1_vectors(loaded, text.encoded.pooled)
    _, truth = index.faiss_index.search(qv, 10)
    for kind, idx in variants.items():
        if kind == "exact":
            continue
        _, got = idx.faiss_index.search(qv, 10)
        results[kind]["faiss_recall@10"] = round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])), 4)
        for suffix in ("", "+rerank"):
            pairs = zip(hits[f"{kind}{suffix}"], hits[f"exact{suffix}"])
            results[f"{kind}{suffix}"]["final_recall@10"] = round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in pairs])), 4)
    enc_s = []
    for q in qs[:20]:
        forget()
        enc_s.append(common.timed(lambda q=q: encode_text(loaded, q))[0])
    return {"n": n, "queries": len(qs), "k": 10, "candidates": candidates, "rerank_topk": rerank_topk,
            "index_built_s": None if built_s is None else round(built_s, 1), "index_disk_mb": round(disk / 2**20, 1),
            "faiss_build": build, "results": results, "memory": memory,
            "query_encode_ms_p50": round(1000 * common.percentile(enc_s, 50), 2),
            "spacy_tag_ms_p50": round(1000 * common.percentile(tag_s, 50), 2)}


def summarize(results: dict, quick: bool) -> dict:
    rows, targets = [], []
    for cid, r in results.items():
        for name, v in r["results"].items():
            rows.append([f"{r['n']:,}", name, v["p50_ms"], v["p99_ms"], v["qps"], v.get("faiss_recall@10", "-"),
                         v.get("final_recall@10", "-")])
    big = max(results.values(), key=lambda r: r["n"])
    approx = [k for k in big["results"] if k.endswith("+rerank") and not k.startswith("exact")]
    for name in approx:
        v = big["results"][name]
        targets.append({"name": f"p50 at {big['n']:,} clips, {name}", "target": "<= 50 ms", "measured": v["p50_ms"],
                        "passed": v["p50_ms"] <= 50})
        kind = name.split("+")[0]
        rec = big["results"][kind]["faiss_recall@10"]
        targets.append({"name": f"{kind} recall@10 vs exact FAISS at {big['n']:,}", "target": ">= 0.95", "measured": rec,
                        "passed": rec >= 0.95, "detail": f"final top-10 overlap with exact+rerank {v['final_recall@10']}"})
    info = [[f"{r['n']:,}", r["index_disk_mb"], r["index_built_s"] if r["index_built_s"] is not None else "cached",
             "; ".join(f"{k} {b['seconds']} s" for k, b in r["faiss_build"].items()) or "-", r["memory"]["peak_mb"],
             r["query_encode_ms_p50"], r["spacy_tag_ms_p50"]] for r in results.values()]
    return {"tables": [
        {"title": "Latency per query (k=10, 1000 FAISS candidates, rerank = fusion on the top 50)",
         "columns": ["clips", "stage one", "p50 ms", "p99 ms", "queries/s", "FAISS recall@10", "final top-10 recall"],
         "rows": rows},
        {"title": "Index and per-query fixed costs",
         "columns": ["clips", "index on disk MB", "index written s", "extra FAISS build", "peak MB while searching",
                     "query encode p50 ms (MiniLM + spaCy)", "of which spaCy tag p50 ms"], "rows": info}],
        "targets": targets, "notes": []}
