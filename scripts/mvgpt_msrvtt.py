"""MV-GPT captioning on msrvtt-ae128-dev: 3 seeds, and the two baselines beside it.

    python scripts/mvgpt_msrvtt.py --data ../shared/data/msrvtt-ae128-dev [key=value ...] [--seeds 0 1 2]
    python scripts/mvgpt_msrvtt.py --data ../shared/data/msrvtt-ae128-dev --baselines
    python scripts/mvgpt_msrvtt.py --report          # the markdown table for docs/results.md

Train on video0-699 (configs/mvgpt/msrvtt-ae128.yaml), caption video700-799 with the LAST checkpoint
(no checkpoint is picked on these videos) by beam search, and score against all 20 references with
coco-caption BLEU-4 / METEOR / ROUGE-L / CIDEr. Baselines: the consensus caption of the nearest
training video (mean-pooled features), the consensus caption of the k nearest (--consensus-k, chosen
on video700-799 by scripts/mvgpt_levers.py consensus), and the one training caption that scores best
on the TRAINING references. Results land in runs/mvgpt-msrvtt/*.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from vidlang.api import load_model
from vidlang.evaluation.caption_metrics import CaptionScorer
from vidlang.evaluation.captioning import caption_folder, decoding_name, pool_stamp
from vidlang.config import load_config
from vidlang.report import format_mean_std, mean_std, provenance, write_result_json
from vidlang.train import train

RECIPE = "configs/mvgpt/msrvtt-ae128.yaml"
OUT = Path("runs/mvgpt-msrvtt")
SPLIT = "msrvtt-ae128-dev video700-799 (all 20 references)"
CODE = provenance()  # the code this process loaded: the commit when the script started, not when a result is written
KEYS = ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
CONSENSUS_K = 10  # best validation CIDEr (0.363) of k in 1 2 3 5 10 20 40 (docs/mvgpt-levers.md)


def ids_file(data: str, a: int, b: int) -> Path:
    ids = (Path(data) / "video_ids.txt").read_text().split()
    path = OUT / f"ids-{a}-{b}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(v + "\n" for v in ids[a:b]))
    return path


def run_seed(seed: int, data: str, extra: list[str]) -> None:
    out = OUT / f"seed{seed}"
    cfg = load_config(RECIPE, [f"data.root={data}", f"train.seed={seed}", f"train.out_dir={out}", *extra])
    tic = time.perf_counter()
    train(cfg, progress=False)
    train_s = time.perf_counter() - tic
    loaded = load_model(out, which="latest")
    metrics, preds, refs, _, _ = caption_folder(loaded, data, split=str(ids_file(data, 700, 800)),
                                                transcripts=loaded.cfg.data.transcripts or None)
    stamp = decoding_name(loaded.cfg) + pool_stamp(loaded)
    captions = OUT / f"mvgpt-seed{seed}.captions.jsonl"
    captions.write_text("".join(json.dumps({"id": k, "caption": v}) + "\n" for k, v in preds.items()))
    write_result_json(OUT / f"mvgpt-seed{seed}.json", metrics, split=SPLIT, scoring=stamp, protocol="all-references", config=cfg.to_dict(),
                      extra={"name": "MV-GPT (no pretraining, V only)", "seed": seed, "overrides": extra,
                             "checkpoint": str(loaded.checkpoint), "train_seconds": train_s,
                             "wall_seconds": time.perf_counter() - tic, "captions_file": str(captions)},
                      provenance=CODE)
    print(f"seed {seed}: " + "  ".join(f"{k} {metrics[k]:.3f}" for k in KEYS) + f"  ({train_s:.0f}s training)",
          flush=True)


def baselines(data: str, consensus_k: int) -> None:
    from vidlang.evaluation.baselines import best_constant_caption, consensus_captions, nearest_neighbour_captions

    root = Path(data)
    feats = np.load(root / "features.npy", mmap_mode="r")
    ids = (root / "video_ids.txt").read_text().split()
    ann = json.loads((root / "annotations.json").read_text())
    train_caps = [ann[v]["captions"] for v in ids[:700]]
    refs = {v: ann[v]["captions"] for v in ids[700:800]}
    nn = nearest_neighbour_captions(np.asarray(feats[:700]), train_caps, np.asarray(feats[700:800]))
    knn = consensus_captions(np.asarray(feats[:700]), train_caps, np.asarray(feats[700:800]), k=consensus_k)
    constant = best_constant_caption(train_caps, {v: c for v, c in zip(ids[:700], train_caps)})
    with CaptionScorer() as scorer:
        for tag, name, preds in (
                ("nn", "nearest neighbour", dict(zip(refs, nn))),
                ("consensus", f"consensus of the {consensus_k} nearest training videos (k chosen on video700-799)",
                 dict(zip(refs, knn))),
                ("constant", f"constant: {constant!r}", {v: constant for v in refs})):
            metrics = scorer.score(preds, refs).corpus
            write_result_json(OUT / f"baseline-{tag}.json", metrics, split=SPLIT, scoring="baseline", protocol="all-references",
                              extra={"name": name}, provenance=CODE)
            print(f"{name}: " + "  ".join(f"{k} {metrics[k]:.3f}" for k in KEYS))


def report() -> str:
    rows = []
    runs = [json.loads(p.read_text()) for p in sorted(OUT.glob("mvgpt-seed*.json"))]
    if runs:
        stats = mean_std([r["metrics"] for r in runs])
        secs = np.mean([r["extra"]["train_seconds"] for r in runs])
        rows.append(f"| MV-GPT, {runs[0]['scoring']} ({len(runs)} seeds) | "
                    + " | ".join(format_mean_std(*stats[k], digits=3) for k in KEYS) + f" | {secs:.0f} s |")
    for tag in ("nn", "consensus", "constant"):
        p = OUT / f"baseline-{tag}.json"
        if p.is_file():
            r = json.loads(p.read_text())
            rows.append(f"| {r['extra']['name']} | " + " | ".join(f"{r['metrics'][k]:.3f}" for k in KEYS) + " | - |")
    head = "| captioner | " + " | ".join(KEYS) + " | training time |\n|---|" + "---|" * (len(KEYS) + 1)
    return head + "\n" + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    ap.add_argument("--data", default="../shared/data/msrvtt-ae128-dev")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--baselines", action="store_true")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--consensus-k", type=int, default=CONSENSUS_K,
                    help=f"k of the consensus baseline (default {CONSENSUS_K}: chosen on video700-799)")
    ap.add_argument("--out", type=Path, default=OUT, help=f"results folder (default {OUT})")
    args = ap.parse_args()
    globals()["OUT"] = args.out
    if args.report:
        print(report())
    elif args.baselines:
        baselines(args.data, args.consensus_k)
    else:
        for seed in args.seeds:
            run_seed(seed, args.data, args.overrides)


if __name__ == "__main__":
    main()
