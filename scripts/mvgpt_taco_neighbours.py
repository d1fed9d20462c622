"""Probe: MV-GPT's neighbour captions found in a trained TACo's video space instead of raw features
(docs/mvgpt-levers.md, "Neighbours in a TACo space"). A probe, not a library option: it patches the
caption bank's pooled features with TACo video embeddings in this process.

    # consensus-of-k captions of video700-799, neighbours by raw features vs by the TACo space;
    # and training captions retrieved by s1 (v2t)
    PYTHONPATH=src python scripts/mvgpt_taco_neighbours.py consensus runs/levers/l1t2-seed0 --ks 3 10 --tops 1 20 50
    # the MV-GPT recipe with its neighbour stream and rerank in the TACo space (scripts/mvgpt_msrvtt.py's arguments)
    PYTHONPATH=src python scripts/mvgpt_taco_neighbours.py train runs/levers/l1t2-seed0 -- --seeds 0 --out runs/mvgpt-taconbr
    # a recipe run trained as shipped (raw-feature neighbours); only video700-799's stream from the TACo space
    PYTHONPATH=src python scripts/mvgpt_taco_neighbours.py test-time runs/levers/l1t2-seed0 --run runs/mvgpt-nbr/seed0

Every number is on video700-799 (validation); the TACo run must be trained on video0-699 only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from vidlang import api
from vidlang.evaluation.baselines import _pool_consensus, consensus_captions
from vidlang.evaluation.caption_metrics import caption_diversity, caption_metrics


def load(data: Path):
    feats = np.load(data / "features.npy")
    ids = (data / "video_ids.txt").read_text().split()
    ann = json.loads((data / "annotations.json").read_text())
    return feats, ids, [ann[v]["captions"] for v in ids]


def embed_videos(taco_run: str, feats: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return api.encode_video(api.load_model(taco_run), list(feats)).cpu().numpy()


def consensus(args, feats, ids, caps) -> None:
    emb = embed_videos(args.taco, feats)
    refs = {ids[i]: caps[i] for i in range(700, 800)}

    def report(name: str, preds: list[str]) -> None:
        m = caption_metrics(dict(zip(ids[700:], preds)), refs, meteor=False)
        d = caption_diversity(dict(zip(ids[700:], preds)))
        print(f"{name}: CIDEr {m['CIDEr']:.3f} BLEU-4 {m['BLEU-4']:.3f} distinct {d['distinct_per_100']:.0f} "
              f"top share {d['top_share']:.2f}", flush=True)

    for k in args.ks:
        report(f"raw features, k={k}", consensus_captions(feats[:700], caps[:700], feats[700:], k))
        report(f"TACo space, k={k}", consensus_captions(emb[:700], caps[:700], emb[700:], k))
    flat = [c for v in range(700) for c in caps[v]]
    with torch.no_grad():
        scores = emb[700:] @ api.encode_text(api.load_model(args.taco), flat).cpu().numpy().T
    for n in args.tops:
        top = np.argsort(-scores, axis=1)[:, :n]
        picked = [flat[r[0]] for r in top] if n == 1 else \
            _pool_consensus([[c] for c in flat], [tuple(int(x) for x in r) for r in top])
        report(f"v2t, consensus of the top {n} training captions", picked)


def train(args, feats, ids, rest: list[str]) -> None:
    import vidlang.evaluation.caption_rerank as caption_rerank
    import vidlang.evaluation.captioning as captioning

    emb, row = embed_videos(args.taco, feats), {v: i for i, v in enumerate(ids)}

    def taco_pooled(dataset, indices):
        return np.stack([emb[row[dataset.clips[i].video_id]] for i in indices]).astype(np.float32)

    caption_rerank.pooled_features = captioning.pooled_features = taco_pooled
    sys.path.insert(0, str(Path(__file__).parent))
    import mvgpt_msrvtt

    sys.argv = [sys.argv[0], "--data", str(args.data), *rest]
    mvgpt_msrvtt.main()


def neighbour_filler(bank_vectors: np.ndarray, query_vectors: np.ndarray, ids: list[str]):
    """A stand-in for ``fill_neighbour_transcripts`` that retrieves in another space: ``bank_vectors`` for the
    bank's videos and ``query_vectors`` for the clips' videos, both rows in ``ids`` order."""
    from vidlang.evaluation.caption_rerank import CaptionBank, neighbour_transcripts

    row = {v: i for i, v in enumerate(ids)}

    def fill(dataset, bank, k, where):
        space = CaptionBank(bank.keys, bank.captions, bank_vectors[[row[key] for key in bank.keys]],
                            bank.consensus_captions())
        first: dict[str, int] = {}
        for i, key in enumerate(dataset.keys):
            first.setdefault(key, i)
        queries = query_vectors[[row[dataset.clips[i].video_id] for i in first.values()]]
        texts = dict(zip(first, neighbour_transcripts(space, queries, k, list(first))))
        dataset.set_transcripts([texts[key] for key in dataset.keys])

    return fill


def caption_held_out(run: str, data: Path, ids: list[str]) -> None:
    """Caption video700-799 with ``run``'s latest checkpoint (in this process, as patched) and print the scores."""
    from vidlang.evaluation.captioning import caption_folder

    split = Path("runs/levers/ids-700-800.txt")
    split.write_text("".join(v + "\n" for v in ids[700:800]))
    metrics, preds, *_ = caption_folder(api.load_model(run, which="latest"), str(data), split=str(split))
    d = caption_diversity(preds)
    print(f"{run}: " + " ".join(f"{k} {metrics[k]:.3f}" for k in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")) +
          f" distinct {d['distinct_per_100']:.0f} top share {d['top_share']:.2f}", flush=True)


def split_argv() -> tuple[list[str], list[str]]:
    """(this script's arguments, those after ``--`` for scripts/mvgpt_msrvtt.py)."""
    argv = sys.argv[1:]
    return (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])


def test_time(args, feats, ids) -> None:
    """Caption video700-799 with a trained run whose training read raw-feature neighbours, the held-out
    videos' neighbour stream taken from the TACo space instead (the rerank stays on raw features)."""
    import vidlang.evaluation.captioning as captioning

    emb = embed_videos(args.taco, feats)
    captioning.fill_neighbour_transcripts = neighbour_filler(emb, emb, ids)
    caption_held_out(args.run, args.data, ids)


def main() -> None:
    argv, rest = split_argv()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["consensus", "train", "test-time"])
    ap.add_argument("taco", help="a TACo run or checkpoint trained on video0-699")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/msrvtt-ae128-dev"))
    ap.add_argument("--ks", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--tops", type=int, nargs="+", default=[1, 20, 50])
    ap.add_argument("--run", help="test-time: a recipe run folder (its latest checkpoint captions)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    feats, ids, caps = load(args.data)
    if args.what == "consensus":
        consensus(args, feats, ids, caps)
    elif args.what == "train":
        train(args, feats, ids, rest)
    else:
        test_time(args, feats, ids)


if __name__ == "__main__":
    main()
