"""Kill -9 campaign: train the tiny TACo of tests/ (frozen text encoder), kill it at random moments,
resume, and compare every tensor of the final weights with an uninterrupted run, bit for bit.

    nice -n 10 python scripts/kill_resume_campaign.py --trials 20 --workers 3 --out /tmp/campaign

Each trial kills the run 1..--kills times, each at a random moment after a random checkpoint (a random
even step, then 0-1.5 s more: mid-step or mid-save), then lets it finish. A trial counts as a real resume
when the finishing process resumed from a checkpoint. Writes campaign.json after every trial.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import make_data, tiny_overrides, write_recipe

EXTRA = ["train.steps=16", "train.save_every=2", "train.eval_every=4", "model.text_trainable_layers=0"]


def command(recipe: Path, out: Path, data: Path) -> list[str]:
    return [sys.executable, "-m", "vidlang.cli", "train", str(recipe), *tiny_overrides(out, data, *EXTRA), "--quiet"]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / (run / "latest").read_text().strip() / "model.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--out", default="/tmp/kill-resume-campaign")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="trials run side by side")
    parser.add_argument("--kills", type=int, default=1, help="most kills a trial")
    parser.add_argument("--reference", help="an uninterrupted run of the same command made before (else run now)")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = random.Random(args.seed)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "VIDLANG_CACHE": str(out / "cache"),
           "TOKENIZERS_PARALLELISM": "false"}
    data = make_data(out / "data")
    recipe = write_recipe(out / "recipe.yaml", data)

    tic = time.perf_counter()
    ref = Path(args.reference) if args.reference else out / "reference"
    if not args.reference:
        subprocess.run(command(recipe, ref, data), env=env, check=True, capture_output=True)
    duration = time.perf_counter() - tic
    reference = final_weights(ref)
    print(f"reference run: {duration:.1f} s, {len(reference)} tensors", flush=True)

    steps = int(EXTRA[0].split("=")[1])
    plans = [sorted((rng.randrange(2, steps, 2), rng.uniform(0.0, 1.5)) for _ in range(rng.randint(1, args.kills)))
             for _ in range(args.trials)]
    trials: list[dict] = []

    def trial(t: int) -> dict:
        run = out / f"trial-{t:02d}"
        kills = []
        for step, delay in plans[t]:
            proc = subprocess.Popen(command(recipe, run, data), env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            while not (run / f"step-{step:06d}" / "meta.json").exists() and proc.poll() is None:
                time.sleep(0.005)
            time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            latest = (run / "latest").read_text().strip() if (run / "latest").is_file() else None
            kills.append({"after_step": step, "delay_s": round(delay, 3), "killed": proc.returncode == -signal.SIGKILL,
                          "latest": latest})
        final = subprocess.run(command(recipe, run, data), env=env, capture_output=True, text=True, check=False)
        if final.returncode != 0:
            print(f"trial {t}: FAILED\n{final.stderr[-2000:]}", flush=True)
            return record({"trial": t, "kills": kills, "error": final.stderr[-2000:]})
        weights = final_weights(run)
        differ = [k for k in reference if not torch.equal(reference[k], weights[k])]
        max_diff = max(((reference[k] - weights[k]).abs().max().item() for k in differ), default=0.0)
        resumed = "resuming from" in final.stdout
        print(f"trial {t}: kills {[k['latest'] for k in kills]} resumed={resumed} "
              f"differ={len(differ)}/{len(reference)} max|diff|={max_diff:.3g}", flush=True)
        shutil.rmtree(run, ignore_errors=True)
        return record({"trial": t, "kills": kills, "resumed": resumed, "tensors_differ": len(differ),
                       "max_abs_diff": max_diff, "identical": not differ})

    def record(result: dict) -> dict:
        trials.append(result)
        real = [x for x in trials if x.get("resumed")]
        summary.update({"trials": len(trials), "real_resumes": len(real),
                        "identical": sum(x.get("identical", False) for x in trials),
                        "identical_real_resumes": sum(x["identical"] for x in real),
                        "failed": sum("error" in x for x in trials), "results": sorted(trials, key=lambda x: x["trial"])})
        (out / "campaign.json").write_text(json.dumps(summary, indent=2))
        return result

    summary = {"tensors": len(reference), "config": EXTRA, "reference": str(ref), "plans": plans}
    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(trial, range(args.trials)))
    real = [t for t in trials if t.get("resumed")]
    print(f"{summary['identical']}/{len(trials)} bit-identical ({summary['identical_real_resumes']}/"
          f"{len(real)} real resumes); {out / 'campaign.json'}")


if __name__ == "__main__":
    main()
