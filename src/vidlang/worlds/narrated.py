"""Narrated multi-step scenes: a built-in world for MV-GPT pretraining and captioning.

A scene is one object (shape, size, an optional static distractor, one background) going through
``steps`` steps. Each step is a clip rendered by :func:`vidlang.worlds.synthetic.render_clip`, with a
narration sentence (how-to style ASR: "okay so now we make the red ball slide to the right") and
captions from :func:`~vidlang.worlds.synthetic.describe` ("a red ball is sliding to the right").

The recipe grammar makes the next step follow from the current one: the motion advances along
``MOTION_CYCLE`` (round shapes skip "spin") and the colour along ``COLOUR_CYCLE``; the first step
is random. So the future narration is predictable from the present step (its frames, or its
narration when that names them) but not from nothing. Narrations sometimes leave out the colour,
the noun ("it") or the motion, which then must be read from the frames.

:func:`write_narrated_world` writes the steps of a scene one after another as ONE video:

- ``features/``: stacked store (``features.npy`` (N, steps*frames, 192), ``video_ids.txt``,
  ``meta.json`` with fps) of :func:`~vidlang.worlds.synthetic.clip_features`;
- ``frames/`` (``raw_frames=True``): the same layout with raw RGB frames flattened to
  (T, size*size*3) float16 in [0, 1], for a pixel (ViViT) encoder;
- ``transcripts.json``: HowTo100M format; each narration is split into two ASR segments of
  fewer than 10 words that :func:`~vidlang.data.narration.pair_utterances` (min_words=10) merges
  back into exactly one step;
- ``captions.jsonl``: ``{video_id, caption, start, end, split, step}``, ``captions_per_step`` per step;
- ``scenes.json`` (each step's attributes and narration), ``train_ids.txt``, ``val_ids.txt`` and
  ``meta.json`` (written last; a folder with the same meta is reused).

Deterministic for a seed; 200 scenes x 4 steps take a few seconds.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vidlang.data.annotations import read_jsonl
from vidlang.data.idlists import filter_clips, read_id_list
from vidlang.data.narration import (
    Streams,
    attach_transcripts,
    pair_utterances,
    read_howto100m,
)
from vidlang.data.records import Clip
from vidlang.errors import ConfigError, DataError
from vidlang.worlds.synthetic import (
    BACKBONE,
    COLOURS,
    FEATURE_DIM,
    ROUND_SHAPES,
    SHAPE_NOUNS,
    SIZES,
    WorldConfig,
    clip_features,
    describe,
    render_clip,
)

__all__ = ["NarratedConfig", "NarratedWorld", "Scene", "MOTION_CYCLE", "COLOUR_CYCLE", "next_step", "first_step",
           "narrate", "generate_scene", "write_narrated_world"]

GENERATOR_VERSION = 1
MOTION_CYCLE = ("slide_right", "spin", "move_up", "shrink", "slide_left", "bounce", "grow", "move_down",
                "fade_out", "fade_in", "blink", "still")
COLOUR_CYCLE = ("red", "orange", "yellow", "green", "blue", "purple", "white")
assert set(COLOUR_CYCLE) == set(COLOURS)
# Base-form verb phrases per motion, for "we make the ball ___".
BASE_VERBS: dict[str, tuple[str, ...]] = {
    "slide_left": ("slide to the left", "move over to the left", "go left"),
    "slide_right": ("slide to the right", "move over to the right", "go right"),
    "move_up": ("rise up", "float upward", "climb up"),
    "move_down": ("fall down", "drop down", "sink down"),
    "spin": ("spin around", "rotate in place", "turn around"),
    "grow": ("grow bigger", "expand", "get larger"),
    "shrink": ("shrink", "get smaller", "become smaller"),
    "bounce": ("bounce up and down", "hop", "jump up and down"),
    "fade_out": ("fade away", "disappear", "vanish"),
    "fade_in": ("appear", "fade in", "emerge"),
    "blink": ("blink on and off", "flash", "flicker"),
    "still": ("stay still", "sit still", "remain in place"),
}
assert set(BASE_VERBS) == set(MOTION_CYCLE)
_WITH_MOTION = ("{o} we are going to make {np} {v} {c}", "{o} in this step {np} will {v} {c}",
                "{o} watch closely as {np} starts to {v} {c}", "{o} we let {np} {v} {c}",
                "{o} the next thing is to have {np} {v} {c}")
_NO_MOTION = ("{o} have a look at what {np} does in this step {c}", "{o} keep your eyes on {np} for this part {c}")
_OPENERS = ("okay so", "alright so", "and now", "next up", "so then", "now", "okay now")
_CLOSERS = ("just like this", "like you can see here", "nice and slowly", "and that is all there is to it",
            "right here", "for a moment", "")
MIN_NARRATION_WORDS, MAX_NARRATION_WORDS = 10, 18  # two ASR chunks of < 10 words each


@dataclass
class NarratedConfig:
    num_scenes: int = 200
    steps: int = 4
    frames: int = 16  # per step
    size: int = 32
    fps: float = 8.0
    captions_per_step: int = 3
    distractor_prob: float = 0.3
    omit_prob: float = 0.25  # chance a narration leaves out the colour, the noun, the motion (each)
    seed: int = 0

    def check(self) -> "NarratedConfig":
        for key, value in asdict(self).items():
            kind = (int, float) if key in ("fps", "distractor_prob", "omit_prob") else int
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ConfigError(f"NarratedConfig.{key} must be a number of type {kind}, got {value!r}")
        for key, ok in (("num_scenes", self.num_scenes >= 1), ("steps", self.steps >= 2),
                        ("frames", self.frames >= 2), ("size", self.size >= 8), ("fps", self.fps > 0),
                        ("captions_per_step", self.captions_per_step >= 1),
                        ("distractor_prob", 0.0 <= self.distractor_prob <= 1.0),
                        ("omit_prob", 0.0 <= self.omit_prob <= 1.0)):
            if not ok:
                raise ConfigError(f"NarratedConfig.{key} = {getattr(self, key)!r} is out of range")
        return self

    def world(self) -> WorldConfig:
        return WorldConfig(num_videos=1, frames=self.frames, size=self.size, fps=self.fps,
                           distractor_prob=self.distractor_prob, seed=self.seed).check()


# ----------------------------------------------------------------------------- the recipe grammar
def _motions(shape: str) -> tuple[str, ...]:
    return tuple(m for m in MOTION_CYCLE if not (m == "spin" and shape in ROUND_SHAPES))


def first_step(rng: np.random.Generator, distractor_prob: float = 0.3) -> dict:
    """Random attributes of a scene's first step (as :func:`~vidlang.worlds.synthetic.sample_attributes`)."""
    shape = str(rng.choice(list(SHAPE_NOUNS)))
    colour = str(rng.choice(COLOUR_CYCLE))
    attrs = {"shape": shape, "colour": colour, "size": str(rng.choice(list(SIZES))),
             "motion": str(rng.choice(_motions(shape))), "distractor": None}
    if rng.random() < distractor_prob:
        attrs["distractor"] = {"shape": str(rng.choice([s for s in SHAPE_NOUNS if s != shape])),
                               "colour": str(rng.choice(COLOUR_CYCLE))}
    return attrs


