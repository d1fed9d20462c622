"""Downstream tasks end to end on the procedural task world, 3 seeds, with their baselines.

    nice -n 10 python scripts/downstream_world.py --out runs/downstream [--videos 120] [--seeds 0 1 2]

Writes the world (vidlang.worlds.steps) and its step clips, trains per seed a TACo and an MV-GPT on the
train videos' step clips (configs/world/*.yaml), then per seed: zero-shot CrossTask recall of the TACo
checkpoint (frame tokens or windows: chosen on the carved validation videos, mean over seeds), the
supervised step head (configs/step_localization/world.yaml), segmentation on raw features and on frozen
TACo tokens (configs/segmentation/world.yaml), VideoQA on the MV-GPT encoder (configs/videoqa/world.yaml).
Validation = carve:0.2 of the world's train videos (chooses); test = the world's "validate" videos (reported).
Each seed writes OUT/seed-S.json; seeds can run as separate processes after the world is written
(``--world-only``); ``--table`` reads the seed files, prints a markdown table and writes
OUT/downstream_results.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def mean_std(xs):
    return f"{np.mean(xs):.1f} ± {np.std(xs):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/downstream")
    ap.add_argument("--videos", type=int, default=80)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--taco-steps", type=int, default=100)
    ap.add_argument("--mvgpt-steps", type=int, default=60)
    ap.add_argument("--head-steps", type=int, default=80)
    ap.add_argument("--qa-steps", type=int, default=80)
    ap.add_argument("--world-only", action="store_true", help="write the world and its clips, then stop")
    ap.add_argument("--table", action="store_true", help="only combine OUT/seed-*.json into the table")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from vidlang.config import load_config
    from vidlang.data.features import open_store
    from vidlang.data.sources import carve
    from vidlang.data.step_world import read_step_world, write_step_clips
    from vidlang.report import provenance
    from vidlang.tasks.step_localization import baselines, zero_shot_recall
    from vidlang.train import train
    from vidlang.worlds.steps import StepWorldConfig, write_step_world

    started, prov = time.time(), provenance()
    out = Path(args.out)
    world_dir = write_step_world(out / "world", StepWorldConfig(num_videos=args.videos, seed=0))
    world = read_step_world(world_dir)
    store = open_store(world_dir / "features")
    write_step_clips(world, world_dir / "clips.jsonl", store.fps)
    data = [f"data.features={world_dir / 'features'}"]
    test_ids = sorted(v for v, s in world.videos.items() if s.split == "validate")
    if args.world_only:
        return
    if args.table:
        return table(out, world, test_ids, started)

    def run(recipe, name, seed, steps, *extra):
        cfg = load_config(REPO / recipe, [*data, f"train.out_dir={out / f'{name}-s{seed}'}", f"train.seed={seed}",
                                          f"train.steps={steps}", f"train.eval_every={steps}",
                                          f"train.save_every={steps}", "train.threads=1", *extra])
        return train(cfg, progress=False)

    for seed in args.seeds:
        r = {"settings": vars(args)}
        ann = [f"data.annotations={world_dir / 'clips.jsonl'}"]
        run("configs/world/taco.yaml", "taco", seed, args.taco_steps, *ann)
        run("configs/world/mvgpt.yaml", "mvgpt", seed, args.mvgpt_steps, *ann, "train.eval_every=0")
        taco = out / f"taco-s{seed}"
        train_clips = [c for c in world.clips() if c.split == "train"]
        _, held = carve(train_clips, "carve:0.2", seed)  # the videos this seed's runs validate on
        val_ids = sorted(c.video_id for c in held)
        r["zero_shot_val"] = {m: zero_shot_recall(taco, world, store, val_ids, m)["recall"] for m in ("tokens", "window")}
        r["zero_shot_test"] = {m: zero_shot_recall(taco, world, store, test_ids, m)["recall"] for m in ("tokens", "window")}
        r["baselines_test"] = baselines(world, test_ids)
        ann = [f"data.annotations={world_dir / 'world.json'}"]
        for name, recipe, extra in (
                ("steps-head", "configs/step_localization/world.yaml", [f"probe.encoder_from={taco}"]),
                ("seg-raw", "configs/segmentation/world.yaml", []),
                ("seg-taco", "configs/segmentation/world.yaml", ["probe.encoder=taco", f"probe.encoder_from={taco}"]),
                ("qa", "configs/videoqa/world.yaml", [f"probe.encoder_from={out / f'mvgpt-s{seed}'}"])):
            steps = args.qa_steps if name == "qa" else args.head_steps
            summary = run(recipe, name, seed, steps, *ann, *extra)
            r[name] = {"val": summary["best"]["metrics"], "test": summary["test"]["metrics"]}
        r["seconds"], r["provenance"] = time.time() - started, prov
        (out / f"seed-{seed}.json").write_text(json.dumps(r, indent=2, default=float), encoding="utf-8")
        print(f"seed {seed} done at {time.time() - started:.0f} s", flush=True)


def table(out: Path, world, test_ids: list[str], started: float) -> None:
    files = sorted(out.glob("seed-*.json"))
    runs = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    seeds = [int(f.stem.split("-")[1]) for f in files]
    results: dict = {"videos": len(world.videos), "test_videos": len(test_ids), "seeds": seeds, "runs": runs}
    mode = max(("tokens", "window"), key=lambda m: np.mean([r["zero_shot_val"][m] for r in runs]))
    results["zero_shot_mode_chosen_on_validation"] = mode
    rows = [
        ("CrossTask recall, zero-shot TACo (" + mode + ")", [r["zero_shot_test"][mode] for r in runs]),
        ("CrossTask recall, linear head on frozen TACo", [r["steps-head"]["test"]["recall"] for r in runs]),
        ("CrossTask recall, steps evenly spread", [r["baselines_test"]["evenly_spread_recall"] for r in runs]),
        ("CrossTask recall, random frames", [r["baselines_test"]["random_recall"] for r in runs]),
        ("COIN frame acc, linear head on raw features", [r["seg-raw"]["test"]["frame_acc"] for r in runs]),
        ("COIN frame acc, linear head on frozen TACo", [r["seg-taco"]["test"]["frame_acc"] for r in runs]),
        ("COIN frame acc, majority class", [r["seg-raw"]["test"]["majority_frame_acc"] for r in runs]),
        ("VideoQA acc, MV-GPT encoder + classifier", [r["qa"]["test"]["accuracy"] for r in runs]),
        ("VideoQA acc, most frequent answer", [r["qa"]["test"]["prior_accuracy"] for r in runs]),
        ("VideoQA acc, most frequent answer of the type", [r["qa"]["test"]["type_prior_accuracy"] for r in runs]),
    ]
    results["table"] = {name: values for name, values in rows}
    (out / "downstream_results.json").write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")
    print(f"\nworld: {len(world.videos)} videos, test = its {len(test_ids)} 'validate' videos; "
          f"zero-shot mode chosen on validation: {mode}\n")
    print("| setting | test, mean ± std over seeds " + str(seeds) + " |\n|---|---|")
    for name, values in rows:
        print(f"| {name} | {mean_std(values)} |")


if __name__ == "__main__":
    main()
