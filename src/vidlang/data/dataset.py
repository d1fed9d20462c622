"""From clips + a feature store to model batches.

:class:`VideoTextDataset` yields one (segment features, tokenised caption) item per clip,
:func:`collate` pads items into a :class:`~vidlang.data.records.Batch`, and
:class:`UniqueVideoBatchSampler` builds batches with no video twice (so that in-batch
contrastive negatives are never secretly positives).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vidlang.data.features import FeatureStore
from vidlang.data.records import Batch, Clip, Skips
from vidlang.errors import ConfigError, DataError

__all__ = ["cut_segment", "sample_frames", "augment_frames", "encode_caption", "VideoTextDataset", "pad_videos", "collate",
           "UniqueVideoBatchSampler"]

TokenWeighter = Callable[[str, list[tuple[int, int]]], np.ndarray]


def cut_segment(features: np.ndarray, start: float | None, end: float | None, fps: float | None,
                video_id: str) -> np.ndarray:
    """Frames ``[floor(start*fps), ceil(end*fps))`` of ``features``, clamped to the sequence.

    ``None`` start/end mean the start/end of the video. A span selecting nothing (e.g. past
    the last feature) gives the single nearest frame.
    """
    if start is None and end is None:
        return features
    if fps is None:
        raise DataError(f"clip of video {video_id!r} has start/end times but the feature store's fps "
                        "is unknown: give fps (open_store(..., fps=...) or meta.json)")
    n = features.shape[0]
    lo = 0.0 if start is None else float(start)
    hi = n / fps if end is None else float(end)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise DataError(f"clip of video {video_id!r} has a bad segment [{start}, {end}]")
    lo_f, hi_f = lo * fps, hi * fps  # in frames; clamped before int(): 1e308 s times fps is inf
    if not (math.isfinite(lo_f) and math.isfinite(hi_f)):
        raise DataError(f"clip of video {video_id!r} has a segment [{start}, {end}] too large for its fps {fps}")
    first = min(max(math.floor(min(lo_f, n)), 0), n)
    last = min(max(math.ceil(min(hi_f, n)), 0), n)
    if last <= first:  # empty span: nearest frame to its middle
        m = (lo + hi) / 2 * fps
        mid = min(max(math.floor(min(m if math.isfinite(m) else lo_f / 2 + hi_f / 2, n)), 0), n - 1)
        return features[mid:mid + 1]
    return features[first:last]


def sample_frames(features: np.ndarray, max_frames: int) -> np.ndarray:
    """Uniformly subsample to ``max_frames`` time steps (first and last kept) if longer."""
    if max_frames < 1:
        raise ConfigError(f"max_frames must be >= 1, got {max_frames}")
    n = features.shape[0]
    if n <= max_frames:
        return features
    idx = np.round(np.linspace(0, n - 1, max_frames)).astype(np.int64)
    return features[idx]


def augment_frames(features: np.ndarray, max_frames: int, generator: torch.Generator, jitter: bool = False,
                   drop: float = 0.0, noise: float = 0.0) -> np.ndarray:
    """Training-time feature augmentation of one clip (``features`` is the whole segment).

    ``jitter``: TSN-style sampling, one random frame from each of ``max_frames`` equal segments
    (instead of the fixed uniform grid); ``drop``: each kept frame is dropped with this probability
    (at least one stays); ``noise``: Gaussian noise of this std added to every value.
    """
    n = features.shape[0]
    if jitter and n > max_frames:
        edges = np.linspace(0, n, max_frames + 1)
        u = torch.rand(max_frames, generator=generator).numpy()
        idx = np.minimum(np.floor(edges[:-1] + u * (edges[1:] - edges[:-1])), n - 1).astype(np.int64)
        features = features[idx]
    else:
        features = sample_frames(features, max_frames)
    if drop > 0 and len(features) > 1:
        keep = torch.rand(len(features), generator=generator).numpy() >= drop
        if not keep.any():
            keep[int(torch.randint(len(features), (1,), generator=generator))] = True
        features = features[keep]
    if noise > 0:
        features = features + noise * torch.randn(features.shape, generator=generator).numpy()
    return features.astype(np.float32, copy=False)


def encode_caption(tokenizer: Any, caption: str, max_words: int) -> dict[str, list]:
    """Tokenise one caption: ``input_ids``, ``attention_mask`` and ``offset_mapping`` lists."""
    enc = tokenizer(caption, truncation=True, max_length=max_words, return_offsets_mapping=True)
    return {"input_ids": list(enc["input_ids"]), "attention_mask": list(enc["attention_mask"]),
            "offset_mapping": [tuple(o) for o in enc["offset_mapping"]]}


class VideoTextDataset(Dataset):
    """One item per clip: its segment's features (subsampled to ``max_frames``) and caption tokens.

    After construction, ``clips`` holds the kept clips (``clip_index`` indexes it),
    ``videos`` the unique video ids in first-appearance order, ``clip_video[i]`` the index in
    ``videos`` of clip i, and ``skipped`` a :class:`Skips` of what ``skip_bad`` dropped (in clips, each named).
    A timed clip whose segment starts at or after the end of its video's features, or ends more than one
    feature step after it, is bad (it would silently be cut to the last frame).
    """

    def __init__(self, clips: list[Clip], store: FeatureStore, tokenizer: Any, *, max_frames: int = 48,
                 max_words: int = 30, token_weighter: TokenWeighter | None = None, skip_bad: bool = False,
                 expected_dim: int | None = None, augment: dict[str, Any] | None = None, seed: int = 0):
        if max_frames < 1 or max_words < 2:
            raise ConfigError(f"need max_frames >= 1 and max_words >= 2, got {max_frames}, {max_words}")
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("VideoTextDataset needs a fast (tokenizers-backed) tokenizer for offsets")
        if expected_dim is not None and store.dim != expected_dim:
            raise DataError(f"feature store {store.path} has dim {store.dim}, but the model expects {expected_dim}")
        self.store, self.tokenizer, self.token_weighter = store, tokenizer, token_weighter
        self.max_frames, self.max_words = max_frames, max_words
        # augment_frames keywords (training only); its own generator, so the global RNG is untouched
        self.augment = {k: v for k, v in (augment or {}).items() if v}
        self._augment_rng = torch.Generator().manual_seed(seed + 7919)
        self.skipped: Skips = Skips()
        self.skip_reasons: dict[str, str] = {}  # video id -> why its clips were dropped
        self.querybank: list[str] = []  # training captions for QB-Norm of t2v scores (eval.querybank)

        timed = [c for c in clips if c.start is not None or c.end is not None]
        if timed and store.fps is None:
            raise DataError(f"{len(timed)} clips have start/end times (e.g. video {timed[0].video_id!r}) "
                            f"but feature store {store.path} has no fps: give fps to open_store or meta.json")
        clips = self._drop(clips, lambda c: c.caption.strip() == "", "empty_caption",
                           "clips have empty captions", skip_bad)
        missing = {c.video_id for c in clips if c.video_id not in store}
        clips = self._drop(clips, lambda c: c.video_id in missing, "missing_video",
                           f"clips refer to videos missing from feature store {store.path}", skip_bad)
        if skip_bad:  # read each video once; drop those whose features fail validation
            bad = set()
            for vid in dict.fromkeys(c.video_id for c in clips):
                try:
                    store[vid]
                except DataError as e:
                    bad.add(vid)
                    self.skip_reasons[vid] = str(e)
            clips = self._drop(clips, lambda c: c.video_id in bad, "bad_features", "", True,
                               detail=lambda c: self.skip_reasons[c.video_id])
        timed = [c for c in clips if c.start is not None or c.end is not None]
        if timed:
            length = {vid: store[vid].shape[0] / store.fps for vid in dict.fromkeys(c.video_id for c in timed)}

            def past_end(c: Clip) -> bool:
                return (c.start or 0.0) >= length[c.video_id] or (c.end or 0.0) > length[c.video_id] + 1 / store.fps

            clips = self._drop(clips, past_end, "segment_past_end",
                               f"clips have segments past the end of their features in {store.path}", skip_bad,
                               detail=lambda c: f"segment [{c.start}, {c.end}] s of a video whose features last "
                                                f"{length[c.video_id]:g} s")
        if not clips:
            raise DataError(f"no clips left for feature store {store.path} (skipped: {dict(self.skipped)})")
        self.clips = clips
        self.videos: list[str] = list(dict.fromkeys(c.video_id for c in clips))
        where = {v: i for i, v in enumerate(self.videos)}
        self.clip_video: list[int] = [where[c.video_id] for c in clips]

    def _drop(self, clips: list[Clip], is_bad: Callable[[Clip], bool], reason: str, what: str,
              skip_bad: bool, detail: Callable[[Clip], str] | None = None) -> list[Clip]:
        """Remove bad clips (counting and naming each) or raise a DataError naming the first few ids."""
        flags = [is_bad(c) for c in clips]
        bad = [c for c, f in zip(clips, flags) if f]
        if not bad:
            return clips
        if not skip_bad:
            ids = list(dict.fromkeys(c.video_id for c in bad))
            first = f"; video {bad[0].video_id!r}: {detail(bad[0])}" if detail else ""
            raise DataError(f"{len(bad)} {what} ({len(ids)} video ids, e.g. {ids[:5]}{first}); "
                            "--skip-bad / data.skip_bad=true skips them, naming each")
        for c in bad:
            self.skipped.add(reason, video_id=c.video_id, message=detail(c) if detail else
                             f"caption {c.caption!r}" if reason == "empty_caption" else "")
            self.skip_reasons.setdefault(c.video_id, reason)
        return [c for c, f in zip(clips, flags) if not f]

    def __len__(self) -> int:
        return len(self.clips)

    def token_sequences(self) -> list[list[int]]:
        """Every caption's token ids as items give them (to warm a frozen text encoder's cache)."""
        return self.tokenizer([c.caption for c in self.clips], truncation=True, max_length=self.max_words)["input_ids"]

    def __getitem__(self, i: int) -> dict[str, Any]:
        clip = self.clips[i]
        feats = cut_segment(self.store[clip.video_id], clip.start, clip.end, self.store.fps, clip.video_id)
        if self.augment:
            feats = augment_frames(feats, self.max_frames, self._augment_rng, **self.augment)
        else:
            feats = sample_frames(feats, self.max_frames)
        return {
            "video": torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)),
            **self.text_item(clip.caption),
            "video_id": clip.video_id,
            "clip_index": i,
        }

    def text_item(self, caption: str) -> dict[str, torch.Tensor]:
        """A caption's ``input_ids``, ``attention_mask`` and ``token_weights``, as items give them."""
        enc = encode_caption(self.tokenizer, caption, self.max_words)
        n = len(enc["input_ids"])
        if self.token_weighter is None:
            weights = np.zeros(n, dtype=np.float32)
        else:
            weights = np.asarray(self.token_weighter(caption, enc["offset_mapping"]), dtype=np.float32)
            if weights.shape != (n,) or not np.isfinite(weights).all():
                raise ValueError(f"token_weighter returned weights of shape {weights.shape} for a caption "
                                 f"of {n} tokens (or non-finite values): {caption!r}")
        return {
            "input_ids": torch.tensor(enc["input_ids"], dtype=torch.long),
            "attention_mask": torch.tensor(enc["attention_mask"], dtype=torch.long),
            "token_weights": torch.from_numpy(weights),
        }


