"""ViViT factorised encoder (Arnab et al. 2021, "model 2"), MV-GPT's visual encoder (methods.md §2.2).

Tubelet embedding (a Conv3d with kernel = stride = t x p x p), then a spatial transformer over the
patches of each tubelet time index (its [CLS] output represents that index), then a temporal
transformer over the time indices. It returns one token per tubelet time index.

Input: raw frames FLATTENED per time step, ``(B, T, H*W*3)`` floats in [0, 1] in (H, W, RGB)
row-major order, with H = W = ``frame_size``, so raw frames live in the 2-D feature stores. Frames
are padded at the end with zero (black) frames up to a multiple of t, so a clip shorter than one
tubelet still gives one token; a tubelet time index is real when any of its frames is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidlang.errors import ConfigError
from vidlang.models.blocks import Encoded, TransformerStack, masked_mean


class ViViTEncoder(nn.Module):
    def __init__(self, frame_size: int, tubelet_time: int, tubelet_size: int, width: int, spatial_layers: int,
                 temporal_layers: int, heads: int, max_positions: int, dropout: float = 0.1):
        super().__init__()
        if tubelet_time < 1 or tubelet_size < 1 or frame_size < 1:
            raise ConfigError(f"ViViT sizes must be positive: mvgpt.frame_size={frame_size}, "
                              f"mvgpt.tubelet_time={tubelet_time}, mvgpt.tubelet_size={tubelet_size}")
        if frame_size % tubelet_size:
            raise ConfigError(f"mvgpt.frame_size={frame_size} is not a multiple of mvgpt.tubelet_size={tubelet_size}")
        if width % heads:
            raise ConfigError(f"model.video_heads={heads} does not divide the ViViT width {width}")
        self.frame_size, self.tubelet_time = frame_size, tubelet_time
        self.in_dim = frame_size * frame_size * 3
        self.max_positions = max_positions
        patches = (frame_size // tubelet_size) ** 2
        self.embed = nn.Conv3d(3, width, kernel_size=(tubelet_time, tubelet_size, tubelet_size),
                               stride=(tubelet_time, tubelet_size, tubelet_size))
        self.spatial_cls = nn.Parameter(torch.zeros(1, 1, width))
        self.spatial_position = nn.Parameter(torch.randn(1, patches + 1, width) * 0.02)
        self.spatial = TransformerStack(width, heads, spatial_layers, dropout) if spatial_layers > 0 else None
        self.temporal_position = nn.Embedding(max_positions, width)
        self.temporal = TransformerStack(width, heads, temporal_layers, dropout) if temporal_layers > 0 else None
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.temporal_position.weight, std=0.02)

    def check_dim(self, dim: int) -> None:
        if dim != self.in_dim:
            s = self.frame_size
            raise ConfigError(f"ViViT expects frames flattened to frame_size^2*3 = {s}*{s}*3 = {self.in_dim} values "
                              f"per time step, got {dim} (set mvgpt.frame_size to match the frame store)")

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> Encoded:
        b, steps, dim = frames.shape
        self.check_dim(dim)
        t, s = self.tubelet_time, self.frame_size
        pad = -steps % t if steps else t  # up to a multiple of t (at least t)
        if pad:
            frames = F.pad(frames, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad), value=False)
        indices = frames.shape[1] // t
        if indices > self.max_positions:
            raise ConfigError(f"{frames.shape[1]} frames give {indices} tubelet time indices > "
                              f"model.max_video_positions={self.max_positions}")
        x = frames.view(b, -1, s, s, 3).permute(0, 4, 1, 2, 3)  # (B, 3, T, H, W)
        x = self.embed(x * 2.0 - 1.0)  # pixels to [-1, 1]; (B, d, T/t, H/p, W/p)
        x = x.flatten(3).permute(0, 2, 3, 1)  # (B, T/t, patches, d)
        x = x.reshape(b * indices, x.shape[2], -1)
        x = torch.cat([self.spatial_cls.expand(len(x), -1, -1), x], 1) + self.spatial_position
        if self.spatial is not None:
            x = self.spatial(self.dropout(x))
        x = x[:, 0].view(b, indices, -1)  # the spatial [CLS] of each time index
        real = mask.view(b, indices, t).any(-1)
        x = self.dropout(self.norm(x + self.temporal_position.weight[:indices]))
        if self.temporal is not None:
            x = self.temporal(x, real)
        x = x * real.unsqueeze(-1).to(x.dtype)
        return Encoded(x, real, masked_mean(x, real))
