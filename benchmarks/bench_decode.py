"""Benchmark 5: captioning decoding speed, greedy vs beam 4, with and without the KV cache.

MVGPT.generate (the FG path: [CLS1] transcript + frames -> caption) on synthetic inputs, random-init
decoder, max 30 tokens, no n-gram blocking. tokens/s = caption tokens returned (the end token
included where one was produced) / seconds. Cached and uncached decoding return the same captions
(tests/test_decoding.py); this checks it again and times both, each variant in a fresh process.
"""
from __future__ import annotations


import common
import setups

TITLE = "5. Caption decoding: greedy vs beam 4, KV cache vs none"
VARIANTS = [("greedy", True), ("greedy", False), ("beam", True), ("beam", False)]


def cases(quick: bool, device: str) -> list[dict]:
    sizes = [("small", 16, 1)] if quick else [("small", 16, 3), ("paper", 4, 1)]
    return [{"id": f"{size}-{m}-{'cache' if c else 'nocache'}", "fn": "decode_case",
             "kwargs": {"size": size, "batch": b, "method": m, "use_cache": c, "repeats": r,
                        "max_len": 12 if quick else 30}}
            for size, b, r in sizes for m, c in VARIANTS]


def decode_case(device: str, size: str, batch: int, method: str, use_cache: bool, repeats: int, max_len: int) -> dict:
    net, cfg, shape = setups.build(size, "mvgpt", device)
    net.eval()
    b = setups.caption_batch(batch, shape["frames"], shape["words"], shape["video_dim"], device=device)
    settings = {"max_len": max_len, "no_repeat_ngram": 0, **({"beam_size": 4} if method == "beam" else {})}
    run = lambda: net.generate(b.video, b.video_mask, b.transcript_ids, b.transcript_mask, method=method,  # noqa: E731
                               use_cache=use_cache, **settings)
    mem = common.PeakMemory(device).start()
    out = run()  # warm-up
    times = common.repeat(run, repeats, device, warmup=0)
    memory = mem.stop()
    tokens = sum(min(len(s) + 1, max_len) for s in out)  # + the end token where one was produced
    med = common.summary(times)["median_s"]
    return {"size": size, "batch": batch, "method": method, "beam_size": 4 if method == "beam" else 1,
            "use_cache": use_cache, "max_len": max_len, "tokens": tokens, "time": common.summary(times),
            "tokens_per_s": round(tokens / med, 1), "captions": out, "memory": memory, **setups.params(net)}


def summarize(results: dict, quick: bool) -> dict:
    rows, targets = [], []
    for size in dict.fromkeys(r["size"] for r in results.values()):
        get = lambda m, c: results[f"{size}-{m}-{'cache' if c else 'nocache'}"]  # noqa: E731
        for m in ("greedy", "beam"):
            cached, plain = get(m, True), get(m, False)
            speedup = cached["tokens_per_s"] / plain["tokens_per_s"]
            same = cached["captions"] == plain["captions"]
            for r in (cached, plain):
                rows.append([size, r["batch"], m if m == "greedy" else "beam 4", "yes" if r["use_cache"] else "no",
                             r["tokens"], f"{r['time']['median_s']:.3f}", r["tokens_per_s"],
                             f"{speedup:.1f}" if r["use_cache"] else "", r["memory"]["peak_mb"], same])
            if m == "beam":
                targets.append({"name": f"{size}: cached / uncached beam-4 tokens/s", "target": ">= 3",
                                "measured": round(speedup, 2), "passed": speedup >= 3,
                                "detail": "same captions" if same else "captions differ"})
    return {"tables": [{"title": TITLE, "columns": ["size", "clips", "method", "KV cache", "tokens", "s (median)",
                                                    "tokens/s", "cache speed-up", "peak MB", "same captions"],
                        "rows": rows}], "targets": targets, "notes": []}
