"""Decoding videos with PyAV (FFmpeg) and sampling frames from them.

Three sampling modes (:class:`Sampling`):

- ``fps``: one frame every ``1/fps`` seconds, at t = 0, 1/fps, 2/fps, ... < duration; each is the
  frame on screen at that time (so a rate above the video's own repeats frames);
- ``frames``: ``num_frames`` frames per video, spread uniformly: frame index ``floor((k + 0.5) n / N)``
  of the ``n`` frames (the centres of N equal parts; a video shorter than N frames repeats frames);
- ``windows``: frames at ``fps``, grouped into windows of ``window`` seconds starting every ``stride``
  seconds (``ceil(duration / stride)`` windows, the last ones may be shorter); one feature per window,
  the ``mean`` of its frame features or their concatenation (``stack``, dim = frames-per-window x D,
  short windows padded with their last frame).

Each kept frame is resized so that its shorter side is ``frame_size`` (bicubic, by FFmpeg's
swscale) and centre-cropped to ``frame_size x frame_size``, giving uint8 RGB (N, S, S, 3).
This module imports no torch, so decoding workers stay light.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidlang.data.features import natural_key
from vidlang.errors import ConfigError, DataError

__all__ = ["VIDEO_EXTENSIONS", "Sampling", "list_videos", "decode_video", "window_indices", "resize_crop"]

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg .flv .wmv .3gp .ts .mts .m2ts .ogv .gif".split()
)
POOLS = ("mean", "stack")


@dataclass(frozen=True)
class Sampling:
    """How frames are taken from a video; see the module docstring."""

    mode: str = "fps"  # "fps" | "frames" | "windows"
    fps: float | None = 1.0
    num_frames: int | None = None
    window: float | None = None  # seconds
    stride: float | None = None  # seconds
    pool: str | None = None  # windows only: "mean" | "stack"

    @classmethod
    def from_args(cls, *, fps: float | None = None, num_frames: int | None = None, window: float | None = None,
                  stride: float | None = None, pool: str = "mean") -> Sampling:
        """Pick the mode from which arguments are given: ``num_frames`` > ``window`` > ``fps`` (default 1)."""
        if num_frames is not None:
            if fps is not None or window is not None or stride is not None:
                raise ConfigError("num_frames samples whole videos: do not combine it with fps/window/stride")
            s = cls("frames", None, int(num_frames))
        elif window is not None:
            s = cls("windows", 1.0 if fps is None else float(fps), None, float(window),
                    float(window if stride is None else stride), pool)
        else:
            if stride is not None:
                raise ConfigError("stride needs window (seconds per window)")
            s = cls("fps", 1.0 if fps is None else float(fps))
        s.check()
        return s

    def check(self) -> None:
        def positive(name: str, value: Any) -> None:
            if value is None or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"sampling {name} must be a positive number, got {value!r}")

        if self.mode == "frames":
            if not isinstance(self.num_frames, int) or self.num_frames < 1:
                raise ConfigError(f"num_frames must be an integer >= 1, got {self.num_frames!r}")
            return
        if self.mode not in ("fps", "windows"):
            raise ConfigError(f"unknown sampling mode {self.mode!r}: use fps, frames or windows")
        positive("fps", self.fps)
        if self.mode == "windows":
            positive("window", self.window)
            positive("stride", self.stride)
            if self.pool not in POOLS:
                raise ConfigError(f"window pooling must be one of {POOLS}, got {self.pool!r}")

    @property
    def features_per_second(self) -> float | None:
        """Feature rate of the output sequences (None for ``frames``: it varies per video)."""
        return {"fps": self.fps, "windows": 1.0 / self.stride if self.stride else None}.get(self.mode)

    @property
    def frames_per_window(self) -> int:
        return max(1, round(self.window * self.fps)) if self.mode == "windows" else 1

    def to_dict(self) -> dict:
        return asdict(self)


def list_videos(videos: str | os.PathLike | Sequence[str | os.PathLike]) -> list[tuple[str, Path]]:
    """(video id, path) pairs from a folder, a list file (one path per line), one video file or a list.

    A folder contributes its files with a video extension (not recursive). Relative paths in a list
    file are relative to the list file's folder; blank lines and ``#`` comments are ignored. The id is
    the file name without extension and must be unique. Missing files are kept (reported at decoding).
    """
    if isinstance(videos, (str, os.PathLike)):
        root = Path(videos)
        if root.is_dir():
            paths = [p for p in root.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and not p.is_dir()]
            if not paths:
                raise DataError(f"video folder {root} holds no files ending in {' '.join(sorted(VIDEO_EXTENSIONS))}")
        elif root.is_file() and root.suffix.lower() in VIDEO_EXTENSIONS:
            paths = [root]
        elif root.is_file():
            try:
                lines = root.read_bytes().decode("utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise DataError(f"video list {root} is not UTF-8 text: {e}") from e
            paths = [Path(s) for s in (ln.strip() for ln in lines) if s and not s.startswith("#")]
            paths = [p if p.is_absolute() else root.parent / p for p in paths]
        else:
            raise DataError(f"videos {root} is neither a folder, a video file nor a list file (does it exist?)")
    else:
        paths = [Path(p) for p in videos]
    if not paths:
        raise DataError(f"no videos given in {videos}")
    seen: dict[str, Path] = {}
    for p in paths:
        vid = p.name[: -len(p.suffix)] if p.suffix else p.name
        if vid in seen:
            raise DataError(f"two videos have the id {vid!r}: {seen[vid]} and {p}; rename one (ids are file stems)")
        seen[vid] = p
    return sorted(seen.items(), key=lambda kv: natural_key(kv[0]))


def resize_crop(frame: Any, size: int) -> np.ndarray:
    """Resize an ``av.VideoFrame`` so its shorter side is ``size``, centre-crop to size x size, as RGB uint8."""
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    rgb = frame.reformat(width=nw, height=nh, format="rgb24", interpolation="BICUBIC").to_ndarray()
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(rgb[top:top + size, left:left + size])


class VideoTooLong(DataError):
    """A video that decodes past a limit of seconds or frames (whatever its container says)."""


def _frames_with_time(container: Any, stream: Any, max_seconds: float | None = None,
                      max_frames: int | None = None) -> Iterator[tuple[float, Any]]:
    """Decoded frames in presentation order with their time in seconds from the first frame;
    VideoTooLong as soon as the decoded time passes ``max_seconds`` or the frames ``max_frames``."""
    t0, last = None, -1.0
    for i, frame in enumerate(container.decode(stream)):
        if max_frames is not None and i >= max_frames:
            raise VideoTooLong(f"the video decodes to more than {max_frames} frames")
        t = frame.time
        if t is None:  # no timestamps: assume a constant rate
            rate = float(stream.average_rate or 25)
            t = i / rate
        t0 = t if t0 is None else t0
        last = max(t - t0, last)
        if max_seconds is not None and last > max_seconds:
            raise VideoTooLong(f"the video decodes to more than {max_seconds:g} s")
        yield last, frame


def _frame_duration(stream: Any, last_frame: Any) -> float:
    if last_frame is not None and last_frame.duration and last_frame.time_base:
        return float(last_frame.duration * last_frame.time_base)
    return 1.0 / float(stream.average_rate) if stream.average_rate else 0.0


def _sample_at_fps(container: Any, stream: Any, fps: float, size: int,
                   limits: dict | None = None) -> tuple[list[np.ndarray], int, float]:
    """The frame on screen at t = k/fps for each k with t < duration (one decoding pass)."""
    out: list[np.ndarray] = []
    prev, prev_rgb, n, t = None, None, 0, 0.0
    for t, frame in _frames_with_time(container, stream, **(limits or {})):
        while len(out) / fps < t:  # targets before this frame show the previous one
            if prev_rgb is None:
                prev_rgb = resize_crop(prev if prev is not None else frame, size)
            out.append(prev_rgb)
        prev, prev_rgb, n = frame, None, n + 1
    if prev is None:
        return out, 0, 0.0
    end = t + _frame_duration(stream, prev)
    while not out or len(out) / fps < end - 1e-9:
        prev_rgb = resize_crop(prev, size) if prev_rgb is None else prev_rgb
        out.append(prev_rgb)
    return out, n, end


def _count_frames(path: Path, max_frames: int | None = None) -> int:
    """Frames of the first video stream, by demuxing only (no decoding)."""
    import av

    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for p in container.demux(stream):
            n += bool(p.size)
            if max_frames is not None and n > max_frames:
                raise VideoTooLong(f"the video holds more than {max_frames} frames")
    return n


def _sample_uniform(container: Any, stream: Any, path: Path, num: int, size: int,
                    limits: dict | None = None) -> tuple[list[np.ndarray], int, float]:
    limits = limits or {}
    n_est = _count_frames(path, limits.get("max_frames"))
    if n_est == 0:
        return [], 0, 0.0
    wanted = [min(math.floor((k + 0.5) * n_est / num), n_est - 1) for k in range(num)]
    picked: dict[int, np.ndarray] = {}
    todo = set(wanted)
    n, t, frame = 0, 0.0, None
    for t, frame in _frames_with_time(container, stream, **limits):
        if n in todo:
            picked[n] = resize_crop(frame, size)
        n += 1
    if not n:
        return [], 0, 0.0
    end = t + _frame_duration(stream, frame)
    # A damaged tail decodes fewer frames than demuxed: later indices take the last decoded frame.
    last = picked[max(picked)] if picked else resize_crop(frame, size)
    return [picked.get(i, last) for i in wanted], n, end


def decode_video(path: str | os.PathLike, sampling: Sampling, frame_size: int, max_seconds: float | None = None,
                 max_frames: int | None = None) -> tuple[np.ndarray, dict]:
    """Decode ``path`` and return (uint8 RGB frames (N, S, S, 3), info about the video).

    Raises :class:`DataError` for empty files or files without decodable video, :class:`VideoTooLong`
    once decoding passes ``max_seconds`` of video or ``max_frames`` frames (counted while decoding, so a
    container that states no or a false duration is stopped too); PyAV's own errors (``av.FFmpegError``,
    e.g. ``InvalidDataError``) propagate for unreadable containers.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise DataError(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"video file {path} is empty (0 bytes)")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DataError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        limits = {"max_seconds": max_seconds, "max_frames": max_frames}
        if sampling.mode == "frames":
            frames, n, duration = _sample_uniform(container, stream, path, sampling.num_frames, frame_size, limits)
        else:
            frames, n, duration = _sample_at_fps(container, stream, sampling.fps, frame_size, limits)
        info = {"frames_decoded": n, "duration": round(duration, 4), "codec": stream.codec_context.name,
                "native_fps": float(stream.average_rate) if stream.average_rate else None,
                "width": stream.codec_context.width, "height": stream.codec_context.height}
    if not frames:
        raise DataError(f"{path} has no decodable video frames")
    info["frames_sampled"] = len(frames)
    return np.stack(frames), info


def window_indices(n: int, sampling: Sampling) -> list[np.ndarray]:
    """For ``windows`` sampling: the indices (into the ``n`` fps-sampled frames) of each window.

    Window j starts at the first frame at or after ``j * stride`` seconds and spans
    ``frames_per_window`` frames; ``stack`` pads short windows with their last frame.
    """
    if n < 1:
        raise DataError("no frames to group into windows")
    k, step = sampling.frames_per_window, sampling.stride * sampling.fps
    out = []
    for j in range(max(1, math.ceil(n / step - 1e-9))):
        start = min(math.ceil(j * step - 1e-9), n - 1)
        idx = np.arange(start, start + k)
        out.append(np.minimum(idx, n - 1) if sampling.pool == "stack" else idx[idx < n])
    return out
