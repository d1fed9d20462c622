"""TACo ablation on msrvtt-ae128-dev (methods.md Tables 3 and 4), 3 seeds each, plus TF-IDF.

    python scripts/taco_ablation.py --data ../shared/data/msrvtt-ae128-dev [--seeds 0 1 2] [--only NAME]
    python scripts/taco_ablation.py --report     # rewrite docs/results.md from runs/ablation/*.json

Each run trains on video0-699 and is scored on video700-799 (2,000 text queries, 100 videos) with the
scores its losses trained, on all pairs (exact). Results land in runs/ablation/<name>-seed<k>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from vidlang.config import load_config
from vidlang.evaluation.retrieval import similarity
from vidlang.evaluation.metrics import retrieval_metrics
from vidlang.report import format_mean_std, mean_std, provenance, write_result_json
from vidlang.tasks.taco import build_experiment
from vidlang.train import train

RECIPE = "configs/taco/msrvtt-ae128.yaml"
OUT = Path("runs/ablation")
# name -> (overrides, scoring)
RUNS = {
    "L1 only": (["taco.token_weight=0", "taco.fusion_weight=0"], "s1"),
    "L3 only (random)": (["taco.sentence_weight=0", "taco.token_weight=0", "taco.negatives=random"], "s3"),
    "L1+L3 random": (["taco.token_weight=0", "taco.negatives=random"], "s1+s3"),
    "L1+L3 cascade (tokens: none)": (["taco.token_weight=0"], "s1+s3"),
    "L1+L2+L3 cascade, noun": (["taco.pos_tags=[NOUN]"], "exact"),
    "L1+L2+L3 cascade, verb": (["taco.pos_tags=[VERB]"], "exact"),
    "L1+L2+L3 cascade, noun+verb": (["taco.pos_tags=[NOUN,VERB]"], "exact"),
}
CODE = provenance()  # the code this process loaded: the commit when the script started, not when a result is written
KEYS = ["t2v_R@1", "t2v_R@5", "t2v_R@10", "t2v_MedR", "v2t_R@1", "v2t_R@5", "v2t_R@10", "v2t_MedR"]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def run_one(name: str, seed: int, data: str, extra: list[str]) -> None:
    overrides, scoring = RUNS[name]
    out = OUT / f"{slug(name)}-seed{seed}"
    scoring = next((o.split("=", 1)[1] for o in extra if o.startswith("eval.scoring=")), scoring)
    cfg = load_config(RECIPE, [f"data.root={data}", f"train.seed={seed}", f"train.out_dir={out}",
                               "train.eval_every=0", f"eval.scoring={scoring}", *overrides, *extra])
    tic = time.perf_counter()
    exp = build_experiment(cfg)
    summary = train(cfg, exp, progress=False)
    train_s = time.perf_counter() - tic
    sim, text_to_video = similarity(exp.model, exp.val_set, cfg.eval)
    metrics = retrieval_metrics(sim, text_to_video)
    wall = time.perf_counter() - tic
    write_result_json(OUT / f"{slug(name)}-seed{seed}.json", metrics, split="msrvtt-ae128-dev video700-799",
                      scoring=scoring, protocol="all-captions", config=cfg.to_dict(),
                      extra={"name": name, "seed": seed, "overrides": extra, "train_seconds": train_s, "wall_seconds": wall,
                             "counts": summary["counts"]}, provenance=CODE)
    print(f"{name} seed {seed}: t2v R@1 {metrics['t2v_R@1']:.1f} v2t R@1 {metrics['v2t_R@1']:.1f} ({wall:.0f}s)", flush=True)


def tfidf(data: str) -> None:
    from vidlang.evaluation.baselines import tfidf_ridge_baseline

    root = Path(data)
    feats = np.load(root / "features.npy").mean(1)
    ids = (root / "video_ids.txt").read_text().split()
    ann = json.loads((root / "annotations.json").read_text())
    train_caps = [(c, i) for i, v in enumerate(ids[:700]) for c in ann[v]["captions"]]
    test_caps = [(c, i) for i, v in enumerate(ids[700:800]) for c in ann[v]["captions"]]
    tic = time.perf_counter()
    sim = tfidf_ridge_baseline([c for c, _ in train_caps], feats[[i for _, i in train_caps]],
                               [c for c, _ in test_caps], feats[700:800], alpha=10.0, min_df=2)
    metrics = retrieval_metrics(sim, [i for _, i in test_caps])
    write_result_json(OUT / "tfidf.json", metrics, split="msrvtt-ae128-dev video700-799", scoring="tfidf-ridge", protocol="all-captions",
                      extra={"name": "TF-IDF (1-2-grams) -> ridge, alpha 10, min_df 2",
                             "wall_seconds": time.perf_counter() - tic})


def report(path: Path | None = Path("docs/results.md")) -> None:
    groups: dict[str, list[dict]] = {}
    for file in sorted(OUT.glob("*.json")):
        d = json.loads(file.read_text())
        groups.setdefault(d["extra"]["name"], []).append(d)
    lines = ["| setting | seeds | " + " | ".join(KEYS) + " | wall s/run |", "|---" * (len(KEYS) + 3) + "|"]
    order = [n for n in RUNS if n in groups] + [n for n in groups if n not in RUNS]
    for name in order:
        runs = groups[name]
        stats = mean_std([r["metrics"] for r in runs])
        wall = np.mean([r["extra"]["wall_seconds"] for r in runs])
        cells = [format_mean_std(*stats[k]) for k in KEYS]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {wall:.0f} |")
    table = "\n".join(lines)
    print(table)
    if path is None:
        return
    text = path.read_text() if path.exists() else ""
    start, end = "<!-- taco-ablation:start -->", "<!-- taco-ablation:end -->"
    if start in text:
        text = text[: text.index(start)] + start + "\n" + table + "\n" + end + text[text.index(end) + len(end):]
    else:
        text += f"\n{start}\n{table}\n{end}\n"
    path.write_text(text)


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/msrvtt-ae128-dev")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", help="run names (default: all)")
    ap.add_argument("--report", action="store_true", help="only rewrite docs/results.md")
    ap.add_argument("--out", type=Path, default=OUT, help="result folder (default runs/ablation)")
    ap.add_argument("--no-tfidf", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = ap.parse_args()
    if args.only:  # argparse puts key=value overrides given after --only into it
        args.overrides += [o for o in args.only if "=" in o]
        args.only = [o for o in args.only if "=" not in o]
    OUT = args.out
    if not args.report:
        if not args.no_tfidf and (not args.only or "tfidf" in args.only):
            tfidf(args.data)
            args.only = [o for o in args.only or [] if o != "tfidf"] or (None if not args.only else [])
        for seed in args.seeds:
            for name in args.only or RUNS:
                run_one(name, seed, args.data, args.overrides)
    report(Path("docs/results.md") if OUT == Path("runs/ablation") else None)


if __name__ == "__main__":
    sys.exit(main())
