"""The small public API: load a trained model, encode videos and texts, search, caption.

    import vidlang
    model = vidlang.load_model("runs/demo/taco")            # a run folder or a checkpoint folder
    hits = vidlang.retrieval.query(model, "a red ball bouncing", features_dir, k=5)
    captioner = vidlang.load_model("runs/demo/mvgpt")       # an MV-GPT run
    text = vidlang.caption(captioner, features)             # (T, D) features -> a sentence
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vidlang import checkpoint as ckpt
from vidlang.config import Config
from vidlang.data.dataset import (
    VideoTextDataset,
    collate,
    encode_caption,
    sample_frames,
)
from vidlang.data.features import FeatureStore, validate_features
from vidlang.data.records import Clip
from vidlang.errors import CheckpointError, DataError
from vidlang.evaluation.caption_rerank import (
    BANK_FILE,
    CaptionBank,
    Retriever,
    candidate_pools,
    check_members,
    check_neighbours,
    load_retriever,
    neighbour_transcripts,
    pick_by_neighbours,
)
from vidlang.evaluation.scoring import EncodedSet, encode_texts, encode_videos
from vidlang.extract.extractor import read_store_record
from vidlang.extract.preprocess import Preprocess
from vidlang.models.loading import model_from_checkpoint, read_config
from vidlang.models.mvgpt import MVGPT
from vidlang.models.taco import TACo
from vidlang.text.idf import TokenWeighter
from vidlang.text.pretrained import load_tokenizer


TEXT_ENCODER_DIR = ckpt.TEXT_ENCODER_DIR


class _Unpacks:
    """``model, preprocess = load_model(...)``: a loaded model is also the pair (itself, its preprocess)."""

    def __iter__(self):
        return iter((self, self.preprocess))

    @property
    def preprocess(self) -> Preprocess:
        """Arrays -> checked and sampled; video paths -> the training store's extractor (see preprocess_for)."""
        if self.__dict__.get("_preprocess") is None:
            self.__dict__["_preprocess"] = training_preprocess(self)
        return self.__dict__["_preprocess"]

    @preprocess.setter
    def preprocess(self, value: Preprocess) -> None:
        self.__dict__["_preprocess"] = value


@dataclass
class LoadedModel(_Unpacks):
    model: TACo
    cfg: Config
    tokenizer: object
    weighter: TokenWeighter
    checkpoint: Path
    meta: dict
    device: torch.device = torch.device("cpu")
    members: list[LoadedModel] = field(default_factory=list)  # train.members: the run's other models

    def dataset(self, clips: list[Clip], store: FeatureStore, skip_bad: bool = False) -> VideoTextDataset:
        return VideoTextDataset(
            clips, store, self.tokenizer, max_frames=self.cfg.data.max_frames, max_words=self.cfg.data.max_words,
            token_weighter=self.weighter, skip_bad=skip_bad, expected_dim=self.model.video_dim,
        )


@dataclass
class LoadedCaptioner(_Unpacks):
    model: MVGPT
    cfg: Config
    tokenizer: object
    checkpoint: Path
    meta: dict
    device: torch.device = torch.device("cpu")
    caption_bank: CaptionBank | None = None  # decode.method=rerank: the training videos' captions
    members: list[LoadedCaptioner] = field(default_factory=list)  # train.members: the run's other captioners
    retriever: Retriever | None = None  # decode.rerank_retriever: the TACo model that finds the rerank's neighbours


def load_model(path: str | Path, which: str = "best", kind: str | None = None,
               device: str | torch.device = "cpu") -> LoadedModel | LoadedCaptioner:
    """Load a checkpoint (or the ``best``/``latest`` one of a run folder), in eval mode on ``device``:
    a TACo model (:class:`LoadedModel`) or an MV-GPT captioner (:class:`LoadedCaptioner`), as the
    checkpoint says. ``kind`` ("taco" or "mvgpt") makes any other kind an error."""
    return _load(_local_or_hub(path), which, kind, torch.device(device))


