"""Single-seed lever probes for MV-GPT captioning on msrvtt-ae128-dev (docs/mvgpt-levers.md).

Train on video0-699, score on video700-799 (validation, all 20 references): BLEU-4 / METEOR / ROUGE-L /
CIDEr, plus distinct captions per 100 videos and the most frequent caption's share. Rows land in
runs/levers/rows.jsonl (one JSON object per probe); ``table`` prints them as markdown.

    # the consensus-of-k-nearest-videos baseline for several k (k is chosen on these videos)
    python scripts/mvgpt_levers.py consensus --ks 1 3 5 10 20 40
    # decoding settings on a trained run (no retraining), e.g. one from scripts/mvgpt_msrvtt.py --out runs/p-base
    python scripts/mvgpt_levers.py decode runs/p-base/seed0 --name base
    # a training probe already run by scripts/mvgpt_msrvtt.py --out runs/p-NAME --seeds 0 [overrides]
    python scripts/mvgpt_levers.py collect runs/p-NAME --name NAME
    # rerank the captions of the decode probes of NAME by agreement with the k nearest training videos
    python scripts/mvgpt_levers.py rerank --name base --ks 10
    # decode.rerank_prior on a trained rerank run (its train.members pooled): one decoding, several weights
    python scripts/mvgpt_levers.py prior runs/p-pool3/seed0 --priors 0 0.25 0.5 1 --name pool3
    python scripts/mvgpt_levers.py table
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from vidlang.evaluation.caption_metrics import CaptionScorer, caption_diversity

ROWS = Path("runs/levers/rows.jsonl")
KEYS = ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
# (label, settings): beam size, length penalty, no-repeat n-gram; the recipe's is beam 4, lp 1.0, none
DECODINGS = [
    ("greedy", {"method": "greedy"}),
    ("beam 2", {"method": "beam", "beam_size": 2}),
    ("beam 4 (recipe)", {"method": "beam", "beam_size": 4}),
    ("beam 8", {"method": "beam", "beam_size": 8}),
    ("beam 4, lp 0", {"method": "beam", "beam_size": 4, "length_penalty": 0.0}),
    ("beam 4, lp 0.5", {"method": "beam", "beam_size": 4, "length_penalty": 0.5}),
    ("beam 4, lp 2", {"method": "beam", "beam_size": 4, "length_penalty": 2.0}),
    ("beam 4, no-repeat 2", {"method": "beam", "beam_size": 4, "no_repeat_ngram": 2}),
    ("beam 4, no-repeat 3", {"method": "beam", "beam_size": 4, "no_repeat_ngram": 3}),
    ("beam 8, lp 2", {"method": "beam", "beam_size": 8, "length_penalty": 2.0}),
    ("beam 8, lp 2, no-repeat 2", {"method": "beam", "beam_size": 8, "length_penalty": 2.0, "no_repeat_ngram": 2}),
]


def add_row(row: dict) -> None:
    ROWS.parent.mkdir(parents=True, exist_ok=True)
    with ROWS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    m = row["metrics"]
    print(f"{row['lever']} | {row['setting']}: " + "  ".join(f"{k} {m[k]:.3f}" for k in KEYS)
          + f"  distinct {row['distinct_per_100']:.0f}/100  top {row['top_share']:.0%} {row['top_caption']!r}",
          flush=True)


def scored(preds: dict, refs: dict, scorer: CaptionScorer) -> dict:
    corpus = scorer.score(preds, refs).corpus
    return {"metrics": {k: corpus[k] for k in KEYS}, **caption_diversity(preds)}


def val_ids(data: Path, a: int = 700, b: int = 800) -> Path:
    ids = (data / "video_ids.txt").read_text().split()
    path = ROWS.parent / f"ids-{a}-{b}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(v + "\n" for v in ids[a:b]))
    return path


def consensus(data: Path, ks: list[int], command: str) -> None:
    from vidlang.evaluation.baselines import consensus_captions

    feats = np.load(data / "features.npy", mmap_mode="r")
    ids = (data / "video_ids.txt").read_text().split()
    ann = json.loads((data / "annotations.json").read_text())
    train_caps = [ann[v]["captions"] for v in ids[:700]]
    refs = {v: ann[v]["captions"] for v in ids[700:800]}
    with CaptionScorer() as scorer:
        for k in ks:
            tic = time.perf_counter()
            preds = dict(zip(refs, consensus_captions(np.asarray(feats[:700]), train_caps, np.asarray(feats[700:800]),
                                                      k=k)))
            add_row({"lever": "baseline: consensus of k nearest training videos", "setting": f"k={k}", "k": k,
                     "wall_s": time.perf_counter() - tic, "command": command, **scored(preds, refs, scorer)})


def decode(run: Path, data: Path, name: str, labels: list[str] | None, command: str) -> None:
    from vidlang.api import load_model
    from vidlang.evaluation.captioning import caption_folder, generate_captions

    loaded = load_model(run, which="latest")
    _, _, refs, dataset, _ = caption_folder(loaded, data, split=str(val_ids(data)), meteor=False, max_len=1,
                                         transcripts=loaded.cfg.data.transcripts or None)
    with CaptionScorer() as scorer:
        for label, settings in DECODINGS:
            if labels and label not in labels:
                continue
            tic = time.perf_counter()
            preds = generate_captions(loaded.model, dataset, loaded.tokenizer, **settings)
            out = ROWS.parent / "captions" / f"{name}--{label}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(preds, indent=0))
            add_row({"lever": name, "setting": label, "settings": settings, "run": str(run),
                     "steps": loaded.meta.get("step"), "checkpoint": str(loaded.checkpoint), "decode_s": time.perf_counter() - tic, "command": command,
                     **scored(preds, refs, scorer)})


def rerank(data: Path, name: str, k: int, command: str) -> None:
    """Per video, the caption (among those the decode probes of ``name`` wrote) that agrees best with
    the captions of its k nearest training videos (baselines.rerank_by_neighbours)."""
    from vidlang.evaluation.baselines import rerank_by_neighbours

    files = sorted((ROWS.parent / "captions").glob(f"{name}--*.json"))
    runs = [json.loads(f.read_text()) for f in files]
    feats = np.load(data / "features.npy", mmap_mode="r")
    ids = (data / "video_ids.txt").read_text().split()
    ann = json.loads((data / "annotations.json").read_text())
    refs = {v: ann[v]["captions"] for v in ids[700:800]}
    cands = [list(dict.fromkeys(r[v] for r in runs)) for v in refs]
    picked = rerank_by_neighbours(cands, np.asarray(feats[:700]), [ann[v]["captions"] for v in ids[:700]],
                                  np.asarray(feats[700:800]), k)
    with CaptionScorer() as scorer:
        add_row({"lever": name, "setting": f"rerank the {len(files)} decodings' captions by agreement with the "
                 f"{k} nearest training videos' captions", "k": k, "sources": [f.name for f in files],
                 "command": command, **scored(dict(zip(refs, picked)), refs, scorer)})


def prior(run: Path, data: Path, name: str, weights: list[float], command: str, others: list[Path]) -> None:
    """decode.rerank_prior: the run's rerank pools (its own members' and ``others``' candidates included)
    decoded once, picked with each weight."""
    from vidlang.api import load_model
    from vidlang.evaluation.caption_rerank import check_members, clip_features, pick_by_neighbours, pooled_features
    from vidlang.evaluation.captioning import caption_folder, first_per_key, rerank_pools

    loaded = load_model(run, which="latest")
    members = [*loaded.members, *(load_model(m, which="latest") for m in others)]
    check_members(loaded, members, "rerank")
    _, _, refs, dataset, _ = caption_folder(loaded, data, split=str(val_ids(data)), meteor=False, method="greedy",
                                         max_len=1)  # the dataset and references; these captions are not used
    tic = time.perf_counter()
    pools = rerank_pools(loaded.model, dataset, loaded.tokenizer, members=[m.model for m in members])
    indices = first_per_key(dataset)
    pooled, keys = pooled_features(dataset, indices), [dataset.keys[i] for i in indices]
    nearest = (loaded.retriever.nearest(clip_features(dataset, indices), loaded.caption_bank,
                                        loaded.cfg.decode.rerank_neighbours) if loaded.retriever else None)
    decode_s = time.perf_counter() - tic
    with CaptionScorer() as scorer:
        for w in weights:
            picked = pick_by_neighbours(pools, pooled, loaded.caption_bank, loaded.cfg.decode.rerank_neighbours, w, nearest)
            add_row({"lever": name, "setting": f"rerank_prior={w}", "rerank_prior": w, "run": str(run),
                     "members": [str(m.checkpoint) for m in members], "checkpoint": str(loaded.checkpoint), "decode_s": decode_s,
                     "command": command, **scored(dict(zip(keys, picked)), refs, scorer)})


def collect(out: Path, data: Path, name: str, command: str) -> None:
    """A training probe run by scripts/mvgpt_msrvtt.py --out OUT --seeds S: its result json(s) + captions."""
    ann = json.loads((data / "annotations.json").read_text())
    for path in sorted(out.glob("mvgpt-seed*.json")):
        r = json.loads(path.read_text())
        preds = {}
        for line in Path(r["extra"]["captions_file"]).read_text().splitlines():
            item = json.loads(line)
            preds[item["id"]] = item["caption"]
        assert set(preds) == {v for v in ann if v in preds} and len(preds) == 100, path
        add_row({"lever": name, "setting": " ".join(r["extra"]["overrides"]) or "recipe", "seed": r["extra"]["seed"],
                 "steps": r["config"]["train"]["steps"], "train_s": r["extra"]["train_seconds"],
                 "decoding": r["scoring"], "commit": r.get("provenance", {}), "command": command,
                 "metrics": {k: r["metrics"][k] for k in KEYS}, **caption_diversity(preds)})


def table() -> str:
    rows = [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]
    head = ("| lever | setting | steps | train s | " + " | ".join(KEYS)
            + " | distinct /100 | top share | most frequent caption |\n|---|---|---|---|" + "---|" * (len(KEYS) + 3))
    lines = [head]
    for r in rows:
        m = r["metrics"]
        train_s = f"{r['train_s']:.0f}" if "train_s" in r else "-"
        lines.append(f"| {r['lever']} | {r['setting']} | {r.get('steps') or '-'} | {train_s} | ")
        lines[-1] += (" | ".join(f"{m[k]:.3f}" for k in KEYS)
                      + f" | {r['distinct_per_100']:.0f} | {r['top_share']:.0%} | {r['top_caption']} |")
    return "\n".join(lines)


def main() -> None:
    import sys

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["consensus", "decode", "rerank", "prior", "collect", "table"])
    ap.add_argument("path", nargs="?", type=Path, help="decode: a run folder; collect: a mvgpt_msrvtt.py --out folder")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/msrvtt-ae128-dev"))
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 5, 10, 20, 40], help="consensus/rerank: k")
    ap.add_argument("--priors", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0], help="prior: weights")
    ap.add_argument("--members", type=Path, nargs="*", default=[], help="prior: other captioners pooled")
    ap.add_argument("--name", default="")
    ap.add_argument("--only", nargs="*", help="decode: these DECODINGS labels only")
    args = ap.parse_args()
    command = "python scripts/mvgpt_levers.py " + " ".join(sys.argv[1:])
    if args.what == "consensus":
        consensus(args.data, args.ks, command)
    elif args.what == "decode":
        decode(args.path, args.data, args.name or str(args.path), args.only, command)
    elif args.what == "rerank":
        for k in args.ks:
            rerank(args.data, args.name, k, command)
    elif args.what == "prior":
        prior(args.path, args.data, args.name or str(args.path), args.priors, command, args.members)
    elif args.what == "collect":
        collect(args.path, args.data, args.name or str(args.path), command)
    else:
        print(table())


if __name__ == "__main__":
    main()
