"""Side-by-side CPU training steps: vidlang vs microsoft/UniVL, interleaved in one run (issue 19).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_side_by_side.py --univl-src /tmp/univl [--passes 2]
    ... --quick      # a smoke run: 1 pass, 1 warm-up + 1 timed step, the small size, no waiting for quiet

UniVL's source folder comes from ``git archive`` of github:microsoft/UniVL; its modules are imported
at run time by peer_univl.py (none of its code is in vidlang). Every configuration runs in a fresh
child process (peak RSS is its own) in the order of the plan, which interleaves the two sides; a
second pass swaps who goes first in each pair. The fp32 and bf16 matmul peaks are measured in the
same run at the same thread count (at the start and the end of every pass), and every step's MFU is
given against both. A timed step during which other processes used more than --other-cores-max
cores is discarded and re-run after the machine goes quiet (not with --quick).

vidlang steps (what vidlang.train runs: zero_grad, forward, backward, clip_grad_norm_, fused Adam from
train.make_optimizer), models at UniVL's fine-tuning layer counts (text 12, video 6, fusion/cross 2,
decoder 3; 768 wide, 12 heads; 32 words, 48 frames of 1024-d):
  taco      L1 + 0.5*L2 + L3, cascade negatives (K'=8)     vs UniVL align (FT-Align, cross on B x B pairs)
  dual      L1 only: a dual-encoder step                   vs UniVL joint (FT-Joint)
  caption   MV-GPT, mvgpt.objective=caption, full vocab    vs UniVL caption (stage two)
  bench     benchmarks/bench_train.train_case (its own paper setup), to re-check its MFU claims
Plan items: SIDE:KIND[:key=value/...], SIDE in mm (KIND fp32|bf16), vl, univl; keys: batch, threads,
steps, warmup, size (paper|small), autocast (bf16), model (bench: taco|mvgpt); mm items: n, reps.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _machine as machine

SIZES = {  # UniVL's fine-tuning layer counts; "small" halves the width and the text depth
    "paper": dict(hidden=768, heads=12, text_layers=12, video_layers=6, fusion_layers=2, decoder_layers=3),
    "small": dict(hidden=384, heads=6, text_layers=6, video_layers=6, fusion_layers=2, decoder_layers=3),
}
PAIRS = [("vl:taco:batch=16", "univl:align:batch=16"), ("vl:taco:batch=32", None),
         ("vl:dual:batch=32", "univl:joint:batch=32"), ("vl:caption:batch=32", "univl:caption:batch=32")]
MEASURES = {"taco": "taco_full_cascade", "taco_random": "taco_full_random", "dual": "dual_encoder_l1",
            "caption": "mvgpt_caption"}


def default_plan(passes: int) -> str:
    items = []
    for p in range(passes):
        items += ["mm:fp32", "mm:bf16"]
        for ours, peer in PAIRS:
            items += [ours] if peer is None else ([ours, peer] if p % 2 else [peer, ours])
        items += ["mm:fp32", "mm:bf16"]
    return ",".join(items)


def label_of(side: str, kind: str, opts: dict) -> str:
    return f"{side}:{kind}" + (":" + "/".join(f"{k}={v}" for k, v in opts.items()) if opts else "")


def parse_plan(plan: str) -> list[tuple[str, str, dict]]:
    jobs = []
    for item in [x for x in plan.split(",") if x]:
        side, kind, *rest = item.split(":")
        jobs.append((side, kind, dict(kv.split("=", 1) for kv in rest[0].split("/")) if rest else {}))
    return jobs


# ----------------------------------------------------------------------------- children
def child_matmul(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    n, dtype = job["n"], {"fp32": torch.float32, "bf16": torch.bfloat16}[job["kind"]]
    a, b, c = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype), torch.empty(n, n, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=c)
    for tries in range(1, 6):
        ts, c0, b0, w0 = [], machine.own_cpu(), machine.busy_seconds(), time.perf_counter()
        for _ in range(job["reps"]):
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            ts.append(time.perf_counter() - t0)
        wall = time.perf_counter() - w0
        own = machine.own_cpu() - c0
        other = max(0.0, (machine.busy_seconds() - b0) - own) / wall
        if other <= job["other_cores_max"]:
            break
        machine.log(f"  matmul: others used {other:.2f} cores, retrying")
        machine.wait_idle(job["wait_idle_s"])
    flop = 2.0 * n**3
    return {"measure": f"matmul_{job['kind']}_peak", "n": n, "reps": len(ts), "threads": job["threads"],
            "tries": tries, "gflops_median": flop / statistics.median(ts) / 1e9, "gflops_best": flop / min(ts) / 1e9,
            "cpu_util": own / wall, "other_procs_cores": other}


def vidlang_config(kind: str, size: str, words: int, frames: int, bert_dir: str):
    from vidlang.config import load_config

    s = SIZES[size]
    over = [f"model.text_encoder={bert_dir}", "model.text_trainable_layers=-1", "model.width=0",
            f"model.video_layers={s['video_layers']}", f"model.video_heads={s['heads']}",
            f"model.fusion_layers={s['fusion_layers']}", f"model.fusion_heads={s['heads']}", "model.dropout=0.1",
            f"data.max_frames={frames}", f"data.max_words={words}"]
    if kind == "taco_random":
        over.append("taco.negatives=random")
    if kind == "dual":
        over += ["taco.token_weight=0", "taco.fusion_weight=0"]
    if kind == "caption":
        over += ["task=mvgpt", f"mvgpt.decoder_layers={s['decoder_layers']}", f"mvgpt.decoder_heads={s['heads']}",
                 "mvgpt.objective=caption", "mvgpt.output_vocab=full", f"mvgpt.max_target_len={max(32, words)}"]
    return load_config(None, over)


def bert_dir_for(size: str, tmp: str) -> str:
    """benchmarks/common.py's random-init BERT-base config in a temp folder, rescaled for ``small``."""
    import common

    root = common.bert_base_dir(Path(tmp) / "bert")
    if size != "paper":
        s, path = SIZES[size], root / "config.json"
        cfg = json.loads(path.read_text())
        cfg.update(hidden_size=s["hidden"], num_hidden_layers=s["text_layers"], num_attention_heads=s["heads"],
                   intermediate_size=4 * s["hidden"])
        path.write_text(json.dumps(cfg))
    return str(root)


