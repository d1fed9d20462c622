"""CrossTask step localization as a task: a (T, K) frame x step score matrix per video, decoded with
the Zhukov et al. dynamic program, scored with the official recall averaged over tasks.

Two ways to score frames against a video's task steps:

- **zero-shot** (:func:`zero_shot_recall`): a TACo checkpoint's frame tokens (``mode="tokens"``), or its
  pooled embedding of a window of ``2 * half_window + 1`` frames around each frame (``mode="window"``),
  against the pooled text embedding of each step description; cosine scores;
- **supervised** (this file's ``TASK``): a linear frame head (the segmentation head, trained on the
  frame labels: global step ids + background); a video's scores are the logits of its task's steps.

Both go through :func:`~vidlang.evaluation.step_localization.localize_steps` (``dp(-log_softmax)``) and
:func:`crosstask_recall` / :func:`average_recall`. Baselines: the official evenly spread assignment
(:func:`uniform_assignment`) and K ordered frames drawn uniformly at random. Ground truth is at the
world's feature-frame resolution (step k covers frames ``start_frame .. end_frame - 1``).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from vidlang import checkpoint as ckpt
from vidlang.config import Config
from vidlang.data.dataset import encode_caption
from vidlang.data.features import open_store
from vidlang.data.step_world import StepVideo, StepWorld, check_lengths, read_step_world
from vidlang.errors import ConfigError, DataError
from vidlang.evaluation.protocol import held_out
from vidlang.evaluation.step_localization import (
    average_recall,
    crosstask_recall,
    frame_step_scores,
    localize_steps,
    uniform_assignment,
)
from vidlang.models.loading import model_from_checkpoint
from vidlang.tasks.base import Task
from vidlang.tasks.segmentation import (
    FrameLabelledVideos,
    build_frame_experiment,
    frame_scores,
    load_frame_probe,
    scored_videos,
)

ZERO_SHOT_MODES = ("tokens", "window")


def step_truth(video: StepVideo, num_steps: int) -> np.ndarray:
    """(T, K) 0/1: step k (1-based ``step`` of each segment) on frames start_frame .. end_frame - 1."""
    y = np.zeros((len(video.labels), num_steps), dtype=np.uint8)
    for s in video.segments:
        if not 1 <= s["step"] <= num_steps:
            raise DataError(f"video {video.video_id!r}: segment step {s['step']} outside 1..{num_steps}")
        y[s["start_frame"] : s["end_frame"], s["step"] - 1] = 1
    return y


def recall_of(world: StepWorld, video_ids: list[str], assign: Callable[[str, int, int], np.ndarray]) -> dict:
    """Official recall of the (T, K) 0/1 assignments ``assign(video_id, T, K)``, per task and averaged."""
    truth, pred = {}, {}
    for vid in video_ids:
        v = world.videos[vid]
        k = len(world.tasks[v.task]["steps"])
        truth.setdefault(v.task, {})[vid] = step_truth(v, k)
        pred.setdefault(v.task, {})[vid] = assign(vid, len(v.labels), k)
    per_task = crosstask_recall(truth, pred)
    return {"recall": 100 * average_recall(per_task), "per_task": {t: 100 * r for t, r in sorted(per_task.items())},
            "num_videos": len(video_ids)}


def random_assignment(n_frames: int, n_steps: int, rng: np.random.Generator) -> np.ndarray:
    """K distinct frames drawn uniformly at random, given to the steps in order (one frame each)."""
    if n_frames < n_steps:
        raise DataError(f"cannot place {n_steps} steps in {n_frames} frames")
    y = np.zeros((n_frames, n_steps), dtype=np.uint8)
    y[np.sort(rng.choice(n_frames, n_steps, replace=False)), np.arange(n_steps)] = 1
    return y


def baselines(world: StepWorld, video_ids: list[str], seeds=(0, 1, 2)) -> dict:
    """Recall of the evenly spread steps (official uniform baseline) and of random frames (mean over seeds)."""
    evenly = recall_of(world, video_ids, lambda vid, t, k: uniform_assignment(t, k))["recall"]
    rand = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        rand.append(recall_of(world, video_ids, lambda vid, t, k, rng=rng: random_assignment(t, k, rng))["recall"])
    return {"evenly_spread_recall": evenly, "random_recall": float(np.mean(rand)),
            "random_recall_std": float(np.std(rand))}


# -- zero-shot: a TACo checkpoint ------------------------------------------------------------------
@torch.no_grad()
def taco_frame_embeddings(model, features: np.ndarray, mode: str = "tokens", half_window: int = 2) -> np.ndarray:
    """(T, D) features -> (T, width): TACo's frame tokens, or the pooled embedding of each frame's window."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    t = len(x)
    if mode == "tokens":
        window = model.video.position.num_embeddings
        parts = [model.encode_video(x[None, a : a + window], torch.ones(1, len(x[a : a + window]), dtype=torch.bool))
                 .tokens[0] for a in range(0, t, window)]
        return torch.cat(parts).float().numpy()
    if mode != "window":
        raise ConfigError(f"zero-shot mode must be one of {', '.join(ZERO_SHOT_MODES)}, not {mode!r}")
    width = 2 * half_window + 1
    video, mask = torch.zeros(t, width, x.shape[1]), torch.zeros(t, width, dtype=torch.bool)
    for i in range(t):
        lo, hi = max(0, i - half_window), min(t, i + half_window + 1)
        video[i, : hi - lo], mask[i, : hi - lo] = x[lo:hi], True
    return model.encode_video(video, mask).pooled.float().numpy()


