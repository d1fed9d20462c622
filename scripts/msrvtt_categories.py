"""MSR-VTT's 20 categories on msrvtt-ae128-dev: linear probes on three video encoders, 3 seeds each.

    python scripts/msrvtt_categories.py --taco RUN --mvgpt RUN [--seeds 0 1 2] [--out runs/categories]

Train video0-699, report video700-799 (the only held-out split: it reports and nothing is chosen on
it; the probe's settings are configs/classify/msrvtt-ae128.yaml, fixed before any run). The encoders:
the stored features mean-pooled (raw), and the video encoders of a TACo and an MV-GPT run trained on
video0-699 with their shipped recipes. Majority class: the most frequent training category.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vidlang.config import load_config
from vidlang.report import format_mean_std, mean_std, provenance, write_result_json
from vidlang.train import train

RECIPE = "configs/classify/msrvtt-ae128.yaml"
CODE = provenance()


def run(encoder: str, source: str | None, seed: int, out: Path, data: str, labels: str) -> dict:
    extra = [f"probe.encoder={encoder}", f"train.seed={seed}", f"train.out_dir={out / f'{encoder}-seed{seed}'}",
             f"data.root={data}", f"probe.labels={labels}", "train.threads=1"]
    cfg = load_config(RECIPE, extra + ([f"probe.encoder_from={source}"] if source else []))
    summary = train(cfg, progress=False)
    last = summary["history"][-1]  # the last step's score (no checkpoint is chosen on the reported split)
    write_result_json(out / f"{encoder}-seed{seed}.json", last, split="msrvtt-ae128-dev video700-799",
                      scoring=f"{encoder} linear probe, last step", protocol="msrvtt-20-categories", config=cfg.to_dict(),
                      extra={"encoder_checkpoint": source, "seed": seed}, provenance=CODE)
    return last


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/msrvtt-ae128-dev")
    ap.add_argument("--labels", default="../shared/data/msrvtt-annotations/train_val_annotation.zip")
    ap.add_argument("--taco", help="a TACo run trained on video0-699")
    ap.add_argument("--mvgpt", help="an MV-GPT run trained on video0-699")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/categories"))
    args = ap.parse_args()
    rows = {}
    for encoder, source in (("raw", None), ("taco", args.taco), ("mvgpt", args.mvgpt)):
        if encoder != "raw" and not source:
            continue
        results = [run(encoder, source, s, args.out, args.data, args.labels) for s in args.seeds]
        rows[encoder] = mean_std([{k: r[k] for k in ("top1", "top5", "majority_top1")} for r in results])
        print(encoder, {k: format_mean_std(*v) for k, v in rows[encoder].items()}, flush=True)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
