"""Frame-encoder and ASR speed per minute of video on CPU threads, with the decode vs model share of time.

    nice -n 10 python benchmarks/bench_media.py --videos ../shared/data/msrvtt-clips-24/videos --threads 2 \\
        --out benchmarks/results/media.json --transcripts /tmp/media-transcripts

Frame encoder: EfficientNet-Lite0 over ``vidlang extract``'s default sampling (1 frame/s, frames decoded
to 256 and centre-cropped to 224), batches of 32; decoding runs here in this process (the extract job
overlaps it with the backbone in worker processes; this measures each part alone). ASR: each
``--asr-models`` (default base, tiny.en) with int8 CTranslate2, VAD, word timings; decode = PyAV audio
decode + 16 kHz resampling, model = VAD + language detection + Whisper. Real-time factor (RTF) =
processing seconds / video seconds; s/min = seconds per minute of video. Both wall and CPU (process)
seconds are recorded: on a shared machine the wall time grows with other load, the CPU time much less.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


class Clock:
    """Accumulates wall and process-CPU seconds of named parts."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def part(self, name: str, fn, *args, **kwargs):
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c
        return out


def _rates(clock: Clock, seconds: float) -> dict:
    total_w, total_c = sum(clock.wall.values()), sum(clock.cpu.values())
    return {"video_seconds": round(seconds, 2),
            "wall_s": {k: round(v, 2) for k, v in clock.wall.items()},
            "cpu_s": {k: round(v, 2) for k, v in clock.cpu.items()},
            "rtf_wall": round(total_w / seconds, 4), "rtf_cpu": round(total_c / seconds, 4),
            "s_per_video_min_wall": round(60 * total_w / seconds, 2),
            "s_per_video_min_cpu": round(60 * total_c / seconds, 2),
            "share_wall": {k: round(v / total_w, 3) for k, v in clock.wall.items()}}


def bench_frames(videos: list[tuple[str, Path]], batch_size: int = 32) -> dict:
    from vidlang.extract.efficientnet import EfficientNetLite0Backbone
    from vidlang.extract.run import _embed
    from vidlang.extract.video import Sampling, decode_video

    bb, sampling, clock, seconds, frames_n = EfficientNetLite0Backbone(), Sampling.from_args(fps=1.0), Clock(), 0.0, 0
    bb(decode_video(videos[0][1], Sampling.from_args(num_frames=2), bb.decode_size)[0])  # warm-up
    for vid, path in videos:
        frames, info = clock.part("decode", decode_video, path, sampling, bb.decode_size)
        feats = clock.part("backbone", _embed, bb, frames, sampling, batch_size)
        assert feats.shape == (len(frames), 1280)
        seconds += info["duration"]
        frames_n += len(frames)
        common.log(f"frames {vid}: {len(frames)} frames of {info['duration']:.1f} s")
    return {"backbone": bb.name, "sampling_fps": 1.0, "frame_size": bb.decode_size, "batch_size": batch_size,
            "frames": frames_n, "frames_per_s_backbone_wall": round(frames_n / clock.wall["backbone"], 1),
            **_rates(clock, seconds)}


def bench_asr(videos: list[tuple[str, Path]], model: str, threads: int, transcripts: Path | None) -> dict:
    from vidlang.extract import asr as asr_mod

    asr = asr_mod.load_asr_model(model, threads=threads)
    clock, seconds, per_video, lines = Clock(), 0.0, {}, []
    for vid, path in videos:
        clock.part("decode", asr_mod._decode_audio, path)  # timed alone; transcribe_file decodes again
        c0 = dict(clock.wall)
        records, info = clock.part("model+decode", asr_mod.transcribe_file, asr, path, vid)
        seconds += info["duration"]
        per_video[vid] = {**info, "wall_s": round(clock.wall["model+decode"] - c0.get("model+decode", 0.0), 2),
                          "text": " ".join(r["text"] for r in records)}
        lines += records
        common.log(f"asr {model} {vid}: {info['utterances']} utterances, {per_video[vid]['wall_s']} s")
    # model = (model+decode) - decode: report the two parts, each once
    for d in (clock.wall, clock.cpu):
        d["model"] = d.pop("model+decode") - d["decode"]
    if transcripts is not None:
        transcripts.mkdir(parents=True, exist_ok=True)
        (transcripts / f"{model}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return {"model": model, "settings": asr.record, "with_speech": sum(1 for v in per_video.values() if v["utterances"]),
            "videos_n": len(per_video), "per_video": per_video, **_rates(clock, seconds)}