def build_vidlang(kind: str, size: str, words: int, frames: int, video_dim: int):
    """(model, config, loss_fn(batch, generator), batches) for a vidlang step of ``kind``."""
    import setups
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        cfg = vidlang_config(kind, size, words, frames, bert_dir_for(size, tmp))
        torch.manual_seed(0)
        if kind == "caption":
            from vidlang.models.mvgpt import MVGPT

            net = MVGPT(cfg, video_dim, load_text_weights=False)
        else:
            from vidlang.models.taco import TACo

            net = TACo(cfg.model, video_dim, load_text_weights=False)
    loss_fn = (lambda b, g: net(b, g)) if kind == "caption" else (lambda b, g: net(b, cfg.taco, g))
    make = setups.caption_batch if kind == "caption" else setups.taco_batch
    return net, cfg, loss_fn, make


def setup_vidlang(job: dict):
    """(model in train mode, config, loss_fn(batch, generator), two batches, generator, optimizer) for ``job``."""
    import torch

    from vidlang.train import make_optimizer

    net, cfg, loss_fn, make = build_vidlang(job["kind"], job["size"], job["words"], job["frames"], job["video_dim"])
    net.train()
    batches = [make(job["batch"], job["frames"], job["words"], job["video_dim"], seed=s) for s in range(2)]
    return net, cfg, loss_fn, batches, torch.Generator().manual_seed(0), make_optimizer(net, cfg.train)


