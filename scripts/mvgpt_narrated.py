"""MV-GPT pretraining ablation (methods.md Tables 1 and 2) on the built-in narrated world, 3 seeds.

    python scripts/mvgpt_narrated.py [key=value ...] [--seeds 0 1 2] [--only NAME]
    python scripts/mvgpt_narrated.py --report        # the markdown table for docs/results.md

The world (vidlang.worlds.narrated, 300 scenes of 4 steps; the last 60 scenes are held out) is
written to runs/narrated/world. Each setting pretrains on the narration of ALL training scenes
(no captions: present utterance + frames -> future utterance, and back), then fine-tunes the same
captioner (frames + the step's narration -> caption) on the captions of only the first
``--labelled`` training scenes, the setting where pretraining on unlabelled video should help.
Captions of the held-out scenes are decoded with beam search from the LAST checkpoint and scored
against their 3 references (coco-caption, with METEOR). Results: runs/narrated/ablation/*.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from vidlang.api import load_model
from vidlang.evaluation.captioning import caption_folder, decoding_name
from vidlang.config import load_config
from vidlang.worlds.narrated import NarratedConfig, write_narrated_world
from vidlang.report import format_mean_std, mean_std, provenance, write_result_json
from vidlang.train import train

PRETRAIN, CAPTION = "configs/mvgpt/narrated-pretrain.yaml", "configs/mvgpt/narrated-caption.yaml"
OUT = Path("runs/narrated/ablation")
SETTINGS = {  # name -> pretraining objective (None: fine-tune from the initial weights)
    "no pretraining": None,
    "MLM-E": "mlm_e",
    "FG + MLM-D": "fg+mlm_d",
    "FG + BG + MLM-D (MV-GPT)": "pretrain",
}
CODE = provenance()  # the code this process loaded: the commit when the script started, not when a result is written
KEYS = ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]


def slug(name: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def world_paths(labelled: int) -> tuple[object, Path]:
    world = write_narrated_world("runs/narrated/world", NarratedConfig(num_scenes=300), val_fraction=0.2)
    subset = world.root / f"labelled_{labelled}_ids.txt"
    subset.write_text("".join(v + "\n" for v in world.train_ids[:labelled]))
    return world, subset


def run_one(name: str, seed: int, labelled: int, extra: list[str]) -> None:
    world, subset = world_paths(labelled)
    data = [f"data.features={world.features}", f"data.transcripts={world.transcripts}"]
    run = OUT / f"{slug(name)}-seed{seed}"
    tic = time.perf_counter()
    init = []
    if SETTINGS[name] is not None:
        pre = load_config(PRETRAIN, [*data, f"data.train_split={world.root / 'train_ids.txt'}",
                                     f"data.val_split={world.root / 'val_ids.txt'}", f"mvgpt.objective={SETTINGS[name]}",
                                     f"train.seed={seed}", f"train.out_dir={run / 'pretrain'}", *extra])
        train(pre, progress=False)
        init = [f"train.init_from={run / 'pretrain'}"]
    pre_s = time.perf_counter() - tic
    cap = load_config(CAPTION, [*data, f"data.annotations={world.captions}", f"data.train_split={subset}",
                                "data.val_split=none", f"train.seed={seed}", f"train.out_dir={run / 'caption'}",
                                "train.eval_every=0", *init, *extra])
    train(cap, progress=False)
    loaded = load_model(run / "caption", which="latest")
    metrics, preds, _, _, _ = caption_folder(loaded, world.root, annotations=str(world.captions), features=str(world.features),
                                          transcripts=str(world.transcripts), split=str(world.root / "val_ids.txt"))
    (run / "val_captions.jsonl").write_text("".join(json.dumps({"id": k, "caption": v}) + "\n" for k, v in preds.items()))
    write_result_json(OUT / f"{slug(name)}-seed{seed}.json", metrics, split="narrated world: 60 held-out scenes x 4 steps",
                      scoring=decoding_name(loaded.cfg), protocol="all-references", config=cap.to_dict(),
                      extra={"name": name, "seed": seed, "labelled_scenes": labelled, "overrides": extra,
                             "pretrain_seconds": pre_s, "wall_seconds": time.perf_counter() - tic},
                      provenance=CODE)
    print(f"{name} seed {seed}: " + "  ".join(f"{k} {metrics[k]:.3f}" for k in KEYS)
          + f"  ({time.perf_counter() - tic:.0f}s)", flush=True)


def report() -> str:
    lines = ["| pretraining | " + " | ".join(KEYS) + " | seeds | wall time per run |", "|---|" + "---|" * (len(KEYS) + 2)]
    for name in SETTINGS:
        runs = [json.loads(p.read_text()) for p in sorted(OUT.glob(f"{slug(name)}-seed*.json"))]
        if runs:
            stats = mean_std([{k: r["metrics"][k] for k in KEYS} for r in runs])
            wall = np.mean([r["extra"]["wall_seconds"] for r in runs])
            lines.append(f"| {name} | " + " | ".join(format_mean_std(*stats[k], digits=3) for k in KEYS)
                         + f" | {len(runs)} | {wall:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="key=value overrides for both stages, e.g. train.threads=1")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", choices=list(SETTINGS), help="settings to run (default: all)")
    ap.add_argument("--labelled", type=int, default=48, help="training scenes whose captions fine-tuning sees")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT, help=f"results folder (default {OUT})")
    args = ap.parse_args()
    globals()["OUT"] = args.out
    if args.report:
        print(report())
        return
    for seed in args.seeds:
        for name in args.only or SETTINGS:
            run_one(name, seed, args.labelled, args.overrides)


if __name__ == "__main__":
    main()
