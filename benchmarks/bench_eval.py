"""Benchmark 3: evaluation scoring, exact all-pairs fusion vs cascade rerank (scoring.score_matrix).

Timing: synthetic encoded sets of N texts x N clips at the small (msrvtt-ae128 recipe) size, a
random-init TACo, eval settings of the recipe (batch_pairs 4096, rerank_topk 20). Exact at N=10,000
is extrapolated from a measured block of text rows (score_matrix's cost is linear in the rows).
Quality: `vidlang evaluate` on the real msrvtt-ae128-dev features, video700..video799 (2,000 queries),
with --scoring exact and --scoring cascade, on a TACo trained by the recipe (trained here if missing).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import torch

import common
import setups
from vidlang.models.blocks import Encoded
from vidlang.evaluation.scoring import EncodedSet, score_matrix

TITLE = "3. Evaluation: exact all-pairs scoring vs cascade rerank"
RUN = common.REPO / "runs" / "bench-msrvtt-ae128" / "taco"


def cases(quick: bool, device: str) -> list[dict]:
    sizes = [(1000, 40)] if quick else [(1000, None), (10000, 20)]
    out = []
    for n, rows in sizes:
        out.append({"id": f"exact-{n}", "fn": "score_case", "kwargs": {"scoring": "exact", "n": n, "rows": rows}})
        out.append({"id": f"cascade-{n}", "fn": "score_case", "kwargs": {"scoring": "cascade", "n": n, "rows": None}})
    if not quick and common.DATA.is_dir():
        out += [{"id": f"real-{s}", "fn": "real_case", "kwargs": {"scoring": s}} for s in ("exact", "cascade")]
    return out


def synthetic_sets(n: int, frames: int, words: int, width: int, seed: int = 0, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, frames, width, generator=g)
    t = torch.randn(n, words, width, generator=g)
    w = (torch.rand(n, words, generator=g) < 0.3).float()
    w[:, 1] = 1.0
    w[:, 0] = w[:, -1] = 0.0
    to = lambda x: x.to(device)  # noqa: E731
    videos = EncodedSet(Encoded(to(v), to(torch.ones(n, frames, dtype=torch.bool)), to(v.mean(1))))
    texts = EncodedSet(Encoded(to(t), to(torch.ones(n, words, dtype=torch.bool)), to(t[:, 0])), to(w / w.sum(1, True)))
    return videos, texts


def score_case(device: str, scoring: str, n: int, rows: int | None) -> dict:
    net, cfg, shape = setups.build("small", "taco", device)
    net.eval()
    videos, texts = synthetic_sets(n, shape["frames"], shape["words"], net.width, device=device)
    if rows is not None:  # exact on a block of text rows; the full matrix costs n / rows times as much
        t = texts.encoded
        texts = EncodedSet(Encoded(t.tokens[:rows], t.mask[:rows], t.pooled[:rows]), texts.weights[:rows])
    e = cfg.eval
    mem = common.PeakMemory(device).start()
    seconds, sim = common.timed(lambda: score_matrix(net, videos, texts, scoring, e.token_scale, e.rerank_topk,
                                                     e.batch_pairs), device)
    memory = mem.stop()
    measured_rows = len(texts)
    total = seconds * n / measured_rows
    return {"scoring": scoring, "n": n, "rows_measured": measured_rows, "extrapolated": measured_rows < n,
            "measured_s": round(seconds, 3), "seconds": round(total, 3), "matrix": list(sim.shape),
            "rerank_topk": e.rerank_topk, "batch_pairs": e.batch_pairs, "memory": memory}


def ensure_checkpoint() -> dict:
    """The recipe's TACo under runs/bench-msrvtt-ae128/taco, trained (about 4 min on 2 cores) if missing."""
    from vidlang.checkpoint import find_checkpoint

    try:
        return {"checkpoint": str(find_checkpoint(RUN, "best")), "trained_now": False}
    except Exception:  # noqa: BLE001 - no run yet
        pass
    cmd = [sys.executable, "-m", "vidlang.cli", "train", str(setups.RECIPE), f"data.root={common.DATA}",
           f"train.out_dir={RUN}", "train.threads=1"]
    tic = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=common.REPO)
    return {"checkpoint": str(find_checkpoint(RUN, "best")), "trained_now": True, "train_cmd": " ".join(cmd[2:]),
            "train_s": round(time.perf_counter() - tic, 1)}


