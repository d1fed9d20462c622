"""Probe: the rerank's candidate pool, on checkpoints trained with decode.method=rerank (docs/mvgpt-levers.md).

    PYTHONPATH=src python scripts/mvgpt_rerank_pool.py runs/mvgpt-rerank/seed0 runs/mvgpt-rerank/seed1 ... \
        --samples 0 4 8 --top-p 0.9 --out runs/mvgpt-rerank/pool.jsonl

For each run (its last checkpoint) and each S in --samples: the library's three candidate decodings plus S
nucleus samples (fixed generator per video batch), reranked by agreement with the k nearest training videos'
captions (the run's caption bank); scored on video700-799 against all references. Greedy alone is scored too.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vidlang.api import load_model
from vidlang.evaluation.caption_metrics import CaptionScorer, caption_diversity
from vidlang.evaluation.caption_rerank import candidate_pools, pick_by_neighbours, pooled_features
from vidlang.evaluation.captioning import _batches, caption_folder, first_per_key, generate_captions


def pools_with_samples(loaded, dataset, samples: int, top_p: float) -> tuple[list[str], list[list[str]]]:
    model, tok = loaded.model, loaded.tokenizer
    indices = first_per_key(dataset)
    pools: list[list[str]] = []
    for b, batch in enumerate(_batches(dataset, indices, 64, "cpu")):
        args = (batch.video, batch.video_mask, batch.transcript_ids, batch.transcript_mask)
        part = candidate_pools(model, tok, *args)
        gen = torch.Generator().manual_seed(1000 + b)
        for _ in range(samples):
            ids = model.generate(*args, method="nucleus", top_p=top_p, generator=gen)
            for pool, seq in zip(part, ids):
                text = tok.decode(seq, skip_special_tokens=True).strip()
                if text and text not in pool:
                    pool.append(text)
        pools += part
    return [dataset.keys[i] for i in indices], pools


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", default="../shared/data/msrvtt-ae128-dev")
    ap.add_argument("--split", default="runs/mvgpt-rerank/ids-700-800.txt")
    ap.add_argument("--samples", type=int, nargs="+", default=[0, 4, 8])
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--out", type=Path, default=Path("runs/mvgpt-rerank/pool.jsonl"))
    a = ap.parse_args()
    with CaptionScorer() as scorer, open(a.out, "a") as out:
        for run in a.runs:
            loaded = load_model(run, which="latest")
            _, _, refs, dataset, _ = caption_folder(loaded, a.data, split=a.split, meteor=False, method="greedy", max_len=1)
            rows = {"greedy": generate_captions(loaded.model, dataset, loaded.tokenizer, method="greedy")}
            k = loaded.cfg.decode.rerank_neighbours
            for s in a.samples:
                keys, pools = pools_with_samples(loaded, dataset, s, a.top_p)
                pooled = pooled_features(dataset, first_per_key(dataset))
                rows[f"rerank{k}, 3 decodings + {s} nucleus p{a.top_p}"] = dict(
                    zip(keys, pick_by_neighbours(pools, pooled, loaded.caption_bank, k)))
            for name, preds in rows.items():
                row = {"run": str(run), "pool": name, **scorer.score(preds, refs).corpus, **caption_diversity(preds)}
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