def child_vidlang(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    kind, size, B = job["kind"], job["size"], job["batch"]
    net, cfg, loss_fn, batches, gen, optimizer = setup_vidlang(job)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=job.get("autocast") == "bf16")
    rss_setup, state = machine.rss_bytes() / 2**20, {"i": 0}

    def step():  # train.backward_step split into forward / backward, then clipping and the optimizer
        b = batches[state["i"] % 2]
        state["i"] += 1
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = loss_fn(b, gen)
        if not bool(torch.isfinite(out["loss"].detach())):
            raise SystemExit("non-finite loss")
        t1 = time.perf_counter()
        out["objective"].backward()
        t2 = time.perf_counter()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
        optimizer.step()
        t3 = time.perf_counter()
        return t3 - t0, t1 - t0, t2 - t1, t3 - t2, float(out["loss"].detach())

    rows, others, discarded = machine.timed_loop(step, job, f"vidlang {kind}/{size}/B{B}")
    flops = None
    if job["count_flops"]:
        def counted():
            with autocast:
                out = loss_fn(batches[0], gen)
            out["objective"].backward()

        flops = machine.flops_of(counted)
        optimizer.zero_grad(set_to_none=True)
    s = SIZES[size]
    res = {"measure": MEASURES[kind], "size": size, "hidden": s["hidden"], "batch": B, "max_words": job["words"],
           "max_frames": job["frames"], "video_dim": job["video_dim"], "threads": job["threads"],
           "autocast": job.get("autocast") or "none",
           "layers": {"text": s["text_layers"], "visual": s["video_layers"],
                      "fusion": s["fusion_layers"] if kind.startswith("taco") or kind == "caption" else 0,
                      "decoder": s["decoder_layers"] if kind == "caption" else 0},
           **machine.summarize(rows, others, discarded, job, B), "peak_rss_mib": machine.maxrss_mib(),
           "rss_after_setup_mib": rss_setup, "params_total": sum(p.numel() for p in net.parameters()),
           "flops_counted_per_step": flops}
    res["achieved_gflops"] = flops / res["step_s_median"] / 1e9 if flops else None
    return res


def child_bench(job: dict) -> dict:
    """vidlang's own bench_train.train_case (its paper setup), with its BERT config in a temp folder."""
    import bench_train
    import common

    orig, tmp = common.bert_base_dir, tempfile.mkdtemp(prefix="vl-bench-bert-")
    common.bert_base_dir = lambda root=None: orig(Path(tmp) / "bert")
    res = bench_train.train_case("cpu", model=job["model"], size="paper", batch=job["batch"], steps=job["steps"])
    for key in ("profile_table", "flops_by_op"):
        res.pop(key, None)
    res["mfu_bench_own"], res["matmul_peak_bench_own"] = res.pop("mfu", None), res.pop("matmul_peak", None)
    return {"measure": f"bench_train_{job['model']}_paper", "threads": job["threads"], "batch": job["batch"],
            "peak_rss_mib": machine.maxrss_mib(), "achieved_gflops": res["achieved_gflops"], **res}


def child_main(job: dict) -> None:
    import torch

    torch.set_num_threads(job["threads"])
    machine.start_rss_guard(job["rss_limit_gib"], job.get("kind", job["side"]))
    if job["side"] == "mm":
        out = child_matmul(job)
    elif job["side"] == "univl":
        from peer_univl import child_univl

        out = {"side": "UniVL", **child_univl(job, SIZES)}
    elif job["kind"] == "bench":
        out = child_bench(job)
    else:
        out = child_vidlang(job)
    out.setdefault("side", {"mm": "machine", "vl": "vidlang"}.get(job["side"], job["side"]))
    print(json.dumps(out), flush=True)


# ----------------------------------------------------------------------------- parent
def make_job(side: str, kind: str, opts: dict, a) -> dict:
    job = dict(side=side, kind=kind, threads=int(opts.get("threads", a.threads)), rss_limit_gib=a.rss_limit_gib,
               wait_idle_s=a.wait_idle_s, other_cores_max=a.other_cores_max, max_discard=a.max_discard,
               warmup=int(opts.get("warmup", a.warmup)), steps=int(opts.get("steps", a.steps)),
               count_flops=not a.no_flop_count)
    if side == "mm":
        return dict(job, n=int(opts.get("n", a.matmul_n)), reps=int(opts.get("reps", a.matmul_reps)))
    if kind == "bench":
        return dict(job, model=opts.get("model", "taco"), batch=int(opts.get("batch", 16)))
    return dict(job, size=opts.get("size", a.size), batch=int(opts.get("batch", 32)), autocast=opts.get("autocast"),
                words=int(opts.get("words", a.words)), frames=int(opts.get("frames", a.frames)),
                video_dim=a.video_dim, univl_src=os.path.abspath(a.univl_src) if a.univl_src else None)


