"""Streaming a :class:`~vidlang.data.shards.ShardedStore` into a training loop.

Epoch e of rank r of W (:class:`EpochPlan`):

1. the shards are permuted with seed ``(seed, e)``; the last ``num_shards % W`` of that order sit
   the epoch out (a different few each epoch), and rank r takes every W-th of the rest, so the
   ranks read disjoint sets of shards;
2. rank r's shards, in that order, are cut into groups of ``mix`` shards, and each group's clips
   are permuted with seed ``(seed, e, r, group)`` (memory: one group's positions, never the epoch's);
3. every rank stops after the same number of batches (the smallest rank's clips // the largest
   local batch), so ranks never wait on each other at an epoch's end.

DataLoader workers split rank r's batches round-robin (worker w of K makes batches j with
``j = start + w (mod K)``); the DataLoader hands batches back in that same round-robin order, so the
sequence of batches does not depend on the number of workers. The position is (epoch, batches
done): :class:`ShardStream` resumes from it exactly, with no reading to skip.
"""
from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vidlang import distributed
from vidlang.data.batches import EpochStream
from vidlang.data.dataset import encode_caption, pad_videos, sample_frames
from vidlang.data.records import TensorBatch
from vidlang.data.shards import ShardedStore
from vidlang.errors import ConfigError, DataError

__all__ = ["EpochPlan", "ShardDataset", "ShardStream", "ClipBatch", "clip_item", "collate_clips",
           "UniqueVideos", "caption_transform", "video_text_transform"]


class EpochPlan:
    """Which (shard, entry) position p of rank ``rank``'s epoch ``epoch`` reads."""

    def __init__(self, sizes: np.ndarray, seed: int, epoch: int, rank: int = 0, world: int = 1, mix: int = 1,
                 shuffle: bool = True):
        n = len(sizes)
        if n < world:
            raise ConfigError(f"{n} shards cannot be split over {world} processes: write more, smaller shards")
        if mix < 1:
            raise ConfigError(f"mix must be >= 1, got {mix}")
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        used = order[: n - n % world]
        self.left_out = sorted(order[n - n % world:].tolist())
        self.rank_shards = [used[r::world] for r in range(world)]
        self.length = int(min(sizes[s].sum() for s in self.rank_shards))  # the same on every rank
        self.shards = self.rank_shards[rank]
        self.groups = [self.shards[g:g + mix] for g in range(0, len(self.shards), mix)]
        self.group_starts = [0, *np.cumsum([sizes[g].sum() for g in self.groups]).tolist()]
        self.sizes, self.key, self.shuffle = sizes, (seed, epoch, rank), shuffle
        self._cached: tuple[int, list] | None = None

    def _group(self, g: int) -> list[tuple[int, int]]:
        if self._cached is None or self._cached[0] != g:
            pairs = np.concatenate([np.stack([np.full(self.sizes[k], k), np.arange(self.sizes[k])], 1)
                                    for k in self.groups[g]])
            if self.shuffle:
                pairs = pairs[np.random.default_rng([*self.key, g]).permutation(len(pairs))]
            self._cached = (g, [tuple(x) for x in pairs.tolist()])
        return self._cached[1]

    def locate(self, p: int) -> tuple[int, int]:
        g = bisect.bisect_right(self.group_starts, p) - 1
        return self._group(g)[p - self.group_starts[g]]


