"""Retrieval evaluation: encode every clip and caption once, score, and compute R@k both ways.

The retrieval unit is a segment ``(video_id, start, end)``: a whole video for MSR-VTT,
a step clip for YouCook2. Every caption of a unit is a text query with that unit as its answer.
"""
from __future__ import annotations

import torch

from vidlang.config import EvalConfig
from vidlang.data.dataset import VideoTextDataset, collate
from vidlang.metrics import retrieval_metrics
from vidlang.scoring import encode_texts, encode_videos, score_matrix


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


@torch.no_grad()
def similarity(model, dataset: VideoTextDataset, cfg: EvalConfig, batch_size: int = 256, device="cpu"):
    """The (texts, units) score matrix under ``cfg.scoring``, and the text -> unit index."""
    model.eval()
    representative, text_to_unit = retrieval_units(dataset)
    videos = encode_videos(model, _batches(dataset, representative, batch_size, device, ("video", "video_mask")))
    texts = encode_texts(
        model,
        _batches(dataset, list(range(len(dataset))), batch_size, device, ("input_ids", "attention_mask", "token_weights")),
    )
    sim = score_matrix(
        model,
        videos,
        texts,
        scoring=cfg.scoring,
        token_scale=cfg.token_scale,
        rerank_topk=cfg.rerank_topk,
        batch_pairs=cfg.batch_pairs,
    )
    return sim.cpu(), text_to_unit


def evaluate_retrieval(model, dataset: VideoTextDataset, cfg: EvalConfig, batch_size: int = 256, device="cpu"):
    sim, text_to_unit = similarity(model, dataset, cfg, batch_size, device)
    metrics = retrieval_metrics(sim, text_to_unit)
    return metrics