def add_mfu(records: list[dict]) -> dict:
    """MFU of every step against the run's fp32 and bf16 matmul peaks (median over the run) at its thread count."""
    peaks: dict[tuple[str, int], list[float]] = {}
    for r in records:
        if r.get("measure", "").startswith("matmul_") and "gflops_median" in r:
            peaks.setdefault((r["measure"].split("_")[1], r["threads"]), []).append(r["gflops_median"])
    median = {k: statistics.median(v) for k, v in peaks.items()}
    for r in records:
        if r.get("achieved_gflops"):
            for dtype in ("fp32", "bf16"):
                if (dtype, r["threads"]) in median:
                    r[f"matmul_{dtype}_peak_gflops"] = median[(dtype, r["threads"])]
                    r[f"mfu_vs_{dtype}_peak"] = r["achieved_gflops"] / median[(dtype, r["threads"])]
    return {f"{d}@{t}threads": {"median_gflops": median[(d, t)], "all": v} for (d, t), v in peaks.items()}


def table(records: list[dict]) -> dict:
    def fmt(r, key, spec):
        return format(r[key], spec) if r and r.get(key) is not None else "–"

    rows = []
    for r in records:
        if r.get("measure", "").startswith("matmul_") or "plan_item" not in r:
            continue
        rows.append([r["pass"], r["plan_item"], r.get("side"), fmt(r, "step_s_median", ".2f"),
                     fmt(r, "samples_per_s", ".2f"), fmt(r, "fwd_s_median", ".2f"), fmt(r, "bwd_s_median", ".2f"),
                     fmt(r, "opt_s_median", ".2f"), fmt(r, "peak_rss_mib", ".0f"), fmt(r, "mfu_vs_fp32_peak", ".2f"),
                     fmt(r, "mfu_vs_bf16_peak", ".2f"), r.get("error", "")])
    return {"title": "Side-by-side training steps (each row one fresh process, in run order)",
            "columns": ["pass", "plan item", "side", "step s (median)", "samples/s", "fwd s", "bwd s", "opt s",
                        "peak RSS MiB", "MFU vs fp32 peak", "MFU vs bf16 peak", "error"], "rows": rows}


