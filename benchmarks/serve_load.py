"""Load test of ``vidlang serve``: N concurrent clients on loopback, bounded in time and in requests, mixed.

    .venv/bin/python benchmarks/serve_load.py                      # tiny world (built here), 50 clients, 20 s
    .venv/bin/python benchmarks/serve_load.py --index IDX --captioner MVGPT [--media-root DIR] --uploads 0

The server runs as its own process (``vidlang serve``), the clients are asyncio tasks with httpx in this
one; each client loops search / caption-an-indexed-clip / caption-an-upload (weights --mix) until the
time is up or --max-requests have been sent in all. Any non-2xx answer or transport error counts as an
error, and the script exits 1 if there is one. Latency percentiles (p50/p90/p95/p99/max) per kind and
overall, requests/s and os.getloadavg() before and after go to benchmarks/results/serve_load.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "serve_load.json"
QUERIES = ["a red ball falling", "a green square sliding to the left", "a star spinning", "a small blue ring",
           "an arrow moving up", "a large purple triangle fading in", "a yellow bar", "something rotating",
           "the white disc is shrinking", "an orange block goes right"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vidlang.cli", "serve", str(args.index), "--port", str(port)]
    for flag, value in (("--captioner", args.captioner), ("--media-root", args.media_root),
                        ("--checkpoint", args.checkpoint)):
        if value:
            cmd += [flag, str(value)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


async def wait_ready(client, url: str, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            r = await client.get(url + "/health")
            if r.status_code == 200:
                return r.json()
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("the server did not answer /health in time")


async def client_loop(cid: int, client, url: str, deadline: float, kinds: list[str], weights: list[float],
                      video_ids: list[str], uploads: list[bytes], spans: bool, records: list, errors: list,
                      budget: list[int]) -> None:
    rng = random.Random(cid)
    while time.monotonic() < deadline and budget[0] > 0:
        budget[0] -= 1
        kind = rng.choices(kinds, weights)[0]
        t0 = time.perf_counter()
        try:
            if kind == "search":
                r = await client.get(url + "/api/search", params={"q": rng.choice(QUERIES), "k": 10})
            elif kind == "caption_clip":
                body = {"video_id": rng.choice(video_ids)}
                if spans and rng.random() < 0.5:  # a 1 s span (needs the store's fps)
                    body.update(start=0.0, end=1.0)
                r = await client.post(url + "/api/caption/clip", json=body)
            else:
                r = await client.post(url + "/api/caption/upload", files={"file": ("clip.mp4", rng.choice(uploads))})
            ok = 200 <= r.status_code < 300
            if not ok:
                errors.append(f"{kind}: HTTP {r.status_code} {r.text[:200]}")
        except Exception as e:  # noqa: BLE001 - transport errors are errors of the run
            ok = False
            errors.append(f"{kind}: {type(e).__name__}: {e}")
        records.append((kind, time.perf_counter() - t0, ok))


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MB (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return None
    return round(kb / 1024, 1)


def summarise(records: list, seconds: float) -> dict:
    def stats(lat: list[float]) -> dict:
        a = np.array(lat) * 1000
        return {"requests": len(a), "p50_ms": round(float(np.percentile(a, 50)), 1),
                "p90_ms": round(float(np.percentile(a, 90)), 1), "p95_ms": round(float(np.percentile(a, 95)), 1),
                "p99_ms": round(float(np.percentile(a, 99)), 1),
                "max_ms": round(float(a.max()), 1), "requests_per_s": round(len(a) / seconds, 2)} if len(a) else {}

    out = {"all": stats([lat for _, lat, _ in records])}
    for kind in sorted({k for k, _, _ in records}):
        out[kind] = stats([lat for k, lat, _ in records if k == kind])
    return out


async def run_load(args, url: str, proc: subprocess.Popen, video_ids: list[str], uploads: list[bytes]) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        health = await wait_ready(client, url, proc)
        kinds, weights = ["search", "caption_clip", "caption_upload"], [float(w) for w in args.mix.split(",")]
        if not uploads or not health.get("uploads"):
            weights[2] = 0.0
        if not health.get("captioner"):
            weights[1] = weights[2] = 0.0
        for q in QUERIES[:2]:  # warm-up (spaCy, first strips of code paths), not timed
            await client.get(url + "/api/search", params={"q": q, "k": 10})
        records, errors = [], []
        load_before = [round(x, 2) for x in os.getloadavg()]
        rss_before = rss_mb(proc.pid)
        start = time.monotonic()
        deadline = start + args.seconds
        budget = [args.max_requests]
        await asyncio.gather(*(client_loop(i, client, url, deadline, kinds, weights, video_ids, uploads,
                                           bool(health.get("fps")), records, errors, budget)
                               for i in range(args.clients)))
        seconds = time.monotonic() - start
        return {"health": health, "records": records, "errors": errors, "seconds": seconds,
                "mix": dict(zip(kinds, weights)), "loadavg_before": load_before,
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "server_rss_mb": [rss_before, rss_mb(proc.pid)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--index", help="an index folder (default: build the tests' tiny serve world)")
    p.add_argument("--checkpoint")
    p.add_argument("--captioner")
    p.add_argument("--media-root")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=20.0, help="stop sending after this many seconds")
    p.add_argument("--max-requests", type=int, default=5000, help="stop sending after this many requests in all")
    p.add_argument("--mix", default="6,3,1", help="weights of search,caption_clip,caption_upload")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]
    tmp = tempfile.TemporaryDirectory(prefix="vidlang-serve-load-")
    world = None
    t0 = time.time()
    if args.index is None:
        import torch

        from helpers import build_serve_world

        torch.set_num_threads(1)
        os.environ.setdefault("VIDLANG_CACHE", str(Path(tmp.name) / "cache"))
        world = build_serve_world(Path(tmp.name) / "world")
        args.index, args.captioner, args.media_root = world["index"], world["mvgpt"], world["media"]
    build_s = time.time() - t0
    video_ids = (Path(args.index) / "video_ids.txt").read_text().split()
    clips = Path(args.media_root) / "clips" if args.media_root else None  # the tiny world's layout
    uploads = [p.read_bytes() for p in sorted(clips.glob("*.mp4"))[:4]] if clips and clips.is_dir() else []
    port = free_port()
    with open(Path(tmp.name) / "server.log", "w") as log:
        proc = start_server(args, port, log)
        try:
            run = asyncio.run(run_load(args, f"http://127.0.0.1:{port}", proc, video_ids, uploads))
        finally:
            proc.terminate()
            proc.wait(30)
    result = {
        "benchmark": "serve_load", "clients": args.clients, "seconds": round(run["seconds"], 2),
        "limits": {"seconds": args.seconds, "max_requests": args.max_requests},
        "command": "python benchmarks/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mix_weights": run["mix"], "index": str(args.index) if world is None else "tiny serve world (tests/helpers.py)",
        "clips": run["health"]["clips"], "latency": summarise(run["records"], run["seconds"]),
        "errors": len(run["errors"]), "error_examples": run["errors"][:5],
        "loadavg_before": run["loadavg_before"], "loadavg_after": run["loadavg_after"],
        "server_rss_mb_before_after": run["server_rss_mb"],
        "cpu_count": os.cpu_count(), "world_build_s": round(build_s, 1) if world else None,
        "server": "vidlang serve (uvicorn, 1 process) on 127.0.0.1; clients: httpx.AsyncClient in another process",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        from vidlang.report import git_commit, git_dirty

        result.update(git_commit=git_commit(), git_dirty=git_dirty())
    except Exception:  # noqa: BLE001 - provenance is best effort
        pass
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    lat = result["latency"]
    for kind, s in lat.items():
        print(f"{kind:15s} {s['requests']:6d} req  {s['requests_per_s']:7.2f}/s  p50 {s['p50_ms']:7.1f} ms  "
              f"p95 {s['p95_ms']:7.1f} ms  p99 {s['p99_ms']:7.1f} ms  max {s['max_ms']:7.1f} ms")
    print(f"errors {result['errors']}; load {result['loadavg_before']} -> {result['loadavg_after']}; -> {args.out}")
    tmp.cleanup()
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
