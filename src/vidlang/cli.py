"""The ``vidlang`` command line: a thin layer over the library."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vidlang.errors import VidlangError


def cmd_train(args) -> None:
    from vidlang.config import load_config
    from vidlang.train import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, progress=not args.quiet)
    best = summary["best"]
    print(f"done: {summary['steps']} steps; best {cfg.eval.metric} {best['metric']:.2f} at step {best['step']}"
          if best["step"] else f"done: {summary['steps']} steps (no validation split)")
    print(f"checkpoints and logs: {cfg.train.out_dir}")


def cmd_evaluate(args) -> None:
    from vidlang.api import load_model
    from vidlang.data.annotations import filter_clips, read_annotations, read_id_list
    from vidlang.data.features import open_store
    from vidlang.evaluate import similarity
    from vidlang.metrics import retrieval_metrics
    from vidlang.report import format_table, write_result_json

    loaded = load_model(args.checkpoint)
    data = Path(args.data)
    store = open_store(args.features or data, allow_pickle=args.allow_pickle)
    clips = read_annotations(args.annotations or data / "annotations.json")
    split_name = "all"
    if args.split:
        clips, split_name = filter_clips(clips, read_id_list(args.split)), Path(args.split).name
    clips = [c for c in clips if c.video_id in store] if split_name == "all" else clips
    dataset = loaded.dataset(clips, store, skip_bad=args.skip_bad)
    cfg = loaded.cfg.eval
    if args.scoring:
        cfg.scoring = args.scoring
    sim, text_to_video = similarity(loaded.model, dataset, cfg)
    metrics = retrieval_metrics(sim, text_to_video)
    split = f"{data.name}:{split_name}"
    out = Path(args.out) if args.out else loaded.checkpoint / "results" / f"{data.name}-{split_name}-{cfg.scoring}.json"
    extra = {"checkpoint": str(loaded.checkpoint), "skipped": dict(dataset.skipped), "data": str(data)}
    write_result_json(out, metrics, split=split, scoring=cfg.scoring, config=loaded.cfg.to_dict(), extra=extra)
    if args.json:
        print(json.dumps({"split": split, "scoring": cfg.scoring, "metrics": metrics, "result_file": str(out)}, indent=2))
    else:
        keys = ["t2v_R@1", "t2v_R@5", "t2v_R@10", "t2v_R@50", "t2v_MedR", "t2v_MeanR",
                "v2t_R@1", "v2t_R@5", "v2t_R@10", "v2t_R@50", "v2t_MedR", "v2t_MeanR"]
        print(f"split {split}  scoring {cfg.scoring}  ({metrics['num_texts']} texts, {metrics['num_videos']} videos)")
        print(format_table({"TACo": metrics}, keys))
        print(f"written to {out}")


def cmd_demo(args) -> None:
    from vidlang.demo import run_demo

    run_demo(out_dir=Path(args.out), steps=args.steps, num_videos=args.videos, progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidlang", description="Video-language learning: TACo retrieval.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML recipe")
    p.add_argument("config", help="YAML recipe, e.g. configs/taco/msrvtt-ae128.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4 loss.pos_tags=[NOUN]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="text-video retrieval metrics of a checkpoint on a data folder")
    p.add_argument("checkpoint", help="a checkpoint folder or a run folder (uses its best checkpoint)")
    p.add_argument("--data", required=True, help="folder laid out like msrvtt-ae128-dev")
    p.add_argument("--split", help="id list file: evaluate only these videos (default: every video)")
    p.add_argument("--features", help="feature store (default: --data)")
    p.add_argument("--annotations", help="annotation file (default: DATA/annotations.json)")
    p.add_argument("--scoring", help="exact | cascade | s1 | s2 | s3 | s1+s2 | s1+s3 ... (default: the config's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", help="result JSON path (default: CHECKPOINT/results/...)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad videos instead of failing")
    p.add_argument("--allow-pickle", action="store_true", help="allow a pickle feature store (runs code!)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="generate a procedural video world, train TACo on it, show retrieval")
    p.add_argument("--out", default="runs/demo", help="where the world and the run go")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo recipe's)")
    p.add_argument("--videos", type=int, default=None, help="number of generated videos")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except VidlangError as exc:
        print(f"vidlang: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
