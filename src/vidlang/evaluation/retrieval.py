"""Retrieval evaluation: encode every clip and caption once, score, and compute R@k both ways.

The retrieval unit is a segment ``(video_id, start, end)``: a whole video for MSR-VTT,
a step clip for YouCook2. Every caption of a unit is a text query with that unit as its answer.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from vidlang import distributed as dist
from vidlang.config import EvalConfig
from vidlang.data.dataset import VideoTextDataset, collate
from vidlang.data.records import named_skips
from vidlang.data.sources import open_data
from vidlang.evaluation.metrics import retrieval_metrics
from vidlang.evaluation.protocol import held_out
from vidlang.evaluation.scoring import (
    EncodedSet,
    encode_texts,
    encode_videos,
    querybank_normalise,
    score_matrix,
)
from vidlang.models.blocks import Encoded


def retrieval_units(dataset: VideoTextDataset) -> tuple[list[int], list[int]]:
    """One representative clip index per unit, and for each clip (text) the index of its unit."""
    units: dict[tuple, int] = {}
    representative: list[int] = []
    text_to_unit: list[int] = []
    for i, clip in enumerate(dataset.clips):
        key = (clip.video_id, clip.start, clip.end)
        if key not in units:
            units[key] = len(representative)
            representative.append(i)
        text_to_unit.append(units[key])
    return representative, text_to_unit


def _batches(dataset, indices, batch_size, device, fields):
    for start in range(0, len(indices), batch_size):
        batch = collate([dataset[i] for i in indices[start : start + batch_size]]).to(device)
        yield tuple(getattr(batch, f) for f in fields)


def _gather_set(part: EncodedSet, distributed: bool) -> EncodedSet:
    """Every rank's encoded block, concatenated in rank order (tokens padded to the longest)."""
    if not distributed:
        return part
    e = part.encoded
    gather = lambda t, pad=0: torch.cat(dist.all_gather_list(t, pad))  # noqa: E731
    weights = gather(part.weights) if part.weights is not None else None
    return EncodedSet(Encoded(gather(e.tokens), gather(e.mask, False), gather(e.pooled)), weights)


@torch.no_grad()
def similarity(model, dataset: VideoTextDataset, cfg: EvalConfig, batch_size: int = 256, device="cpu",
               distributed: bool | None = None):
    """The (texts, units) score matrix under ``cfg.scoring``, and the text -> unit index.

    ``distributed`` (default: whether a torchrun process group is up): every rank encodes a
    block of the units and of the texts and scores a block of the texts; all ranks return the
    whole matrix. Every rank must call this together.
    """
    model.eval()
    representative, text_to_unit = retrieval_units(dataset)
    texts_all = list(range(len(dataset)))
    world = dist.world_size() if distributed or distributed is None else 1
    shard = world > 1 and min(len(representative), len(texts_all)) >= world  # tiny sets: every rank does it all
    part = (lambda items: items[slice(*dist.shard_bounds(len(items), world, dist.rank()))]) if shard else (lambda x: x)
    videos = encode_videos(model, _batches(dataset, part(representative), batch_size, device, ("video", "video_mask")))
    warm = getattr(getattr(model, "text", None), "warm_cache", None)
    if warm is not None:  # a frozen text encoder: every query at batched speed
        sequences = dataset.token_sequences()
        warm([sequences[i] for i in part(texts_all)])
    texts = encode_texts(
        model,
        _batches(dataset, part(texts_all), batch_size, device, ("input_ids", "attention_mask", "token_weights")),
    )
    videos, texts = _gather_set(videos, shard), _gather_set(texts, shard)
    sim = score_matrix(
        model,
        videos,
        texts,
        scoring=cfg.scoring,
        token_scale=cfg.token_scale,
        rerank_topk=cfg.rerank_topk,
        batch_pairs=cfg.batch_pairs,
        distributed=shard,
    )
    return sim.cpu(), text_to_unit


@torch.no_grad()
def bank_similarity(model, dataset: VideoTextDataset, captions: list[str], cfg: EvalConfig, batch_size: int = 256,
                    device="cpu") -> torch.Tensor:
    """(bank captions, units) scores under ``cfg.scoring``: the bank of QB-Norm, against the units of
    ``dataset`` (every rank computes it whole)."""
    model.eval()
    representative, _ = retrieval_units(dataset)
    videos = encode_videos(model, _batches(dataset, representative, batch_size, device, ("video", "video_mask")))
    items = [dataset.text_item(c) for c in captions]
    warm = getattr(getattr(model, "text", None), "warm_cache", None)
    if warm is not None:
        warm([item["input_ids"].tolist() for item in items])
    pad = torch.nn.utils.rnn.pad_sequence

    def text_batches():
        for a in range(0, len(items), batch_size):
            chunk = items[a:a + batch_size]
            yield tuple(pad([it[k] for it in chunk], batch_first=True).to(device)
                        for k in ("input_ids", "attention_mask", "token_weights"))

    texts = encode_texts(model, text_batches())
    return score_matrix(model, videos, texts, scoring=cfg.scoring, token_scale=cfg.token_scale,
                        rerank_topk=cfg.rerank_topk, batch_pairs=cfg.batch_pairs, distributed=False).cpu()


