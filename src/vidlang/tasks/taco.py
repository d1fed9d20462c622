"""TACo retrieval as a task: video-caption pairs, L1 + λ_t·L2 + L3 (methods.md §1.3), R@k validation."""
from __future__ import annotations

import numpy as np
import torch

from vidlang.config import Config
from vidlang.data.dataset import VideoTextDataset, collate
from vidlang.data.shard_stream import UniqueVideos, video_text_transform
from vidlang.data.sources import open_source, split_clips
from vidlang.errors import ConfigError
from vidlang.evaluation.retrieval import evaluate_retrieval, querybank_description
from vidlang.io import cache_dir
from vidlang.models.taco import TACo
from vidlang.tasks.base import Experiment, Task, experiment_manifest, shard_training
from vidlang.text.idf import TokenWeighter
from vidlang.text.pretrained import load_tokenizer


def build_experiment(cfg: Config) -> Experiment:
    source = open_source(cfg.data)
    splits = split_clips(source, cfg.data, cfg.train.seed)
    train_clips, val_clips = splits.train, splits.validation
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    weighter = TokenWeighter.fit(  # IDF on the training captions only (Appendix A)
        [c.caption for c in train_clips], tags=cfg.taco.pos_tags, cache_path=cache_dir() / "pos_tags.json"
    )
    common = dict(max_frames=cfg.data.max_frames, max_words=cfg.data.max_words, skip_bad=cfg.data.skip_bad)
    augment = {"jitter": cfg.data.frame_jitter, "drop": cfg.data.frame_drop, "noise": cfg.data.feature_noise}
    train_set = VideoTextDataset(train_clips, source.store, tokenizer, token_weighter=weighter, augment=augment,
                                 seed=cfg.train.seed, **common)
    val_set = VideoTextDataset(val_clips, source.store, tokenizer, token_weighter=weighter, **common) if val_clips else None
    test_set = VideoTextDataset(splits.test, source.store, tokenizer, token_weighter=weighter, **common) if splits.test else None
    torch.manual_seed(cfg.train.seed)  # the seed decides the initial weights too
    model = TACo(cfg.model, source.store.dim)
    model.text.warm_cache([ids for d in (train_set, val_set, test_set) if d is not None for ids in d.token_sequences()])
    manifest = experiment_manifest(source, splits, train_set, val_set, test_set)
    train_stream, train_ids = None, sorted({c.video_id for c in train_set.clips})
    if cfg.data.shards and cfg.taco.captions_per_video > 1:
        raise ConfigError("taco.captions_per_video > 1 needs the annotated train split, not a data.shards stream")
    if cfg.data.shards:  # train from the stream; the annotated train split only fits the IDF weights
        if any(augment.values()):
            raise ConfigError("data.frame_jitter/frame_drop/feature_noise are not applied to a data.shards stream: "
                              "turn them off")
        transform = video_text_transform(tokenizer, cfg.data.max_frames, cfg.data.max_words, weighter)
        held_out = {c.video_id for c in [*val_clips, *splits.test]}
        train_stream, manifest["train_shards"], train_ids = shard_training(
            cfg, source.store.dim, transform, UniqueVideos(collate), held_out)
    meta = {"token_weighter": weighter.state_dict()}
    if cfg.eval.querybank:  # QB-Norm's bank: a fixed draw of training captions, kept with every checkpoint
        meta["querybank"] = querybank(train_set, cfg.eval.querybank)
        for held in (val_set, test_set):
            if held is not None:
                held.querybank = meta["querybank"]
    return Experiment(cfg, train_set, val_set, model, manifest, collate=collate, meta=meta,
                      summary=lambda: {"weighter_stats": dict(weighter.stats)}, test_set=test_set,
                      train_ids=train_ids, train_stream=train_stream, clips_per_video=cfg.taco.captions_per_video)


def querybank(train_set: VideoTextDataset, size: int) -> list[str]:
    """``size`` training captions drawn without replacement by a fixed generator (the same bank for
    every seed of a recipe), in training-set order."""
    rows = np.random.default_rng(0).choice(len(train_set), min(size, len(train_set)), replace=False)
    return [train_set.clips[i].caption for i in sorted(rows.tolist())]


def forward(model, batch, cfg: Config, generator, shard) -> dict:
    out = model(batch, cfg.taco, generator, shard=shard)
    counts = {}
    if "l2_texts" in out:  # texts with no noun or verb get no token loss: count them
        counts["l2_skipped_no_token_of_interest"] = shard.total - int(out["l2_texts"])
    if getattr(batch, "duplicates_dropped", 0):  # data.shards: clips of a video already in the batch (this rank's)
        counts["stream_duplicate_videos_dropped"] = batch.duplicates_dropped
    if counts:
        out["counts"] = counts
    return out


TASK = Task(
    name="taco",
    model="taco",
    build=build_experiment,
    forward=forward,
    log_keys=("loss", "l1", "l2", "l3"),
    evaluate=lambda model, data, cfg, device, distributed: evaluate_retrieval(model, data, cfg.eval, device=device,
                                                                             distributed=distributed),
    show_keys=lambda cfg: ("t2v_R@1", "t2v_R@5", "v2t_R@1"),
    unused_parameters=lambda cfg: not cfg.taco.fusion_weight,  # the fusion encoder is then unused
    scoring=lambda cfg: cfg.eval.scoring + querybank_description(cfg.eval, cfg.eval.querybank),
    pools_members=lambda cfg: None,  # vidlang evaluate averages the members' score matrices
)