def next_step(attrs: dict) -> dict:
    """The step after ``attrs``: next motion and next colour in their cycles; the rest is kept."""
    motions = _motions(attrs["shape"])
    colour = COLOUR_CYCLE[(COLOUR_CYCLE.index(attrs["colour"]) + 1) % len(COLOUR_CYCLE)]
    return {**attrs, "motion": motions[(motions.index(attrs["motion"]) + 1) % len(motions)], "colour": colour}


def narrate(attrs: dict, noun: str, rng: np.random.Generator, omit_prob: float = 0.25) -> str:
    """One narration sentence of 10-18 words for a step."""
    for _ in range(100):
        if rng.random() < omit_prob:
            np_ = "it"
        else:
            adjs = [attrs["size"]] if rng.random() < 0.3 else []
            adjs += [attrs["colour"]] if rng.random() >= omit_prob else []
            np_ = " ".join(["the", *adjs, noun])
        no_motion = rng.random() < omit_prob and np_ != "it"  # never "look at what it does"
        templates = _NO_MOTION if no_motion else _WITH_MOTION
        text = str(rng.choice(templates)).format(o=rng.choice(_OPENERS), np=np_, c=rng.choice(_CLOSERS),
                                                 v=rng.choice(BASE_VERBS[attrs["motion"]]))
        words = text.split()
        if MIN_NARRATION_WORDS <= len(words) <= MAX_NARRATION_WORDS:
            return " ".join(words)
    raise AssertionError("narration grammar cannot meet its length bounds")  # pragma: no cover