def real_case(device: str, scoring: str) -> dict:
    ckpt = ensure_checkpoint()
    ids = RUN.parent / "video700-799.txt"
    ids.write_text("".join(f"video{i}\n" for i in range(700, 800)))
    out = RUN.parent / f"eval-{scoring}.json"
    cmd = [sys.executable, "-m", "vidlang.cli", "evaluate", ckpt["checkpoint"], "--data", str(common.DATA),
           "--split", str(ids), "--scoring", scoring, "--json", "--out", str(out)]
    tic = time.perf_counter()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=common.REPO)
    seconds = time.perf_counter() - tic
    result = json.loads(proc.stdout)
    shown = "vidlang evaluate " + " ".join(str(c).replace(str(common.REPO) + "/", "") for c in cmd[4:])
    return {**ckpt, "scoring": scoring, "command": shown, "seconds_incl_load": round(seconds, 2),
            "metrics": result["metrics"], "result_file": str(out)}


def summarize(results: dict, quick: bool) -> dict:
    rows, targets = [], []
    ns = sorted({r["n"] for k, r in results.items() if k.startswith(("exact", "cascade"))})
    for n in ns:
        ex, ca = results[f"exact-{n}"], results[f"cascade-{n}"]
        ratio = ex["seconds"] / ca["seconds"]
        note = f" (extrapolated from {ex['rows_measured']} of {n} text rows, measured {ex['measured_s']} s)" \
            if ex["extrapolated"] else ""
        rows.append([n, f"{ex['seconds']:.1f}{note}", ex["memory"]["peak_mb"], f"{ca['seconds']:.2f}",
                     ca["memory"]["peak_mb"], f"{ratio:.1f}"])
        if n == 1000:
            targets.append({"name": "cascade speed-up at N=1000 (exact s / cascade s)", "target": ">= 20",
                            "measured": round(ratio, 1), "passed": ratio >= 20})
    tables = [{"title": "Synthetic N texts x N clips, small size (width 64, 1 fusion layer, 12 frames, 30 words)",
               "columns": ["N", "exact s", "exact peak MB", "cascade s", "cascade peak MB", "exact / cascade"],
               "rows": rows}]
    notes = []
    if "real-exact" in results:
        ex, ca = results["real-exact"]["metrics"], results["real-cascade"]["metrics"]
        keys = ["t2v_R@1", "t2v_R@5", "t2v_R@10", "v2t_R@1", "v2t_R@5"]
        tables.append({"title": "Real features: msrvtt-ae128-dev video700..799 (2,000 text queries, 100 videos)",
                       "columns": ["scoring", *keys, "s (incl. model load)"],
                       "rows": [[s, *(f"{results[f'real-{s}']['metrics'][k]:.1f}" for k in keys),
                                 results[f"real-{s}"]["seconds_incl_load"]] for s in ("exact", "cascade")]})
        d = abs(ex["t2v_R@1"] - ca["t2v_R@1"])
        targets.append({"name": "|t2v R@1 exact - cascade| (points)", "target": "<= 0.5", "measured": round(d, 2),
                        "passed": d <= 0.5, "detail": f"v2t R@1 difference {abs(ex['v2t_R@1'] - ca['v2t_R@1']):.2f}"})
        notes.append(f"checkpoint {results['real-exact']['checkpoint']}; command: `{results['real-exact']['command']}`")
    return {"tables": tables, "targets": targets, "notes": notes}
