"""What each ``vidlang`` command does: parse nothing, call the library, print the result."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from vidlang.errors import CheckpointError


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
    short = (args.scoring or loaded.cfg.eval.scoring) + ("-qbnorm" if "QB-Norm" in scoring else "") \
        + (f"-pool{1 + len(loaded.members)}" if loaded.members else "")  # the file name; `scoring` says it all
    out = Path(args.out) if args.out else loaded.checkpoint / "results" / f"{data.name}-{split_name}-{short}.json"
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
    from vidlang.evaluation.captioning import caption_folder, decoding_name, pool_stamp
    from vidlang.evaluation.protocol import describe
    from vidlang.inference import caption, load_model
    from vidlang.io import atomic_write_text
    from vidlang.report import format_table, write_result_json

    loaded = load_model(args.checkpoint, args.which, kind="mvgpt", device=args.device)
    settings = {k: v for k, v in (("beam_size", args.beam_size), ("max_len", args.max_len),
                                  ("rerank_prior", args.rerank_prior)) if v is not None}
    if args.method and args.method != "beam":
        settings.pop("beam_size", None)
    if "rerank_prior" in settings and (args.method or loaded.cfg.decode.method) != "rerank":
        raise ConfigError("--rerank-prior weighs the rerank's pick: it needs decode.method=rerank (--method rerank)")
    if settings.get("rerank_prior", 0) < 0:
        raise ConfigError(f"--rerank-prior must be >= 0, got {args.rerank_prior}")
    stamp = decoding_name(loaded.cfg, args.method, **settings)
    if args.members and not args.data:
        raise ConfigError("--members pools candidates when captioning a folder: give --data DIR")
    members = [load_model(m, args.which, kind="mvgpt", device=args.device) for m in args.members]
    stamp += pool_stamp(loaded, members, args.method)
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
        allow_train_overlap=args.allow_train_overlap, members=members, **settings)
    split = f"{data.name}:{Path(args.split).name if args.split else 'all'}"
    out = Path(args.out) if args.out else loaded.checkpoint / "results" / f"{data.name}-{Path(args.split).stem if args.split else 'all'}-{stamp}.json"
    captions_file = out.with_suffix(".captions.jsonl")
    atomic_write_text(captions_file, "".join(json.dumps({"id": k, "caption": preds[k], "references": refs[k]}) + "\n"
                                             for k in preds))
    extra = {"checkpoint": str(loaded.checkpoint), "members": [str(m.checkpoint) for m in [*loaded.members, *members]], "data": str(data),
             "videos": len(preds), "captions_file": str(captions_file),
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
                        progress=not args.quiet, transcripts=args.transcripts)
    skipped, spoken = index.meta.get("skipped", {}), index.meta.get("spoken")
    print(f"indexed {len(index)} clips with {loaded.checkpoint} ({index.meta['faiss']['built'] or 'no FAISS'}"
          f"{f'; skipped {len(skipped)} bad videos' if skipped else ''}) -> {args.out}")
    if spoken:
        print(f"spoken field: {spoken['clips_with_speech']} of {spoken['clips']} clips have speech "
              f"({spoken['units']} text units from {args.transcripts}, {spoken['encoder']} mean-pooled)")
    print_skips([{"reason": "bad_video", "id": vid, "message": why} for vid, why in skipped.items()])


def cmd_search(args) -> None:
    from vidlang.retrieval.index import load_index
    from vidlang.retrieval.query import format_hits, search

    index = load_index(args.index, args.checkpoint, device=args.device)
    hits = search(index, args.query, args.k, rerank=not args.no_rerank, rerank_topk=args.rerank_topk,
                  candidates=args.candidates, nprobe=args.nprobe, ef_search=args.ef_search, margin=args.margin,
                  spoken_weight=args.spoken_weight)
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
          max_upload_frames=args.max_upload_frames, allowed_hosts=args.allowed_host, asr_model=args.asr_model)