@dataclass
class Scene:
    video_id: str
    steps: list[dict]  # attributes per step
    narrations: list[str]
    captions: list[list[str]]
    frames: np.ndarray  # (steps * frames, H, W, 3) uint8


def _captions(attrs: dict, k: int, rng: np.random.Generator) -> list[str]:
    out: list[str] = []
    for _ in range(20 * k):
        c = describe(attrs, rng)
        if c not in out:
            out.append(c)
        if len(out) == k:
            break
    return out + [describe(attrs, rng) for _ in range(k - len(out))]


def generate_scene(cfg: NarratedConfig, index: int) -> Scene:
    """Scene ``index`` of the world (independent of ``num_scenes``)."""
    rng = np.random.default_rng([cfg.seed, index, 0])
    steps = [first_step(rng, cfg.distractor_prob)]
    while len(steps) < cfg.steps:
        steps.append(next_step(steps[-1]))
    used = [s["colour"] for s in steps]
    if steps[0]["distractor"] and steps[0]["distractor"]["colour"] in used and len(used) < len(COLOUR_CYCLE):
        other = str(rng.choice([c for c in COLOUR_CYCLE if c not in used]))  # never a colour of the object
        for s in steps:
            s["distractor"] = {**s["distractor"], "colour": other}
    noun = str(rng.choice(SHAPE_NOUNS[steps[0]["shape"]]))  # a narrator keeps to one word
    narrations = [narrate(a, noun, rng, cfg.omit_prob) for a in steps]
    captions = [_captions(a, cfg.captions_per_step, rng) for a in steps]
    world = cfg.world()
    # The same render stream for every step: one background and distractor for the whole scene.
    frames = np.concatenate([render_clip(a, world, np.random.default_rng([cfg.seed, index, 1])) for a in steps])
    return Scene(f"scene{index:05d}", steps, narrations, captions, frames)


# ----------------------------------------------------------------------------- writing
def _step_span(cfg: NarratedConfig, j: int) -> tuple[float, float]:
    """Times of step j, half a frame inside its edges (so cutting at fps gives exactly its frames)."""
    dur = cfg.frames / cfg.fps
    return round(j * dur + 0.5 / cfg.fps, 4), round((j + 1) * dur - 0.5 / cfg.fps, 4)


def _asr(cfg: NarratedConfig, scene: Scene) -> dict:
    start, end, text = [], [], []
    for j, narration in enumerate(scene.narrations):
        words = narration.split()
        a, b = _step_span(cfg, j)
        mid = round((a + b) / 2, 4)
        half = len(words) // 2
        start += [a, mid]
        end += [mid, b]
        text += [" ".join(words[:half]), " ".join(words[half:])]
    return {"start": start, "end": end, "text": text}