def ratios(records: list[dict]) -> list[dict]:
    """Per pass: vidlang samples/s over UniVL's for each pair, and the TACo B=32 / B=16 step time."""
    out = []
    for p in sorted({r["pass"] for r in records if "pass" in r}):
        by = {r["plan_item"]: r for r in records if r.get("pass") == p and "samples_per_s" in r}
        for ours, peer in PAIRS:
            if peer and ours in by and peer in by:
                out.append({"pass": p, "vidlang": ours, "UniVL": peer,
                            "samples_per_s_ratio": by[ours]["samples_per_s"] / by[peer]["samples_per_s"]})
        if "vl:taco:batch=16" in by and "vl:taco:batch=32" in by:
            out.append({"pass": p, "taco_b32_step_over_b16_step":
                        by["vl:taco:batch=32"]["step_s_median"] / by["vl:taco:batch=16"]["step_s_median"]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--univl-src", help="UniVL's source folder (has modules/modeling.py)")
    ap.add_argument("--univl-commit", help="the UniVL commit the source folder was archived from (recorded)")
    ap.add_argument("--plan", default="default", help="'default' or a comma list of plan items")
    ap.add_argument("--passes", type=int, default=2, help="passes of the default plan")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", choices=list(SIZES), default="paper")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--words", type=int, default=32)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--video-dim", type=int, default=1024)
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--matmul-reps", type=int, default=20)
    ap.add_argument("--no-flop-count", action="store_true")
    ap.add_argument("--rss-limit-gib", type=float, default=0.0, help="0: 85%% of MemAvailable")
    ap.add_argument("--wait-idle-s", type=float, default=300.0)
    ap.add_argument("--other-cores-max", type=float, default=0.15)
    ap.add_argument("--max-discard", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 pass, 1+1 steps, small size, no waiting")
    ap.add_argument("--note", action="append", default=[], help="a note for the results file (repeatable)")
    ap.add_argument("--out", type=Path, help="results JSON (default benchmarks/results[/quick]/side_by_side.json)")
    ap.add_argument("--from-jsonl", type=Path, help="write the results file from the JSON lines an earlier (e.g. "
                    "interrupted) run printed, instead of running; --plan/--quick/--note describe that run")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child:
        child_main(json.loads(a._child))
        return 0
    if a.quick:
        a.passes, a.warmup, a.steps, a.size, a.matmul_n, a.matmul_reps = 1, 1, 1, "small", 512, 5
        a.wait_idle_s, a.other_cores_max = 0.0, float("inf")
    plan = default_plan(a.passes) if a.plan == "default" else a.plan
    jobs = parse_plan(plan)
    if any(s == "univl" for s, _, _ in jobs) and not (a.univl_src and (Path(a.univl_src) / "modules" / "modeling.py").is_file()):
        ap.error("--univl-src must be a UniVL source folder containing modules/modeling.py")
    if a.dry_run:
        print("\n".join(map(str, jobs)))
        return 0
    import common

    env_stamp = {**common.environment("cpu", a.threads), "cpu_bf16_flags": machine.cpu_bf16_flags(),
                 "univl_src": a.univl_src, "univl_commit": a.univl_commit}
    if a.from_jsonl:
        records = [json.loads(line) for line in a.from_jsonl.read_text().splitlines() if line.startswith("{")]
        done = [r["plan_item"] for r in records]
        missing = [label_of(*job) for job in jobs][len(done):]
        env_stamp["note"] = f"summarized from {a.from_jsonl.name}: the environment is the summary's, not the run's"
        return write_results(a, argv, plan, env_stamp, records, time.time(), missing)
    child_env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                     PYTHONPATH=os.pathsep.join([str(common.REPO / "src"), str(HERE), os.environ.get("PYTHONPATH", "")]))
    records, tic, p, seen = [], time.time(), 0, set()
    for side, kind, opts in jobs:
        label = label_of(side, kind, opts)
        if side != "mm" and label in seen:  # the plan repeats: a new pass
            p, seen = p + 1, set()
        seen.add(label)
        job = make_job(side, kind, opts, a)
        machine.log(f"[side_by_side] pass {p}: {label}  (t+{time.time() - tic:.0f} s)")
        busy = machine.wait_idle(a.wait_idle_s)
        la0, w0 = os.getloadavg(), time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--_child", json.dumps(job)], stdout=subprocess.PIPE, check=False,
                              text=True, env=dict(child_env, OMP_NUM_THREADS=str(job["threads"]),
                                                  MKL_NUM_THREADS=str(job["threads"])))
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        rec = json.loads(lines[-1]) if lines else {"error": f"child exited {proc.returncode} with no result"}
        if proc.returncode != 0:
            rec.setdefault("error", f"child exited {proc.returncode}")
        rec.update({"pass": p, "plan_item": label, "busy_cores_before": round(busy, 3), "loadavg_before": la0,
                    "loadavg_after": os.getloadavg(), "job_wall_s": round(time.perf_counter() - w0, 1)})
        rec.setdefault("threads", job["threads"])
        records.append(rec)
        print(json.dumps(rec), flush=True)
    return write_results(a, argv, plan, env_stamp, records, tic, [])


def write_results(a, argv, plan: str, env_stamp: dict, records: list[dict], tic: float, missing: list[str]) -> int:
    import common

    peaks = add_mfu(records)
    notes = list(a.note)
    if missing:
        notes.insert(0, f"INCOMPLETE: the run was stopped before these plan items ran: {', '.join(missing)}.")
    if a.quick:
        notes.insert(0, "SMOKE RUN (--quick): 1 pass, 1 warm-up + 1 timed step, the small size, no waiting for a "
                        "quiet machine and no discarding of disturbed steps. It shows the driver works; its times "
                        "are not speed measurements and no comparison may be drawn from them.")
    payload = {"benchmark": "side_by_side", "title": "vidlang vs microsoft/UniVL, training steps side by side",
               "smoke": a.quick, "complete": not missing, "command": " ".join(["benchmarks/bench_side_by_side.py", *(argv or sys.argv[1:])]),
               "plan": plan, "env": env_stamp, "loadavg_after": common.load(), "wall_s": round(time.time() - tic, 1),
               "matmul_peaks": peaks, "ratios": ratios(records), "tables": [table(records)], "notes": notes,
               "records": records}
    out = a.out or (common.RESULTS / "quick" if a.quick else common.RESULTS) / "side_by_side.json"
    common.write_json(out, payload)
    machine.log(f"[side_by_side] done in {time.time() - tic:.0f} s: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
