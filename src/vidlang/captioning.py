"""MV-GPT in the toolkit: its data from a config, its training step, validation and captioning.

The training loop (train.py) is shared with TACo; this module gives it what is MV-GPT's own:

- data: fine-tuning reads annotated clips (``data.root``/``data.annotations``) with an optional
  time-stamped transcript (``data.transcripts``) attached by time; pretraining (``mvgpt.objective``
  other than ``caption``) pairs the transcript's utterances into (present, future) clips;
- the step: ``MVGPT(batch)`` losses, the visual freeze schedule (§2.4);
- validation: the loss on the validation clips, and for captioning greedy captions scored with
  BLEU/ROUGE-L/CIDEr (METEOR's JVM is left for ``vidlang caption``).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch

from vidlang.caption_metrics import CaptionScorer
from vidlang.config import Config
from vidlang.data.annotations import filter_clips, read_annotation_files, read_id_list
from vidlang.data.features import FeatureStore, open_store
from vidlang.data.narrated import attach_transcripts
from vidlang.data.narration import CaptionDataset, collate_captions, pair_utterances, read_transcripts
from vidlang.data.records import Clip
from vidlang.data.sources import Source, select_split
from vidlang.errors import ConfigError, DataError
from vidlang.models.mvgpt import MVGPT, parse_objective
from vidlang.text.pretrained import load_tokenizer
from vidlang.train import Experiment, LossStep


def is_pretraining(cfg: Config) -> bool:
    return "caption" not in parse_objective(cfg.mvgpt.objective)


def open_caption_source(cfg: Config) -> Source:
    """The feature store and every clip: annotated captions (fine-tuning) or utterance pairs (pretraining)."""
    d = cfg.data
    root = d.root or ""
    features = d.features or root
    if not features:
        raise ConfigError("set data.root or data.features (the feature store)")
    store = open_store(features, fps=d.feature_fps, allow_pickle=d.allow_pickle)
    counter: Counter = Counter()
    streams = None
    if d.transcripts:
        streams = read_transcripts(d.transcripts, skip_bad=d.skip_bad, counter=counter, allow_pickle=d.allow_pickle)
    if is_pretraining(cfg):
        if streams is None:
            raise ConfigError(f"mvgpt.objective={cfg.mvgpt.objective!r} pretrains on narration: set data.transcripts "
                              "(HowTo100M json, YouCook2/ActivityNet json or .jsonl with timed utterances)")
        clips = pair_utterances(streams, min_words=cfg.mvgpt.min_utterance_words, counter=counter)
    else:
        annotations = d.annotations or (f"{root}/annotations.json" if root else "")
        if not annotations:
            raise ConfigError("set data.root or data.annotations (the captions to fine-tune on)")
        clips = read_annotation_files(annotations, skip_bad=d.skip_bad, counter=counter)
        if streams is not None:
            clips = attach_transcripts(clips, streams)
    return Source(store, clips, counter)


def caption_dataset(clips: list[Clip], store: FeatureStore, tokenizer, cfg: Config, skip_bad: bool = False,
                    expected_dim: int | None = None) -> CaptionDataset:
    return CaptionDataset(clips, store, tokenizer, max_frames=cfg.data.max_frames, max_words=cfg.data.max_words,
                          max_target_len=cfg.mvgpt.max_target_len, use_transcript=cfg.mvgpt.use_transcript,
                          skip_bad=skip_bad, expected_dim=expected_dim)


def build_caption_experiment(cfg: Config) -> Experiment:
    source = open_caption_source(cfg)
    train_clips = select_split(source.clips, source.store, cfg.data.train_split or "train")
    val_clips = select_split(source.clips, source.store, cfg.data.val_split) if cfg.data.val_split != "none" else []
    if not train_clips:
        raise ConfigError(f"training split '{cfg.data.train_split}' selects no clips")
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    train_set = caption_dataset(train_clips, source.store, tokenizer, cfg, cfg.data.skip_bad)
    val_set = caption_dataset(val_clips, source.store, tokenizer, cfg, cfg.data.skip_bad) if val_clips else None
    torch.manual_seed(cfg.train.seed)  # the seed decides the initial weights too
    model = MVGPT(cfg, source.store.dim)
    manifest = source.manifest(train=train_set.clips, validation=val_set.clips if val_set else [])
    manifest["skipped_by_dataset"] = {"train": dict(train_set.skipped), "validation": dict(val_set.skipped) if val_set else {}}
    manifest["text_counts"] = {"train": dict(train_set.counts), "validation": dict(val_set.counts) if val_set else {}}
    meta = {}
    if cfg.mvgpt.output_vocab == "train":  # every WordPiece the training texts hold, plus the end token
        vocab = sorted({i for ids in train_set.targets + train_set.transcripts for i in ids} | {model.ids["sep"]})
        model.decoder.set_output_vocab(vocab)
        meta["output_vocab"] = vocab
    return Experiment(cfg, train_set, val_set, None, model, manifest, collate=collate_captions, meta=meta)


# ----------------------------------------------------------------------------- captioning
def _batches(dataset: CaptionDataset, indices: list[int], batch_size: int, device):
    for a in range(0, len(indices), batch_size):
        yield collate_captions([dataset[i] for i in indices[a:a + batch_size]]).to(device)


def first_per_key(dataset: CaptionDataset) -> list[int]:
    """One item per video/segment (its first clip): what gets captioned."""
    seen: dict[str, int] = {}
    for i, key in enumerate(dataset.keys):
        seen.setdefault(key, i)
    return list(seen.values())


def dataset_references(dataset: CaptionDataset) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for key, clip in zip(dataset.keys, dataset.clips):
        refs.setdefault(key, []).append(clip.caption)
    return refs


@torch.no_grad()
def generate_captions(model: MVGPT, dataset: CaptionDataset, tokenizer, batch_size: int = 64, device="cpu",
                      **settings) -> dict[str, str]:
    """``{clip key: caption}`` for one item per key of ``dataset`` (``settings``: see MVGPT.generate)."""
    model.eval()
    out: dict[str, str] = {}
    indices = first_per_key(dataset)
    for start, batch in zip(range(0, len(indices), batch_size), _batches(dataset, indices, batch_size, device)):
        ids = model.generate(batch.video, batch.video_mask, batch.transcript_ids, batch.transcript_mask, **settings)
        for i, seq in zip(indices[start:start + batch_size], ids):
            out[dataset.keys[i]] = tokenizer.decode(seq, skip_special_tokens=True).strip()
    return out


@torch.no_grad()
def validation_losses(model: MVGPT, dataset: CaptionDataset, batch_size: int = 64, device="cpu") -> dict[str, float]:
    """Mean losses over every clip of ``dataset``, with a fixed MLM mask seed (comparable across steps)."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(0)
    totals: Counter = Counter()
    for batch in _batches(dataset, list(range(len(dataset))), batch_size, device):
        out = model(batch, generator)
        for k in ("loss", "fg", "bg", "mlm_d", "mlm_e", "caption"):
            if k in out:
                totals[k] += float(out[k]) * len(batch)
    metrics = {f"val_{k}": v / len(dataset) for k, v in totals.items()}
    if model.decoder.vocab_mask is not None:  # such tokens cannot be generated and are left out of the loss: count them
        allowed = model.decoder.vocab_mask.cpu()
        metrics["val_targets_outside_vocab"] = float(sum(int((~allowed[torch.tensor(t[1:])]).sum())
                                                         for t in dataset.targets))
    return metrics


