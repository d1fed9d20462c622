"""Probe: MV-GPT's neighbour stream from a ridge-regression space (docs/mvgpt-levers.md, "Neighbours in a
ridge space"). A probe, not a library option: it patches how this process fills the neighbour stream.

A ridge regression maps each video's pooled features (mean and max over frames, standardised on the training
videos) to the mean MiniLM sentence vector of its training captions. Neighbours are found by cosine between
predicted vectors. A training video's query is its out-of-fold prediction (5 folds), so training sees
neighbours as a new video would; a held-out video's query is the full fit's prediction. The bank side is the
full fit's predictions. The rerank stays on raw features.

    PYTHONPATH=src python scripts/mvgpt_ridge_neighbours.py consensus --ks 3 10
    PYTHONPATH=src python scripts/mvgpt_ridge_neighbours.py train -- --seeds 0 --out runs/mvgpt-ridgenbr train.threads=1
    PYTHONPATH=src python scripts/mvgpt_ridge_neighbours.py test-time --run runs/mvgpt-nbr/seed0

Every number is on video700-799 (validation); only video0-699 fit the regression.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from mvgpt_taco_neighbours import caption_held_out, load, neighbour_filler, split_argv  # scripts/ is on sys.path

ALPHA = 300.0


def spaces(feats, caps, n_train: int = 700):
    """(full-fit predictions for every video, out-of-fold predictions for the training videos)."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    from vidlang.text.sentence import sentence_encoder

    vectors = sentence_encoder().encode([c for v in range(n_train) for c in caps[v]], batch_size=256)
    starts = np.concatenate([[0], np.cumsum([len(caps[v]) for v in range(n_train)])])
    y = np.stack([vectors[starts[v]:starts[v + 1]].mean(0) for v in range(n_train)])
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    x = np.concatenate([feats.mean(1), feats.max(1)], 1)
    x = (x - x[:n_train].mean(0)) / (x[:n_train].std(0) + 1e-6)
    full = Ridge(alpha=ALPHA).fit(x[:n_train], y).predict(x)
    oof = np.zeros_like(y)
    for fit, held in KFold(5, shuffle=True, random_state=0).split(x[:n_train]):
        oof[held] = Ridge(alpha=ALPHA).fit(x[fit], y[fit]).predict(x[held])
    return full, oof


def patch_stream(ids, full, oof) -> None:
    import vidlang.evaluation.caption_rerank as caption_rerank
    import vidlang.evaluation.captioning as captioning
    import vidlang.tasks.mvgpt as mvgpt_task

    queries = full.copy()
    queries[:len(oof)] = oof  # training videos query out of fold
    fill = neighbour_filler(full, queries, ids)
    caption_rerank.fill_neighbour_transcripts = captioning.fill_neighbour_transcripts = fill
    mvgpt_task.fill_neighbour_transcripts = fill


def main() -> None:
    argv, rest = split_argv()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["consensus", "train", "test-time"])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/msrvtt-ae128-dev"))
    ap.add_argument("--ks", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--run", help="test-time: a recipe run folder (its latest checkpoint captions)")
    args = ap.parse_args(argv)
    feats, ids, caps = load(args.data)
    full, oof = spaces(feats, caps)
    if args.what == "consensus":
        from vidlang.evaluation.baselines import consensus_captions
        from vidlang.evaluation.caption_metrics import caption_diversity, caption_metrics

        refs = {ids[i]: caps[i] for i in range(700, 800)}
        for k in args.ks:
            preds = dict(zip(ids[700:], consensus_captions(full[:700], caps[:700], full[700:], k)))
            m, d = caption_metrics(preds, refs, meteor=False), caption_diversity(preds)
            print(f"ridge space, k={k}: CIDEr {m['CIDEr']:.3f} BLEU-4 {m['BLEU-4']:.3f} "
                  f"distinct {d['distinct_per_100']:.0f} top share {d['top_share']:.2f}", flush=True)
        return
    patch_stream(ids, full, oof)
    if args.what == "train":
        import mvgpt_msrvtt

        sys.argv = [sys.argv[0], "--data", str(args.data), *rest]
        mvgpt_msrvtt.main()
        return
    caption_held_out(args.run, args.data, ids)


if __name__ == "__main__":
    main()
