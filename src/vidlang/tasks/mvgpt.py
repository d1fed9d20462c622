"""MV-GPT as a task: its data from a config, its training step and its validation.

The training loop (train.py) is shared with every task; this module gives it what is MV-GPT's own:

- data: fine-tuning reads annotated clips (``data.root``/``data.annotations``) with an optional
  time-stamped transcript (``data.transcripts``) attached by time; pretraining (``mvgpt.objective``
  other than ``caption``) pairs the transcript's utterances into (present, future) clips;
- the step: ``MVGPT(batch)`` losses, the visual freeze schedule (§2.4);
- retrieval-augmented (``mvgpt.neighbour_captions``, beyond the paper): every clip's transcript is the
  consensus captions of its nearest training videos (evaluation/caption_rerank.py), from the bank
  kept with the checkpoint;
- SCST (``mvgpt.scst_steps``, beyond the paper): the model's reward is CIDEr-D against each training
  clip's references (evaluation/caption_reward.py), and the last steps run at a constant lower lr;
- the rerank's retriever (``decode.rerank_retriever``, beyond the paper): a TACo recipe is trained first
  into out_dir/retriever on this config's data, splits and seed; its caption vectors join the bank;
- validation: the loss on the validation clips, and for captioning greedy captions (reranked ones
  under ``decode.method=rerank``, whose training-caption bank is kept with every checkpoint) scored
  with BLEU/ROUGE-L/CIDEr (METEOR's JVM is left for ``vidlang caption``).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from vidlang import checkpoint as ckpt
from vidlang.config import Config, load_config
from vidlang.data.narration import collate_captions, pair_utterances
from vidlang.data.shard_stream import caption_transform
from vidlang.data.sources import Source, open_source, split_clips
from vidlang.errors import ConfigError
from vidlang.evaluation.caption_reward import CiderReward
from vidlang.evaluation.caption_rerank import BANK_FILE, build_caption_bank, fill_neighbour_transcripts, load_retriever
from vidlang.evaluation.captioning import (
    caption_dataset,
    evaluate_captioning,
    is_pretraining,
    validation_decoding,
)
from vidlang.models.mvgpt import MVGPT
from vidlang.tasks.base import Experiment, Task, experiment_manifest, shard_training
from vidlang.text.pretrained import load_tokenizer


def open_caption_source(cfg: Config) -> Source:
    """The feature store and every clip: annotated captions (fine-tuning) or utterance pairs (pretraining)."""
    if not is_pretraining(cfg):
        return open_source(cfg.data)
    if not cfg.data.transcripts:
        raise ConfigError(f"mvgpt.objective={cfg.mvgpt.objective!r} pretrains on narration: set data.transcripts "
                          "(HowTo100M json, YouCook2/ActivityNet json or .jsonl with timed utterances)")
    source = open_source(cfg.data, need_annotations=False)
    source.clips = pair_utterances(source.streams, min_words=cfg.mvgpt.min_utterance_words, counter=source.counter)
    return source


def check_neighbour_captions(cfg: Config) -> None:
    k = cfg.mvgpt.neighbour_captions
    if k and (is_pretraining(cfg) or not cfg.mvgpt.use_transcript):
        raise ConfigError(f"mvgpt.neighbour_captions={k} fills the transcript slot of a captioner: it needs "
                          "mvgpt.objective=caption and mvgpt.use_transcript=true")
    if k and (cfg.data.transcripts or cfg.data.shards):
        raise ConfigError(f"mvgpt.neighbour_captions={k} fills the transcript slot with training captions: it takes "
                          "no data.transcripts (ASR) and does not train from data.shards")


RECIPE_SUFFIXES = (".yaml", ".yml")
# what the retriever takes from the captioner's config: the same videos, splits and reader settings
RETRIEVER_DATA = ("root", "features", "annotations", "train_split", "val_split", "test_split", "feature_fps", "skip_bad")


def check_retriever(cfg: Config) -> None:
    if cfg.decode.rerank_retriever and (cfg.decode.method != "rerank" or is_pretraining(cfg)):
        raise ConfigError(f"decode.rerank_retriever={cfg.decode.rerank_retriever} finds the rerank's neighbours: it "
                          "needs decode.method=rerank and mvgpt.objective=caption")


def check_retriever_held_out(retriever, held_out_ids: set[str]) -> None:
    """A retriever trained on a validation or test video would lend it its own captions' fit."""
    trained = ckpt.read_train_ids(retriever.checkpoint)
    leaked = sorted(held_out_ids & trained) if trained is not None else []
    if leaked:
        raise ConfigError(f"decode.rerank_retriever={retriever.checkpoint} trained on {len(leaked)} of this run's "
                          f"validation/test videos (e.g. {', '.join(leaked[:3])}): train it on the training split only")


