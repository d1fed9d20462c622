"""Building a model from a checkpoint folder: its config, its kind (meta.json) and its weights."""
from __future__ import annotations

from pathlib import Path

import torch

from vidlang import checkpoint as ckpt
from vidlang.config import Config, checkpoint_config
from vidlang.errors import CheckpointError

KINDS = ("taco", "mvgpt", "probe")


def read_config(folder: Path) -> Config:
    """The config saved beside a checkpoint's weights, checked like a recipe (a CheckpointError names the file)."""
    return checkpoint_config(folder)


def build_model(kind: str, cfg: Config, meta: dict) -> torch.nn.Module:
    """An untrained model of ``kind`` shaped as ``cfg`` and ``meta`` say (no pretrained text weights:
    a checkpoint's weights are loaded right after)."""
    if kind == "taco":
        from vidlang.models.taco import TACo

        return TACo(cfg.model, int(meta["video_dim"]), load_text_weights=False)
    if kind == "mvgpt":
        from vidlang.models.mvgpt import MVGPT

        model = MVGPT(cfg, int(meta["video_dim"]), load_text_weights=False)
        model.decoder.set_output_vocab(meta.get("output_vocab"))
        return model
    if kind == "probe":
        from vidlang.models.frame_probe import FrameProbe
        from vidlang.models.probe import ProbeModel
        from vidlang.models.qa_head import VideoQAModel

        head = meta["probe"].get("head", "video")  # what sits on the encoder: one class per video, frame or answer
        return {"video": ProbeModel, "frames": FrameProbe, "answers": VideoQAModel}[head].from_meta(meta)
    raise CheckpointError(f"unknown model kind {kind!r} (known: {', '.join(KINDS)})")


def model_from_checkpoint(folder: Path, kind: str | None = None, cfg: Config | None = None):
    """(model in eval mode, config, meta) of a checkpoint folder; ``kind`` makes any other kind an error."""
    meta = ckpt.read_meta(folder, expect_model=kind)
    if meta.get("model") not in KINDS:
        raise CheckpointError(f"{folder} holds a {meta.get('model')!r} model, not one of vidlang's ({', '.join(KINDS)})")
    cfg = cfg or read_config(folder)
    model = build_model(meta["model"], cfg, meta)
    ckpt.load_weights(model, folder)
    return model.eval(), cfg, meta
