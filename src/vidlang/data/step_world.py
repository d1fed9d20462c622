"""Reading a procedural task world's ``world.json`` (vidlang.worlds.steps) for the downstream tasks.

The file holds per-video frame labels at the feature rate (0 = background, else a global step id),
the step segments (in frames and seconds), each task's ordered step texts and the QA pairs. Also:
:func:`write_step_clips` turns the step segments into a ``.jsonl`` of (clip, step text) pairs that
TACo and MV-GPT train on (the annotation reader in data/annotations.py reads it).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidlang.data.annotations import load_json
from vidlang.data.qa import QAPair
from vidlang.data.records import Clip
from vidlang.errors import DataError


@dataclass
class StepVideo:
    video_id: str
    task: str
    split: str
    labels: np.ndarray  # (T,) global step id per frame, 0 = background
    segments: list[dict] = field(default_factory=list)  # step (1-based within the task), step_id, start/end_frame


@dataclass
class StepWorld:
    path: Path
    tasks: dict[str, dict]  # task -> {title, steps (texts, in order), step_ids}
    videos: dict[str, StepVideo]
    qa: list[dict]

    @property
    def num_steps(self) -> int:
        return max(i for t in self.tasks.values() for i in t["step_ids"])

    def clips(self) -> list[Clip]:
        """One clip per video (no caption): the unit the split specs of data/sources.py select."""
        return [Clip(v, "", split=s.split) for v, s in self.videos.items()]

    def qa_pairs(self, video_ids) -> list[QAPair]:
        keep = set(video_ids)
        return [QAPair(q["question_id"], q["video_id"], q["question"], q["answer"], q["type"])
                for q in self.qa if q["video_id"] in keep]


def read_step_world(path: str | Path) -> StepWorld:
    """``world.json`` (or the folder holding it) -> :class:`StepWorld`; DataError names the video and key."""
    path = Path(path)
    if path.is_dir():
        path = path / "world.json"
    data = load_json(path)
    if not isinstance(data, dict) or not {"tasks", "videos"} <= set(data):
        raise DataError(f"{path}: not a task-world file (needs 'tasks' and 'videos'; see vidlang.worlds.steps)")
    tasks = data["tasks"]
    videos = {}
    for vid, rec in data["videos"].items():
        try:
            labels = np.asarray(rec["labels"], dtype=np.int64)
            task, split, segments = str(rec["task"]), str(rec["split"]), list(rec["segments"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: video {vid!r}: bad or missing key ({e})") from None
        if task not in tasks:
            raise DataError(f"{path}: video {vid!r} is of task {task!r}, which 'tasks' does not list")
        if labels.ndim != 1 or labels.size == 0 or (labels < 0).any():
            raise DataError(f"{path}: video {vid!r}: labels must be a non-empty list of step ids >= 0")
        unknown = set(labels[labels > 0].tolist()) - set(tasks[task]["step_ids"])
        if unknown:
            raise DataError(f"{path}: video {vid!r}: step ids {sorted(unknown)} are not steps of task {task!r}")
        videos[vid] = StepVideo(vid, task, split, labels, segments)
    return StepWorld(path, tasks, videos, list(data.get("qa", [])))


def check_lengths(world: StepWorld, store, video_ids) -> None:
    """Every video's labels must have one entry per feature frame."""
    for vid in video_ids:
        if vid not in store:
            raise DataError(f"video {vid!r} of {world.path} is not in the feature store")
        n = len(store[vid])
        if n != len(world.videos[vid].labels):
            raise DataError(f"video {vid!r}: {n} feature frames but {len(world.videos[vid].labels)} labels in "
                            f"{world.path}")


def majority_label(world: StepWorld, video_ids) -> int:
    """The most frequent frame label over ``video_ids`` (chosen on training videos: the baseline)."""
    counts = Counter()
    for vid in video_ids:
        counts.update(world.videos[vid].labels.tolist())
    return counts.most_common(1)[0][0]


def write_step_clips(world: StepWorld, out: str | Path, fps: float) -> Path:
    """One line per step segment: the clip (seconds at ``fps``) and its task's step text, with the split."""
    out = Path(out)
    lines = []
    for vid, v in world.videos.items():
        texts = world.tasks[v.task]["steps"]
        for s in v.segments:
            lines.append(json.dumps({"video_id": vid, "caption": texts[s["step"] - 1], "start": s["start_frame"] / fps,
                                     "end": s["end_frame"] / fps, "split": v.split}))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
