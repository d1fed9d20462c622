"""Shared pieces of the benchmarks: environment stamp, timers, peak memory, matmul peak, FLOP counts.

Every benchmark case runs in a fresh Python process (``run_all.py``), so ``ru_maxrss`` there is that
case's own high-water mark; ``PeakMemory`` reports it as a delta over the RSS after setup.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATA = REPO.parent / "shared" / "data" / "msrvtt-ae128-dev"


# ----------------------------------------------------------------------------- environment
def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def environment(device: str, threads: int) -> dict:
    """What a number depends on: commit, versions, threads, device, load, date."""
    from vidlang.report import git_commit, git_dirty

    env = {
        "git_commit": git_commit(), "git_dirty": git_dirty(), "torch": torch.__version__,
        "python": platform.python_version(), "threads": threads, "cpu_count": os.cpu_count(),
        "cpu": _cpu_name(), "device": device, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "loadavg": load(),
    }
    try:
        import faiss

        env["faiss"] = faiss.__version__
    except ImportError:
        pass
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def pick_device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def setup_threads(threads: int) -> int:
    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass
    return torch.get_num_threads()


# ----------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str = "cpu") -> tuple[float, object]:
    sync(device)
    tic = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - tic, out


def repeat(fn, n: int, device: str = "cpu", warmup: int = 1, max_s: float | None = None) -> list[float]:
    """Seconds of each of ``n`` calls after ``warmup`` untimed ones (stops early past ``max_s``, keeping >= 1)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(n):
        times.append(timed(fn, device)[0])
        if max_s is not None and time.perf_counter() - start > max_s:
            break
    return times


def summary(times: list[float]) -> dict:
    return {"n": len(times), "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def percentile(values: list[float], q: float) -> float:
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# ----------------------------------------------------------------------------- memory
def rss_mb() -> float:
    """Current resident set size (Linux /proc; falls back to the high-water mark)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return maxrss_mb()


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class PeakMemory:
    """Peak memory of the work between ``start()`` and ``stop()``.

    CPU: ru_maxrss at stop minus the RSS at start (the process is fresh, so ru_maxrss is this case's).
    CUDA: torch.cuda.max_memory_allocated over the same span, minus what was allocated at start.
    """

    def __init__(self, device: str):
        self.device = device

    def start(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            self.base, self.maxrss_before = rss_mb(), maxrss_mb()
        return self

    def stop(self) -> dict:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
            return {"peak_mb": round(peak - self.base, 1), "how": "torch.cuda.max_memory_allocated - allocated at start",
                    "base_mb": round(self.base, 1)}
        peak = maxrss_mb()
        out = {"peak_mb": round(max(0.0, peak - self.base), 1), "how": "ru_maxrss - RSS at start (fresh process)",
               "base_rss_mb": round(self.base, 1), "process_maxrss_mb": round(peak, 1)}
        if self.maxrss_before > peak - 1:  # setup already reached this high-water mark: the delta is a lower bound
            out["setup_peak_dominates"] = True
        return out


# ----------------------------------------------------------------------------- FLOPs
def matmul_peak(device: str, n: int = 2048, repeats: int = 5, dtype=torch.float32) -> dict:
    """FLOP/s of one large square fp32 matmul (the best of ``repeats``): the denominator of MFU."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = repeat(lambda: torch.matmul(a, b), repeats, device, warmup=2)
    best = min(times)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "best_s": best, "flops_per_s": 2 * n**3 / best}


def count_flops(fn) -> tuple[int, dict]:
    """Total FLOPs of ``fn()`` (forward and backward, as executed) by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def profile_table(fn, device: str, rows: int = 15) -> tuple[str, list[dict]]:
    """torch.profiler over one call: the table of top ops by self CPU time, and the same as records."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    events = prof.key_averages()
    table = events.table(sort_by="self_cpu_time_total", row_limit=rows)
    total = sum(e.self_cpu_time_total for e in events) or 1
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]
    records = [{"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1000, 2),
                "self_cpu_pct": round(100 * e.self_cpu_time_total / total, 1), "calls": e.count} for e in top]
    return table, records


# ----------------------------------------------------------------------------- models shared by benchmarks
def bert_base_dir(root: Path | None = None) -> Path:
    """A local BERT-base (768 wide, 12 layers, 12 heads) config with the packaged MiniLM's WordPiece
    tokenizer (the same uncased 30,522-token vocabulary): for random-init paper-size text encoders."""
    from vidlang.text.pretrained import default_model_dir

    src = default_model_dir()
    root = Path(root or REPO / "runs" / "bench-bert-base")
    root.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
               _name_or_path="bert-base-uncased (random init, for benchmarks)")
    (root / "config.json").write_text(json.dumps(cfg, indent=1))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (root / name).write_bytes((src / name).read_bytes())
    return root


def write_json(path: Path, payload: dict) -> None:
    from vidlang.report import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
    path.chmod(0o644)


@contextmanager
def quiet_hf():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)
