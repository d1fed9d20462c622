"""Where a TACo training step's time goes at two batch sizes (issue 19: the B=32 step took 2.8x the B=16 step).

    PYTHONPATH=src .venv/bin/python benchmarks/profile_taco_batch.py [--batches 16 32] [--steps 2] [--threads 1]

The model is bench_side_by_side.py's ``taco`` step (UniVL's fine-tuning layer counts, 32 words, 48 frames
of 1024-d, cascade negatives; ``--size small`` halves the width and the text depth). For each batch size, in this one process: one warm-up step, then
``--steps`` steps under torch.profiler (CPU), with the phases (forward, backward, optimizer) and the
forward of each encoder (text, video, fusion; forward hooks) timed apart. It writes the ops by self CPU
time and, for the largest batch over the smallest, each op's share of the extra time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common
import torch
from bench_side_by_side import build_vidlang
from torch.profiler import ProfilerActivity, profile, record_function


def module_timers(net) -> dict[str, float]:
    """Accumulated forward seconds of net.text, net.video and net.fusion (every call)."""
    spent: dict[str, float] = {}
    for name in ("text", "video", "fusion"):
        mod, start = getattr(net, name), {}
        mod.register_forward_pre_hook(lambda m, a, start=start: start.__setitem__("t", time.perf_counter()))
        mod.register_forward_hook(lambda m, a, o, name=name, start=start: spent.__setitem__(
            name, spent.get(name, 0.0) + time.perf_counter() - start["t"]))
    return spent


def profile_batch(batch: int, steps: int, words: int, frames: int, dim: int, size: str = "paper") -> dict:
    from vidlang.train import make_optimizer

    net, cfg, loss_fn, make = build_vidlang("taco", size, words, frames, dim)
    net.train()
    optimizer = make_optimizer(net, cfg.train)
    data = make(batch, frames, words, dim, seed=0)
    gen = torch.Generator().manual_seed(0)
    spent = module_timers(net)
    phases = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}

    def step():
        optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with record_function("phase:forward"):
            out = loss_fn(data, gen)
        t1 = time.perf_counter()
        with record_function("phase:backward"):
            out["objective"].backward()
        t2 = time.perf_counter()
        with record_function("phase:optimizer"):
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
            optimizer.step()
        t3 = time.perf_counter()
        for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
            phases[k] += v

    step()  # warm-up
    spent.clear()
    phases.update(forward=0.0, backward=0.0, optimizer=0.0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if not e.key.startswith("phase:")]
    ops = {e.key: {"self_cpu_s": e.self_cpu_time_total / 1e6 / steps, "calls": e.count // steps} for e in events}
    per_step = {k: v / steps for k, v in phases.items()}
    return {"batch": batch, "steps": steps, "step_s": sum(per_step.values()), "phases_s": per_step,
            "forward_by_module_s": {k: v / steps for k, v in spent.items()},
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]["self_cpu_s"]))}


def compare(small: dict, large: dict, rows: int = 15) -> list[dict]:
    """Each op's share of the extra self-CPU time of the large batch's step over the small one's."""
    extra_total = sum(v["self_cpu_s"] for v in large["ops"].values()) - sum(v["self_cpu_s"] for v in small["ops"].values())
    out = []
    for op, v in large["ops"].items():
        before = small["ops"].get(op, {"self_cpu_s": 0.0})["self_cpu_s"]
        out.append({"op": op, "small_s": round(before, 3), "large_s": round(v["self_cpu_s"], 3),
                    "growth": round(v["self_cpu_s"] / before, 2) if before else None,
                    "share_of_extra": round((v["self_cpu_s"] - before) / extra_total, 3) if extra_total else None})
    return sorted(out, key=lambda r: -(r["large_s"] - r["small_s"]))[:rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", choices=["paper", "small"], default="paper", help="bench_side_by_side.SIZES")
    ap.add_argument("--words", type=int, default=32)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--out", type=Path, default=common.RESULTS / "profile_taco_batch.json")
    a = ap.parse_args(argv)
    with common.quiet_hf():
        threads = common.setup_threads(a.threads)
        env = common.environment("cpu", threads)
        results = []
        for b in a.batches:
            common.log(f"[profile_taco_batch] B={b} ...")
            results.append(profile_batch(b, a.steps, a.words, a.frames, 1024, a.size))
            common.log(f"  step {results[-1]['step_s']:.1f} s, phases {results[-1]['phases_s']}")
    small, large = results[0], results[-1]
    payload = {"benchmark": "profile_taco_batch", "size": a.size, "command": " ".join(["benchmarks/profile_taco_batch.py", *(argv or sys.argv[1:])]),
               "env": env, "loadavg_after": common.load(), "results": [{**r, "ops": dict(list(r["ops"].items())[:25])}
                                                                      for r in results],
               "large_over_small": {"step": large["step_s"] / small["step_s"],
                                    "phases": {k: large["phases_s"][k] / small["phases_s"][k] for k in small["phases_s"]},
                                    "forward_by_module": {k: large["forward_by_module_s"][k] / small["forward_by_module_s"][k]
                                                          for k in small["forward_by_module_s"]},
                                    "ops_by_extra_time": compare(small, large)}}
    common.write_json(a.out, payload)
    common.log(json.dumps(payload["large_over_small"], indent=1)[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
