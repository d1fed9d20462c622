"""A small procedural video-text world for ``vidlang demo`` and the tests.

Clips show one main shape (a ball, block, wedge, arrow, ...) with a colour and a size doing one
motion (sliding, rising, spinning, growing, fading, ...), sometimes beside a small static
distractor. Captions come from a grammar with synonyms and function words, so the shape
noun and the motion verb carry most of the meaning. Several motions differ only by
temporal order (left/right, up/down, grow/shrink, fade in/out), so a model that reads
the frame order beats one that mean-pools them.

Everything is numpy, deterministic for a seed, and needs no data or network.
:func:`clip_features` is a fixed hand-made per-frame descriptor, not a learned backbone.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vidlang.errors import ConfigError, DataError
from vidlang.worlds.media import MEDIA_DIR, videos_complete, write_clip_videos

__all__ = ["WorldConfig", "SyntheticClip", "generate_world", "sample_attributes", "render_clip",
           "describe", "clip_features", "write_world", "attribute_query_examples",
           "SHAPE_NOUNS", "MOTION_VERBS", "COLOURS", "FEATURE_DIM", "BACKBONE"]

BACKBONE = "vidlang-synthetic-descriptor"
# Bump when rendering, captions or features change: a stored world with another version is rebuilt.
GENERATOR_VERSION = 1

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (235, 220, 50),
    "purple": (150, 60, 205), "white": (240, 240, 240), "orange": (245, 140, 30),
}
SIZES = {"small": 0.13, "large": 0.21}  # object radius as a fraction of the frame side
# Shape -> noun synonyms. Circles and rings look the same when rotated, so they never spin.
SHAPE_NOUNS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc", "dot"),
    "square": ("square", "block", "tile"),
    "triangle": ("triangle", "wedge"),
    "star": ("star",),
    "arrow": ("arrow", "pointer"),
    "ring": ("ring", "hoop"),
    "bar": ("bar", "rod"),
}
ROUND_SHAPES = ("circle", "ring")
# Motion -> verbs as (3rd person or None, -ing form, complements); "" is "no complement".
# Words and templates were picked so that spaCy's small English tagger tags the noun NOUN
# and the verb VERB; None marks verbs whose present tense it mis-tags (e.g. "slides" as NOUN).
_LEFT, _RIGHT = ("to the left", "left"), ("to the right", "right")
MOTION_VERBS: dict[str, tuple[tuple[str | None, str, tuple[str, ...]], ...]] = {
    "slide_left": ((None, "sliding", _LEFT + ("leftward",)), (None, "moving", _LEFT),
                   ("goes", "going", _LEFT), (None, "traveling", _LEFT)),
    "slide_right": ((None, "sliding", _RIGHT + ("rightward",)), (None, "moving", _RIGHT),
                    ("goes", "going", _RIGHT), (None, "traveling", _RIGHT)),
    "move_up": (("rises", "rising", ("", "up")), ("floats", "floating", ("up", "upward")),
                (None, "climbing", ("", "up")), (None, "moving", ("up", "upward"))),
    "move_down": (("falls", "falling", ("", "down")), ("drops", "dropping", ("", "down")),
                  (None, "sinking", ("", "down")), (None, "moving", ("down", "downward"))),
    "spin": (("spins", "spinning", ("", "around")), ("rotates", "rotating", ("", "in place")),
             ("turns", "turning", ("around",))),
    "grow": (("grows", "growing", ("", "bigger", "in size")), ("expands", "expanding", ("",)),
             ("gets", "getting", ("bigger", "larger"))),
    "shrink": ((None, "shrinking", ("", "in size")), ("gets", "getting", ("smaller",)),
               ("becomes", "becoming", ("smaller",))),
    "bounce": (("bounces", "bouncing", ("", "up and down")), ("hops", "hopping", ("",)),
               ("jumps", "jumping", ("", "up and down"))),
    "fade_out": (("fades", "fading", ("out", "away")), ("disappears", "disappearing", ("",)),
                 ("vanishes", "vanishing", ("",))),
    "fade_in": (("appears", "appearing", ("",)), ("fades", "fading", ("in",)),
                ("emerges", "emerging", ("",))),
    "blink": (("blinks", "blinking", ("", "on and off")), (None, "flashing", ("", "on and off")),
              ("flickers", "flickering", ("",))),
    "still": (("stays", "staying", ("still", "in place")), ("sits", "sitting", ("still",)),
              ("remains", "remaining", ("still", "motionless"))),
}
MOTIONS = tuple(MOTION_VERBS)
ADVERBS = ("slowly", "smoothly", "steadily")


@dataclass
class WorldConfig:
    num_videos: int = 600
    frames: int = 16
    size: int = 32
    fps: float = 8.0
    captions_per_video: int = 5
    distractor_prob: float = 0.3
    seed: int = 0

    def check(self) -> "WorldConfig":
        """Raise ConfigError naming the first bad field."""
        for key, value in asdict(self).items():
            kind = (int, float) if key in ("fps", "distractor_prob") else int
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ConfigError(f"WorldConfig.{key} must be a number of type {kind}, got {value!r}")
        for key, ok in (("num_videos", self.num_videos >= 1), ("frames", self.frames >= 2),
                        ("size", self.size >= 8), ("fps", self.fps > 0),
                        ("captions_per_video", self.captions_per_video >= 1),
                        ("distractor_prob", 0.0 <= self.distractor_prob <= 1.0)):
            if not ok:
                raise ConfigError(f"WorldConfig.{key} = {getattr(self, key)!r} is out of range")
        return self


@dataclass
class SyntheticClip:
    video_id: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    attributes: dict
    captions: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- attributes

def sample_attributes(rng: np.random.Generator, distractor_prob: float = 0.3) -> dict:
    """Draw the semantic attributes of one clip (JSON-serialisable)."""
    shape = str(rng.choice(list(SHAPE_NOUNS)))
    motions = [m for m in MOTIONS if not (m == "spin" and shape in ROUND_SHAPES)]
    colour = str(rng.choice(list(COLOURS)))
    attrs = {"shape": shape, "colour": colour, "size": str(rng.choice(list(SIZES))),
             "motion": str(rng.choice(motions)), "distractor": None}
    if rng.random() < distractor_prob:
        attrs["distractor"] = {"shape": str(rng.choice([s for s in SHAPE_NOUNS if s != shape])),
                               "colour": str(rng.choice([c for c in COLOURS if c != colour]))}
    return attrs


def _check_attributes(attrs: dict) -> None:
    if not isinstance(attrs, dict):
        raise DataError(f"clip attributes must be a dict, got {type(attrs).__name__}")
    for key, allowed in (("shape", SHAPE_NOUNS), ("colour", COLOURS), ("size", SIZES), ("motion", MOTION_VERBS)):
        if attrs.get(key) not in allowed:
            raise DataError(f"clip attribute {key!r} = {attrs.get(key)!r}; expected one of {sorted(allowed)}")


# ----------------------------------------------------------------------------- rendering

def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Coverage (0/1) of ``shape`` at object coordinates (u, v); the shape fits radius ~1."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.5 ** 2)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if shape == "triangle":  # apex up (image y points down), circumradius 1.2
        return (v <= 0.6) & (-0.866 * u - 0.5 * v <= 0.6) & (0.866 * u - 0.5 * v <= 0.6)
    if shape == "arrow":  # shaft plus head, pointing along +u
        shaft = (u >= -1.0) & (u <= 0.2) & (np.abs(v) <= 0.25)
        head = (u >= 0.1) & (u <= 1.0) & (np.abs(v) <= 0.75 * (1.0 - u) / 0.9)
        return shaft | head
    if shape == "bar":
        return (np.abs(u) <= 1.1) & (np.abs(v) <= 0.35)
    if shape == "star":  # five points, one pointing up
        theta = np.arctan2(v, u) + np.pi / 2
        f = np.abs(((theta * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2  # 1 at the tips, 0 between
        return np.hypot(u, v) <= 0.5 + 0.7 * f ** 2
    raise DataError(f"unknown shape {shape!r}; expected one of {sorted(SHAPE_NOUNS)}")


def _trajectory(motion: str, cfg: WorldConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-frame centre (x, y in pixels), radius scale, rotation angle and opacity."""
    T, S = cfg.frames, float(cfg.size)
    t = np.linspace(0.0, 1.0, T)
    cx = np.full(T, S / 2 + rng.uniform(-0.1, 0.1) * S)
    cy = np.full(T, S / 2 + rng.uniform(-0.1, 0.1) * S)
    scale, alpha = np.ones(T), np.ones(T)
    angle = np.full(T, rng.uniform(0, 2 * np.pi))
    span = rng.uniform(0.22, 0.3) * S  # half the travel of a slide / rise
    if motion in ("slide_left", "slide_right"):
        sign = 1.0 if motion == "slide_right" else -1.0
        cx = S / 2 + sign * span * (2 * t - 1)
    elif motion in ("move_up", "move_down"):
        sign = 1.0 if motion == "move_down" else -1.0
        cy = S / 2 + sign * span * (2 * t - 1)
    elif motion == "spin":
        angle = angle + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0) * 2 * np.pi * t
    elif motion in ("grow", "shrink"):
        lo, hi = rng.uniform(0.4, 0.55), rng.uniform(1.25, 1.45)
        scale = lo + (hi - lo) * (t if motion == "grow" else 1 - t)
    elif motion == "bounce":  # hops along a vertical parabola
        ground, height = S * rng.uniform(0.68, 0.75), S * rng.uniform(0.3, 0.42)
        s = (t * rng.choice([1.5, 2.0, 2.5])) % 1.0
        cy = ground - 4 * height * s * (1 - s)
    elif motion == "fade_out":
        alpha = 1 - t
    elif motion == "fade_in":
        alpha = t.copy()
    elif motion == "blink":
        period = int(rng.choice([2, 3]))
        alpha = (((np.arange(T) + rng.integers(period * 2)) // period) % 2 == 0).astype(float)
    elif motion != "still":
        raise DataError(f"unknown motion {motion!r}; expected one of {list(MOTIONS)}")
    return {"cx": cx, "cy": cy, "scale": scale, "angle": angle, "alpha": alpha}


def _coverage(shape: str, traj: dict[str, np.ndarray], radius: float, size: int, ss: int = 2) -> np.ndarray:
    """Anti-aliased (T, H, W) coverage in [0, 1], by ``ss`` x ``ss`` supersampling."""
    grid = ((np.arange(size * ss) + 0.5) / ss).astype(np.float32)  # sub-pixel centres, in pixels
    x, y = grid[None, None, :], grid[None, :, None]
    col = {k: v.astype(np.float32)[:, None, None] for k, v in traj.items()}  # (T, 1, 1) each
    c, s, r = np.cos(col["angle"]), np.sin(col["angle"]), radius * col["scale"]
    dx, dy = (x - col["cx"]) / r, (y - col["cy"]) / r
    u, v = c * dx + s * dy, -s * dx + c * dy  # rotate into the object's frame
    mask = _shape_mask(shape, u, v).astype(np.float32)
    T = mask.shape[0]
    return mask.reshape(T, size, ss, size, ss).mean(axis=(2, 4))


def render_clip(attributes: dict, cfg: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """Render a clip of ``cfg.frames`` frames, (T, H, W, 3) uint8, from its attributes."""
    _check_attributes(attributes)
    T, S = cfg.frames, cfg.size
    grey = rng.uniform(0, 70)
    bg = np.full((S, S, 3), grey, np.float32) + rng.uniform(-8, 8, 3).astype(np.float32)
    if rng.random() < 0.5:  # faint static texture: coarse blobs plus pixel noise
        blobs = rng.uniform(-6, 6, (4, 4, 1)).astype(np.float32)
        bg += np.kron(blobs, np.ones((-(-S // 4), -(-S // 4), 1), np.float32))[:S, :S]
        bg += rng.uniform(-3, 3, (S, S, 1)).astype(np.float32)
    frames = np.broadcast_to(bg, (T, S, S, 3)).copy()

    def paint(shape: str, colour: str, traj: dict, radius: float) -> None:
        rgb = np.clip(np.array(COLOURS[colour], np.float32) + rng.uniform(-15, 15, 3), 0, 255)
        a = (_coverage(shape, traj, radius, S) * traj["alpha"].astype(np.float32)[:, None, None])[..., None]
        frames[:] = frames * (1 - a) + rgb.astype(np.float32) * a

    if attributes.get("distractor"):
        d = attributes["distractor"]
        for key in ("shape", "colour"):
            if d.get(key) not in (SHAPE_NOUNS if key == "shape" else COLOURS):
                raise DataError(f"distractor attribute {key!r} = {d.get(key)!r} is unknown")
        pos = rng.uniform(0.15, 0.85, 2) * S
        still = {"cx": np.full(T, pos[0]), "cy": np.full(T, pos[1]), "scale": np.ones(T),
                 "angle": np.full(T, rng.uniform(0, 2 * np.pi)), "alpha": np.ones(T)}
        paint(d["shape"], d["colour"], still, 0.09 * S)
    traj = _trajectory(attributes["motion"], cfg, rng)
    paint(attributes["shape"], attributes["colour"], traj, SIZES[attributes["size"]] * S)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- captions

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# Caption templates: {a} article, {np} adjectives + noun, {v} verb form, {tail} complement/adverb.
_PROGRESSIVE = ("there is {a} {np} that is {v}{tail}", "{a} {np} is {v}{tail} in the video",
                "in the video {a} {np} is {v}{tail}", "here {a} {np} is {v}{tail}",
                "{a} {np} can be seen {v}{tail}", "a video of {a} {np} that is {v}{tail}")
_PRESENT = ("there is {a} {np} that {v}{tail}", "a clip of {a} {np} that {v}{tail}")


def describe(attributes: dict, rng: np.random.Generator) -> str:
    """One caption of a clip, drawn from the grammar (synonyms, tense, optional words)."""
    _check_attributes(attributes)
    noun = str(rng.choice(SHAPE_NOUNS[attributes["shape"]]))
    verbs = MOTION_VERBS[attributes["motion"]]
    third, ing, comps = verbs[rng.integers(len(verbs))]
    adjs = [attributes["size"]] if rng.random() < 0.4 else []
    adjs += [attributes["colour"]] if rng.random() < 0.85 else []
    np_ = " ".join(adjs + [noun])
    comp = str(rng.choice(comps))
    tail = (" " + comp if comp else "") + (" " + str(rng.choice(ADVERBS)) if rng.random() < 0.15 else "")
    present = third is not None and rng.random() < 0.3
    templates = _PRESENT if present else _PROGRESSIVE
    template = templates[rng.integers(len(templates))]
    return template.format(a=_article(np_), np=np_, v=third if present else ing, tail=tail)


# ----------------------------------------------------------------------------- features

# Per-group (mean, std) measured once on a default world, so features come out roughly standardised.
_FEATURE_GROUPS = (("colour_grid", 48, 0.16, 0.11), ("grey_grid", 64, 0.16, 0.115),
                   ("colour_hist", 64, 0.023, 0.12), ("motion_grid", 16, 0.008, 0.026))
FEATURE_DIM = sum(g[1] for g in _FEATURE_GROUPS)  # 192


def _pool(x: np.ndarray, cells: int) -> np.ndarray:
    """Average (T, H, W, C) over a cells x cells grid of near-equal blocks -> (T, cells, cells, C)."""
    rows = np.linspace(0, x.shape[1], cells + 1).astype(int)
    cols = np.linspace(0, x.shape[2], cells + 1).astype(int)
    sums = np.add.reduceat(np.add.reduceat(x, rows[:-1], axis=1), cols[:-1], axis=2)
    return sums / (np.diff(rows)[:, None, None] * np.diff(cols)[None, :, None])


def clip_features(frames: np.ndarray) -> np.ndarray:
    """A fixed, training-free, hand-made descriptor per frame: (T, H, W, 3) uint8 -> (T, 192) float32.

    Per frame: a 4x4 grid of mean colours (48), an 8x8 grid of mean intensity (64), the
    square root of a 4x4x4 joint colour histogram (64), and a 4x4 grid of absolute intensity
    change from the previous frame (16; unsigned, so the direction of a motion is only in
    the order of the frames). One feature per frame: features per second = the clip's fps.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise DataError(f"clip_features expects (T, H, W, 3) uint8 frames, got {frames.dtype} {frames.shape}")
    T, H, W, _ = frames.shape
    if T < 1 or H < 8 or W < 8:
        raise DataError(f"clip_features needs at least 1 frame of 8x8 pixels, got {frames.shape}")
    x = frames.astype(np.float32) / 255.0
    grey = x.mean(axis=-1, keepdims=True)
    colour_grid = _pool(x, 4).reshape(T, -1)
    grey_grid = _pool(grey, 8).reshape(T, -1)
    q = (frames // 64).astype(np.int64)  # 4 levels per channel
    bins = (q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).reshape(T, -1)
    hist = np.stack([np.bincount(b, minlength=64) for b in bins]).astype(np.float32) / (H * W)
    diff = np.abs(np.diff(grey, axis=0))
    diff = np.concatenate([diff[:1], diff], axis=0) if T > 1 else np.zeros_like(grey)
    motion_grid = _pool(diff, 4).reshape(T, -1)
    parts = [colour_grid, grey_grid, np.sqrt(hist), motion_grid]
    out = [(p - mu) / sd for p, (_, _, mu, sd) in zip(parts, _FEATURE_GROUPS)]
    return np.concatenate(out, axis=1).astype(np.float32)


# ----------------------------------------------------------------------------- worlds

def _clip_rng(seed: int, index: int) -> np.random.Generator:
    """Clip ``index``'s own stream: clip i is the same whatever ``num_videos`` is."""
    return np.random.default_rng([seed, index])


def generate_world(cfg: WorldConfig) -> list[SyntheticClip]:
    """Generate ``cfg.num_videos`` clips with captions; deterministic for ``cfg.seed``."""
    cfg.check()
    clips = []
    for i in range(cfg.num_videos):
        rng = _clip_rng(cfg.seed, i)
        attrs = sample_attributes(rng, cfg.distractor_prob)
        frames = render_clip(attrs, cfg, rng)
        captions: list[str] = []
        for _ in range(cfg.captions_per_video * 20):  # distinct captions where the grammar allows
            c = describe(attrs, rng)
            if c not in captions:
                captions.append(c)
            if len(captions) == cfg.captions_per_video:
                break
        while len(captions) < cfg.captions_per_video:
            captions.append(describe(attrs, rng))
        clips.append(SyntheticClip(f"synth{i:05d}", frames, attrs, captions))
    return clips


def _meta(cfg: WorldConfig, val_fraction: float) -> dict:
    return {"fps": float(cfg.fps), "dim": FEATURE_DIM, "backbone": BACKBONE,
            "generator": {**asdict(cfg), "val_fraction": val_fraction, "version": GENERATOR_VERSION}}


def _complete(out_dir: Path) -> bool:
    names = ("features.npy", "video_ids.txt", "annotations.json", "train_ids.txt", "val_ids.txt")
    return all((out_dir / n).is_file() for n in names)


def write_world(out_dir: Path, cfg: WorldConfig, val_fraction: float = 0.2, videos: bool = False) -> Path:
    """Write a world as a feature folder and return ``out_dir``.

    Layout (as msrvtt-ae128-dev): ``features.npy`` (N, T, D) float32, ``video_ids.txt``,
    ``annotations.json`` ``{video_id: {split, captions, attributes}}``, plus ``meta.json``,
    ``train_ids.txt`` and ``val_ids.txt``. The last ``val_fraction`` of the clips are
    "validate". ``videos``: each clip also as ``media/<id>.mp4`` (vidlang.worlds.media). A complete
    world with the same meta in ``out_dir`` is reused."""
    cfg.check()
    if not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction = {val_fraction!r} must be in (0, 1)")
    out_dir = Path(out_dir)
    meta = {**_meta(cfg, val_fraction), **({"media": MEDIA_DIR} if videos else {})}
    meta_path = out_dir / "meta.json"
    ids = [f"synth{i:05d}" for i in range(cfg.num_videos)]
    if meta_path.is_file() and _complete(out_dir) and (not videos or videos_complete(out_dir, ids)):
        try:
            if json.loads(meta_path.read_text(encoding="utf-8")) == meta:
                return out_dir
        except (OSError, ValueError):
            pass  # unreadable meta: rebuild
    n_val = max(1, int(round(cfg.num_videos * val_fraction)))
    if n_val >= cfg.num_videos:
        raise ConfigError(f"num_videos = {cfg.num_videos} is too few for a train/validate split")
    clips = generate_world(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # meta.json is written last: it marks a complete world
    if videos:
        write_clip_videos(out_dir, clips, cfg.fps)
    split = {vid: ("validate" if i >= len(ids) - n_val else "train") for i, vid in enumerate(ids)}
    np.save(out_dir / "features.npy", np.stack([clip_features(c.frames) for c in clips]))
    (out_dir / "video_ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    for name, want in (("train_ids.txt", "train"), ("val_ids.txt", "validate")):
        (out_dir / name).write_text("".join(v + "\n" for v in ids if split[v] == want), encoding="utf-8")
    ann = {c.video_id: {"split": split[c.video_id], "captions": c.captions, "attributes": c.attributes} for c in clips}
    (out_dir / "annotations.json").write_text(json.dumps(ann, indent=1), encoding="utf-8")
    meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out_dir


def attribute_query_examples() -> list[str]:
    """Text queries for the demo to show its top clips."""
    return ["a red ball bouncing", "a blue block sliding to the right", "a green arrow spinning around",
            "a small yellow star shrinking", "a white ring fading away", "a purple bar rising up"]
