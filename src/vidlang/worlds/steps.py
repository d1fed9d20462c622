"""A procedural task world for the downstream tasks: step localization, segmentation, VideoQA.

There are ``num_tasks`` tasks; each is an ordered list of 3..5 steps, and a step is one object
(shape, colour, size) doing one motion, rendered with :func:`vidlang.worlds.synthetic.render_clip`.
A video shows one task: its steps in order (each left out with ``skip_prob``, at least two kept),
with background frames (an empty textured scene) before, between and after them. Step ids are global
(1..S over all tasks); 0 is background. Each step has a description ("make the red ball slide to the
right"); each shown step gets three questions (object, colour, motion) with one-word answers.

:func:`write_step_world` writes ``out_dir`` with

- ``features/``: an npy-folder feature store (``<video_id>.npy`` (T, 192) of
  :func:`~vidlang.worlds.synthetic.clip_features`, and ``meta.json`` with fps, dim, backbone);
- ``world.json``: ``tasks`` ({task_id: {title, steps, step_ids}}), ``steps`` ({step_id: description}),
  ``videos`` ({video_id: {task, split, n_frames, labels (per-frame step id), segments}}), ``qa``
  (a list of {question_id, video_id, start, end, question, answer, type});
- the CrossTask layout, so :mod:`vidlang.data.crosstask` reads it: ``tasks.txt``, ``videos.csv``,
  ``videos_val.csv`` and ``annotations/<task>_<video>.csv`` (times in seconds);
- ``meta.json`` last (a folder with the same meta is reused).

Deterministic for a seed; the default world (120 videos) takes a few seconds.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vidlang.worlds.narrated import BASE_VERBS
from vidlang.worlds.synthetic import (
    BACKBONE,
    COLOURS,
    FEATURE_DIM,
    MOTION_VERBS,
    ROUND_SHAPES,
    SHAPE_NOUNS,
    SIZES,
    WorldConfig,
    clip_features,
    render_clip,
)
from vidlang.errors import ConfigError

__all__ = ["QA_TYPES", "TASK_TITLES", "StepWorldConfig", "generate_video", "make_tasks", "write_step_world"]

GENERATOR_VERSION = 1
TASK_TITLES = ("assemble the tower", "paint the fence", "sort the tiles", "launch the rocket",
               "clean the window", "plant the garden", "wrap the present", "tune the radio")
QA_TYPES = ("object", "colour", "motion")


@dataclass
class StepWorldConfig:
    num_tasks: int = 4
    num_videos: int = 120
    min_steps: int = 3
    max_steps: int = 5
    step_frames: tuple[int, int] = (6, 10)  # inclusive range of a step's length
    background_frames: tuple[int, int] = (2, 8)  # inclusive range of each background gap
    skip_prob: float = 0.15
    size: int = 32
    fps: float = 4.0
    seed: int = 0

    def check(self) -> StepWorldConfig:
        ranges = {"step_frames": self.step_frames, "background_frames": self.background_frames}
        for key, (lo, hi) in ranges.items():
            if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
                raise ConfigError(f"StepWorldConfig.{key} = {(lo, hi)!r} must be integers 1 <= lo <= hi")
        checks = (("num_tasks", 1 <= self.num_tasks <= len(TASK_TITLES)), ("num_videos", self.num_videos >= 2),
                  ("min_steps", 2 <= self.min_steps <= self.max_steps), ("max_steps", self.max_steps <= 8),
                  ("skip_prob", 0.0 <= self.skip_prob < 1.0), ("size", self.size >= 8), ("fps", self.fps > 0))
        for key, ok in checks:
            if not ok:
                raise ConfigError(f"StepWorldConfig.{key} = {getattr(self, key)!r} is out of range")
        return self


def _describe_step(attrs: dict) -> str:
    noun = SHAPE_NOUNS[attrs["shape"]][0]
    return f"make the {attrs['colour']} {noun} {BASE_VERBS[attrs['motion']][0]}"


def make_tasks(cfg: StepWorldConfig) -> dict[str, dict]:
    """``{task_id: {title, steps: [attrs], descriptions, step_ids}}``; step ids run 1..S over tasks."""
    rng = np.random.default_rng([cfg.seed, 1_000_003])
    tasks, next_id = {}, 1
    for t in range(cfg.num_tasks):
        n = int(rng.integers(cfg.min_steps, cfg.max_steps + 1))
        steps, seen = [], set()
        while len(steps) < n:  # distinct (shape, colour, motion) within a task
            shape = str(rng.choice(list(SHAPE_NOUNS)))
            motions = [m for m in MOTION_VERBS if not (m == "spin" and shape in ROUND_SHAPES)]
            a = {"shape": shape, "colour": str(rng.choice(list(COLOURS))), "size": str(rng.choice(list(SIZES))),
                 "motion": str(rng.choice(motions)), "distractor": None}
            key = (a["shape"], a["colour"], a["motion"])
            if key not in seen:
                seen.add(key)
                steps.append(a)
        tasks[str(t + 1)] = {"title": TASK_TITLES[t], "steps": steps,
                             "descriptions": [_describe_step(a) for a in steps],
                             "step_ids": list(range(next_id, next_id + n))}
        next_id += n
    return tasks


def _background(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(0, 70)
    bg = np.full((size, size, 3), grey, np.float32) + rng.uniform(-8, 8, 3).astype(np.float32)
    frames = bg[None] + rng.uniform(-3, 3, (n, size, size, 1)).astype(np.float32)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _questions(attrs: dict) -> list[tuple[str, str, str]]:
    noun = SHAPE_NOUNS[attrs["shape"]][0]
    ing, comps = MOTION_VERBS[attrs["motion"]][0][1], MOTION_VERBS[attrs["motion"]][0][2]
    doing = f"{ing} {comps[0]}".strip()
    return [("object", f"what object is {doing}", noun),
            ("colour", f"what colour is the {noun} that is {doing}", attrs["colour"]),
            ("motion", f"what is the {attrs['colour']} {noun} doing", attrs["motion"].replace("_", " "))]


def generate_video(cfg: StepWorldConfig, tasks: dict[str, dict], index: int) -> dict:
    """Video ``index``: frames (T, H, W, 3) uint8, per-frame labels, segments and QA (its own rng stream)."""
    rng = np.random.default_rng([cfg.seed, index])
    task_id = str(index % cfg.num_tasks + 1)
    task = tasks[task_id]
    n = len(task["steps"])
    keep = [k for k in range(n) if rng.random() >= cfg.skip_prob]
    while len(keep) < 2:
        keep = sorted(set(keep) | {int(rng.integers(n))})
    gap = lambda: int(rng.integers(cfg.background_frames[0], cfg.background_frames[1] + 1))
    parts, labels, segments, qa = [_background(gap(), cfg.size, rng)], [], [], []
    labels += [0] * len(parts[0])
    for k in keep:
        length = int(rng.integers(cfg.step_frames[0], cfg.step_frames[1] + 1))
        start = len(labels)
        parts.append(render_clip(task["steps"][k], WorldConfig(frames=length, size=cfg.size), rng))
        labels += [task["step_ids"][k]] * length
        segments.append({"step": k + 1, "step_id": task["step_ids"][k], "start_frame": start,
                         "end_frame": start + length, "start": start / cfg.fps, "end": (start + length) / cfg.fps})
        for qtype, question, answer in _questions(task["steps"][k]):
            qa.append({"type": qtype, "question": question, "answer": answer,
                       "start": start / cfg.fps, "end": (start + length) / cfg.fps, "step": k + 1})
        b = _background(gap(), cfg.size, rng)
        parts.append(b)
        labels += [0] * len(b)
    return {"task": task_id, "frames": np.concatenate(parts), "labels": labels, "segments": segments, "qa": qa}


def _meta(cfg: StepWorldConfig, val_fraction: float) -> dict:
    return {"generator": {**asdict(cfg), "val_fraction": val_fraction, "version": GENERATOR_VERSION},
            "fps": float(cfg.fps), "backbone": BACKBONE}


def write_step_world(out_dir: str | Path, cfg: StepWorldConfig | None = None, val_fraction: float = 0.25) -> Path:
    """Write the world under ``out_dir`` (layout in the module doc) and return ``out_dir``.

    The last ``val_fraction`` of the videos are "validate"; ids are ``steps00000``...
    """
    cfg = (cfg or StepWorldConfig()).check()
    if not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction = {val_fraction!r} must be in (0, 1)")
    n_val = max(1, round(cfg.num_videos * val_fraction))
    if n_val >= cfg.num_videos:
        raise ConfigError(f"num_videos = {cfg.num_videos} is too few for a train/validate split")
    out = Path(out_dir)
    meta = _meta(cfg, val_fraction)
    meta_path = out / "meta.json"
    if meta_path.is_file() and (out / "world.json").is_file():
        try:
            if json.loads(meta_path.read_text(encoding="utf-8")) == json.loads(json.dumps(meta)):
                return out
        except (OSError, ValueError):
            pass  # unreadable: rebuild
    out.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # written last: it marks a complete world
    tasks = make_tasks(cfg)
    feat_dir, ann_dir = out / "features", out / "annotations"
    for d in (feat_dir, ann_dir):
        d.mkdir(exist_ok=True)
        for f in d.iterdir():  # no stale video from a bigger, older world
            if f.suffix in (".npy", ".csv"):
                f.unlink()
    videos, qa, rows = {}, [], []
    for i in range(cfg.num_videos):
        vid = f"steps{i:05d}"
        v = generate_video(cfg, tasks, i)
        split = "validate" if i >= cfg.num_videos - n_val else "train"
        np.save(feat_dir / f"{vid}.npy", clip_features(v["frames"]))
        videos[vid] = {"task": v["task"], "split": split, "n_frames": len(v["labels"]), "labels": v["labels"],
                       "segments": v["segments"]}
        qa += [{"question_id": f"{vid}_{j}", "video_id": vid, **q} for j, q in enumerate(v["qa"])]
        (ann_dir / f"{v['task']}_{vid}.csv").write_text(
            "".join(f"{s['step']},{s['start']},{s['end']}\n" for s in v["segments"]), encoding="utf-8")
        rows.append((v["task"], vid, split))
    (feat_dir / "meta.json").write_text(json.dumps({"fps": float(cfg.fps), "dim": FEATURE_DIM, "backbone": BACKBONE}),
                                        encoding="utf-8")
    (out / "tasks.txt").write_text("".join(
        f"{t}\n{d['title']}\nnone\n{len(d['steps'])}\n{','.join(d['descriptions'])}\n\n" for t, d in tasks.items()),
        encoding="utf-8")
    (out / "videos.csv").write_text("".join(f"{t},{v},none\n" for t, v, _ in rows), encoding="utf-8")
    (out / "videos_val.csv").write_text("".join(f"{t},{v},none\n" for t, v, s in rows if s == "validate"),
                                        encoding="utf-8")
    world = {"tasks": {t: {"title": d["title"], "steps": d["descriptions"], "step_ids": d["step_ids"],
                           "attributes": d["steps"]} for t, d in tasks.items()},
             "steps": {str(i): desc for d in tasks.values() for i, desc in zip(d["step_ids"], d["descriptions"])},
             "videos": videos, "qa": qa}
    (out / "world.json").write_text(json.dumps(world), encoding="utf-8")
    meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out