@torch.no_grad()
def taco_text_embeddings(model, tokenizer, texts: list[str], max_words: int) -> np.ndarray:
    encs = [encode_caption(tokenizer, t, max_words) for t in texts]
    n = max(len(e["input_ids"]) for e in encs)
    ids, mask = torch.zeros(len(encs), n, dtype=torch.long), torch.zeros(len(encs), n, dtype=torch.long)
    for i, e in enumerate(encs):
        ids[i, : len(e["input_ids"])], mask[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"]), 1
    return model.encode_text(ids, mask).pooled.float().numpy()


def zero_shot_recall(checkpoint, world: StepWorld, store, video_ids: list[str], mode: str = "tokens",
                     half_window: int = 2) -> dict:
    """Recall of a TACo checkpoint scoring frames against step texts (no training on the steps)."""
    from vidlang.text.pretrained import load_tokenizer

    folder = ckpt.find_checkpoint(checkpoint)
    model, cfg, _ = model_from_checkpoint(folder, "taco")
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    check_lengths(world, store, video_ids)
    steps = {t: taco_text_embeddings(model, tokenizer, d["steps"], cfg.data.max_words) for t, d in world.tasks.items()}

    def assign(vid, t, k):
        frames = taco_frame_embeddings(model, store[vid], mode, half_window)
        return localize_steps(frame_step_scores(frames, steps[world.videos[vid].task]))

    return recall_of(world, video_ids, assign)


# -- supervised: the trained frame head --------------------------------------------------------------
def head_recall(model, dataset: FrameLabelledVideos, device="cpu") -> dict:
    """Decode each video's task-step columns of the frame head's logits (background left out, as in CrossTask)."""
    world = dataset.world
    decoded = {}
    for vid, logits, _ in frame_scores(model, dataset, device):
        decoded[vid] = localize_steps(logits[:, world.tasks[world.videos[vid].task]["step_ids"]])
    return recall_of(world, dataset.videos, lambda vid, t, k: decoded[vid])


def evaluate(model, dataset: FrameLabelledVideos, cfg: Config | None = None, device="cpu", distributed=None) -> dict:
    out = head_recall(model, dataset, device)
    return {"recall": out["recall"], **{f"recall_task{t}": r for t, r in out["per_task"].items()},
            **baselines(dataset.world, dataset.videos), "num_videos": out["num_videos"]}


def evaluate_checkpoint(checkpoint, annotations, features, split=None, device="cpu", allow_train_overlap=False,
                        mode: str = "tokens", half_window: int = 2) -> tuple[dict, dict]:
    """A TACo checkpoint: zero-shot recall; a frame head (probe): supervised recall. Plus the baselines."""
    world, store = read_step_world(annotations), open_store(features)
    ids = scored_videos(world, store, split)
    kind = ckpt.read_meta(ckpt.find_checkpoint(checkpoint)).get("model")
    if kind == "taco":
        info = held_out(ckpt.find_checkpoint(checkpoint), ids, allow_train_overlap)
        out = zero_shot_recall(checkpoint, world, store, ids, mode, half_window)
        stamp = f"zero-shot TACo ({mode}{f', window {2 * half_window + 1}' if mode == 'window' else ''}) x step text cosine"
    elif kind == "probe":
        model, meta = load_frame_probe(checkpoint, device)
        info = held_out(meta["checkpoint"], ids, allow_train_overlap)
        out = head_recall(model, FrameLabelledVideos(ids, store, world), device)
        stamp = f"supervised linear frame head on {meta['probe']['encoder']} features"
    else:
        raise ConfigError(f"{checkpoint} holds a {kind!r} model: step localization scores a TACo or a frame-head checkpoint")
    metrics = {"recall": out["recall"], **{f"recall_task{t}": r for t, r in out["per_task"].items()},
               **baselines(world, ids), "num_videos": len(ids)}
    return metrics, {**info, "protocol": f"CrossTask recall (Zhukov DP, exactly one frame per step), mean over tasks, "
                                         f"feature-frame ground truth; {stamp}"}


TASK = Task(
    name="step_localization",
    model="probe",
    build=build_frame_experiment,
    forward=lambda model, batch, cfg, generator, shard: model(batch),
    log_keys=("loss",),
    evaluate=evaluate,
    show_keys=lambda cfg: ("recall", "evenly_spread_recall", "random_recall"),
    scoring=lambda cfg: f"CrossTask recall (Zhukov DP), supervised linear frame head on {cfg.probe.encoder} features",
    score_checkpoint=evaluate_checkpoint,
)
