"""The small public API: load a trained model, encode videos and texts, search, caption.

    import vidlang
    model = vidlang.load_model("runs/demo/taco")            # a run folder or a checkpoint folder
    hits = vidlang.retrieval.query(model, "a red ball bouncing", features_dir, k=5)
    captioner = vidlang.load_model("runs/demo/mvgpt")       # an MV-GPT run
    text = vidlang.caption(captioner, features)             # (T, D) features -> a sentence
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vidlang import checkpoint as ckpt
from vidlang.config import Config, checkpoint_config
from vidlang.data.dataset import (
    VideoTextDataset,
    collate,
    encode_caption,
    sample_frames,
)
from vidlang.data.features import FeatureStore, validate_features
from vidlang.data.records import Clip
from vidlang.errors import CheckpointError, DataError
from vidlang.evaluation.scoring import EncodedSet, encode_texts, encode_videos
from vidlang.models.mvgpt import MVGPT
from vidlang.models.taco import TACo
from vidlang.text.idf import TokenWeighter
from vidlang.text.pretrained import load_tokenizer


@dataclass
class LoadedModel:
    model: TACo
    cfg: Config
    tokenizer: object
    weighter: TokenWeighter
    checkpoint: Path
    meta: dict
    device: torch.device = torch.device("cpu")

    def dataset(self, clips: list[Clip], store: FeatureStore, skip_bad: bool = False) -> VideoTextDataset:
        return VideoTextDataset(
            clips, store, self.tokenizer, max_frames=self.cfg.data.max_frames, max_words=self.cfg.data.max_words,
            token_weighter=self.weighter, skip_bad=skip_bad, expected_dim=self.model.video_dim,
        )


@dataclass
class LoadedCaptioner:
    model: MVGPT
    cfg: Config
    tokenizer: object
    checkpoint: Path
    meta: dict
    device: torch.device = torch.device("cpu")


def load_model(path: str | Path, which: str = "best", kind: str | None = None,
               device: str | torch.device = "cpu") -> LoadedModel | LoadedCaptioner:
    """Load a checkpoint (or the ``best``/``latest`` one of a run folder), in eval mode on ``device``:
    a TACo model (:class:`LoadedModel`) or an MV-GPT captioner (:class:`LoadedCaptioner`), as the
    checkpoint says. ``kind`` ("taco" or "mvgpt") makes any other kind an error."""
    device = torch.device(device)
    folder = ckpt.find_checkpoint(path, which)
    meta = ckpt.read_meta(folder, expect_model=kind)
    if meta.get("model") not in ("taco", "mvgpt"):
        raise CheckpointError(f"{folder} holds a {meta.get('model')!r} model, not a vidlang taco or mvgpt model")
    cfg = checkpoint_config(folder)
    if meta["model"] == "mvgpt":
        captioner = MVGPT(cfg, int(meta["video_dim"]), load_text_weights=False)
        ckpt.load_weights(captioner, folder)
        captioner.decoder.set_output_vocab(meta.get("output_vocab"))
        captioner.to(device).eval()
        return LoadedCaptioner(captioner, cfg, load_tokenizer(cfg.model.text_encoder), folder, meta, device)
    model = TACo(cfg.model, int(meta["video_dim"]), load_text_weights=False)
    ckpt.load_weights(model, folder)
    model.to(device).eval()
    weighter = TokenWeighter.from_state_dict(meta["token_weighter"])
    return LoadedModel(model, cfg, load_tokenizer(cfg.model.text_encoder), weighter, folder, meta, device)


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

    ``transcript``: the clip's speech (one string per array, or None) when the model reads one;
    ``method`` greedy | beam | nucleus and ``settings`` (beam_size, max_len, ...) default to the
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
    tok, out = loaded.tokenizer, []
    for a in range(0, len(features), batch_size):
        video, mask = _video_batch(loaded, features[a:a + batch_size])
        enc = tok([(t or "").strip() for t in transcripts[a:a + batch_size]], truncation=True,
                  max_length=loaded.cfg.data.max_words, padding=True, return_tensors="pt")
        ids = loaded.model.generate(video, mask, enc["input_ids"].to(loaded.device), enc["attention_mask"].to(loaded.device),
                                    method=method, **settings)
        out += [tok.decode(seq, skip_special_tokens=True).strip() for seq in ids]
    return out[0] if single else out
