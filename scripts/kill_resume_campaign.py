"""Kill -9 campaign: train the tiny TACo of tests/ (frozen text encoder), kill it at random moments,
resume, and compare every tensor of the final weights with an uninterrupted run, bit for bit.

    nice -n 10 python scripts/kill_resume_campaign.py --trials 20 --out /tmp/campaign

Each trial kills 1-3 times at a uniform random moment of the run, then lets it finish. A trial counts
as a real resume when the finishing process resumed from a checkpoint. Writes campaign.json.
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
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import make_data, tiny_overrides, write_recipe  # noqa: E402

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
    ref = out / "reference"
    subprocess.run(command(recipe, ref, data), env=env, check=True, capture_output=True)
    duration = time.perf_counter() - tic
    reference = final_weights(ref)
    print(f"reference run: {duration:.1f} s, {len(reference)} tensors", flush=True)

    trials = []
    for t in range(args.trials):
        run = out / f"trial-{t:02d}"
        kills = []
        for _ in range(rng.randint(1, 3)):
            moment = rng.uniform(0.3, 1.0) * duration
            proc = subprocess.Popen(command(recipe, run, data), env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                proc.wait(timeout=moment)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            latest = (run / "latest").read_text().strip() if (run / "latest").is_file() else None
            kills.append({"after_s": round(moment, 2), "killed": proc.returncode == -signal.SIGKILL, "latest": latest})
        final = subprocess.run(command(recipe, run, data), env=env, capture_output=True, text=True)
        if final.returncode != 0:
            trials.append({"trial": t, "kills": kills, "error": final.stderr[-2000:]})
            print(f"trial {t}: FAILED\n{final.stderr[-2000:]}", flush=True)
            continue
        weights = final_weights(run)
        differ = [k for k in reference if not torch.equal(reference[k], weights[k])]
        max_diff = max(((reference[k] - weights[k]).abs().max().item() for k in differ), default=0.0)
        resumed = "resuming from" in final.stdout
        trials.append({"trial": t, "kills": kills, "resumed": resumed, "tensors_differ": len(differ),
                       "max_abs_diff": max_diff, "identical": not differ})
        print(f"trial {t}: kills {[k['latest'] for k in kills]} resumed={resumed} "
              f"differ={len(differ)}/{len(reference)} max|diff|={max_diff:.3g}", flush=True)
        shutil.rmtree(run, ignore_errors=True)

    real = [t for t in trials if t.get("resumed")]
    summary = {"trials": len(trials), "real_resumes": len(real),
               "identical": sum(t.get("identical", False) for t in trials),
               "identical_real_resumes": sum(t["identical"] for t in real),
               "failed": sum("error" in t for t in trials), "tensors": len(reference),
               "reference_seconds": duration, "config": EXTRA, "results": trials}
    (out / "campaign.json").write_text(json.dumps(summary, indent=2))
    print(f"{summary['identical']}/{len(trials)} bit-identical ({summary['identical_real_resumes']}/"
          f"{len(real)} real resumes); {out / 'campaign.json'}")


if __name__ == "__main__":
    main()