def evaluate_captioning(model: MVGPT, dataset: CaptionDataset, cfg: Config, device="cpu",
                        distributed: bool | None = None, scorer: CaptionScorer | None = None) -> dict[str, float]:
    """Validation: losses; for a captioning objective also greedy captions scored against all
    references (BLEU-1..4, ROUGE-L, CIDEr; no METEOR). Every rank computes the same (no sharding)."""
    metrics = validation_losses(model, dataset, device=device)
    if not is_pretraining(cfg):
        tokenizer = load_tokenizer(cfg.model.text_encoder)
        preds = generate_captions(model, dataset, tokenizer, device=device, method="greedy")
        metrics.update(score_captions(preds, dataset_references(dataset), scorer or CaptionScorer(meteor=False)))
    return metrics


def score_captions(predictions: Mapping[str, str], references: Mapping[str, list[str]],
                   scorer: CaptionScorer) -> dict[str, float]:
    empty = [k for k, v in references.items() if not v]
    if empty:
        raise DataError(f"clips {empty[:5]} have no reference caption")
    return scorer.score(predictions, references).corpus


def decoding_name(cfg: Config, method: str | None = None, **settings) -> str:
    """A short stamp of the decoding used, e.g. ``beam4-lp1.0-max30``."""
    g = cfg.mvgpt
    method = method or g.decode
    max_len = settings.get("max_len", g.max_decode_len)
    if method == "beam":
        return f"beam{settings.get('beam_size', g.beam_size)}-lp{settings.get('length_penalty', g.length_penalty)}-max{max_len}"
    if method == "nucleus":
        return f"nucleus-p{settings.get('top_p', g.top_p)}-t{settings.get('temperature', g.temperature)}-max{max_len}"
    return f"{method}-max{max_len}"


def caption_folder(loaded, data: str | Path, *, split: str | None = None, annotations: str | None = None,
                   features: str | None = None, transcripts: str | None = None, skip_bad: bool = False,
                   meteor: bool = True, batch_size: int = 64, method: str | None = None, **settings):
    """Caption every video (or segment) of a folder laid out like msrvtt-ae128-dev and score the
    captions against all its references. Returns (metrics, {key: caption}, {key: references}, dataset)."""
    data = Path(data)
    cfg = loaded.cfg
    store = open_store(features or data, allow_pickle=False)
    clips = read_annotation_files(annotations or data / "annotations.json", skip_bad=skip_bad)
    clips = filter_clips(clips, read_id_list(split), split) if split else [c for c in clips if c.video_id in store]
    if transcripts:
        clips = attach_transcripts(clips, read_transcripts(transcripts, skip_bad=skip_bad))
    if not clips:
        raise DataError(f"no annotated clip of {data} has features in {features or data}")
    dataset = caption_dataset(clips, store, loaded.tokenizer, cfg, skip_bad, expected_dim=loaded.model.video_dim)
    with CaptionScorer(meteor=meteor) as scorer:  # preflight (Java) before the slow decoding
        preds = generate_captions(loaded.model, dataset, loaded.tokenizer, batch_size, method=method, **settings)
        refs = dataset_references(dataset)
        metrics = score_captions(preds, refs, scorer)
    return metrics, preds, refs, dataset


def validation_keys(cfg: Config) -> tuple[str, ...]:
    keys = ("val_loss",)
    return keys if is_pretraining(cfg) else keys + ("BLEU-4", "ROUGE-L", "CIDEr")


MVGPT_STEP = LossStep(
    name="mvgpt",
    forward=lambda model, batch, cfg, generator, shard: model(batch, generator),
    log_keys=("loss", "fg", "bg", "mlm_d", "mlm_e", "caption"),
    unused_parameters=lambda cfg: True,  # e.g. the MLM-E head outside MLM-E, the visual encoder while frozen
    build=build_caption_experiment,
    evaluate=evaluate_captioning,
    show_keys=validation_keys,
    before_step=lambda model, step: model.set_step(step),
)