def _best(fn, repeats: int) -> dict:
    """Best (minimum) wall and CPU seconds of ``repeats`` calls: on a shared machine the minimum is the
    closest to an idle machine's time."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {"best_wall_s": round(min(walls), 3), "best_cpu_s": round(min(cpus), 3),
            "walls_s": [round(x, 3) for x in walls]}


def bench_micro(videos: list[tuple[str, Path]], clip: str, repeats: int, asr_models: list[str]) -> dict:
    """Best-of-N timings per thread count: 32 frames through the backbone, and one speech clip through ASR."""
    import torch

    from vidlang.extract import asr as asr_mod
    from vidlang.extract.efficientnet import EfficientNetLite0Backbone
    from vidlang.extract.video import Sampling, decode_video

    path = dict(videos)[clip]
    bb = EfficientNetLite0Backbone()
    frames, info = decode_video(path, Sampling.from_args(num_frames=32), bb.decode_size)
    out: dict = {"clip": clip, "clip_seconds": info["duration"], "repeats": repeats, "backbone_32_frames": {},
                 "decode_1fps": _best(lambda: decode_video(path, Sampling.from_args(fps=1.0), bb.decode_size),
                                      repeats), "asr": {}}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        bb(frames)  # warm-up
        r = _best(lambda: bb(frames), repeats)
        out["backbone_32_frames"][threads] = {**r, "s_per_video_min_at_1fps": round(60 * r["best_wall_s"] / 32, 2)}
        common.log(f"micro backbone threads={threads}: {r}")
    for model in asr_models:
        for threads in (1, 2):
            asr = asr_mod.load_asr_model(model, threads=threads)
            r = _best(lambda: asr_mod.transcribe_file(asr, path), repeats)
            out["asr"][f"{model}/{threads}"] = {**r, "rtf_best_wall": round(r["best_wall_s"] / info["duration"], 3),
                                                "s_per_video_min": round(60 * r["best_wall_s"] / info["duration"], 2)}
            common.log(f"micro asr {model} threads={threads}: {r}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--asr-models", nargs="*", default=["base", "tiny.en"])
    ap.add_argument("--skip-frames", action="store_true")
    ap.add_argument("--micro", action="store_true", help="only best-of-N timings at 1 and 2 threads (--micro-clip)")
    ap.add_argument("--micro-clip", default="video176")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=common.RESULTS / "media.json")
    ap.add_argument("--transcripts", type=Path, help="also write each model's JSONL here (not committed)")
    args = ap.parse_args()
    from vidlang.extract.video import list_videos

    threads = common.setup_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    videos = list_videos(args.videos)
    result = {"environment": common.environment("cpu", threads), "videos": args.videos, "clips": len(videos)}
    if args.micro:
        result["micro"] = {"loadavg_before": common.load(),
                           **bench_micro(videos, args.micro_clip, args.repeats, args.asr_models),
                           "loadavg_after": common.load()}
        common.write_json(args.out, result)
        return
    if not args.skip_frames:
        result["frames"] = {"loadavg_before": common.load(), **bench_frames(videos), "loadavg_after": common.load()}
        common.write_json(args.out, result)
    result["asr"] = {}
    for model in args.asr_models:
        before = common.load()
        result["asr"][model] = {"loadavg_before": before, **bench_asr(videos, model, args.threads, args.transcripts),
                                "loadavg_after": common.load()}
        common.write_json(args.out, result)
    common.log(f"written {args.out}")


if __name__ == "__main__":
    main()
