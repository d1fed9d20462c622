"""Retrieval-augmented MV-GPT (beyond the paper): fill the encoder's transcript slot with captions of
the nearest TRAINING videos.

For every video of msrvtt-ae128-dev, the k nearest training videos (video0-699) by mean-pooled feature
cosine (baselines.nearest_videos; a training video never retrieves itself), each represented by its
consensus caption (the one that agrees best, by CIDEr-D, with the video's other captions). A
validation video's own captions are never used: only training captions are ever written.
Retrieval here is by feature cosine, not by a TACo model (stamp it so when reporting).

    python scripts/msrvtt_neighbour_transcripts.py --k 3 --out runs/levers/neighbours-k3.jsonl
    python scripts/mvgpt_msrvtt.py --seeds 0 --out runs/p-rag-k3 mvgpt.use_transcript=true \
        data.transcripts=runs/levers/neighbours-k3.jsonl data.max_words=40 train.threads=1

Writes one jsonl line per video: {video_id, start: 0, end: 1, text} (the clips are untimed, so the
whole "transcript" attaches to every caption of the video).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vidlang.evaluation.baselines import consensus_captions, nearest_videos


def neighbour_texts(feats: np.ndarray, captions: list[list[str]], n_train: int, k: int,
                    sep: str = " . ") -> list[str]:
    """For every row of ``feats``: the consensus captions of its k nearest training rows (< n_train),
    nearest first, never itself, joined by ``sep``."""
    train = feats[:n_train]
    own = consensus_captions(train, captions[:n_train], train, k=1)  # each training video is its own nearest
    nearest = nearest_videos(train, feats, k + 1)
    out = []
    for i, row in enumerate(nearest):
        picked = [int(v) for v in row if int(v) != i][:k]
        out.append(sep.join(own[v] for v in picked))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/msrvtt-ae128-dev"))
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--train", type=int, default=700, help="videos 0..N-1 are the training videos")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    feats = np.load(args.data / "features.npy")
    ids = (args.data / "video_ids.txt").read_text().split()
    ann = json.loads((args.data / "annotations.json").read_text())
    texts = neighbour_texts(feats, [ann[v]["captions"] for v in ids], args.train, args.k)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps({"video_id": v, "start": 0.0, "end": 1.0, "text": t}) + "\n"
                                for v, t in zip(ids, texts)))
    print(f"{args.out}: {len(ids)} videos, e.g. {ids[700]}: {texts[700]!r}")


if __name__ == "__main__":
    main()