class ShardDataset(IterableDataset):
    """Rank ``rank``'s items of epoch ``epoch`` from batch ``start`` on, in batch order, each
    ``transform(store.read(k, i))``. ``batch_size`` is the global batch: use a DataLoader with
    ``batch_size=self.local_batch`` (as :class:`ShardStream` does) so its batches are the plan's."""

    def __init__(self, store: ShardedStore, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
                 mix: int = 1, shuffle: bool = True, transform: Callable[[dict], Any] | None = None):
        if batch_size < world:
            raise ConfigError(f"batch_size={batch_size} must be at least the number of processes ({world})")
        lo, hi = distributed.shard_bounds(batch_size, world, rank)
        self.store, self.seed, self.rank, self.world, self.mix, self.shuffle = store, seed, rank, world, mix, shuffle
        self.local_batch, self.max_local = hi - lo, math.ceil(batch_size / world)
        self.transform = transform or clip_item
        self.epoch, self.start = 0, 0

    def plan(self, epoch: int) -> EpochPlan:
        return EpochPlan(self.store.sizes, self.seed, epoch, self.rank, self.world, self.mix, self.shuffle)

    def num_batches(self, epoch: int) -> int:
        return self.plan(epoch).length // self.max_local

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = self.plan(self.epoch)
        for j in range(self.start + worker, plan.length // self.max_local, workers):
            for p in range(j * self.local_batch, (j + 1) * self.local_batch):
                yield self.transform(self.store.read(*plan.locate(p)))


class ShardStream(EpochStream):
    """An endless, resumable stream of batches from a sharded store, like ``train.BatchStream``:
    ``next(stream)``, ``state()`` = {epoch, index (batches done in the epoch), ...}, ``load_state()``.
    ``batch_size`` is the global batch; rank r gets ``shard_bounds(batch_size, world, r)`` of it.
    ``rank``/``world`` default to the torchrun process group's."""

    def __init__(self, store: ShardedStore | str, batch_size: int, seed: int, num_workers: int = 0,
                 rank: int | None = None, world: int | None = None, collate_fn: Callable | None = None,
                 transform: Callable[[dict], Any] | None = None, mix: int = 1, shuffle: bool = True):
        store = store if isinstance(store, ShardedStore) else ShardedStore(store)
        rank = distributed.rank() if rank is None else rank
        world = distributed.world_size() if world is None else world
        self.dataset = ShardDataset(store, batch_size, seed, rank, world, mix, shuffle, transform)
        if self.dataset.num_batches(0) < 1:
            raise ConfigError(f"{store.path}: an epoch of rank {rank} holds fewer clips than one batch of "
                              f"{self.dataset.max_local}; lower the batch size or use fewer processes")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.collate_fn = collate_fn or collate_clips
        self.epoch, self.index = 0, 0
        self._iter = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "batch_size": self.batch_size,
                "world": self.dataset.world, "num_clips": self.dataset.store.num_clips}

    def load_state(self, state: dict) -> None:
        for key, now in (("batch_size", self.batch_size), ("num_clips", self.dataset.store.num_clips)):
            if state.get(key, now) != now:
                raise ConfigError(f"the stream state was saved with {key}={state[key]}, now {now}: "
                                  "an exact resume needs the same store and batch size")
        if state.get("world", self.dataset.world) != self.dataset.world:
            warnings.warn(f"the stream state was saved by {state['world']} processes, now {self.dataset.world}: "
                          "the rest of the epoch is read in another order than the saved run's", stacklevel=2)
        self.epoch, self.index, self._iter = int(state["epoch"]), int(state["index"]), None

    def _start(self) -> None:
        if self.index >= self.dataset.num_batches(self.epoch):  # saved at an epoch's very end
            self.epoch, self.index = self.epoch + 1, 0
        self.dataset.epoch, self.dataset.start = self.epoch, self.index
        # its own generator: starting an iterator must not draw from the global RNG (dropout), or a resumed
        # run, which starts it at another step, would diverge from the uninterrupted one
        self._iter = iter(DataLoader(self.dataset, batch_size=self.dataset.local_batch, collate_fn=self.collate_fn,
                                     num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.epoch)))

    def close(self) -> None:
        """Stop the DataLoader workers (a later ``next`` starts them again at the same position)."""
        self._iter = None


# ----------------------------------------------------------------------------- items and batches
@dataclass
class ClipBatch(TensorBatch):
    """Clips as stored: padded ``video`` (B, T, D) with ``video_mask``, the global ``clip_index``,
    and the records' text fields (``captions``/``transcripts`` hold None where a clip has none)."""

    video: torch.Tensor
    video_mask: torch.Tensor
    clip_index: torch.Tensor
    video_ids: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    captions: list[str | None] = field(default_factory=list)
    transcripts: list[str | None] = field(default_factory=list)


