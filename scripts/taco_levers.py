"""Single-lever probes of the TACo recipe on msrvtt-ae128-dev (docs/taco-levers.md).

    python scripts/taco_levers.py --name f50 data.max_frames=50 [--seeds 0]   # one probe: recipe + overrides
    python scripts/taco_levers.py --report                                    # rewrite the table

Trains on video0-699 (the recipe's split) and scores video700-799 (2,000 text queries, 100 videos).
Each run is scored with the scores its losses trained (s1 + 0.5·s2 + s3, leaving out untrained
parts), each part alone, and QB-Norm (dynamic inverted softmax) of that score with a bank of 1,000
training captions (t2v only; beta in units of the bank scores' std). With ``train.eval_every=N`` the
checkpoint with the best validation t2v R@1 is scored (early stopping on video700-799).
Results: runs/levers/<name>-seed<k>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vidlang import checkpoint as ckpt
from vidlang.config import load_config
from vidlang.evaluation.retrieval import _batches, retrieval_units
from vidlang.evaluation.metrics import retrieval_metrics
from vidlang.report import format_mean_std, mean_std, provenance, write_result_json
from vidlang.evaluation.scoring import encode_texts, encode_videos, querybank_normalise, score_matrix
from vidlang.tasks.taco import build_experiment
from vidlang.train import train

RECIPE = "configs/taco/msrvtt-ae128.yaml"
OUT = Path("runs/levers")
DOC = Path("docs/taco-levers.md")
BANK, BETAS = 1000, (1.0, 2.0, 4.0)
CODE = provenance()


def components(model, val_set, bank_set, bank_rows, parts, device="cpu"):
    """{part: (val texts x videos), part+'_bank': (bank texts x videos)} for the trained parts, in eval
    mode (train() leaves the model in train mode: the tuned text layers' dropout would be on)."""
    model.eval()
    reps, text_to_video = retrieval_units(val_set)
    videos = encode_videos(model, _batches(val_set, reps, 256, device, ("video", "video_mask")))
    fields = ("input_ids", "attention_mask", "token_weights")
    texts = encode_texts(model, _batches(val_set, list(range(len(val_set))), 256, device, fields))
    bank = encode_texts(model, _batches(bank_set, bank_rows, 256, device, fields))
    out = {}
    for part in parts:
        out[part] = score_matrix(model, videos, texts, scoring=part, batch_pairs=4096)
        out[part + "_bank"] = score_matrix(model, videos, bank, scoring=part, batch_pairs=4096)
    return out, text_to_video


def score_all(sims: dict, parts: list[str], text_to_video) -> dict[str, dict]:
    weight = {"s1": 1.0, "s2": 0.5, "s3": 1.0}
    combined = sum(weight[p] * sims[p] for p in parts)
    bank = sum(weight[p] * sims[p + "_bank"] for p in parts)
    results = {"trained": retrieval_metrics(combined, text_to_video)}
    if len(parts) > 1:
        for p in parts:
            results[p] = retrieval_metrics(sims[p], text_to_video)
    std = float(bank.std())
    for beta in BETAS:
        normed = querybank_normalise(combined, bank, beta / std, dynamic=True)
        m = retrieval_metrics(normed, text_to_video)
        results[f"qbnorm{beta:g}"] = {k: v for k, v in m.items() if k.startswith("t2v")}
    return results


def run_one(name: str, seed: int, data: str, overrides: list[str]) -> None:
    out = OUT / f"{name}-seed{seed}"
    cfg = load_config(RECIPE, [f"data.root={data}", f"train.seed={seed}", f"train.out_dir={out}", "train.eval_every=0",
                               "train.threads=1", *overrides])
    tic = time.perf_counter()
    exp = build_experiment(cfg)
    summary = train(cfg, exp, progress=True)
    train_s = time.perf_counter() - tic
    if summary["best"]["step"] is not None:  # early stopping: score the best validation checkpoint
        ckpt.load_weights(exp.model, ckpt.find_checkpoint(out, "best"))
    parts = ["s1"] + (["s2"] if cfg.taco.token_weight else []) + (["s3"] if cfg.taco.fusion_weight else [])
    rng = np.random.default_rng(0)  # the same bank for every run
    bank_rows = sorted(rng.choice(len(exp.train_set), BANK, replace=False).tolist())
    with torch.no_grad():
        sims, text_to_video = components(exp.model, exp.val_set, exp.train_set, bank_rows, parts)
    results = score_all(sims, parts, text_to_video)
    wall = time.perf_counter() - tic
    write_result_json(OUT / f"{name}-seed{seed}.json", results["trained"], split="msrvtt-ae128-dev video700-799",
                      scoring="+".join(parts), protocol="all-captions", config=cfg.to_dict(),
                      extra={"name": name, "seed": seed, "overrides": overrides, "train_seconds": train_s,
                             "wall_seconds": wall, "best_step": summary["best"]["step"], "scorings": results,
                             "qbnorm": {"bank": f"{BANK} training captions (rng 0)", "betas_in_bank_std": BETAS,
                                        "mode": "dynamic inverted softmax, top-1"}},
                      provenance=CODE)
    m = results["trained"]
    print(f"{name} seed {seed}: t2v R@1 {m['t2v_R@1']:.1f} R@5 {m['t2v_R@5']:.1f} v2t R@1 {m['v2t_R@1']:.1f} "
          f"qb " + " ".join(f"{results[f'qbnorm{b:g}']['t2v_R@1']:.1f}" for b in BETAS) + f" ({wall:.0f}s)", flush=True)


def report() -> str:
    groups: dict[str, list[dict]] = {}
    for file in sorted(OUT.glob("*-seed*.json")):
        d = json.loads(file.read_text())
        groups.setdefault(d["extra"]["name"], []).append(d)
    keys = ["t2v_R@1", "t2v_R@5", "t2v_R@10", "v2t_R@1"]
    lines = ["| probe | overrides | seeds | scores | " + " | ".join(keys) + " | QB-Norm t2v R@1 (β=" +
             "/".join(f"{b:g}" for b in BETAS) + ") | best step | train s | wall s |", "|---" * (len(keys) + 8) + "|"]
    for name, runs in groups.items():
        stats = mean_std([r["metrics"] for r in runs])
        qb = "/".join(format_mean_std(*mean_std([r["extra"]["scorings"][f"qbnorm{b:g}"] for r in runs])["t2v_R@1"])
                      for b in BETAS)
        best = ",".join(str(r["extra"]["best_step"]) for r in runs if r["extra"]["best_step"]) or "-"
        lines.append(f"| {name} | `{' '.join(runs[0]['extra']['overrides']) or '(recipe)'}` | "
                     f"{','.join(str(r['seed']) if 'seed' in r else str(r['extra']['seed']) for r in runs)} | "
                     f"{runs[0]['scoring']} | " + " | ".join(format_mean_std(*stats[k]) for k in keys) +
                     f" | {qb} | {best} | {np.mean([r['extra']['train_seconds'] for r in runs]):.0f} | "
                     f"{np.mean([r['extra']['wall_seconds'] for r in runs]):.0f} |")
    table = "\n".join(lines)
    if DOC.exists():
        text = DOC.read_text()
        start, end = "<!-- taco-levers:start -->", "<!-- taco-levers:end -->"
        if start in text:
            DOC.write_text(text[: text.index(start)] + start + "\n" + table + "\n" + end + text[text.index(end) + len(end):])
    return table


def pooled(name: str, seeds: list[int], members: int, data: str) -> None:
    """train.members as `vidlang evaluate` scores it (evaluate_folder: eval mode, the checkpoint's QB-Norm bank):
    for each seed s, NAME-seed{s} alone and pooled with NAME-seed{checkpoint.member_seed(s, m)}, m = 2..members
    (the runs a train.members run would have trained). Rows go to runs/levers/pooled.jsonl."""
    from vidlang.api import load_model
    from vidlang.evaluation.retrieval import evaluate_folder

    ids = (Path(data) / "video_ids.txt").read_text().split()
    split = OUT / "ids-700-800.txt"
    split.write_text("".join(v + "\n" for v in ids[700:800]))
    for seed in seeds:
        loaded = load_model(OUT / f"{name}-seed{seed}")
        alone, _ = evaluate_folder(loaded, data, split=str(split))
        loaded.members = [load_model(OUT / f"{name}-seed{ckpt.member_seed(seed, m)}") for m in range(2, members + 1)]
        pool, info = evaluate_folder(loaded, data, split=str(split))
        row = {"name": name, "seed": seed, "members": [str(m.checkpoint) for m in loaded.members], "alone": alone,
               "pooled": pool, "scoring": info["scoring"], "provenance": CODE}
        with (OUT / "pooled.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{name} seed {seed}: t2v R@1 alone {alone['t2v_R@1']:.2f}, {members} pooled {pool['t2v_R@1']:.2f} "
              f"(v2t {alone['v2t_R@1']:.2f} -> {pool['v2t_R@1']:.2f}; {info['scoring']})", flush=True)


def paired(a: str, b: str, key: str = "t2v_R@1") -> str:
    """Per-seed difference b - a of ``key`` over the seeds both probes ran (a paired comparison)."""
    runs = {}
    for name in (a, b):
        for file in OUT.glob(f"{name}-seed*.json"):
            d = json.loads(file.read_text())
            if d["extra"]["name"] == name:
                runs.setdefault(name, {})[d["extra"]["seed"]] = d["metrics"][key]
    seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
    if not seeds:
        return f"{b} - {a}: no common seeds"
    diff = np.array([runs[b][s] - runs[a][s] for s in seeds])
    return (f"{b} - {a} ({key}, seeds {','.join(map(str, seeds))}): {diff.mean():+.2f} ± {diff.std(ddof=1) if len(diff) > 1 else 0:.2f}"
            f" (per seed {' '.join(f'{d:+.1f}' for d in diff)}; {a} {np.mean([runs[a][s] for s in seeds]):.2f},"
            f" {b} {np.mean([runs[b][s] for s in seeds]):.2f})")


def pop_line(queue: Path) -> str | None:
    import fcntl

    with open(queue, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
        if not lines:
            return None
        f.seek(0)
        f.truncate()
        f.write("".join(ln + "\n" for ln in lines[1:]))
        return lines[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/msrvtt-ae128-dev")
    ap.add_argument("--name", help="probe name (result file prefix)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--paired", nargs=2, metavar=("A", "B"), help="per-seed t2v R@1 difference B - A")
    ap.add_argument("--queue", type=Path, help="run 'NAME overrides...' lines popped from this file until it is empty")
    ap.add_argument("--pooled", type=int, metavar="K", help="score --name's --seeds alone and with K-1 members")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    args = ap.parse_args()
    if args.paired:
        print(paired(*args.paired))
        return
    if args.pooled:
        pooled(args.name, args.seeds, args.pooled, args.data)
        return
    if args.queue:  # one process for many probes: the text encoder's cache is shared in memory
        while (line := pop_line(args.queue)) is not None:
            name, *overrides = line.split()
            name, _, seed = name.partition("@")  # NAME@SEED: that seed (default: the first of --seeds)
            try:
                run_one(name, int(seed) if seed else args.seeds[0], args.data, overrides)
            except Exception as exc:  # noqa: BLE001 - a failed probe is logged, the queue goes on
                print(f"{name} failed: {exc!r}", flush=True)
        return
    if not args.report:
        if not args.name:
            ap.error("--name is required to run a probe")
        for seed in args.seeds:
            run_one(args.name, seed, args.data, args.overrides)
    print(report())


if __name__ == "__main__":
    sys.exit(main())
