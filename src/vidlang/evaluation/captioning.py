"""Captioning a dataset with an MV-GPT model, and scoring the captions against every reference.

Used by validation (tasks/mvgpt.py), ``vidlang caption`` and the Python API.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from vidlang.config import Config
from vidlang.data.features import FeatureStore
from vidlang.data.narration import CaptionDataset, collate_captions
from vidlang.data.records import Clip, named_skips
from vidlang.data.sources import open_data
from vidlang.errors import CheckpointError, ConfigError, DataError
from vidlang.evaluation.caption_metrics import CaptionScorer
from vidlang.evaluation.caption_rerank import (
    CaptionBank,
    Retriever,
    candidate_pools,
    check_members,
    check_neighbours,
    clip_features,
    fill_neighbour_transcripts,
    pick_by_neighbours,
    pooled_features,
)
from vidlang.evaluation.protocol import held_out
from vidlang.models.mvgpt import MVGPT, parse_objective
from vidlang.text.pretrained import load_tokenizer


def is_pretraining(cfg: Config) -> bool:
    return "caption" not in parse_objective(cfg.mvgpt.objective)


def caption_dataset(clips: list[Clip], store: FeatureStore, tokenizer, cfg: Config, skip_bad: bool = False,
                    expected_dim: int | None = None, bank: CaptionBank | None = None,
                    where: str = "this run", retriever: Retriever | None = None) -> CaptionDataset:
    """The clips as MV-GPT reads them; under ``mvgpt.neighbour_captions`` each clip's transcript is its
    nearest training videos' captions, from ``bank`` (which ``where`` must hold). ``retriever``
    (decode.rerank_retriever) finds the rerank's nearest training videos."""
    dataset = CaptionDataset(clips, store, tokenizer, max_frames=cfg.data.max_frames, max_words=cfg.data.max_words,
                             max_target_len=cfg.mvgpt.max_target_len, use_transcript=cfg.mvgpt.use_transcript,
                             skip_bad=skip_bad, expected_dim=expected_dim)
    if cfg.mvgpt.neighbour_captions:
        fill_neighbour_transcripts(dataset, bank, cfg.mvgpt.neighbour_captions, where)
    dataset.caption_bank = bank
    dataset.retriever = retriever
    return dataset


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
                      members: Sequence[MVGPT] = (), **settings) -> dict[str, str]:
    """``{clip key: caption}`` for one item per key of ``dataset`` (``settings``: see MVGPT.generate;
    ``method="rerank"`` needs ``dataset.caption_bank``, see evaluation/caption_rerank.py; ``members``:
    other captioners whose candidates join the rerank's pools)."""
    model.eval()
    out: dict[str, str] = {}
    indices = first_per_key(dataset)
    if (settings.get("method") or model.cfg.decode.method) == "rerank":
        settings.pop("method", None)
        k = settings.pop("rerank_neighbours", model.cfg.decode.rerank_neighbours)
        prior = settings.pop("rerank_prior", model.cfg.decode.rerank_prior)
        bank = getattr(dataset, "caption_bank", None)
        check_neighbours(k, bank, "this run")
        pools = rerank_pools(model, dataset, tokenizer, batch_size, device, members, **settings)
        retriever = getattr(dataset, "retriever", None)
        nearest = retriever.nearest(clip_features(dataset, indices), bank, k) if retriever is not None else None
        picked = pick_by_neighbours(pools, pooled_features(dataset, indices), bank, k, prior, nearest)
        return {dataset.keys[i]: caption for i, caption in zip(indices, picked)}
    if members:
        raise ConfigError("pooling members' candidates needs decode.method=rerank")
    for start, batch in zip(range(0, len(indices), batch_size), _batches(dataset, indices, batch_size, device)):
        ids = model.generate(batch.video, batch.video_mask, batch.transcript_ids, batch.transcript_mask, **settings)
        for i, seq in zip(indices[start:start + batch_size], ids):
            out[dataset.keys[i]] = tokenizer.decode(seq, skip_special_tokens=True).strip()
    return out


@torch.no_grad()
def rerank_pools(model: MVGPT, dataset: CaptionDataset, tokenizer, batch_size: int = 64, device="cpu",
                 members: Sequence[MVGPT] = (), **settings) -> list[list[str]]:
    """The rerank's candidates (caption_rerank.candidate_pools) of each key of ``dataset``, in order."""
    model.eval()
    return [pool for batch in _batches(dataset, first_per_key(dataset), batch_size, device) for pool in candidate_pools(
        model, tokenizer, batch.video, batch.video_mask, batch.transcript_ids, batch.transcript_mask, members,
        **settings)]


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
    """Validation: losses; for a captioning objective also captions scored against all references
    (BLEU-1..4, ROUGE-L, CIDEr; no METEOR): greedy, or reranked where the recipe decodes so
    (:func:`validation_decoding`). Every rank computes the same (no sharding)."""
    metrics = validation_losses(model, dataset, device=device)
    if not is_pretraining(cfg):
        tokenizer = load_tokenizer(cfg.model.text_encoder)
        preds = generate_captions(model, dataset, tokenizer, device=device, method=validation_decoding(cfg))
        metrics.update(score_captions(preds, dataset_references(dataset), scorer or CaptionScorer(meteor=False)))
    return metrics


