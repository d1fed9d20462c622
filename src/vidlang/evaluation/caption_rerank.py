"""The training-caption bank, and two uses of it beyond the paper: decoding by neighbour agreement
(``decode.method=rerank``, stamped ``rerank{k}``) and a retrieval-augmented second stream
(``mvgpt.neighbour_captions=k``, :func:`neighbour_transcripts`).

Each video is decoded several ways (:data:`CANDIDATE_DECODINGS`). Of those captions, the one kept has
the highest mean CIDEr-D against all captions of the video's k nearest training videos
(evaluation.baselines.rerank_by_neighbours: cosine of standardised mean-pooled features, or, with
``decode.rerank_retriever``, a TACo model's sentence score: :class:`Retriever`). Each
video is reranked alone, and only training captions are references. The training videos' pooled
features and captions (the :class:`CaptionBank`) are kept with every checkpoint
(``caption_bank.safetensors``).

On msrvtt-ae128-dev (video700-799, 3 seeds; docs/mvgpt-levers.md) it gave CIDEr 0.368 +- 0.006, where
greedy gave 0.344 +- 0.008 and the consensus of the 10 nearest videos' captions gave 0.363.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save

from vidlang.data.narration import CaptionDataset
from vidlang.data.dataset import cut_segment, sample_frames
from vidlang.errors import CheckpointError, ConfigError
from vidlang.evaluation.baselines import nearest_videos, own_consensus_captions, rerank_by_neighbours

BANK_FILE = "caption_bank.safetensors"
# greedy, beam 4, beam 4 without a repeated bigram: the three decodings the 3-seed measurement reranked
CANDIDATE_DECODINGS = ({"method": "greedy"}, {"method": "beam", "beam_size": 4},
                       {"method": "beam", "beam_size": 4, "no_repeat_ngram": 2})


@dataclass
class CaptionBank:
    """The training videos (or segments) a reranked caption must agree with."""

    keys: list[str]
    captions: list[list[str]]
    features: np.ndarray  # (N, D) mean over each clip's frames
    consensus: list[str] | None = None  # each video's consensus caption (computed on first use, then saved)
    retrieval: np.ndarray | None = None  # (N, d) decode.rerank_retriever: each video's mean s1 caption vector

    def consensus_captions(self) -> list[str]:
        """Each bank video's own consensus caption (baselines.own_consensus_captions; needs Java once)."""
        if self.consensus is None:
            self.consensus = own_consensus_captions(self.captions)
        return self.consensus

    def to_bytes(self) -> bytes:
        meta = {"keys": json.dumps(self.keys), "captions": json.dumps(self.captions)}
        if self.consensus is not None:
            meta["consensus"] = json.dumps(self.consensus)
        tensors = {"features": np.ascontiguousarray(self.features, dtype=np.float32)}
        if self.retrieval is not None:
            tensors["retrieval"] = np.ascontiguousarray(self.retrieval, dtype=np.float32)
        return save(tensors, metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "CaptionBank":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
            keys, captions = json.loads(meta["keys"]), json.loads(meta["captions"])
            consensus = json.loads(meta["consensus"]) if "consensus" in meta else None
            tensors = load_file(str(path))
            features, retrieval = tensors["features"], tensors.get("retrieval")
        except (OSError, KeyError, ValueError, SafetensorError) as e:
            raise CheckpointError(f"{path}: not a caption bank ({e})") from e
        if not (len(keys) == len(captions) == len(features) == len(consensus or keys) == len(
                keys if retrieval is None else retrieval)):
            raise CheckpointError(f"{path}: {len(keys)} keys, {len(captions)} caption lists, {len(features)} feature "
                                  f"rows, {len(consensus or keys)} consensus captions, "
                                  f"{len(keys if retrieval is None else retrieval)} retrieval rows")
        return cls(keys, captions, features, consensus, retrieval)


def clip_features(dataset: CaptionDataset, indices: list[int]) -> list[np.ndarray]:
    """Every frame of each clip's segment (no frame sampling), (T, D) float32."""
    out = []
    for i in indices:
        clip = dataset.clips[i]
        feats = cut_segment(dataset.store[clip.video_id], clip.start, clip.end, dataset.store.fps, clip.video_id)
        out.append(np.asarray(feats, dtype=np.float32))
    return out


def pooled_features(dataset: CaptionDataset, indices: list[int]) -> np.ndarray:
    """(len(indices), D): the mean over every frame of each clip's segment (no frame sampling)."""
    return np.stack([f.mean(axis=0) for f in clip_features(dataset, indices)])


def build_caption_bank(dataset: CaptionDataset) -> CaptionBank:
    """One row per video/segment of a (training) dataset: its pooled features and all its captions."""
    first: dict[str, int] = {}
    captions: dict[str, list[str]] = {}
    for i, (key, clip) in enumerate(zip(dataset.keys, dataset.clips)):
        first.setdefault(key, i)
        captions.setdefault(key, []).append(clip.caption)
    keys = list(first)
    return CaptionBank(keys, [captions[k] for k in keys], pooled_features(dataset, [first[k] for k in keys]))


def check_neighbours(k: int, bank: CaptionBank | None, where: str) -> None:
    if bank is None:
        raise ConfigError(f"decode.method=rerank needs the training videos' captions, and {where} holds no "
                          f"{BANK_FILE}: train with decode.method=rerank (or use greedy/beam)")
    if not 1 <= k <= len(bank.keys):
        raise ConfigError(f"decode.rerank_neighbours must be in [1, {len(bank.keys)}] (the bank's training videos), got {k}")


@torch.no_grad()
def candidate_pools(model, tokenizer, video, video_mask, transcript_ids, transcript_mask, members=(),
                    **settings) -> list[list[str]]:
    """Each clip's distinct non-empty captions under every candidate decoding of ``model`` and of each
    of ``members`` (other captioners of the same inputs; beyond the paper, see :func:`check_members`).
    ``settings``: only max_len, applied to each; the decodings themselves are fixed."""
    if set(settings) - {"max_len"}:
        raise ConfigError(f"decode.method=rerank takes max_len only, not {sorted(set(settings) - {'max_len'})}: "
                          "its candidate decodings are fixed (evaluation/caption_rerank.py)")
    runs = []
    for captioner in (model, *members):
        for decoding in CANDIDATE_DECODINGS:
            ids = captioner.generate(video, video_mask, transcript_ids, transcript_mask, **decoding, **settings)
            runs.append([tokenizer.decode(seq, skip_special_tokens=True).strip() for seq in ids])
    return [list(dict.fromkeys(c for c in texts if c)) for texts in zip(*runs)]


# what every member of a pool must share with the first captioner: they read the same batches
MEMBER_KEYS = ("model.text_encoder", "data.max_frames", "data.max_words", "mvgpt.use_transcript",
               "mvgpt.neighbour_captions")


def check_members(loaded, members, method: str | None = None) -> None:
    """Pooled candidates (``vidlang caption --members``): several captioners, e.g. other seeds of one
    recipe, decode the same batches and the rerank picks among all their captions. Each member must read
    inputs the way ``loaded`` does (:data:`MEMBER_KEYS`) and rerank against the same training videos
    (``method``: the decoding asked for, default ``loaded``'s)."""
    def value(cfg, key):
        section, name = key.split(".")
        return getattr(getattr(cfg, section), name)

    method = method or loaded.cfg.decode.method
    if members and method != "rerank":
        raise ConfigError(f"--members pools candidates for decode.method=rerank, not {method} ({loaded.checkpoint})")
    for member in members:
        for key in MEMBER_KEYS:
            if value(member.cfg, key) != value(loaded.cfg, key):
                raise ConfigError(f"member {member.checkpoint} has {key}={value(member.cfg, key)!r}, but "
                                  f"{loaded.checkpoint} has {value(loaded.cfg, key)!r}: pool captioners that read the same inputs")
        if member.model.video_dim != loaded.model.video_dim:
            raise ConfigError(f"member {member.checkpoint} reads {member.model.video_dim}-d features, "
                              f"{loaded.checkpoint} {loaded.model.video_dim}-d")
        bank, own = member.caption_bank, loaded.caption_bank
        if bank is None or own is None or bank.keys != own.keys:
            raise ConfigError(f"member {member.checkpoint} was not trained on the training videos of {loaded.checkpoint} "
                              f"(its {BANK_FILE} differs or is missing)")


def pick_by_neighbours(pools: list[list[str]], pooled: np.ndarray, bank: CaptionBank, k: int,
                       prior_weight: float = 0.0, nearest: np.ndarray | None = None) -> list[str]:
    """The neighbour-agreement pick of each pool (``prior_weight``: decode.rerank_prior; ``nearest``: each
    clip's nearest bank videos, e.g. :meth:`Retriever.nearest`, else by pooled features); a clip whose
    decodings were all empty stays empty."""
    keep = [i for i, pool in enumerate(pools) if pool]
    out = [""] * len(pools)
    if keep:
        picked = rerank_by_neighbours([pools[i] for i in keep], bank.features, bank.captions, pooled[keep], k,
                                      prior_weight, nearest=None if nearest is None else nearest[keep])
        for i, caption in zip(keep, picked):
            out[i] = caption
    return out


@dataclass
class Retriever:
    """``decode.rerank_retriever`` (beyond the paper): a TACo model whose sentence score s1 (Eq. 1) finds
    the rerank's nearest training videos. A training video scores the mean s1 of its captions against
    the clip, i.e. the clip's s1 vector dotted with the video's mean caption vector (``bank.retrieval``)."""

    model: torch.nn.Module  # a TACo model, in eval mode
    tokenizer: object
    max_frames: int  # the TACo model's data.max_frames and data.max_words
    max_words: int
    checkpoint: Path | None = None

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def text_vectors(self, captions: list[list[str]], batch_size: int = 256) -> np.ndarray:
        """(len(captions), d): each video's mean s1 vector over its captions."""
        flat = [c for caps in captions for c in caps]
        # the frozen lower layers' outputs in one batched pass (a caption met alone is computed alone: slow)
        self.model.text.warm_cache(self.tokenizer(flat, truncation=True, max_length=self.max_words)["input_ids"])
        rows = []
        for a in range(0, len(flat), batch_size):
            enc = self.tokenizer(flat[a:a + batch_size], truncation=True, max_length=self.max_words, padding=True,
                                 return_tensors="pt").to(self._device)
            rows.append(self.model.sentence_vectors(self.model.encode_text(enc["input_ids"], enc["attention_mask"])))
        vectors = torch.cat(rows).double().cpu().numpy()
        first = np.concatenate([[0], np.cumsum([len(c) for c in captions])])
        return np.stack([vectors[a:b].mean(axis=0) for a, b in zip(first[:-1], first[1:])]).astype(np.float32)

    def check_bank(self, bank: CaptionBank | None, where: str) -> None:
        """The bank's caption vectors must be this retriever's (its first video's, recomputed)."""
        if bank is None or bank.retrieval is None or not np.allclose(self.text_vectors(bank.captions[:1])[0], bank.retrieval[0],
                                                     atol=1e-4):
            raise CheckpointError(f"{where}: its caption bank's retrieval vectors were not made by the retriever "
                                  f"{self.checkpoint} (missing or different): use the run's own retriever/ folder")

    @torch.no_grad()
    def nearest(self, clips: list[np.ndarray], bank: CaptionBank, k: int, batch_size: int = 256) -> np.ndarray:
        """(len(clips), k) indices of each (T, D) clip's k best-scoring bank videos, best first."""
        if bank.retrieval is None:
            raise CheckpointError(f"decode.rerank_retriever={self.checkpoint}: the caption bank holds no retrieval "
                                  "vectors (it was built without the retriever); retrain or drop the retriever")
        rows = []
        for a in range(0, len(clips), batch_size):
            arrays = [sample_frames(c, self.max_frames) for c in clips[a:a + batch_size]]
            video = torch.zeros(len(arrays), max(len(x) for x in arrays), arrays[0].shape[1])
            mask = torch.zeros(video.shape[:2], dtype=torch.bool)
            for i, x in enumerate(arrays):
                video[i, : len(x)], mask[i, : len(x)] = torch.from_numpy(x), True
            rows.append(self.model.sentence_vectors(self.model.encode_video(video.to(self._device), mask.to(self._device))))
        scores = torch.cat(rows).double().cpu().numpy() @ bank.retrieval.astype(np.float64).T
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def load_retriever(path: str | Path, device: torch.device | str = "cpu") -> Retriever:
    """The :class:`Retriever` of a TACo run (its best checkpoint) or checkpoint folder."""
    from vidlang import checkpoint as ckpt
    from vidlang.models.loading import model_from_checkpoint, read_config
    from vidlang.text.pretrained import load_tokenizer

    folder = ckpt.find_checkpoint(Path(path), "best")
    cfg = read_config(folder)
    if (folder / ckpt.TEXT_ENCODER_DIR / "config.json").is_file():  # a shared model folder carries its own
        cfg.model.text_encoder = str(folder / ckpt.TEXT_ENCODER_DIR)
    model, cfg, _ = model_from_checkpoint(folder, "taco", cfg)
    return Retriever(model.to(device), load_tokenizer(cfg.model.text_encoder), cfg.data.max_frames, cfg.data.max_words,
                     folder)


# ----------------------------------------------------------------------------- the second stream
NEIGHBOUR_SEPARATOR = " . "


def neighbour_transcripts(bank: CaptionBank, pooled: np.ndarray, k: int, keys: list[str] | None = None) -> list[str]:
    """Retrieval-augmented MV-GPT (``mvgpt.neighbour_captions=k``; beyond the paper: the paper's second
    stream is ASR). For each row of ``pooled`` (mean-pooled clip features): the consensus captions of its
    k nearest bank videos (baselines.nearest_videos), nearest first, joined by " . ". A row whose key
    (``keys``) is in the bank, i.e. a training clip, never retrieves itself, so training sees what
    held-out videos will see."""
    if not 1 <= k < len(bank.keys):
        raise ConfigError(f"mvgpt.neighbour_captions must be in [1, {len(bank.keys) - 1}] (the bank's training "
                          f"videos, less one), got {k}")
    consensus = bank.consensus_captions()
    row_of = {key: i for i, key in enumerate(bank.keys)}
    nearest = nearest_videos(bank.features, pooled, k + 1)
    own = [row_of.get(key) for key in keys] if keys is not None else [None] * len(pooled)
    return [NEIGHBOUR_SEPARATOR.join(consensus[v] for v in [int(v) for v in row if int(v) != me][:k])
            for row, me in zip(nearest, own)]


def fill_neighbour_transcripts(dataset: CaptionDataset, bank: CaptionBank | None, k: int, where: str) -> None:
    """Give every clip of ``dataset`` its neighbours' captions as its transcript (one retrieval per
    video/segment, from all its frames)."""
    if bank is None:
        raise CheckpointError(f"mvgpt.neighbour_captions={k} reads the training videos' captions, and {where} "
                              f"holds no {BANK_FILE}")
    first: dict[str, int] = {}
    for i, key in enumerate(dataset.keys):
        first.setdefault(key, i)
    texts = dict(zip(first, neighbour_transcripts(bank, pooled_features(dataset, list(first.values())), k, list(first))))
    dataset.set_transcripts([texts[key] for key in dataset.keys])
