"""Benchmark 1: training-step throughput (clips/s) and MFU of TACo and MV-GPT at two sizes.

A step is what vidlang.train runs: zero_grad, forward + backward (train.backward_step), gradient
clipping, Adam step (train.make_optimizer). Batches are synthetic (setups.py) and fixed, so the frozen
MiniLM of the small size serves cached outputs, as in training once a caption has been seen.
MFU = model FLOPs per step (torch.utils.flop_counter, forward + backward as executed) / step time /
the fp32 matmul peak measured by the same process just before (common.matmul_peak).
"""
from __future__ import annotations

import torch

import common
import setups

TITLE = "1. Training step throughput and MFU"


def cases(quick: bool, device: str) -> list[dict]:
    paper_batch = 128 if device.startswith("cuda") else 16
    if quick:
        return [{"id": f"{m}-small", "fn": "train_case", "kwargs": {"model": m, "size": "small", "batch": 16, "steps": 2}}
                for m in ("taco", "mvgpt")]
    out = []
    for m in ("taco", "mvgpt"):
        out.append({"id": f"{m}-paper", "fn": "train_case",
                    "kwargs": {"model": m, "size": "paper", "batch": paper_batch, "steps": 2}})
        out.append({"id": f"{m}-small", "fn": "train_case", "kwargs": {"model": m, "size": "small", "batch": 64, "steps": 6}})
    return out


def train_case(device: str, model: str, size: str, batch: int, steps: int) -> dict:
    from vidlang.train import backward_step, make_optimizer

    peak = common.matmul_peak(device)
    net, cfg, shape = setups.build(size, model, device)
    net.train()
    optimizer = make_optimizer(net, cfg.train)
    make = setups.taco_batch if model == "taco" else setups.caption_batch
    batches = [make(batch, shape["frames"], shape["words"], shape["video_dim"], seed=s, device=device) for s in range(2)]
    gen = torch.Generator().manual_seed(0)
    if model == "taco":
        loss_fn = lambda b: net(b, cfg.taco, gen)  # noqa: E731
    else:
        loss_fn = lambda b: net(b, gen)  # noqa: E731
    state = {"i": 0}

    def step():
        b = batches[state["i"] % len(batches)]
        state["i"] += 1
        optimizer.zero_grad(set_to_none=True)
        backward_step(loss_fn, [b], 1)
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
        optimizer.step()

    mem = common.PeakMemory(device).start()
    for _ in batches:  # warm-up: one step per batch (fills the frozen-text cache, as after an epoch)
        step()
    flops, by_op = common.count_flops(step)  # one more untimed step, counted
    times = common.repeat(step, steps, device, warmup=0)
    memory = mem.stop()
    table, top = common.profile_table(step, device)
    med = common.summary(times)["median_s"]
    achieved = flops / med
    return {"model": model, "size": size, "batch": batch, "shape": shape, **setups.params(net),
            "step": common.summary(times), "clips_per_s": round(batch / med, 2),
            "flops_per_step": flops, "flops_by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:8]),
            "achieved_gflops": round(achieved / 1e9, 1), "matmul_peak": peak,
            "mfu": round(achieved / peak["flops_per_s"], 4), "memory": memory, "profile_top": top,
            "profile_table": table}


def summarize(results: dict, quick: bool) -> dict:
    rows = []
    for cid, r in results.items():
        rows.append([cid, r["batch"], r["params_m"], r["trainable_m"], f"{r['step']['median_s']:.3f}",
                     r["clips_per_s"], f"{r['flops_per_step'] / 1e12:.3f}", r["achieved_gflops"],
                     f"{r['matmul_peak']['flops_per_s'] / 1e9:.0f}", f"{100 * r['mfu']:.1f}%",
                     r["memory"]["peak_mb"], ", ".join(f"{t['op']} {t['self_cpu_pct']}%" for t in r["profile_top"][:3])])
    cols = ["case", "batch", "params M", "trainable M", "step s (median)", "clips/s", "TFLOP/step", "GFLOP/s",
            "matmul peak GFLOP/s", "MFU", "peak MB", "top ops by self CPU time"]
    return {"tables": [{"title": TITLE, "columns": cols, "rows": rows}], "targets": [],
            "notes": ["MFU = FlopCounterMode FLOPs (forward+backward) per step / median step time / the fp32 "
                      "2048x2048 matmul FLOP/s measured in the same process.",
                      "peak MB: ru_maxrss - RSS after model build, over the warm-up, counted and timed steps (fresh process).",
                      "Batches are synthetic and fixed (2 alternating); a frozen text encoder then serves cached outputs "
                      "(the steady state of vidlang training once captions repeat), so it costs no FLOPs in TACo; "
                      "MV-GPT masks its text input (MLM), which bypasses the cache, so its frozen MiniLM runs every step."]}