def _load(path: Path, which: str, kind: str | None, device: torch.device, text_encoder: str | None = None):
    """``text_encoder``: the first member's, for the other members of a run (they share its inputs)."""
    folder = ckpt.find_checkpoint(path, which)
    cfg = read_config(folder)
    if text_encoder:
        cfg.model.text_encoder = text_encoder
    elif (folder / TEXT_ENCODER_DIR / "config.json").is_file():  # a shared model folder carries its own text encoder
        cfg.model.text_encoder = str(folder / TEXT_ENCODER_DIR)
    if kind is None and ckpt.read_meta(folder).get("model") == "probe":
        raise CheckpointError(f"{folder} holds a task head (probe): evaluate it with `vidlang evaluate --task`")
    model, cfg, meta = model_from_checkpoint(folder, kind or None, cfg)
    model.to(device)
    if meta["model"] == "mvgpt":
        bank = CaptionBank.load(folder / BANK_FILE) if (folder / BANK_FILE).is_file() else None
        members = [_load(m, which, "mvgpt", device, cfg.model.text_encoder)
                   for m in _member_folders(folder, cfg.train.members)]
        retriever = _retriever(folder, cfg, device) if cfg.decode.rerank_retriever and not text_encoder else None
        if retriever is not None:
            retriever.check_bank(bank, str(folder))
        loaded = LoadedCaptioner(model, cfg, load_tokenizer(cfg.model.text_encoder), folder, meta, device, bank, members,
                                 retriever)
        check_members(loaded, members)
        return loaded
    weighter = TokenWeighter.from_state_dict(meta["token_weighter"])
    members = [_load(m, which, "taco", device, cfg.model.text_encoder) for m in _member_folders(folder, cfg.train.members)]
    return LoadedModel(model, cfg, load_tokenizer(cfg.model.text_encoder), weighter, folder, meta, device, members)


def _retriever(checkpoint: Path, cfg, device: torch.device) -> Retriever:
    """decode.rerank_retriever: the run's own (run/retriever, or beside the checkpoint in a shared folder),
    else the TACo run the config names."""
    here = [f for f in (checkpoint / ckpt.RETRIEVER_DIR, checkpoint.parent / ckpt.RETRIEVER_DIR) if f.is_dir()]
    folder = here[0] if here else Path(cfg.decode.rerank_retriever)
    if not folder.exists():
        raise CheckpointError(f"{checkpoint} reranks with the TACo retriever decode.rerank_retriever="
                              f"{cfg.decode.rerank_retriever}, which is missing (no {ckpt.RETRIEVER_DIR}/ beside it "
                              "either): copy the whole run folder")
    return load_retriever(folder, device)


def _member_folders(checkpoint: Path, members: int) -> list[Path]:
    """A run's other members (train.members): beside the checkpoint in a shared folder, else in its run."""
    if members <= 1:
        return []
    run = checkpoint if (checkpoint / ckpt.MEMBERS_DIR).is_dir() else checkpoint.parent
    folders = ckpt.member_dirs(run, members)
    missing = [str(f) for f in folders if not f.exists()]
    if missing:
        raise CheckpointError(f"{checkpoint} was trained with train.members={members}, and {', '.join(missing)} "
                              "is missing: finish the run (`vidlang train` resumes it) or copy the whole run folder")
    return folders


def training_preprocess(loaded: LoadedModel | LoadedCaptioner) -> Preprocess:
    """The preprocess of the checkpoint's training features: the extractor its store recorded, if any."""
    store = (loaded.meta.get("data_manifest") or {}).get("store") or {}
    record = (store.get("meta") or {}).get("extractor") if isinstance(store.get("meta"), dict) else None
    path = store.get("path")
    if not isinstance(record, dict) and path and Path(path).is_dir():
        try:
            record = read_store_record(path)
        except DataError:
            record = None
    missing = (f"the training features of {loaded.checkpoint} record no extractor (store {path or 'unknown'} was "
               "not written by `vidlang extract`): build one from a store or index whose extractor you trust, "
               "preprocess = vidlang.preprocess_for(store_or_index, model), and pass arrays otherwise")
    return Preprocess(loaded.model.video_dim, loaded.cfg.data.max_frames, record if isinstance(record, dict) else None,
                      store=path if path and Path(path).is_dir() else None, device=str(loaded.device), missing=missing,
                      name=str(loaded.checkpoint))


def _local_or_hub(path: str | Path) -> Path:
    """A local folder as is; otherwise a Hugging Face hub name, downloaded (or found in the hub cache)."""
    if Path(path).exists() or isinstance(path, Path) or str(path).startswith((".", "/", "~")) or str(path).count("/") != 1:
        return Path(path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=str(path)))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, no access: all mean "not available"
        raise CheckpointError(f"checkpoint not found: {path} (not a local folder, and not available from the Hugging "
                              f"Face hub: {type(e).__name__}); give a run, checkpoint or `vidlang export` folder") from None