def validation_decoding(cfg: Config) -> str:
    """Validation and the test split decode greedily (fast, every eval), unless the recipe reranks."""
    return "rerank" if cfg.decode.method == "rerank" else "greedy"


def score_captions(predictions: Mapping[str, str], references: Mapping[str, list[str]],
                   scorer: CaptionScorer) -> dict[str, float]:
    empty = [k for k, v in references.items() if not v]
    if empty:
        raise DataError(f"clips {empty[:5]} have no reference caption")
    return scorer.score(predictions, references).corpus


def decoding_name(cfg: Config, method: str | None = None, **settings) -> str:
    """A short stamp of the decoding used, e.g. ``beam4-lp1.0-max30`` (``-nbr3``: the transcript slot held
    the captions of the 3 nearest training videos, ``mvgpt.neighbour_captions``)."""
    g = cfg.decode
    method = method or g.method
    max_len = settings.get("max_len", g.max_len)
    if method == "beam":
        stamp = f"beam{settings.get('beam_size', g.beam_size)}-lp{settings.get('length_penalty', g.length_penalty)}"
    elif method == "rerank":
        prior = settings.get("rerank_prior", g.rerank_prior)
        stamp = f"rerank{settings.get('rerank_neighbours', g.rerank_neighbours)}" + (f"-prior{prior}" if prior else "")
        stamp += "-taco" if g.rerank_retriever else ""  # neighbours by a TACo model (decode.rerank_retriever)
    elif method == "nucleus":
        stamp = f"nucleus-p{settings.get('top_p', g.top_p)}-t{settings.get('temperature', g.temperature)}"
    else:
        stamp = method
    return f"{stamp}-max{max_len}" + (f"-nbr{cfg.mvgpt.neighbour_captions}" if cfg.mvgpt.neighbour_captions else "")


def pool_stamp(loaded, extra: Sequence = (), method: str | None = None) -> str:
    """``-poolN``: the rerank picked among the candidates of N captioners (train.members and ``extra``)."""
    if (method or loaded.cfg.decode.method) != "rerank":
        return ""
    n = 1 + len(getattr(loaded, "members", [])) + len(extra)
    return f"-pool{n}" if n > 1 else ""


def caption_folder(loaded, data: str | Path, *, split: str | None = None, annotations: str | None = None,
                   features: str | None = None, transcripts: str | None = None, skip_bad: bool = False,
                   meteor: bool = True, batch_size: int = 64, method: str | None = None,
                   allow_train_overlap: bool = False, members: Sequence = (), **settings):
    """Caption every video (or segment) of a folder laid out like msrvtt-ae128-dev and score the
    captions against all its references; videos the checkpoint trained on are refused unless
    ``allow_train_overlap``. ``members``: other loaded captioners, trained on the same videos, whose
    candidates join the rerank's pools (caption_rerank.check_members), after the run's own (train.members). Returns (metrics, {key: caption}, {key: references}, dataset, scored),
    ``scored`` saying which ids were scored (evaluation.protocol.held_out)."""
    data = Path(data)
    cfg = loaded.cfg
    if transcripts and cfg.mvgpt.neighbour_captions:
        raise ConfigError(f"{loaded.checkpoint} reads its nearest training videos' captions in the transcript slot "
                          f"(mvgpt.neighbour_captions={cfg.mvgpt.neighbour_captions}): it takes no transcripts")
    source = open_data(data, features=features, annotations=annotations, transcripts=transcripts, skip_bad=skip_bad)
    store, clips = source.store, source.split(split or "all")
    if not clips:
        raise DataError(f"no annotated clip of {data} has features in {features or data}")
    dataset = caption_dataset(clips, store, loaded.tokenizer, cfg, skip_bad, expected_dim=loaded.model.video_dim,
                              bank=getattr(loaded, "caption_bank", None), where=str(loaded.checkpoint),
                              retriever=getattr(loaded, "retriever", None))
    if (method or cfg.decode.method) == "rerank":  # the run's own members (train.members), then any given
        members = [*getattr(loaded, "members", []), *members]
    check_members(loaded, members, method)
    scored = held_out(loaded.checkpoint, (c.video_id for c in dataset.clips), allow_train_overlap)
    if getattr(loaded, "retriever", None) is not None:  # the rerank's retriever must not have trained on them either
        held_out(loaded.retriever.checkpoint, (c.video_id for c in dataset.clips), allow_train_overlap)
    with CaptionScorer(meteor=meteor) as scorer:  # preflight (Java) before the slow decoding
        preds = generate_captions(loaded.model, dataset, loaded.tokenizer, batch_size, device=getattr(loaded, "device", "cpu"),
                                  members=[m.model for m in members], method=method, **settings)
        empty = [k for k, v in preds.items() if not v.strip()]
        if empty and len(empty) == len(preds):
            raise CheckpointError(f"{loaded.checkpoint} gave an empty caption for every one of the {len(preds)} "
                                  f"videos (e.g. {empty[:3]}): the model is untrained or damaged; nothing was scored")
        refs = dataset_references(dataset)
        metrics = score_captions(preds, refs, scorer)
    scored |= {"empty_captions": empty, "skipped_by_readers": dict(source.counter),
               "skipped_items": [*named_skips(source.counter), *named_skips(dataset.skipped)]}
    return metrics, preds, refs, dataset, scored
