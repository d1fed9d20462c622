"""Model sizes and synthetic inputs shared by the benchmarks (models come from vidlang itself).

Sizes:
  paper  TACo/MV-GPT at the paper's shape: BERT-base text encoder (768 wide, 12 layers, random init,
         fine-tuned), 4 video layers, 2 fusion layers, 12 heads, 48 frames, 30 words, 1024-d frame
         features; MV-GPT adds a 12-layer decoder (GPT-2 small depth).
  small  the msrvtt-ae128 recipe (configs/taco/msrvtt-ae128.yaml): frozen all-MiniLM-L6-v2, joint width
         64, 1 video layer, 1 fusion layer, 4 heads, 12 frames, 30 words, 128-d features; MV-GPT adds
         the default 2-layer decoder.
"""
from __future__ import annotations

import torch

import common
from vidlang.config import Config, load_config
from vidlang.data.records import Batch, CaptionBatch

RECIPE = common.REPO / "configs" / "taco" / "msrvtt-ae128.yaml"
SHAPES = {"paper": {"frames": 48, "words": 30, "video_dim": 1024}, "small": {"frames": 12, "words": 30, "video_dim": 128}}


def config(size: str, model: str = "taco") -> Config:
    if size == "small":
        cfg = load_config(RECIPE)
        if model == "mvgpt":
            cfg.task = "mvgpt"
            cfg.mvgpt.decoder_heads = 4
        return cfg
    if size != "paper":
        raise ValueError(f"size must be paper or small, not {size!r}")
    cfg = load_config(None, [
        f"model.text_encoder={common.bert_base_dir()}", "model.text_trainable_layers=-1", "model.width=0",
        "model.video_layers=4", "model.video_heads=12", "model.fusion_layers=2", "model.fusion_heads=12",
        "model.dropout=0.1", "data.max_frames=48", "data.max_words=30"])
    if model == "mvgpt":
        cfg.task = "mvgpt"
        cfg.mvgpt.decoder_layers, cfg.mvgpt.decoder_heads = 12, 12
    return cfg


def build(size: str, model: str = "taco", device: str = "cpu", seed: int = 0):
    """(model, config, shape): the paper size is random-init; the small size loads the real frozen MiniLM."""
    cfg = config(size, model)
    shape = SHAPES[size]
    torch.manual_seed(seed)
    if model == "taco":
        from vidlang.models.taco import TACo

        m = TACo(cfg.model, shape["video_dim"], load_text_weights=size == "small")
    else:
        from vidlang.models.mvgpt import MVGPT

        m = MVGPT(cfg, shape["video_dim"], load_text_weights=size == "small")
    return m.to(device), cfg, shape


def _ids(b: int, words: int, g: torch.Generator) -> torch.Tensor:
    ids = torch.randint(1000, 30000, (b, words), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return ids


def taco_batch(b: int, frames: int, words: int, video_dim: int, seed: int = 0, device: str = "cpu") -> Batch:
    """B distinct synthetic (video, caption) pairs, every video ``frames`` long and every caption ``words``
    WordPieces (no padding); about 30% of the tokens are tokens of interest with normalised weights."""
    g = torch.Generator().manual_seed(seed)
    ids = _ids(b, words, g)
    interest = torch.rand(b, words, generator=g) < 0.3
    interest[:, 1] = True
    interest[:, 0] = interest[:, -1] = False
    w = interest * (torch.rand(b, words, generator=g) + 0.1)
    return Batch(torch.randn(b, frames, video_dim, generator=g), torch.ones(b, frames, dtype=torch.bool), ids,
                 torch.ones_like(ids), w / w.sum(1, keepdim=True), [f"video{i}" for i in range(b)]).to(device)


def caption_batch(b: int, frames: int, words: int, video_dim: int, seed: int = 0, device: str = "cpu") -> CaptionBatch:
    """MV-GPT inputs: frames, a ``words``-token transcript and a ``words``-token target, no padding."""
    g = torch.Generator().manual_seed(seed)
    transcript, target = _ids(b, words, g), _ids(b, words, g)
    return CaptionBatch(torch.randn(b, frames, video_dim, generator=g), torch.ones(b, frames, dtype=torch.bool),
                        transcript, torch.ones_like(transcript), target, torch.ones_like(target),
                        [f"video{i}" for i in range(b)]).to(device)


def params(model: torch.nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_m": round(total / 1e6, 2), "trainable_m": round(trainable / 1e6, 2)}
