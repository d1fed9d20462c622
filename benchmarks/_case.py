"""Run one benchmark case in this (fresh) process: ``_case.py MODULE FUNCTION KWARGS_JSON OUT_JSON``.

Called by run_all.py; sets threads and device, calls ``MODULE.FUNCTION(device=..., **kwargs)`` and
writes its result dict, with wall time, load average and the process's peak RSS, to OUT_JSON.
"""
from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def run_case(module: str, function: str, kwargs: dict, device: str, threads: int) -> dict:
    with common.quiet_hf():
        threads = common.setup_threads(threads)
        before, tic = common.load(), time.perf_counter()
        fn = getattr(importlib.import_module(module), function)
        result = fn(device=device, **kwargs)
        return {**result, "wall_s": round(time.perf_counter() - tic, 2), "threads": threads,
                "loadavg_before": before, "loadavg_after": common.load(),
                "process_maxrss_mb": round(common.maxrss_mb(), 1)}


def main() -> None:
    module, function, kwargs, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4])
    device, threads = kwargs.pop("_device"), kwargs.pop("_threads")
    common.write_json(out, run_case(module, function, kwargs, device, threads))


if __name__ == "__main__":
    main()
