"""Procedural clips as small real video files (H.264 mp4 via PyAV), so pages and players can show them."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vidlang.errors import DataError

__all__ = ["MEDIA_DIR", "VIDEO_SCALE", "videos_complete", "write_clip_videos", "write_mp4"]

VIDEO_SCALE = 4  # 32x32 world frames -> 128x128 video (nearest neighbour: the pixels stay the world's own)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float, scale: int = VIDEO_SCALE) -> Path:
    """Write uint8 RGB frames (T, H, W, 3) as an H.264 mp4 (yuv420p, every frame a keyframe-free GOP of
    its own clip), each pixel repeated ``scale`` x ``scale``; atomically (a temp file, then rename)."""
    from fractions import Fraction

    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise DataError(f"write_mp4 expects uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = frames.shape[1:3]
    frames = frames[:, : h - h % 2, : w - w % 2]  # yuv420p needs even sides
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "18", "threads": "1"}
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        c.mux(s.encode())
    os.replace(tmp, path)
    return path


MEDIA_DIR = "media"  # inside a world folder


def write_clip_videos(world: Path, clips: list, fps: float, folder: str = MEDIA_DIR) -> Path:
    """Each clip as ``world/folder/<video_id>.mp4``, plus ``world/<video_id>.meta.json`` naming it as the
    features' ``source`` (what ``vidlang serve --media-root world/folder`` looks up to play a clip)."""
    import json

    from vidlang.io import atomic_write_text

    media = Path(world) / folder
    media.mkdir(parents=True, exist_ok=True)
    for c in clips:
        write_mp4(media / f"{c.video_id}.mp4", c.frames, fps)
        atomic_write_text(Path(world) / f"{c.video_id}.meta.json",
                          json.dumps({"video_id": c.video_id, "source": f"{folder}/{c.video_id}.mp4"}) + "\n")
    return media


def videos_complete(world: Path, ids: list[str], folder: str = MEDIA_DIR) -> bool:
    return all((Path(world) / folder / f"{v}.mp4").is_file() and (Path(world) / f"{v}.meta.json").is_file() for v in ids)