def clip_item(record: dict) -> dict:
    return {"video": torch.from_numpy(record["video"]), "video_id": record["video_id"], "key": record.get("key"),
            "caption": record.get("caption"), "transcript": record.get("transcript"),
            "clip_index": record["clip_index"]}


def collate_clips(items: list[dict]) -> ClipBatch:
    if len({it["video"].shape for it in items}) == 1:  # clips of one length: one stack, no padding
        video = torch.stack([it["video"] for it in items])
        video_mask = torch.ones(video.shape[:2], dtype=torch.bool)
    else:
        video, video_mask = pad_videos(items)
    return ClipBatch(video, video_mask, torch.tensor([it["clip_index"] for it in items], dtype=torch.long),
                     [it["video_id"] for it in items], [it["key"] for it in items],
                     [it["caption"] for it in items], [it["transcript"] for it in items])


class UniqueVideos:
    """A collate for contrastive batches from a stream, which has no unique-video sampler: a video's
    first clip in the batch is kept and its later clips are dropped (another clip of the same video
    would be a false negative). The batch's ``duplicates_dropped`` counts them."""

    def __init__(self, collate_fn: Callable[[list[dict]], Any]):
        self.collate_fn = collate_fn

    def __call__(self, items: list[dict]) -> Any:
        seen: set[str] = set()
        kept = [it for it in items if not (it["video_id"] in seen or seen.add(it["video_id"]))]
        batch = self.collate_fn(kept)
        batch.duplicates_dropped = len(items) - len(kept)
        return batch


def _ids(tokenizer: Any, text: str, limit: int) -> list[int]:
    """Token ids cut to ``limit`` keeping the last ([SEP]), as CaptionDataset does."""
    ids = list(tokenizer(text, truncation=True, max_length=limit + 1)["input_ids"])
    return ids[:limit - 1] + ids[-1:] if len(ids) > limit else ids


def _caption(record: dict) -> str:
    caption = (record.get("caption") or "").strip()
    if not caption:
        raise DataError(f"shard {record.get('shard')}, entry {record.get('entry')} (video {record['video_id']!r}) "
                        "has no caption to train on")
    return caption


def caption_transform(tokenizer: Any, max_frames: int = 32, max_words: int = 32, max_target_len: int = 32,
                      use_transcript: bool = True) -> Callable[[dict], dict]:
    """Records -> CaptionDataset-shaped items (collate with ``collate_captions``): MV-GPT reads the
    transcript and generates the caption (in pretraining pairs: the future utterance)."""

    def item(record: dict) -> dict:
        transcript = (record.get("transcript") or "").strip() if use_transcript else ""
        return {"video": torch.from_numpy(sample_frames(record["video"], max_frames).copy()),
                "transcript_ids": torch.tensor(_ids(tokenizer, transcript, max_words), dtype=torch.long),
                "target_ids": torch.tensor(_ids(tokenizer, _caption(record), max_target_len), dtype=torch.long),
                "video_id": record["video_id"], "clip_index": record["clip_index"]}

    return item


def video_text_transform(tokenizer: Any, max_frames: int = 48, max_words: int = 30,
                         token_weighter: Callable | None = None) -> Callable[[dict], dict]:
    """Records -> VideoTextDataset-shaped items (collate with ``dataset.collate``) for TACo."""

    def item(record: dict) -> dict:
        caption = _caption(record)
        enc = encode_caption(tokenizer, caption, max_words)
        n = len(enc["input_ids"])
        weights = (np.zeros(n, np.float32) if token_weighter is None else
                   np.asarray(token_weighter(caption, enc["offset_mapping"]), dtype=np.float32))
        return {"video": torch.from_numpy(sample_frames(record["video"], max_frames).copy()),
                "input_ids": torch.tensor(enc["input_ids"], dtype=torch.long),
                "attention_mask": torch.tensor(enc["attention_mask"], dtype=torch.long),
                "token_weights": torch.from_numpy(weights), "video_id": record["video_id"],
                "clip_index": record["clip_index"]}

    return item
