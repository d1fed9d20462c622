"""Where vidlang's step and UniVL's differ, op by op, at equal shapes (issue 19: our dual-encoder and caption
forwards were slower than UniVL's at equal FLOPs).

    PYTHONPATH=src .venv/bin/python benchmarks/profile_vs_univl.py --univl-src /tmp/univl \
        [--pair dual] [--size paper] [--batch 32] [--threads 2] [--steps 2]

``--pair dual``: vidlang's dual-encoder step (L1) against UniVL FT-Joint; ``--pair caption``: the MV-GPT
caption step against UniVL's caption stage two (bench_side_by_side.py builds both sides, with the same
shapes). Each side runs in this process, one after the other: one warm-up step, then ``--steps`` steps under
torch.profiler with the forward and the backward apart. It writes, per phase, each side's seconds and the
ops by self CPU time, and the ops whose time differs most between the sides
(benchmarks/results/profile_vs_univl-PAIR.json). Measure on a quiet machine: the seconds are wall time.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch
from bench_side_by_side import SIZES, setup_vidlang
from peer_univl import build_univl
from torch.profiler import ProfilerActivity, profile, record_function

PEER_TASK = {"dual": "joint", "caption": "caption"}


def vidlang_step(job: dict):
    net, cfg, loss_fn, batches, gen, optimizer = setup_vidlang(job)

    def forward():
        optimizer.zero_grad(set_to_none=True)
        return loss_fn(batches[0], gen)["objective"]

    return forward, net


def univl_step(job: dict):
    model, params, batch, optimizer, _ = build_univl(job, SIZES)

    def forward():
        optimizer.zero_grad()
        return model(**batch)

    return forward, model


def profile_side(forward, steps: int) -> dict:
    """Seconds of the forward and backward (mean over ``steps``) and their ops by self CPU time."""
    forward().backward()  # warm-up
    seconds = {"forward": 0.0, "backward": 0.0}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            t0 = time.perf_counter()
            with record_function("phase:forward"):
                loss = forward()
            t1 = time.perf_counter()
            with record_function("phase:backward"):
                loss.backward()
            seconds["forward"] += t1 - t0
            seconds["backward"] += time.perf_counter() - t1
    ops = {e.key: e.self_cpu_time_total / 1e6 / steps for e in prof.key_averages()
           if not e.key.startswith("phase:")}
    return {"seconds": {k: v / steps for k, v in seconds.items()}, "ops_self_s": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}


def differences(ours: dict, peer: dict, top: int = 20) -> list[dict]:
    """Ops by how much more self time vidlang spends in them than UniVL (negative: less)."""
    rows = [{"op": op, "vidlang_s": ours.get(op, 0.0), "univl_s": peer.get(op, 0.0),
             "extra_s": ours.get(op, 0.0) - peer.get(op, 0.0)} for op in set(ours) | set(peer)]
    return sorted(rows, key=lambda r: -abs(r["extra_s"]))[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--univl-src", required=True, help="a `git archive` of github:microsoft/UniVL")
    ap.add_argument("--pair", choices=sorted(PEER_TASK), default="dual")
    ap.add_argument("--size", choices=sorted(SIZES), default="paper")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--words", type=int, default=32)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    job = dict(size=a.size, batch=a.batch, words=a.words, frames=a.frames, video_dim=1024, threads=a.threads,
               univl_src=os.path.abspath(a.univl_src))
    sides = {}
    for side, build, kind in (("vidlang", vidlang_step, a.pair), ("UniVL", univl_step, PEER_TASK[a.pair])):
        forward, model = build(dict(job, kind=kind))
        sides[side] = profile_side(forward, a.steps)
        print(side, {k: round(v, 2) for k, v in sides[side]["seconds"].items()}, flush=True)
        del forward, model
        gc.collect()
    ours, peer = sides["vidlang"]["ops_self_s"], sides["UniVL"]["ops_self_s"]
    result = {"pair": f"vidlang {a.pair} vs UniVL {PEER_TASK[a.pair]}", "size": a.size, "batch": a.batch,
              "threads": a.threads, "steps": a.steps, "load_average": os.getloadavg(), "sides": sides,
              "largest_differences": differences(ours, peer)}
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"profile_vs_univl-{a.pair}-{a.size}.json"
    path.write_text(json.dumps(result, indent=1))
    for r in result["largest_differences"][:12]:
        print(f"{r['op']:40s} vidlang {r['vidlang_s']:7.3f}  UniVL {r['univl_s']:7.3f}  extra {r['extra_s']:+7.3f}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
