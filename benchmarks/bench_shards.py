"""Sharded clip store at pretraining scale (src/vidlang/data/shards.py, shard_stream.py).

    nice -n 10 env PYTHONPATH=src .venv/bin/python benchmarks/bench_shards.py [--quick] [--tmp DIR]

Generates stores of 10k, 100k and 1M whole-video clips (16 frames x 32 dims, float16, two ASR
utterances each) under a temporary folder (deleted at the end), and measures, each case in a fresh
process: write time; clips/s into a trivial training step with 0, 1 and 2 DataLoader workers and
the CPU seconds spent (main process + workers); peak RSS over a full epoch at each size; exact
resume after a kill -9 mid-epoch on the largest store; and memory-mapped .npy shards against
WebDataset tar shards (when ``webdataset`` imports) on the 100k store. Writes
benchmarks/results/shards.json (benchmarks/results/quick/shards.json with --quick).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TITLE = "Sharded clip store: write, stream, memory, resume"
FRAMES, DIM, BATCH, SHARD_SIZE = 16, 32, 256, 4096


# ----------------------------------------------------------------------------- data
def make_source(root: Path, n: int, seed: int = 0, chunk: int = 65536) -> Path:
    """A stacked float16 store of ``n`` videos (fps 1) and an ASR JSONL of two utterances per video."""
    root.mkdir(parents=True, exist_ok=True)
    feats = np.lib.format.open_memmap(root / "features.npy", mode="w+", dtype=np.float16, shape=(n, FRAMES, DIM))
    rng = np.random.default_rng(seed)
    for a in range(0, n, chunk):
        feats[a:a + chunk] = rng.standard_normal((min(chunk, n - a), FRAMES, DIM), dtype=np.float32)
    feats.flush()
    del feats
    with open(root / "video_ids.txt", "w") as ids, open(root / "asr.jsonl", "w") as asr:
        for i in range(n):
            ids.write(f"vid{i:07d}\n")
            asr.write(json.dumps({"video_id": f"vid{i:07d}", "start": 0.0, "end": 8.0,
                                  "text": f"first we take the bowl number {i % 977}"}) + "\n")
            asr.write(json.dumps({"video_id": f"vid{i:07d}", "start": 8.0, "end": 16.0,
                                  "text": "then we stir it slowly until it is smooth"}) + "\n")
    (root / "meta.json").write_text(json.dumps({"fps": 1.0}))
    return root


def disk_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20, 1)


def cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# ----------------------------------------------------------------------------- cases (fresh processes)
def write_case(device: str, source: str, out: str, shard_size: int = SHARD_SIZE, dtype: str = "float16") -> dict:
    from vidlang.data.features import open_store
    from vidlang.data.narration import read_transcripts
    from vidlang.data.shards import write_shards

    tic = time.perf_counter()
    asr = read_transcripts(Path(source) / "asr.jsonl")
    read_s = time.perf_counter() - tic
    store = open_store(source)
    tic, cpu = time.perf_counter(), time.process_time()
    shards = write_shards(store, out, transcripts=asr, shard_size=shard_size, dtype=dtype)
    write_s, write_cpu = time.perf_counter() - tic, time.process_time() - cpu
    return {"clips": len(shards), "shards": shards.num_shards, "transcripts_read_s": round(read_s, 2),
            "write_s": round(write_s, 2), "write_clips_per_s": round(len(shards) / write_s),
            "write_cpu_s": round(write_cpu, 2), "write_clips_per_cpu_s": round(len(shards) / write_cpu),
            "disk_mb": disk_mb(out), "source_disk_mb": disk_mb(source)}


def stream_case(device: str, store: str, workers: int = 0, max_s: float | None = None, epochs: float | None = None,
                warmup: int = 5) -> dict:
    """Batches of BATCH into a trivial training step (a linear layer on each clip's mean frame)."""
    import torch

    from vidlang.data.shard_stream import ShardStream

    stream = ShardStream(store, BATCH, seed=0, num_workers=workers)
    per_epoch = stream.dataset.num_batches(0)
    model = torch.nn.Linear(DIM, DIM)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    limit = int(per_epoch * epochs) if epochs else None

    def step() -> None:
        batch = next(stream)
        opt.zero_grad()
        model(batch.video.mean(1)).pow(2).mean().backward()
        opt.step()

    for _ in range(warmup):  # workers started, first shards mapped
        step()
    rss = [common.rss_mb()]
    cpu0, tic, done = cpu_s(), time.perf_counter(), 0
    while (limit is None or done < limit) and (max_s is None or time.perf_counter() - tic < max_s):
        step()
        done += 1
        if done % max(1, per_epoch // 20) == 0:
            rss.append(common.rss_mb())
    wall = time.perf_counter() - tic
    stream.close()  # joins the workers, so their CPU time is counted in RUSAGE_CHILDREN
    import gc

    gc.collect()
    time.sleep(0.5)
    cpu = cpu_s() - cpu0
    clips = done * BATCH
    return {"workers": workers, "clips": clips, "epoch_fraction": round(done / per_epoch, 3), "stream_s": round(wall, 2),
            "clips_per_s": round(clips / wall), "cpu_s": round(cpu, 2), "cores_busy": round(cpu / wall, 2),
            "clips_per_cpu_s": round(clips / cpu), "rss_mb_samples": [round(r, 1) for r in rss],
            "rss_mb_growth": round(rss[-1] - rss[0], 1)}


CHILD = """
import json, os, sys, time
from vidlang.data.shard_stream import ShardStream
from vidlang.io import atomic_write_text
store, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
stream = ShardStream(store, %d, seed=7, num_workers=workers)
with open(os.path.join(out, "log.jsonl"), "a") as log:
    while True:
        batch = next(stream)
        log.write(json.dumps(batch.clip_index.tolist()) + "\\n"); log.flush()
        atomic_write_text(os.path.join(out, "state.json"), json.dumps(stream.state()))
""" % BATCH


def resume_case(device: str, store: str, min_batches: int = 200, check: int = 20, workers: int = 1,
                max_wait_s: float = 150.0) -> dict:
    """Kill -9 a streaming process mid-epoch, resume from its last state, compare with an
    uninterrupted stream: the resumed batches must be the uninterrupted run's next ones."""
    from vidlang.data.shard_stream import ShardStream

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "child.py"
        script.write_text(CHILD)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(common.REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen([sys.executable, str(script), store, tmp, str(workers)], env=env, start_new_session=True)
        log, deadline = Path(tmp) / "log.jsonl", time.time() + max_wait_s  # kill at min_batches or max_wait_s
        while not log.is_file() or (log.read_text().count("\n") < min_batches and time.time() < deadline):
            if proc.poll() is not None:
                raise RuntimeError(f"the streaming process ended with exit code {proc.returncode}")
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        state = json.loads((Path(tmp) / "state.json").read_text())
        logged = [json.loads(x) for x in (Path(tmp) / "log.jsonl").read_text().splitlines() if x.endswith("]")]
    done = state["index"]
    tic = time.perf_counter()
    resumed = ShardStream(store, BATCH, seed=7, num_workers=workers)
    resumed.load_state(state)
    first = next(resumed).clip_index.tolist()
    first_batch_s = time.perf_counter() - tic
    after = [first] + [next(resumed).clip_index.tolist() for _ in range(check - 1)]
    resumed.close()
    reference = ShardStream(store, BATCH, seed=7, num_workers=workers)
    ref = [next(reference).clip_index.tolist() for _ in range(done + check)]
    reference.close()
    return {"state": state, "batches_logged_before_kill": len(logged),
            "resumed_at_clip_position": done * BATCH, "resume_to_first_batch_s": round(first_batch_s, 3),
            "log_matches_reference": logged[:done] == ref[:done], "resumed_equals_reference": after == ref[done:],
            "batches_compared": check}


def format_case(device: str, shards: str, tar_dir: str, shard_size: int = SHARD_SIZE, read: int = 10_000,
                tar_clips: int = 3 * SHARD_SIZE) -> dict:
    """mmap .npy shards vs WebDataset tar shards holding the same clips (the first ``tar_clips``):
    write, size, a sequential read of the first ``read`` clips (WebDataset with its own decoders,
    its tar iteration with np.load/json.loads by hand, and Python's tarfile), and the CPU time to
    reach the middle of a shard (what an exact resume needs). Rates are per CPU second."""
    import io

    from vidlang.data.shards import ShardedStore

    def rate(samples, check) -> dict:  # per wall second and per CPU second of this process
        tic, cpu, m = time.perf_counter(), time.process_time(), 0
        for s in samples:
            check(s)
            m += 1
            if m == read:
                break
        return {"clips": m, "per_s": round(m / (time.perf_counter() - tic)),
                "per_cpu_s": round(m / (time.process_time() - cpu))}

    out: dict = {}
    store = ShardedStore(shards)
    out["npy"] = {"clips": len(store), "disk_mb": disk_mb(shards),
                  "read_clips_per_s": rate(iter(store), lambda s: s["video"].shape == (FRAMES, DIM))}
    fresh = ShardedStore(shards)
    tic = time.process_time()
    fresh.read(1, shard_size // 2)
    out["npy"]["seek_mid_shard_cpu_s"] = round(time.process_time() - tic, 5)
    try:
        import webdataset as wds
    except ImportError:
        out["webdataset"] = "not installed: pip install webdataset to compare"
        return out
    Path(tar_dir).mkdir(parents=True, exist_ok=True)
    tic = time.process_time()
    with wds.ShardWriter(os.path.join(tar_dir, "shard-%05d.tar"), maxcount=shard_size, verbose=0) as sink:
        for rec in ShardedStore(shards):
            if rec["clip_index"] == tar_clips:
                break
            feats = rec.pop("video").astype(np.float16)
            sink.write({"__key__": f"{rec['clip_index']:09d}", "npy": feats, "json": rec})
    write_s = time.process_time() - tic
    urls = sorted(str(p) for p in Path(tar_dir).glob("*.tar"))
    decoded = rate(iter(wds.WebDataset(urls, shardshuffle=False).decode()), lambda s: s["npy"].shape == (FRAMES, DIM))

    def by_hand(s) -> None:
        np.load(io.BytesIO(s["npy"]), allow_pickle=False).astype(np.float32)
        json.loads(s["json"])

    raw = rate(iter(wds.WebDataset(urls, shardshuffle=False)), by_hand)

    def plain_tar():  # the tar format's own cost, without WebDataset's pipeline: Python's tarfile
        import tarfile

        for url in urls:
            with tarfile.open(url) as tar:
                members = iter(tar)
                for pair in zip(members, members):
                    yield {m.name.rsplit(".", 1)[1]: tar.extractfile(m).read() for m in pair}

    tarfile_rate = rate(plain_tar(), by_hand)
    tic = time.process_time()
    for k, _ in enumerate(wds.WebDataset(urls[1:2], shardshuffle=False)):
        if k == shard_size // 2:
            break
    seek_s = time.process_time() - tic
    out["webdataset"] = {"version": wds.__version__, "disk_mb": disk_mb(tar_dir), "write_cpu_s": round(write_s, 2),
                         "clips": min(tar_clips, len(store)), "write_clips_per_cpu_s": round(min(tar_clips, len(store)) / write_s), "read_clips_per_s_decode": decoded,
                         "read_clips_per_s_by_hand": raw,
                         "read_clips_per_s_python_tarfile": tarfile_rate, "seek_mid_shard_cpu_s": round(seek_s, 5)}
    out["npy"]["note"] = "the npy store's write time is write-<n> (from the source store, with ASR)"
    return out


TORCHRUN_WORKER = """
import json, sys, time
from vidlang import distributed
from vidlang.data.shard_stream import ShardStream
assert distributed.init_from_env("gloo")
store, out, batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
stream = ShardStream(store, %d, seed=0, num_workers=0)  # rank and world from torchrun
shards = stream.dataset.store
tic = time.perf_counter()
clips = [c for _ in range(batches) for c in next(stream).clip_index.tolist()]
wall = time.perf_counter() - tic
mine = sorted({shards.locate(c)[0] for c in clips})
plan = stream.dataset.plan(0)
report = {"rank": distributed.rank(), "clips": len(clips), "clips_per_s": round(len(clips) / wall),
          "shards_read": mine, "assigned_shards": sorted(plan.shards.tolist()), "clip_ids": clips,
          "batches_per_epoch": stream.dataset.num_batches(0)}
everyone = distributed.all_gather_object(report)
if distributed.is_main():
    open(out, "w").write(json.dumps(everyone))
""" % BATCH


def torchrun_case(device: str, store: str, batches: int = 200) -> dict:
    """Two gloo processes under torchrun stream the store: which shards each read, and whether
    their shards and clips are disjoint."""
    with tempfile.TemporaryDirectory() as tmp:
        script, out = Path(tmp) / "worker.py", Path(tmp) / "out.json"
        script.write_text(TORCHRUN_WORKER)
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(common.REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              str(script), store, str(out), str(batches)], env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError((run.stdout + run.stderr)[-3000:])
        ranks = json.loads(out.read_text())
    a, b = (set(r.pop("clip_ids")) for r in ranks)
    return {"processes": 2, "backend": "gloo", "batches_per_rank": batches, "ranks": ranks,
            "clips_disjoint": not (a & b), "shards_disjoint": not (set(ranks[0]["shards_read"]) & set(ranks[1]["shards_read"])),
            "each_read_only_its_assigned_shards": all(set(r["shards_read"]) <= set(r["assigned_shards"]) for r in ranks)}


# ----------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2k/20k clips, seconds per case")
    p.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where the stores are generated")
    p.add_argument("--out", type=Path)
    p.add_argument("--large-store", type=Path, help="only: on this existing sharded store, the memory case over "
                                                       "--memory-epochs of an epoch and the torchrun case, added to "
                                                       "the results file")
    p.add_argument("--memory-epochs", type=float, default=0.1)
    args = p.parse_args(argv)
    import run_all

    if args.large_store:
        out = args.out or common.RESULTS / "shards.json"
        payload = json.loads(out.read_text())
        store, n = str(args.large_store), json.loads((args.large_store / "meta.json").read_text())["num_clips"]
        payload["cases"].update(run_all.run_cases(importlib.import_module("bench_shards"), [
            {"id": f"memory-{n}", "fn": "stream_case", "kwargs": {"store": store, "epochs": args.memory_epochs}},
            {"id": "torchrun-2-processes", "fn": "torchrun_case", "kwargs": {"store": store}}], "cpu", 1, False))
        payload.setdefault("later_runs", []).append({"env": common.environment("cpu", 1), "store": store,
                                                     "command": " ".join(sys.argv)})
        common.write_json(out, payload)
        return 0

    sizes = [2_000, 20_000] if args.quick else [10_000, 100_000, 1_000_000]
    shard_size = 512 if args.quick else SHARD_SIZE
    big, mid = sizes[-1], sizes[-2]
    out = args.out or (common.RESULTS / "quick" if args.quick else common.RESULTS) / "shards.json"
    env = common.environment("cpu", 1)
    work = Path(tempfile.mkdtemp(prefix="vidlang-shards-bench-", dir=args.tmp))
    tic = time.perf_counter()
    results: dict = {}
    try:
        cases = []
        for n in sizes:
            common.log(f"generating {n} clips in {work}")
            make_source(work / f"src-{n}", n)
            cases.append({"id": f"write-{n}", "fn": "write_case",
                          "kwargs": {"source": str(work / f"src-{n}"), "out": str(work / f"shards-{n}"),
                                     "shard_size": shard_size}})
        this = importlib.import_module("bench_shards")  # by name: _case.py imports it in each fresh process
        run = lambda cs: results.update(run_all.run_cases(this, cs, "cpu", 1, False))  # noqa: E731
        run(cases)
        for n in sizes[:-1]:
            shutil.rmtree(work / f"src-{n}")
        run([{"id": f"memory-{n}", "fn": "stream_case",  # the largest store: as many clips as the middle one's epoch
              "kwargs": {"store": str(work / f"shards-{n}"), "epochs": 1.0 if n < big else mid / big}} for n in sizes])
        run([{"id": f"throughput-{w}-workers", "fn": "stream_case",
              "kwargs": {"store": str(work / f"shards-{big}"), "workers": w, "max_s": 5 if args.quick else 30}}
             for w in (0, 1, 2)])
        run([{"id": "resume-after-kill", "fn": "resume_case",
              "kwargs": {"store": str(work / f"shards-{big}"), "min_batches": 20 if args.quick else 300}}])
        run([{"id": "format", "fn": "format_case", "kwargs": {
            "shards": str(work / f"shards-{mid}"), "tar_dir": str(work / "tar"), "shard_size": shard_size}}])
        run([{"id": "torchrun-2-processes", "fn": "torchrun_case",
              "kwargs": {"store": str(work / f"shards-{big}"), "batches": 20 if args.quick else 200}}])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    payload = {"benchmark": "shards", "title": TITLE, "quick": args.quick,
               "command": "nice -n 10 env PYTHONPATH=src .venv/bin/python benchmarks/bench_shards.py"
                          + (" --quick" if args.quick else ""),
               "settings": {"frames": FRAMES, "dim": DIM, "dtype": "float16", "batch": BATCH, "shard_size": shard_size,
                            "torch_threads": 1, "page_cache": "warm (stores written just before)"},
               "env": env, "loadavg_before": env["loadavg"], "loadavg_after": common.load(),
               "wall_s": round(time.perf_counter() - tic, 1), "cases": results}
    common.write_json(out, payload)
    common.log(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