def save_pretrained(loaded: LoadedModel | LoadedCaptioner, out: str | Path, overwrite: bool = False) -> Path:
    """Write a self-contained model folder, like Hugging Face's: the weights, config and meta, the
    training ids, the text encoder's config and tokenizer (``text_encoder/``; its weights are in the
    model's file) and a README model card. ``load_model(out)`` needs nothing else."""
    from transformers import AutoConfig

    from vidlang.io import atomic_write_text
    from vidlang.text.pretrained import resolve_text_encoder

    out = Path(out)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} exists: choose another folder or overwrite")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    members = getattr(loaded, "members", [])
    for checkpoint, folder in zip([loaded.checkpoint, *(m.checkpoint for m in members)],
                                  [tmp, *ckpt.member_dirs(tmp, len(members) + 1)]):  # members share text_encoder/
        folder.mkdir(parents=True)
        for name in ("model.safetensors", "meta.json", "config.yaml", ckpt.TRAIN_IDS, BANK_FILE):
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, folder / name)
    if (retriever := getattr(loaded, "retriever", None)) is not None:  # a TACo model folder of its own
        (tmp / ckpt.RETRIEVER_DIR).mkdir()
        for name in ("model.safetensors", "meta.json", "config.yaml", ckpt.TRAIN_IDS):
            if (retriever.checkpoint / name).is_file():
                shutil.copy2(retriever.checkpoint / name, tmp / ckpt.RETRIEVER_DIR / name)
        text_encoder = read_config(retriever.checkpoint).model.text_encoder
        AutoConfig.from_pretrained(resolve_text_encoder(text_encoder)).save_pretrained(
            tmp / ckpt.RETRIEVER_DIR / TEXT_ENCODER_DIR)
        retriever.tokenizer.save_pretrained(tmp / ckpt.RETRIEVER_DIR / TEXT_ENCODER_DIR)
    encoder = resolve_text_encoder(loaded.cfg.model.text_encoder)
    AutoConfig.from_pretrained(encoder).save_pretrained(tmp / TEXT_ENCODER_DIR)
    loaded.tokenizer.save_pretrained(tmp / TEXT_ENCODER_DIR)
    atomic_write_text(tmp / "README.md", model_card(loaded))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def model_card(loaded: LoadedModel | LoadedCaptioner) -> str:
    """A README for a shared model folder: what it is, what it was trained on, what it scored, how to load it."""
    meta, cfg = loaded.meta, loaded.cfg
    manifest = meta.get("data_manifest", {})
    best = meta.get("best") or {}
    splits = "\n".join(f"| {name} | {s.get('split', '')} | {s.get('videos')} | {s.get('clips')} | {s.get('ids_sha256')} |"
                       for name, s in manifest.items() if isinstance(s, dict) and "ids_sha256" in s)
    metrics = "\n".join(f"| {k} | {v:.4g} |" for k, v in (best.get("metrics") or {}).items() if isinstance(v, (int, float)))
    kind = {"taco": "TACo text-video retrieval", "mvgpt": "MV-GPT video captioning"}[meta["model"]]
    return f"""---
library_name: vidlang
tags: [video-text, {meta['model']}]
---
# {kind} (vidlang)

A {meta['model']} model trained with vidlang {meta.get('task', meta['model'])!r} on features of width
{meta.get('video_dim')} (the store: `{manifest.get('store', {}).get('path', 'unknown')}`), text encoder
`{cfg.model.text_encoder}` (its config and tokenizer are in `text_encoder/`, its weights in `model.safetensors`).
Step {meta.get('step')}, vidlang commit `{meta.get('git_commit')}`. The resolved config is `config.yaml`; the
training video ids are `{ckpt.TRAIN_IDS}`.

## Data

| split | how chosen | videos | clips | ids sha256 |
|---|---|---|---|---|
{splits}

## Validation ({cfg.eval.metric} chose this checkpoint at step {best.get('step')})

| metric | value |
|---|---|
{metrics}

Measured on the validation split above, not on a test set. The training data's license applies to these weights.

## Use

```python
import vidlang
model = vidlang.load_model("path/to/this/folder")
```
"""


def _video_batch(loaded: LoadedModel | LoadedCaptioner, features: list[np.ndarray]):
    dim = loaded.model.video_dim
    arrays = [sample_frames(validate_features(f, f"input {i}", dim, type(loaded.model).__name__), loaded.cfg.data.max_frames)
              for i, f in enumerate(features)]
    steps = max(len(a) for a in arrays)
    video = torch.zeros(len(arrays), steps, dim)
    mask = torch.zeros(len(arrays), steps, dtype=torch.bool)
    for i, a in enumerate(arrays):
        video[i, : len(a)], mask[i, : len(a)] = torch.from_numpy(a), True
    return video.to(loaded.device), mask.to(loaded.device)


