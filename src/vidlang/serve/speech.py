"""Transcripts of uploads for a captioner that reads speech: the ASR ``vidlang transcribe`` runs.

MV-GPT trained with ``mvgpt.use_transcript=true`` reads the clip's transcript beside its frames. For an upload
the server runs Whisper (:func:`vidlang.extract.asr.transcribe_file`, same model, VAD, beam and confidence
filter as ``vidlang transcribe``) on the upload's own audio, and every response says which transcript was
used, or why none was (frames-only captioner, ASR turned off or not installed, no audio, no speech).
"""
from __future__ import annotations

import threading
from pathlib import Path

from vidlang.errors import ConfigError, DataError

__all__ = ["UploadSpeech", "clip_transcript", "index_transcripts", "no_speech_reason"]


def no_speech_reason(cfg) -> str | None:
    """Why a captioner reads no speech (None: it reads the clip's transcript beside the frames)."""
    if not bool(cfg.mvgpt.use_transcript):
        return "the captioner reads frames only (mvgpt.use_transcript=false)"
    if cfg.mvgpt.neighbour_captions:
        return (f"the captioner reads the captions of its {cfg.mvgpt.neighbour_captions} nearest training videos "
                f"there, not speech (mvgpt.neighbour_captions)")
    return None


class UploadSpeech:
    """``transcript(path, max_seconds) -> (text or None, what was used)``; the model loads on first use."""

    def __init__(self, captioner, model: str | None = None, device: str = "cpu"):
        self.model_name, self.device, self._asr, self.reason = model, device, None, None
        self._lock = threading.Lock()
        self.reason = no_speech_reason(captioner.cfg)
        if self.reason is None and model is not None and str(model).lower() == "none":
            self.reason = "ASR is off (--asr-model none)"
        elif self.reason is None:
            try:
                from vidlang.extract import asr

                asr.resolve_asr_model(model)  # the model's files and faster-whisper are there (cheap)
                import faster_whisper  # noqa: F401
            except (ImportError, ConfigError) as e:
                self.reason = f"ASR is not installed ({str(e).split(':')[0]}): pip install 'vidlang[asr]'"

    @property
    def on(self) -> bool:
        return self.reason is None

    def _model(self):
        from vidlang.extract import asr

        with self._lock:
            if self._asr is None:
                self._asr = asr.load_asr_model(self.model_name, device=self.device)
            return self._asr

    def transcript(self, path: Path, max_seconds: float) -> tuple[str | None, str]:
        """The upload's speech as one string (None when there is none) and a line saying what was used."""
        if not self.on:
            return None, f"none: {self.reason}"
        from vidlang.extract import asr

        model = self._model()
        name = f"whisper {model.record.get('model', self.model_name or asr.DEFAULT_ASR_MODEL)}"
        try:
            with self._lock:  # one Whisper decode at a time (its threads are the CPU's)
                records, info = asr.transcribe_file(model, path, "upload", max_seconds=max_seconds)
        except DataError as e:
            if "longer than" in str(e):
                raise DataError(f"the upload's audio is longer than {max_seconds:g} s; this server captions clips "
                                f"of at most {max_seconds:g} s") from None
            return None, f"none: {name} found no usable audio ({str(e).replace(str(path), 'upload')})"
        text = " ".join(r["text"] for r in records).strip()
        if not text:
            return None, f"none: {name} heard no speech ({info['speech_seconds']:.1f} s kept by voice detection)"
        return text, f"{name} on the upload's audio (language {info['language']}, {len(records)} utterances)"


def index_transcripts(index) -> dict | None:
    """The utterances of the transcript file the index's spoken field was built from (None: no such field)."""
    from vidlang.data.narration import read_transcripts

    spoken = index.meta.get("spoken") or {}
    if not spoken.get("transcripts") or not Path(spoken["transcripts"]).is_file():
        return None
    return read_transcripts(spoken["transcripts"])


def clip_transcript(speech: UploadSpeech | None, transcripts: dict | None, video_id: str, start: float | None,
                    end: float | None) -> tuple[str | None, str]:
    """An indexed clip's speech (its video's utterances whose midpoint is in the span) and what was used."""
    if speech is None or (speech.reason or "").startswith("the captioner reads"):
        return None, f"none: {speech.reason if speech else 'no captioner'}"
    if transcripts is None:
        return None, "none: the index was built without transcripts (vidlang index --transcripts)"
    lo = float("-inf") if start is None else start
    hi = float("inf") if end is None else end
    said = [u.text for u in transcripts.get(video_id, []) if lo <= (u.start + u.end) / 2 <= hi]
    if not said:
        return None, "none: the index's transcripts hold no speech in this clip"
    return " ".join(said), "the index's transcripts (vidlang index --transcripts)"