def _write_stack(folder: Path, ids: list[str], array: np.ndarray, meta: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "features.npy", array)
    (folder / "video_ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    (folder / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


_FILES = ("features/features.npy", "features/video_ids.txt", "features/meta.json", "transcripts.json",
          "captions.jsonl", "scenes.json", "train_ids.txt", "val_ids.txt")


def write_narrated_world(out_dir: str | Path, cfg: NarratedConfig | None = None, *, val_fraction: float = 0.2,
                         raw_frames: bool = False) -> "NarratedWorld":
    """Write the narrated world under ``out_dir`` (see the module doc) and return it opened.

    The last ``val_fraction`` of the scenes are "validate". Reuses a complete folder with the same meta.
    """
    cfg = (cfg or NarratedConfig()).check()
    if not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction = {val_fraction!r} must be in (0, 1)")
    n_val = max(1, int(round(cfg.num_scenes * val_fraction)))
    if n_val >= cfg.num_scenes:
        raise ConfigError(f"num_scenes = {cfg.num_scenes} is too few for a train/validate split")
    out = Path(out_dir)
    meta = {"generator": {**asdict(cfg), "val_fraction": val_fraction, "raw_frames": raw_frames,
                          "version": GENERATOR_VERSION}, "fps": float(cfg.fps), "backbone": BACKBONE}
    meta_path = out / "meta.json"
    files = _FILES + (("frames/features.npy", "frames/video_ids.txt", "frames/meta.json") if raw_frames else ())
    if meta_path.is_file() and all((out / f).is_file() for f in files):
        try:
            if json.loads(meta_path.read_text(encoding="utf-8")) == meta:
                return NarratedWorld(out)
        except (OSError, ValueError):
            pass  # unreadable: rebuild
    out.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # meta.json is written last: it marks a complete world
    scenes = [generate_scene(cfg, i) for i in range(cfg.num_scenes)]
    ids = [s.video_id for s in scenes]
    split = {v: "validate" if i >= len(ids) - n_val else "train" for i, v in enumerate(ids)}
    store_meta = {"fps": float(cfg.fps), "backbone": BACKBONE, "frames_per_step": cfg.frames, "steps": cfg.steps}
    feats = np.stack([np.concatenate([clip_features(s.frames[j * cfg.frames:(j + 1) * cfg.frames])
                                      for j in range(cfg.steps)]) for s in scenes])
    _write_stack(out / "features", ids, feats, {**store_meta, "dim": FEATURE_DIM})
    for name in ("features.npy", "video_ids.txt", "meta.json"):  # no stale pixel store from an older build
        (out / "frames" / name).unlink(missing_ok=True)
    if raw_frames:
        pix = np.stack([(s.frames.reshape(len(s.frames), -1) / 255.0).astype(np.float16) for s in scenes])
        _write_stack(out / "frames", ids, pix, {**store_meta, "dim": int(pix.shape[-1]), "frame_size": cfg.size,
                                                "layout": "frame flattened as H x W x RGB, float16 in [0, 1]"})
    (out / "transcripts.json").write_text(json.dumps({s.video_id: _asr(cfg, s) for s in scenes}), encoding="utf-8")
    lines = [json.dumps({"video_id": s.video_id, "caption": c, "start": a, "end": b,
                         "split": split[s.video_id], "step": j})
             for s in scenes for j, caps in enumerate(s.captions) for (a, b) in [_step_span(cfg, j)] for c in caps]
    (out / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "scenes.json").write_text(json.dumps(
        {s.video_id: {"split": split[s.video_id], "steps": s.steps, "narrations": s.narrations} for s in scenes},
        indent=1), encoding="utf-8")
    for name, want in (("train_ids.txt", "train"), ("val_ids.txt", "validate")):
        (out / name).write_text("".join(v + "\n" for v in ids if split[v] == want), encoding="utf-8")
    meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return NarratedWorld(out)


# ----------------------------------------------------------------------------- reading back
class NarratedWorld:
    """Paths and clip lists of a written narrated world."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            self.meta = json.loads((self.root / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{self.root} is not a complete narrated world (meta.json: {e}); "
                            "write it with write_narrated_world") from e
        self.features = self.root / "features"
        self.frames = self.root / "frames" if self.meta["generator"].get("raw_frames") else None
        self.transcripts = self.root / "transcripts.json"
        self.captions = self.root / "captions.jsonl"
        self.train_ids = read_id_list(self.root / "train_ids.txt")
        self.val_ids = read_id_list(self.root / "val_ids.txt")

    def ids(self, split: str) -> list[str]:
        if split not in ("train", "validate"):
            raise ConfigError(f"narrated world split must be 'train' or 'validate', got {split!r}")
        return self.train_ids if split == "train" else self.val_ids

    def streams(self) -> Streams:
        return read_howto100m(self.transcripts)

    def pretrain_clips(self, split: str = "train", min_words: int = 10, counter: Counter | None = None) -> list[Clip]:
        """MV-GPT (present, future) pairs of the split's scenes."""
        keep = set(self.ids(split))
        streams = {v: u for v, u in self.streams().items() if v in keep}
        return pair_utterances(streams, min_words=min_words, split=split, counter=counter)

    def caption_clips(self, split: str = "train", with_transcript: bool = True) -> list[Clip]:
        """One clip per (step, caption); the transcript is that step's narration (its "ASR")."""
        clips = filter_clips(read_jsonl(self.captions), self.ids(split))
        return attach_transcripts(clips, self.streams()) if with_transcript else clips