def querybank_description(cfg: EvalConfig, bank_size: int) -> str:
    """How QB-Norm was applied, for the results' scoring stamp ('' when it was not)."""
    if not (cfg.querybank and bank_size):
        return ""
    return (f" + QB-Norm t2v (dynamic inverted softmax, bank of {bank_size} training captions, "
            f"beta {cfg.querybank_beta:g} bank std)")


def retrieval_scores(model, dataset: VideoTextDataset, sim: torch.Tensor, text_to_unit: list[int], cfg: EvalConfig,
                     batch_size: int = 256, device="cpu") -> dict[str, float]:
    """R@k both ways from ``sim``; with ``cfg.querybank`` and a ``dataset.querybank``, the t2v metrics
    come from QB-Norm of ``sim`` (v2t from ``sim`` itself)."""
    bank = bank_similarity(model, dataset, dataset.querybank, cfg, batch_size, device) \
        if querybank_description(cfg, len(dataset.querybank)) else None
    return scores_with_bank(sim, bank, text_to_unit, cfg)


def scores_with_bank(sim: torch.Tensor, bank: torch.Tensor | None, text_to_unit: list[int], cfg: EvalConfig) -> dict:
    """R@k both ways from ``sim``; the t2v metrics from QB-Norm of ``sim`` with ``bank`` when one is given."""
    metrics = retrieval_metrics(sim, text_to_unit)
    if bank is None:
        return metrics
    std = float(bank.std())
    normed = querybank_normalise(sim, bank, cfg.querybank_beta / max(std, 1e-12), dynamic=True)
    return metrics | {k: v for k, v in retrieval_metrics(normed, text_to_unit).items() if k.startswith("t2v")}


def evaluate_retrieval(model, dataset: VideoTextDataset, cfg: EvalConfig, batch_size: int = 256, device="cpu",
                       distributed: bool | None = None):
    sim, text_to_unit = similarity(model, dataset, cfg, batch_size, device, distributed)
    return retrieval_scores(model, dataset, sim, text_to_unit, cfg, batch_size, device)


def evaluate_folder(loaded, data: str | Path, *, split: str | None = None, features: str | None = None,
                    annotations: str | None = None, scoring: str | None = None, skip_bad: bool = False,
                    allow_pickle: bool = False, allow_train_overlap: bool = False,
                    protocol: str | None = None) -> tuple[dict, dict]:
    """R@k of a loaded TACo checkpoint on a data folder (every annotated video with features, or
    ``split``). Refuses videos the checkpoint trained on unless ``allow_train_overlap``. Returns the
    metrics and what was scored (ids, their hash, overlap, skips, scoring)."""
    d = loaded.cfg.data
    source = open_data(data, features=features, annotations=annotations, allow_pickle=allow_pickle, skip_bad=skip_bad,
                       paragraph=d.paragraph, protocol=protocol or d.protocol)
    clips, stamp = source.eval_split(split or "all")
    dataset = loaded.dataset(clips, source.store, skip_bad=skip_bad)  # bad input is named before overlap
    info = held_out(loaded.checkpoint, (c.video_id for c in dataset.clips), allow_train_overlap)
    cfg = copy.copy(loaded.cfg.eval)
    cfg.scoring = scoring or cfg.scoring
    dataset.querybank = list(loaded.meta.get("querybank") or []) if cfg.querybank else []
    members = getattr(loaded, "members", [])
    sims, banks = [], []
    for model in (loaded, *members):  # train.members: the mean of every member's scores (beyond the papers)
        data_m = dataset if model is loaded else model.dataset(clips, source.store, skip_bad=skip_bad)
        data_m.querybank = dataset.querybank
        sim, text_to_video = similarity(model.model, data_m, cfg, device=model.device)
        sims.append(sim)
        if querybank_description(cfg, len(dataset.querybank)):
            banks.append(bank_similarity(model.model, data_m, dataset.querybank, cfg, device=model.device))
    metrics = scores_with_bank(torch.stack(sims).mean(0), torch.stack(banks).mean(0) if banks else None,
                               text_to_video, cfg)
    pooled = f" + the mean of {len(sims)} members' scores (train.members)" if members else ""
    info |= {"scoring": cfg.scoring + querybank_description(cfg, len(dataset.querybank)) + pooled,
             "members": [str(m.checkpoint) for m in members], "protocol": stamp, "skipped": dict(dataset.skipped),
             "skipped_by_readers": dict(source.counter), "skipped_items": [*named_skips(source.counter), *named_skips(dataset.skipped)]}
    return metrics, info
