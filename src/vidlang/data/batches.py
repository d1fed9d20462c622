"""The resumable stream of training batches the loop draws from (one unique video per batch slot)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from vidlang import distributed
from vidlang.data.dataset import UniqueVideoBatchSampler, collate


class EpochStream:
    """An endless stream of batches with a resumable position (epoch, index): subclasses ``_start()``
    an iterator at that position; ``next()`` moves on, into the next epoch at the end of one."""

    epoch: int = 0
    index: int = 0
    _iter = None

    def _start(self) -> None:
        raise NotImplementedError

    def __next__(self):
        if self._iter is None:
            self._start()
        try:
            batch = next(self._iter)
        except StopIteration:
            self.epoch, self.index = self.epoch + 1, 0
            self._start()
            batch = next(self._iter)
        self.index += 1
        return batch

    next = __next__

    def __iter__(self):
        return self


class BatchStream(EpochStream):
    """An endless, resumable stream of unique-video batches (``per_video`` clips of each): its position is (epoch, index).

    Every rank draws the same global batches (same seed) and keeps its contiguous slice
    ``shard_bounds(len(batch), world, rank)``, so the ranks' slices make up the one-process batch.
    """

    def __init__(self, dataset, batch_size: int, seed: int, num_workers: int = 0,
                 rank: int = 0, world: int = 1, collate_fn: Callable = collate, per_video: int = 1):
        self.dataset, self.collate_fn = dataset, collate_fn
        self.sampler = UniqueVideoBatchSampler(dataset, batch_size, drop_last=len(dataset.videos) > batch_size, seed=seed,
                                               per_video=per_video)
        self.num_workers, self.rank, self.world = num_workers, rank, world
        self.epoch, self.index = 0, 0
        self._iter = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index, self._iter = state["epoch"], state["index"], None

    def _start(self) -> None:
        self.sampler.set_epoch(self.epoch)
        batches = list(self.sampler)[self.index :]
        if self.world > 1:
            batches = [b[slice(*distributed.shard_bounds(len(b), self.world, self.rank))] for b in batches]
        loader = DataLoader(  # its own generator: creating an iterator must not draw from the global RNG
            self.dataset, batch_sampler=batches, collate_fn=self.collate_fn, num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.epoch),
        )
        self._iter = iter(loader)
