"""Value checks by config key, checked after a config is loaded (a recipe, overrides, a checkpoint's
config.yaml), the keys a resumed run may change, and the renamed keys of older layouts. Each refusal names the key."""
from __future__ import annotations

import math
import warnings
from typing import Any

from vidlang.errors import ConfigError

# Value checks by key, after loading: (rule, what it means). Every float must also be finite.
_RULES = {
    ">0": (lambda v: v > 0, "a positive number"),
    ">=0": (lambda v: v >= 0, "a number >= 0"),
    ">=1": (lambda v: v >= 1, "an integer >= 1"),
    ">=2": (lambda v: v >= 2, "an integer >= 2"),
    ">=-1": (lambda v: v >= -1, "-1 (all), 0 (frozen) or a number of layers"),
    "[0,1]": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "[0,1)": (lambda v: 0 <= v < 1, "a probability in [0, 1)"),
    "(0,1]": (lambda v: 0 < v <= 1, "a probability in (0, 1]"),
}
VALUE_CHECKS = {
    "data.feature_fps": ">0", "data.max_frames": ">=1", "data.max_words": ">=2", "data.num_workers": ">=0",
    "model.text_trainable_layers": ">=-1", "model.width": ">=0", "model.video_layers": ">=0",
    "model.video_heads": ">=1", "model.fusion_layers": ">=1", "model.fusion_heads": ">=1",
    "model.max_video_positions": ">=1", "model.max_text_positions": ">=1", "model.dropout": "[0,1)",
    "taco.sentence_weight": ">=0", "taco.token_weight": ">=0", "taco.fusion_weight": ">=0",
    "taco.tau_sentence": ">0", "taco.tau_token": ">0", "taco.num_negatives": ">=0", "taco.captions_per_video": ">=1",
    "mvgpt.frame_size": ">=1", "mvgpt.tubelet_time": ">=1", "mvgpt.tubelet_size": ">=1",
    "mvgpt.vivit_spatial_layers": ">=0", "mvgpt.vivit_temporal_layers": ">=0", "mvgpt.decoder_layers": ">=1",
    "mvgpt.decoder_heads": ">=1", "mvgpt.min_utterance_words": ">=1", "mvgpt.max_target_len": ">=2",
    "mvgpt.fg_weight": ">=0", "mvgpt.bg_weight": ">=0", "mvgpt.mlm_weight": ">=0", "mvgpt.mask_prob": "[0,1]",
    "mvgpt.freeze_visual_steps": ">=0", "mvgpt.scst_steps": ">=0", "mvgpt.scst_samples": ">=1",
    "mvgpt.scst_lr_scale": ">0", "mvgpt.scst_xe_weight": ">=0", "mvgpt.neighbour_captions": ">=0",
    "decode.max_len": ">=1", "decode.beam_size": ">=1", "decode.no_repeat_ngram": ">=0", "decode.top_p": "(0,1]",
    "decode.temperature": ">0", "decode.rerank_neighbours": ">=1", "decode.rerank_prior": ">=0",
    "train.steps": ">=0", "train.batch_size": ">=1", "train.lr": ">0", "train.text_lr": ">=0",
    "train.weight_decay": ">=0", "train.warmup_steps": ">=0", "train.grad_clip": ">=0", "train.eval_every": ">=0",
    "train.save_every": ">=1", "train.log_every": ">=1", "train.threads": ">=0", "train.grad_accum_steps": ">=1",
    "train.members": ">=1",
    "eval.token_scale": ">=0", "eval.rerank_topk": ">=1", "eval.batch_pairs": ">=1", "eval.querybank": ">=0",
    "eval.querybank_beta": ">0",
}
CHOICES = {
    "model.text_pooling": ("cls", "mean"), "taco.negatives": ("cascade", "random"),
    "mvgpt.visual": ("features", "vivit"), "mvgpt.output_vocab": ("full", "train"),
    "mvgpt.scst_baseline": ("greedy", "mean"),
    "decode.method": ("greedy", "beam", "nucleus", "rerank"), "train.optimizer": ("adam", "adamw"),
    "train.dist_backend": ("auto", "gloo", "nccl"), "train.resume": ("auto", "force"),
}


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Keys a resumed run may change: how long it runs, how often it logs/saves/validates, and where it runs.
# Any other change refuses to resume unless train.resume=force (train.py).
RESUME_MAY_CHANGE = frozenset({
    "train.steps", "train.eval_every", "train.save_every", "train.log_every", "train.threads", "train.device",
    "train.dist_backend", "train.resume", "train.out_dir", "train.init_from", "train.activation_checkpointing",
    "data.num_workers",
})


def check_flat_values(values: dict[str, Any], source: str = "", overridden: set[str] = frozenset()) -> None:
    """Refuse values out of range (VALUE_CHECKS, CHOICES, finite floats), naming the key and where it
    was set: an override (a key in ``overridden``), else ``source``."""
    for key, value in values.items():
        where = " (from an override)" if key in overridden else f" (in {source})" if source else ""
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}{where}")
        rule = VALUE_CHECKS.get(key)
        if rule is not None and value is not None and not _RULES[rule][0](value):
            raise ConfigError(f"config key '{key}' must be {_RULES[rule][1]}, got {value!r}{where}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(CHOICES[key])}, got {value!r}{where}")
    where = " (from an override)" if "train.steps" in overridden else f" (in {source})" if source else ""
    if values.get("train.steps") == 0 and not values.get("train.init_from"):
        raise ConfigError(f"config key 'train.steps' is 0: nothing to train (give train.init_from to only score "
                          f"those weights){where}")


# Keys of the flat layout (before the per-task sections) and where they live now. Old recipes and
# checkpoints load through this table; a recipe that uses an old key gets a warning naming the new one.
RENAMED = {
    "model.name": "task",
    "mvgpt.decode": "decode.method",
    "mvgpt.max_decode_len": "decode.max_len",
    **{f"mvgpt.{k}": f"decode.{k}" for k in ("beam_size", "length_penalty", "no_repeat_ngram", "top_p", "temperature")},
}
RENAMED_SECTIONS = {"loss": "taco"}


def migrate(values: dict[str, Any], source: str = "", warn: bool = True) -> dict[str, Any]:
    """Move the keys of the flat layout to their sections (RENAMED); a key set twice is an error."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    moves = [(old, new) for old, new in RENAMED_SECTIONS.items() if isinstance(out.get(old), dict)]
    for old, new in moves:
        for key, value in out.pop(old).items():
            _move(out, f"{old}.{key}", f"{new}.{key}", value, source, warn)
    for old, new in RENAMED.items():
        section, key = old.split(".")
        if isinstance(out.get(section), dict) and key in out[section]:
            _move(out, old, new, out[section].pop(key), source, warn)
    return out


def _move(out: dict, old: str, new: str, value: Any, source: str, warn: bool) -> None:
    *parents, leaf = new.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{part}' is a section")
    if leaf in node:
        raise ConfigError(f"{source or 'config'}: '{old}' and '{new}' are the same key ('{old}' is its old name); keep '{new}'")
    node[leaf] = value
    if warn:
        warnings.warn(f"{source or 'config'}: config key '{old}' is now '{new}'", FutureWarning, stacklevel=3)
