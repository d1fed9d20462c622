"""Machine state for the side-by-side benchmark (bench_side_by_side.py, peer_univl.py): CPU time of
this process and of the others (/proc/stat), waiting for quiet, an RSS guard, and the timed loop
that discards steps disturbed by other load (the rule of the issue-19 drivers in shared/tools)."""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import threading
import time


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def busy_seconds(niced: bool | None = None) -> float:
    """Busy CPU-seconds of all CPUs so far: all (None), only nice > 0 processes (True), or the rest (False)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8]) - idle
    busy = total if niced is None else (v[1] if niced else total - v[1])
    return busy / os.sysconf("SC_CLK_TCK")


def busy_cores(seconds: float = 1.0, niced: bool | None = None) -> float:
    b0 = busy_seconds(niced)
    time.sleep(seconds)
    return (busy_seconds(niced) - b0) / seconds


def wait_idle(limit_s: float, max_cores: float = 0.2, niced: bool | None = None) -> float:
    """Wait (at most ``limit_s``) until other processes use < ``max_cores``; returns the last reading."""
    if limit_s <= 0:
        return busy_cores(0.5, niced)
    deadline = time.time() + limit_s
    while True:
        busy = busy_cores(1.0, niced)
        if busy < max_cores or time.time() > deadline:
            return busy
        log(f"  machine busy ({busy:.2f} cores in use), waiting")
        time.sleep(4)


def own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def start_rss_guard(limit_gib: float, tag: str) -> None:
    """Exit this child with a JSON error line before it takes the machine's memory."""
    limit = limit_gib * 2**30 if limit_gib > 0 else 0.85 * mem_available_bytes()

    def watch():
        while True:
            r = rss_bytes()
            if r > limit:
                print(json.dumps({"measure": tag, "error": "rss_limit", "rss_gib_at_abort": round(r / 2**30, 2),
                                  "rss_limit_gib": round(limit / 2**30, 2)}), flush=True)
                os._exit(3)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_bf16_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(x for x in line.split(":", 1)[1].split() if x.startswith(("amx", "avx512_bf16")))
    except OSError:
        pass
    return []


def timed_loop(step, job: dict, tag: str):
    """``job["warmup"]`` steps, then ``job["steps"]`` kept steps. A step during which other processes
    used more than ``job["other_cores_max"]`` cores is discarded (then we wait for quiet), at most
    ``job["max_discard"]`` times. ``step()`` returns (total, fwd, bwd, opt, loss) seconds."""

    def measured():
        c0, b0, n0 = own_cpu(), busy_seconds(), busy_seconds(True)
        row = step()
        own = own_cpu() - c0
        other = max(0.0, (busy_seconds() - b0) - own) / row[0]
        return (*row, own / row[0], (busy_seconds(True) - n0) / row[0]), other

    for i in range(job["warmup"]):
        row, other = measured()
        log(f"  {tag} warm-up {i + 1}: {row[0]:.2f} s (others {other:.2f} cores)")
    rows, others, discarded = [], [], []
    while len(rows) < job["steps"] and len(discarded) < job["max_discard"]:
        row, other = measured()
        ok = other <= job["other_cores_max"]
        log(f"  {tag} step: {row[0]:.2f} s (fwd {row[1]:.2f} bwd {row[2]:.2f} opt {row[3]:.2f}; "
            f"others {other:.2f} cores){'' if ok else ' DISCARDED'}")
        if ok:
            rows.append(row)
            others.append(other)
        else:
            discarded.append(row[0])
            wait_idle(job["wait_idle_s"])
    if not rows:
        raise SystemExit("no clean step: the machine was never quiet")
    return rows, others, discarded


def summarize(rows, others, discarded, job: dict, batch: int) -> dict:
    tot = [r[0] for r in rows]
    med = statistics.median(tot)
    return {"warmup": job["warmup"], "steps": len(rows), "step_s_median": med, "step_s_min": min(tot),
            "step_s_max": max(tot), "step_s_all": tot,
            "fwd_s_median": statistics.median(r[1] for r in rows),
            "bwd_s_median": statistics.median(r[2] for r in rows),
            "opt_s_median": statistics.median(r[3] for r in rows),
            "samples_per_s": batch / med, "last_loss": rows[-1][4],
            "steps_discarded_busy": len(discarded), "discarded_step_s": discarded,
            "other_procs_cores_max_kept": max(others), "own_cpu_util_median": statistics.median(r[5] for r in rows),
            "niced_procs_cores_max_kept": max(r[6] for r in rows), "loadavg_1m_end": os.getloadavg()[0]}


def flops_of(fn) -> float:
    """FLOPs of one call of ``fn`` (forward + backward as executed), by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())
