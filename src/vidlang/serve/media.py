"""Files for ``vidlang serve``: safe paths under the media root, uploaded videos checked and turned into
the index's own features, and JPEG frame strips of indexed clips (decoded with PyAV, cached on disk).

Nothing here trusts a client's path or file name: media paths are resolved (symlinks included) and must
stay under the root; uploads are typed by their first bytes and by FFmpeg, never by their extension.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from vidlang.errors import ConfigError, DataError
from vidlang.io import atomic_write_bytes

MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
               ".mkv": "video/x-matroska", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
               ".webp": "image/webp", ".gif": "image/gif"}
# Container families an upload may be: first bytes -> the FFmpeg demuxer names that must agree.
_MAGIC = (("ISO media (mp4/mov)", lambda b: b[4:8] == b"ftyp", ("mov", "mp4")),
          ("Matroska/WebM", lambda b: b[:4] == b"\x1a\x45\xdf\xa3", ("matroska", "webm")))


class UnsupportedMedia(DataError):
    """An upload that is not a video the server reads (HTTP 415)."""


class MediaRefused(DataError):
    """A media path outside the media root (HTTP 403)."""


# ----------------------------------------------------------------------------- media paths
def media_path(root: Path | None, rel: str) -> Path:
    """The file ``rel`` names under ``root``; MediaRefused for anything that could leave it
    (``..``, absolute or drive paths, backslashes, NUL, hidden parts, symlinks pointing outside)."""
    if root is None:
        raise FileNotFoundError("no media root is served")
    parts = rel.split("/")
    if (not rel or "\x00" in rel or "\\" in rel or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":")
            or any(p in ("", ".", "..") or p.startswith(".") for p in parts)):
        raise MediaRefused(f"refused media path {rel!r}: give a plain relative path under the media root")
    base = root.resolve()
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        raise MediaRefused(f"refused media path {rel!r}: it leads outside the media root")
    if target.suffix.lower() not in MEDIA_TYPES or not target.is_file():
        raise FileNotFoundError(rel)
    return target


def media_url(root: Path | None, source: Path | None) -> str | None:
    """``/media/...`` for a file under ``root`` (None outside it)."""
    from urllib.parse import quote

    if root is None or source is None:
        return None
    try:
        rel = source.resolve().relative_to(root.resolve()).as_posix()
        media_path(root, rel)
    except (ValueError, OSError, DataError):
        return None
    return "/media/" + quote(rel)


def source_video(store_path: Path | None, video_id: str, media_root: Path | None) -> Path | None:
    """The video a store's features came from (``vidlang extract`` records it), if it still exists;
    a moved store's videos are also looked for by name under the media root."""
    if store_path is None:
        return None
    try:
        rec = json.loads((store_path / f"{video_id}.meta.json").read_bytes().decode("utf-8"))
        source = Path(rec["source"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    for cand in (source, store_path / source, *((media_root / source.name,) if media_root else ())):
        if cand.is_file():
            return cand
    return None


# ----------------------------------------------------------------------------- uploads
def sniff_container(head: bytes) -> tuple[str, tuple[str, ...]]:
    """The container family of a file from its first bytes; UnsupportedMedia when it is none we read."""
    for name, test, demuxers in _MAGIC:
        if len(head) >= 12 and test(head):
            return name, demuxers
    raise UnsupportedMedia("the upload is not an mp4/mov or WebM/Matroska video (checked by its first bytes)")


def probe_video(path: Path, demuxers: tuple[str, ...], max_seconds: float) -> dict:
    """Open ``path`` with FFmpeg: the demuxer must match the magic bytes, a video stream must decode."""
    import av

    try:
        with av.open(str(path)) as c:
            formats = set(c.format.name.split(","))
            if not formats & set(demuxers):
                raise UnsupportedMedia(f"the upload's bytes say {'/'.join(demuxers)} but FFmpeg reads {c.format.name}")
            if not c.streams.video:
                raise UnsupportedMedia("the upload holds no video stream")
            stream = c.streams.video[0]
            duration = c.duration / 1e6 if c.duration else None
            if duration is None and stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            next(c.decode(stream))  # at least one frame decodes
            info = {"container": c.format.name, "codec": stream.codec_context.name, "duration": duration}
    except UnsupportedMedia:
        raise
    except (av.FFmpegError, StopIteration, OSError, ValueError) as e:
        raise UnsupportedMedia(f"FFmpeg cannot read the upload as a video ({_ffmpeg_reason(e)})") from e
    if duration is not None and duration > max_seconds:
        raise DataError(f"the upload is {duration:.1f} s long; this server captions clips of at most {max_seconds:g} s")
    return info


def _ffmpeg_reason(e: Exception) -> str:
    """An FFmpeg/OS error in words, without the file name it carries (a server temp path)."""
    reason = getattr(e, "strerror", None) or (str(e) if not isinstance(e, StopIteration) else "no frame decodes")
    return f"{type(e).__name__}: {reason}"


class UploadExtractor:
    """The extractor that wrote the index's features (:class:`vidlang.extract.extractor.Extractor`, the one
    ``vidlang extract`` and ``preprocess`` use), so uploads get the very same features.

    ``record``: the store's extractor record (index.json ``extractor``); ``weights``: the clip/resnet
    weights (checked against the record's sha256). ``reason`` says why uploads are refused, if they are.
    """

    def __init__(self, record: dict | None, weights: str | None = None, store_path: Path | None = None,
                 device: str = "cpu"):
        from vidlang.errors import CheckpointError
        from vidlang.extract.extractor import Extractor

        self.record, self.extractor, self.reason = record, None, None
        try:
            if not isinstance(record, dict):
                raise ConfigError("the index's features were not written by `vidlang extract` (no extractor "
                                  "record), so the server cannot compute the same features for an upload")
            self.extractor = Extractor.from_record(record, weights, device, store=store_path)
        except (ConfigError, DataError, CheckpointError) as e:
            self.reason = str(e).replace("(weights=PATH; --extractor-weights PATH on the command line)",
                                         "(start the server with --extractor-weights PATH to caption uploads)")
        except Exception as e:  # noqa: BLE001 - a backbone that fails to load only disables uploads
            self.reason = f"cannot load the index's extractor ({type(e).__name__}: {e})"

    @property
    def backbone(self):
        return None if self.extractor is None else self.extractor.backbone

    def features(self, path: Path, max_seconds: float | None = None,
                 max_frames: int | None = None) -> tuple[np.ndarray, dict]:
        """(T, D) features of the video at ``path``, made exactly as ``vidlang extract`` made the index's;
        decoding stops with a DataError past ``max_seconds`` of decoded video or ``max_frames`` frames."""
        import av

        from vidlang.extract.video import VideoTooLong

        if self.extractor is None:
            raise ConfigError(f"uploads are off: {self.reason}")
        try:
            return self.extractor.features_and_info(path, max_seconds, max_frames)
        except VideoTooLong as e:
            raise DataError(f"the upload is too long: {str(e).replace('the video ', 'it ')}; this server captions "
                            f"clips of at most {max_seconds:g} s") from None
        except UnsupportedMedia:
            raise
        except DataError as e:
            if "NaN/inf" in str(e):
                raise DataError("the backbone produced NaN/inf features for the upload") from None
            raise UnsupportedMedia(f"the upload has no decodable video ({str(e).replace(str(path), 'upload')})") from None
        except (av.FFmpegError, OSError, ValueError) as e:
            raise UnsupportedMedia(f"FFmpeg cannot decode the upload ({_ffmpeg_reason(e)})") from None


# ----------------------------------------------------------------------------- frame strips
def frames_at(path: Path, times: list[float], height: int) -> list:
    """PIL images of the frames on screen at ``times`` (seconds from the first frame), ``height`` px high."""
    import av

    want = sorted(set(max(0.0, t) for t in times))
    got: dict[float, object] = {}
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        base = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0
        if want[0] > 2.0 and stream.time_base:  # jump near the first wanted time (to the keyframe before it)
            c.seek(int((want[0] + base - 1.0) / stream.time_base), stream=stream, backward=True)
        prev, pending = None, list(want)
        for frame in c.decode(stream):
            t = (frame.time or 0.0) - base
            while pending and t > pending[0] + 1e-6:
                got[pending.pop(0)] = prev if prev is not None else frame
            if not pending:
                break
            prev = frame
        for t in pending:  # past the end: the last frame
            got[t] = prev
    images = []
    for t in times:
        frame = got.get(max(0.0, t))
        if frame is None:
            raise DataError(f"{path.name} has no decodable frame at {t:.2f} s")
        w = max(1, round(frame.width * height / frame.height))
        images.append(frame.to_image().resize((w, height)))
    return images


def strip_jpeg(path: Path, times: list[float], cache: Path, height: int = 72, max_files: int = 10_000) -> bytes:
    """One JPEG of the frames at ``times`` side by side, cached under ``cache`` by video, mtime and times;
    the cache keeps the ``max_files`` most recently written strips."""
    from PIL import Image

    st = path.stat()
    key = hashlib.sha256(json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns,
                                     [round(t, 4) for t in times], height]).encode()).hexdigest()[:32]
    file = cache / f"{key}.jpg"
    if file.is_file():
        return file.read_bytes()
    try:
        images = frames_at(path, times, height)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV raises many kinds on a corrupt or truncated file
        raise DataError(f"cannot decode the frames of {path.name}: {_ffmpeg_reason(e)}") from e
    strip = Image.new("RGB", (sum(i.width for i in images), height))
    x = 0
    for im in images:
        strip.paste(im.convert("RGB"), (x, 0))
        x += im.width
    buf = io.BytesIO()
    strip.save(buf, "JPEG", quality=80)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(file, buf.getvalue())
    _prune(cache, max_files)
    return buf.getvalue()


def _prune(cache: Path, max_files: int) -> None:
    """Delete the oldest strips beyond ``max_files`` (by modification time)."""
    files = list(cache.glob("*.jpg"))
    if len(files) <= max_files:
        return

    def mtime(f: Path) -> float:
        try:
            return f.stat().st_mtime
        except OSError:
            return 0.0

    for f in sorted(files, key=mtime)[: len(files) - max_files]:
        f.unlink(missing_ok=True)


def strip_times(frames: np.ndarray, fps: float | None, start: float | None, most: int = 8) -> list[float]:
    """Times of up to ``most`` of a clip's encoded frames (evenly picked), for its strip."""
    frames = np.asarray(frames)
    frames = frames[frames >= 0]
    if not fps or not len(frames):
        return [float(start or 0.0)]
    pick = np.unique(np.linspace(0, len(frames) - 1, min(most, len(frames))).round().astype(int))
    return [float(frames[i]) / fps for i in pick]


def default_cache() -> Path:
    return Path(os.environ.get("VIDLANG_CACHE", Path.home() / ".cache" / "vidlang")) / "serve"