@torch.no_grad()
def encode_video(loaded: LoadedModel, features: np.ndarray | list[np.ndarray], batch_size: int = 256) -> EncodedSet:
    """Encode (T, D) feature arrays: pooled embeddings plus the token features the token score needs."""
    if isinstance(features, np.ndarray) and features.ndim == 2:
        features = [features]
    features = list(features)
    return encode_videos(loaded.model, (_video_batch(loaded, features[i : i + batch_size])
                                        for i in range(0, len(features), batch_size)))


@torch.no_grad()
def encode_text(loaded: LoadedModel, texts: str | list[str], batch_size: int = 256) -> EncodedSet:
    texts = [texts] if isinstance(texts, str) else list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"text {i} is empty: give a non-empty query")
    loaded.weighter.tag(texts)

    def batches():
        for i in range(0, len(texts), batch_size):
            items = []
            for t in texts[i : i + batch_size]:
                enc = encode_caption(loaded.tokenizer, t, loaded.cfg.data.max_words)
                items.append({
                    "video": torch.zeros(1, loaded.model.video_dim),
                    "input_ids": torch.tensor(enc["input_ids"]),
                    "attention_mask": torch.tensor(enc["attention_mask"]),
                    "token_weights": torch.from_numpy(loaded.weighter(t, enc["offset_mapping"])),
                    "video_id": "", "clip_index": 0,
                })
            b = collate(items).to(loaded.device)
            yield b.input_ids, b.attention_mask, b.token_weights

    return encode_texts(loaded.model, batches())


@torch.no_grad()
def caption(loaded: LoadedCaptioner, features: np.ndarray | list[np.ndarray], transcript: str | list | None = None,
            *, method: str | None = None, batch_size: int = 32, **settings) -> str | list[str]:
    """Caption (T, D) feature arrays (one array -> one string; a list -> a list).

    ``transcript``: the clip's speech (one string per array, or None) when the model reads one; a model
    that reads its nearest training videos' captions there (``mvgpt.neighbour_captions``) or reads no
    transcript (``mvgpt.use_transcript=false``) ignores it;
    ``method`` greedy | beam | nucleus | rerank and ``settings`` (beam_size, max_len, ...) default to the
    checkpoint's ``mvgpt`` config.
    """
    if not isinstance(loaded, LoadedCaptioner):
        raise CheckpointError(f"caption needs an MV-GPT checkpoint; {loaded.checkpoint} holds a TACo model")
    single = isinstance(features, np.ndarray) and features.ndim == 2
    features = [features] if single else list(features)
    if not features:
        return []
    transcripts = [transcript] * len(features) if transcript is None or isinstance(transcript, str) else list(transcript)
    if len(transcripts) != len(features):
        raise DataError(f"{len(transcripts)} transcripts for {len(features)} feature arrays")
    neighbours = loaded.cfg.mvgpt.neighbour_captions
    rerank = (method or loaded.cfg.decode.method) == "rerank"
    if rerank:
        k = settings.pop("rerank_neighbours", loaded.cfg.decode.rerank_neighbours)
        prior = settings.pop("rerank_prior", loaded.cfg.decode.rerank_prior)
        check_neighbours(k, loaded.caption_bank, str(loaded.checkpoint))
    if neighbours and loaded.caption_bank is None:
        raise CheckpointError(f"{loaded.checkpoint} reads its nearest training videos' captions "
                              f"(mvgpt.neighbour_captions={neighbours}) but holds no {BANK_FILE}")
    if neighbours or rerank:  # each clip's mean over all its frames, as the bank holds
        pooled = np.stack([validate_features(f, f"input {i}", loaded.model.video_dim, "MVGPT").mean(axis=0)
                           for i, f in enumerate(features)])
    if neighbours:
        transcripts = neighbour_transcripts(loaded.caption_bank, pooled, neighbours)
    tok, out = loaded.tokenizer, []
    for a in range(0, len(features), batch_size):
        video, mask = _video_batch(loaded, features[a:a + batch_size])
        enc = tok([(t or "").strip() for t in transcripts[a:a + batch_size]], truncation=True,
                  max_length=loaded.cfg.data.max_words, padding=True, return_tensors="pt")
        text = (enc["input_ids"].to(loaded.device), enc["attention_mask"].to(loaded.device))
        if rerank:  # candidates now, one pick for all at the end
            out += candidate_pools(loaded.model, tok, video, mask, *text, [m.model for m in loaded.members], **settings)
            continue
        ids = loaded.model.generate(video, mask, *text, method=method, **settings)
        out += [tok.decode(seq, skip_special_tokens=True).strip() for seq in ids]
    if rerank:
        nearest = loaded.retriever.nearest(features, loaded.caption_bank, k) if loaded.retriever else None
        out = pick_by_neighbours(out, pooled, loaded.caption_bank, k, prior, nearest)
    return out[0] if single else out