def retriever_first(cfg: Config) -> tuple[list[Config], Config]:
    """decode.rerank_retriever as a TACo recipe: that run first (out_dir/retriever, one model, this
    config's data, splits, seed and threads), then this config with the retriever at its folder."""
    recipe = cfg.decode.rerank_retriever
    check_retriever(cfg)
    if not recipe.endswith(RECIPE_SUFFIXES):
        return [], cfg
    out = Path(cfg.train.out_dir) / ckpt.RETRIEVER_DIR
    overrides = [f"data.{key}={getattr(cfg.data, key)}" for key in RETRIEVER_DATA if getattr(cfg.data, key) is not None]
    taco = load_config(recipe, [*overrides, f"train.out_dir={out}", f"train.seed={cfg.train.seed}", "train.members=1",
                                f"train.threads={cfg.train.threads}", f"train.device={cfg.train.device}"])
    if taco.task != "taco":
        raise ConfigError(f"decode.rerank_retriever={recipe} is a {taco.task!r} recipe: the retriever is a TACo model")
    return [taco], replace(cfg, decode=replace(cfg.decode, rerank_retriever=str(out)))


def build_caption_experiment(cfg: Config) -> Experiment:
    check_neighbour_captions(cfg)
    check_retriever(cfg)
    if cfg.decode.rerank_retriever.endswith(RECIPE_SUFFIXES):
        raise ConfigError(f"decode.rerank_retriever={cfg.decode.rerank_retriever} is a recipe: `vidlang train` trains "
                          "it first (tasks/mvgpt.py retriever_first); or give a trained TACo run folder")
    source = open_caption_source(cfg)
    splits = split_clips(source, cfg.data, cfg.train.seed)
    train_clips, val_clips = splits.train, splits.validation
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    k = cfg.mvgpt.neighbour_captions
    plain = replace(cfg, mvgpt=replace(cfg.mvgpt, neighbour_captions=0))  # the bank is built from it, then it reads it
    train_set = caption_dataset(train_clips, source.store, tokenizer, plain, cfg.data.skip_bad)
    # the training captions a reranked caption agrees with, or that fill the transcript slot; kept with every checkpoint
    bank = build_caption_bank(train_set) if (cfg.decode.method == "rerank" or k) and not is_pretraining(cfg) else None
    if k:
        fill_neighbour_transcripts(train_set, bank, k, "this run")
    retriever = None
    if cfg.decode.rerank_retriever and bank is not None:
        retriever = load_retriever(cfg.decode.rerank_retriever)
        check_retriever_held_out(retriever, {c.video_id for c in [*val_clips, *splits.test]})
        bank.retrieval = retriever.text_vectors(bank.captions)
    val_set = (caption_dataset(val_clips, source.store, tokenizer, cfg, cfg.data.skip_bad, bank=bank, retriever=retriever)
               if val_clips else None)
    test_set = (caption_dataset(splits.test, source.store, tokenizer, cfg, cfg.data.skip_bad, bank=bank,
                                retriever=retriever) if splits.test else None)
    torch.manual_seed(cfg.train.seed)  # the seed decides the initial weights too
    model = MVGPT(cfg, source.store.dim)
    sets = [d for d in (train_set, val_set, test_set) if d is not None]
    model.warm_text_cache([t for d in sets for t in d.transcripts], [t for d in sets for t in d.targets])
    manifest = experiment_manifest(source, splits, train_set, val_set, test_set)
    manifest["text_counts"] = {"train": dict(train_set.counts), "validation": dict(val_set.counts) if val_set else {}}
    meta = {}
    if cfg.mvgpt.output_vocab == "train":  # every WordPiece the training texts hold, plus the end token
        vocab = sorted({i for ids in train_set.targets + train_set.transcripts for i in ids} | {model.ids["sep"]})
        model.decoder.set_output_vocab(vocab)
        meta["output_vocab"] = vocab
    train_stream, train_ids = None, sorted({c.video_id for c in train_set.clips})
    if cfg.data.shards:  # train from the stream (e.g. `vidlang shard --pairs` for pretraining)
        if cfg.mvgpt.output_vocab == "train":
            raise ConfigError("mvgpt.output_vocab=train is taken from the annotated train split, which a data.shards "
                              "stream does not train on: use mvgpt.output_vocab=full")
        transform = caption_transform(tokenizer, cfg.data.max_frames, cfg.data.max_words, cfg.mvgpt.max_target_len,
                                      use_transcript=cfg.mvgpt.use_transcript)
        held_out = {c.video_id for c in [*val_clips, *splits.test]}
        train_stream, manifest["train_shards"], train_ids = shard_training(
            cfg, source.store.dim, transform, collate_captions, held_out)
    if cfg.mvgpt.scst_steps:
        if cfg.data.shards:
            raise ConfigError("mvgpt.scst_steps rewards captions against the annotated training clips' references: "
                              "it does not train from data.shards")
        references: dict[str, list[str]] = {}
        for key, clip in zip(train_set.keys, train_set.clips):
            references.setdefault(key, []).append(clip.caption)
        model.reward = CiderReward(train_set.keys, references,
                                   lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    files = {BANK_FILE: bank.to_bytes()} if bank is not None else {}
    return Experiment(cfg, train_set, val_set, model, manifest, collate=collate_captions, meta=meta, test_set=test_set,
                      train_ids=train_ids, train_stream=train_stream, files=files)


def validation_stamp(cfg: Config) -> str:
    method = validation_decoding(cfg)
    if method != "rerank":
        return method
    return (f"rerank{cfg.decode.rerank_neighbours}" + (f"-prior{cfg.decode.rerank_prior}" if cfg.decode.rerank_prior else "")
            + ("-taco" if cfg.decode.rerank_retriever else ""))


def validation_keys(cfg: Config) -> tuple[str, ...]:
    keys = ("val_loss",)
    return keys if is_pretraining(cfg) else keys + ("BLEU-4", "ROUGE-L", "CIDEr")


def lr_schedule(cfg: Config, warmup_linear):
    """Warm-up and linear decay over the cross-entropy steps; then SCST at a constant ``scst_lr_scale``."""
    xe_steps = cfg.train.steps - cfg.mvgpt.scst_steps
    cross_entropy = warmup_linear(min(cfg.train.warmup_steps, xe_steps), xe_steps)
    return lambda step: cross_entropy(step) if step < xe_steps else cfg.mvgpt.scst_lr_scale


TASK = Task(
    name="mvgpt",
    model="mvgpt",
    forward=lambda model, batch, cfg, generator, shard: model(batch, generator),
    log_keys=("loss", "fg", "bg", "mlm_d", "mlm_e", "caption", "scst", "reward"),
    unused_parameters=lambda cfg: True,  # e.g. the MLM-E head outside MLM-E, the visual encoder while frozen
    build=build_caption_experiment,
    evaluate=evaluate_captioning,
    show_keys=validation_keys,
    before_step=lambda model, step: model.set_step(step),
    scoring=lambda cfg: "losses" if is_pretraining(cfg) else f"{validation_stamp(cfg)} captions, all references"
    + (f", second stream: consensus captions of the {cfg.mvgpt.neighbour_captions} nearest training videos"
       if cfg.mvgpt.neighbour_captions else ""),
    lr_schedule=lr_schedule,
    pools_members=lambda cfg: None if cfg.decode.method == "rerank" and not is_pretraining(cfg) else
    "MV-GPT pools captioners' candidates for captioning with decode.method=rerank",
    prerequisites=retriever_first,
)