def pad_videos(items: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Items' ``video`` padded to the longest T: (B, T, D) zeros where masked, and the (B, T) mask."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    dims = {it["video"].shape[1] for it in items}
    if len(dims) != 1:
        raise DataError(f"items in one batch have different feature dims {sorted(dims)}: "
                        f"videos {[it['video_id'] for it in items][:5]}")
    t_max = max(it["video"].shape[0] for it in items)
    video = torch.zeros(len(items), t_max, dims.pop())
    video_mask = torch.zeros(len(items), t_max, dtype=torch.bool)
    for k, it in enumerate(items):
        t = it["video"].shape[0]
        video[k, :t], video_mask[k, :t] = it["video"], True
    return video, video_mask


def collate(items: list[dict[str, Any]]) -> Batch:
    """Pad video to the batch's longest T (``video_mask`` True on real frames) and text to the
    longest L (pad id 0, attention 0, weight 0). When a video has several rows (several captions),
    ``text_video`` and ``video_rows`` say which rows share one."""
    video, video_mask = pad_videos(items)
    b, l_max = len(items), max(it["input_ids"].shape[0] for it in items)
    input_ids = torch.zeros(b, l_max, dtype=torch.long)
    attention_mask = torch.zeros(b, l_max, dtype=torch.long)
    token_weights = torch.zeros(b, l_max)
    for k, it in enumerate(items):
        n = it["input_ids"].shape[0]
        input_ids[k, :n], attention_mask[k, :n] = it["input_ids"], it["attention_mask"]
        token_weights[k, :n] = it["token_weights"]
    video_ids = [it["video_id"] for it in items]
    first = {v: None for v in video_ids}
    text_video = video_rows = None
    if len(first) < len(video_ids):
        column = {v: j for j, v in enumerate(first)}
        text_video = torch.tensor([column[v] for v in video_ids], dtype=torch.long)
        video_rows = torch.tensor([video_ids.index(v) for v in first], dtype=torch.long)
    return Batch(video=video, video_mask=video_mask, input_ids=input_ids, attention_mask=attention_mask,
                 token_weights=token_weights, video_ids=video_ids,
                 clip_index=torch.tensor([it["clip_index"] for it in items], dtype=torch.long),
                 text_video=text_video, video_rows=video_rows)


class UniqueVideoBatchSampler(Sampler[list[int]]):
    """Batches of clip indices with every video at most once per batch.

    Each epoch picks one random clip per video, shuffles the videos and cuts them into
    batches, so an epoch visits every video once. With ``per_video`` = m > 1 a batch holds
    ``batch_size`` videos with m distinct clips each (all of a video's clips when it has fewer),
    side by side: several captions of one video as positives. Randomness comes from ``seed + epoch``:
    call :meth:`set_epoch` before each epoch (as with ``DistributedSampler``).
    ``clip_video`` is the dataset's ``clip_video`` list (or any dataset that has one).
    """

    def __init__(self, clip_video: Sequence[int] | VideoTextDataset, batch_size: int, *,
                 drop_last: bool = False, seed: int = 0, per_video: int = 1):
        clip_video = getattr(clip_video, "clip_video", clip_video)  # a dataset (any task's) or the list itself
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        groups: dict[int, list[int]] = {}
        for clip, video in enumerate(clip_video):
            groups.setdefault(int(video), []).append(clip)
        self.groups = list(groups.values())
        if per_video < 1:
            raise ConfigError(f"clips per video must be >= 1, got {per_video}")
        self.batch_size, self.drop_last, self.seed, self.epoch = batch_size, drop_last, seed, 0
        self.per_video = per_video

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.groups)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.groups), generator=g).tolist()
        picks = torch.randint(0, 2**62, (len(self.groups),), generator=g).tolist()
        if self.per_video == 1:
            chosen = [[self.groups[v][picks[v] % len(self.groups[v])]] for v in order]
        else:
            chosen = [[self.groups[v][i] for i in torch.randperm(len(self.groups[v]), generator=g)[:self.per_video]]
                      for v in order]
        for k in range(len(self)):
            yield [clip for group in chosen[k * self.batch_size:(k + 1) * self.batch_size] for clip in group]


class PerVideoDataset(torch.utils.data.Dataset):
    """Items of whole videos (one per video), for task heads: subclasses add the labels in ``item``.
    ``max_frames``: sample at most this many frames (0: every frame)."""

    def __init__(self, video_ids: list[str], store: FeatureStore, max_frames: int = 0):
        self.videos, self.store, self.max_frames = video_ids, store, max_frames
        self.clip_video = list(range(len(video_ids)))  # one item per video (for the batch sampler)
        self.clips: list[Clip] = []
        self.skipped = Skips()

    def __len__(self) -> int:
        return len(self.videos)

    def features(self, i: int) -> torch.Tensor:
        arr = self.store[self.videos[i]]
        arr = sample_frames(arr, self.max_frames) if self.max_frames else arr
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

    def item(self, video_id: str) -> dict:
        return {}

    def __getitem__(self, i: int) -> dict:
        return {"video": self.features(i), "video_id": self.videos[i], **self.item(self.videos[i])}
