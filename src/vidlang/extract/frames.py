"""The frame backbone interface every extractor implements: uint8 RGB frames -> float32 features."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Backbone:
    """uint8 RGB frames -> float32 features: resize to ``input_size`` if needed, normalise, forward."""

    name: str
    dim: int
    weights_hash: str
    input_size: int
    trained: bool = True
    fixed_input: bool = True  # resize frames to input_size; False: run at any frame size
    weights: str = ""  # where the weights came from (provenance only)

    def __init__(self, model: nn.Module, mean: tuple, std: tuple, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"{self.name} expects uint8 frames (N, H, W, 3), got {frames.dtype} {frames.shape}")
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        if self.fixed_input and x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic", antialias=True,
                              align_corners=False).clamp_(0, 1)
        out = self._forward((x - self._mean) / self._std)
        return out.float().cpu().numpy().astype(np.float32, copy=False)

    def describe(self) -> dict:
        return {"backbone": self.name, "weights_hash": self.weights_hash, "dim": self.dim,
                "input_size": self.input_size, "trained": self.trained}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, weights_hash={self.weights_hash[:12]}...)"
