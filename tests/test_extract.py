"""Feature extraction from raw videos: decoding, sampling, backbones, the store, resume, refusal to mix."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import level, make_video
from vidlang.cli import main
from vidlang.data.features import open_store
from vidlang.errors import CheckpointError, ConfigError, DataError
from vidlang.extract import Sampling, decode_video, extract_features, list_videos, load_backbone
from vidlang.extract.backbones import ResNet, TinyBackbone
from vidlang.extract.video import window_indices

pytestmark = pytest.mark.filterwarnings("ignore:backbone 'tiny-untrained':UserWarning")
CLIPS24 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msrvtt-clips-24"


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    """a.mp4 (2 s, h264), b.mkv (1 s at 10 fps, mpeg4), plus corrupt, empty and truncated files."""
    d = tmp_path_factory.mktemp("videos")
    make_video(d / "a.mp4")
    make_video(d / "b.mkv", n=10, rate=10, codec="mpeg4")
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (d / "empty.mp4").write_bytes(b"")
    (d / "truncated.mp4").write_bytes((d / "a.mp4").read_bytes()[:600])
    (d / "notes.txt").write_text("not a video")
    return d


def good_only(video_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "good"
    d.mkdir()
    for name in ("a.mp4", "b.mkv"):
        shutil.copy(video_dir / name, d / name)
    return d


def run(videos, out, **kw):
    opts = {"fps": 5.0, "frame_size": 16, "workers": 0, "progress": False, **kw}
    return extract_features(videos, kw.pop("backbone", "tiny"), out, **{k: v for k, v in opts.items() if k != "backbone"})


# --- decoding and sampling ---------------------------------------------------------------------

@pytest.mark.parametrize("fps, expected", [(5.0, [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]), (1.0, [0, 25]),
                                           (50.0, [i // 2 for i in range(100)])])
def test_fps_sampling_takes_the_frame_on_screen(video_dir, fps, expected):
    frames, info = decode_video(video_dir / "a.mp4", Sampling.from_args(fps=fps), 16)
    assert frames.shape == (len(expected), 16, 16, 3) and frames.dtype == np.uint8
    assert info["frames_decoded"] == 50 and info["duration"] == pytest.approx(2.0)
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), [level(i) for i in expected], atol=3)


@pytest.mark.parametrize("num, expected", [(5, [5, 15, 25, 35, 45]), (1, [25]), (4, [6, 18, 31, 43])])
def test_uniform_sampling_takes_segment_centres(video_dir, num, expected):
    frames, _ = decode_video(video_dir / "a.mp4", Sampling.from_args(num_frames=num), 16)
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), [level(i) for i in expected], atol=3)


def test_uniform_sampling_of_a_short_video_repeats_frames(video_dir):
    frames, _ = decode_video(video_dir / "b.mkv", Sampling.from_args(num_frames=20), 16)
    assert len(frames) == 20
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), [level(k // 2) for k in range(20)], atol=5)


def test_window_indices():
    mean = Sampling.from_args(fps=5, window=1.0, stride=0.5)
    got = [list(i) for i in window_indices(10, mean)]
    assert got == [[0, 1, 2, 3, 4], [3, 4, 5, 6, 7], [5, 6, 7, 8, 9], [8, 9]]
    stack = Sampling.from_args(fps=5, window=1.0, stride=0.5, pool="stack")
    assert [list(i) for i in window_indices(10, stack)][-1] == [8, 9, 9, 9, 9]
    assert len(window_indices(1, stack)) == 1 and mean.features_per_second == 2.0


def test_resize_shorter_side_then_centre_crop(tmp_path):
    frame = np.zeros((48, 96, 3), np.uint8)
    frame[:, 24:72] = 255  # a white middle half between black quarters
    path = make_video(tmp_path / "wide.mp4", w=96, h=48, frames=[frame] * 3)
    frames, _ = decode_video(path, Sampling.from_args(num_frames=1), 32)
    assert frames.shape == (1, 32, 32, 3)
    assert frames[0, :, 2:-2].min() > 200  # only the white middle survives the crop (no squashing)


def test_sampling_arguments_are_checked():
    with pytest.raises(ConfigError, match="num_frames"):
        Sampling.from_args(num_frames=4, fps=2)
    with pytest.raises(ConfigError, match="window"):
        Sampling.from_args(window=-1.0)
    with pytest.raises(ConfigError, match="stride needs window"):
        Sampling.from_args(stride=1.0)
    with pytest.raises(ConfigError, match="pool"):
        Sampling.from_args(window=1.0, pool="max")


def test_list_videos(video_dir, tmp_path):
    assert [v for v, _ in list_videos(video_dir)] == ["a", "b", "corrupt", "empty", "truncated"]
    (tmp_path / "sub").mkdir()
    lst = tmp_path / "sub" / "list.txt"
    lst.write_text(f"# my videos\n{video_dir / 'a.mp4'}\n\nmissing.mp4\n")
    assert list_videos(lst) == [("a", video_dir / "a.mp4"), ("missing", tmp_path / "sub" / "missing.mp4")]
    with pytest.raises(DataError, match="two videos have the id 'a'"):
        list_videos([video_dir / "a.mp4", tmp_path / "a.avi"])
    with pytest.raises(DataError, match="neither"):
        list_videos(tmp_path / "nope")


# --- end to end --------------------------------------------------------------------------------

def test_extract_end_to_end_reports_bad_videos(video_dir, tmp_path):
    out = tmp_path / "store"
    summary = run(video_dir, out)
    assert summary["done"] == ["a", "b"] and summary["skipped_existing"] == []
    assert set(summary["failed"]) == {"corrupt", "empty", "truncated"}
    assert "empty (0 bytes)" in summary["failed"]["empty"]
    assert all(name in summary["failed"][name] for name in summary["failed"])  # reasons name the file
    assert json.loads((out / "extract_summary.json").read_text())["counts"] == {"done": 2, "skipped_existing": 0,
                                                                                "failed": 3}
    store = open_store(out)
    assert store.ids == ["a", "b"] and store.dim == 64 and store.fps == 5.0
    assert store["a"].shape == (10, 64) and store["b"].shape == (5, 64)
    assert store.meta["extractor"]["backbone"] == "tiny-untrained" and store.meta["extractor"]["trained"] is False
    record = json.loads((out / "a.meta.json").read_text())
    assert record["extractor"] == store.meta["extractor"] and record["num_features"] == 10
    assert record["extractor"]["frame_size"] == 16 and record["vidlang_version"]
    # the stored features are the backbone applied to the decoded frames, in order
    frames, _ = decode_video(video_dir / "a.mp4", Sampling.from_args(fps=5.0), 16)
    np.testing.assert_allclose(store["a"], TinyBackbone(warn=False)(frames), rtol=1e-5, atol=1e-5)
    assert not np.allclose(store["a"][0], store["a"][-1])  # different frames, different features


def test_window_sampling_mean_and_stack(video_dir, tmp_path):
    good = good_only(video_dir, tmp_path)
    mean = open_store(run(good, tmp_path / "m", window=1.0, stride=0.5)["store"])
    assert mean["a"].shape == (4, 64) and mean.fps == 2.0
    stack = open_store(run(good, tmp_path / "s", window=1.0, stride=0.5, pool="stack", dim=8)["store"])
    assert stack["a"].shape == (4, 40) and stack.dim == 40
    frame_feats = open_store(run(good, tmp_path / "f", dim=8)["store"])["a"]
    np.testing.assert_allclose(stack["a"][1], frame_feats[3:8].reshape(-1), rtol=1e-5, atol=1e-6)
    frames64 = open_store(run(good, tmp_path / "f64")["store"])["a"]
    np.testing.assert_allclose(mean["a"][0], frames64[0:5].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean["a"][3], frames64[8:10].mean(0), rtol=1e-5, atol=1e-6)  # a short last window


def test_parallel_workers_match_serial(video_dir, tmp_path):
    serial = open_store(run(video_dir, tmp_path / "s", num_frames=3, fps=None)["store"])
    summary = run(video_dir, tmp_path / "p", num_frames=3, fps=None, workers=2, batch_size=2)
    assert sorted(summary["done"]) == ["a", "b"] and len(summary["failed"]) == 3
    parallel = open_store(tmp_path / "p")
    assert parallel.fps is None  # N frames per video: no fixed feature rate
    for vid in ("a", "b"):
        np.testing.assert_allclose(parallel[vid], serial[vid], rtol=1e-5, atol=1e-6)


def test_resume_after_interruption(video_dir, tmp_path):
    good, out = good_only(video_dir, tmp_path), tmp_path / "store"
    make_video(good / "c.mp4", n=10, rate=10)

    def crash(vid, status):
        if vid == "b":
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        run(good, out, on_video=crash)
    assert json.loads((out / "extract_summary.json").read_text())["interrupted"].startswith("KeyboardInterrupt")
    assert open_store(out).ids == ["a", "b"]
    summary = run(good, out)
    assert summary["skipped_existing"] == ["a", "b"] and summary["done"] == ["c"]
    (out / "b.npy").unlink()  # a lost entry
    (out / "c.npy").write_bytes((out / "c.npy").read_bytes()[:100])  # a torn one
    summary = run(good, out)
    assert summary["skipped_existing"] == ["a"] and sorted(summary["done"]) == ["b", "c"]
    assert open_store(out)["c"].shape == (5, 64)


def test_rerun_with_another_extractor_is_refused(video_dir, tmp_path):
    good, out = good_only(video_dir, tmp_path), tmp_path / "store"
    run(good, out)
    with pytest.raises(DataError, match=r"refusing to mix.*fps: 5\.0 vs 2\.0"):
        run(good, out, fps=2.0)
    with pytest.raises(DataError, match="weights_hash"):
        run(good, out, dim=32)
    with pytest.raises(DataError, match="not written by vidlang extract"):
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        np.save(foreign / "x.npy", np.zeros((2, 4), np.float32))
        run(good, foreign)


def test_open_store_refuses_mixed_extractors(video_dir, tmp_path):
    good = good_only(video_dir, tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    run(good, one)
    run(good, two, fps=2.0)
    shutil.copy(two / "b.npy", one / "b.npy")
    shutil.copy(two / "b.meta.json", one / "b.meta.json")
    with pytest.raises(DataError, match=r"videos 'a' and 'b' differ in fps: 5\.0 vs 2\.0"):
        open_store(one)
    shutil.copy(two / "a.npy", one / "a.npy")
    shutil.copy(two / "a.meta.json", one / "a.meta.json")
    with pytest.raises(DataError, match="meta.json and video 'a'"):
        open_store(one)
    (two / "b.meta.json").unlink()  # features with no record in an extracted store
    with pytest.raises(DataError, match=r"no extractor record.*\['b'\]"):
        open_store(two)


# --- backbones ---------------------------------------------------------------------------------

def test_tiny_is_deterministic_and_labelled_untrained():
    with pytest.warns(UserWarning, match="RANDOM"):
        first = load_backbone("tiny")
    second = TinyBackbone(warn=False)
    assert "untrained" in first.name and first.trained is False and first.describe()["trained"] is False
    assert first.weights_hash == second.weights_hash and len(first.weights_hash) == 64
    frames = np.random.default_rng(0).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    out = first(frames)
    assert out.shape == (3, 64) and out.dtype == np.float32
    np.testing.assert_array_equal(out, second(frames))
    assert TinyBackbone(dim=16, warn=False).weights_hash != first.weights_hash


def test_backbone_arguments_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="unknown backbone"):
        load_backbone("vgg")
    with pytest.raises(ConfigError, match="needs weights"):
        load_backbone("resnet")
    with pytest.raises(ConfigError, match="not found"):
        load_backbone("resnet", str(tmp_path / "none.pth"))
    with pytest.raises(ConfigError, match="cannot find CLIP model"):
        load_backbone(f"clip:{tmp_path / 'no-such-model'}")


def tiny_clip_dir(tmp_path: Path, full: bool = False) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    if full:
        text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=12))
    else:
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision, projection_dim=12))
    folder = tmp_path / ("clip-full" if full else "clip-vision")
    model.save_pretrained(folder)
    return folder


def test_clip_backbone_from_a_local_folder(video_dir, tmp_path):
    from transformers import CLIPVisionModelWithProjection

    folder = tiny_clip_dir(tmp_path)
    bb = load_backbone("clip", str(folder))
    assert (bb.dim, bb.input_size, bb.trained) == (12, 32, True) and bb.name == "clip-vit-p8-16x1"
    assert bb.weights_hash == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ref = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    x = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref(pixel_values=x).image_embeds.numpy()
    np.testing.assert_allclose(bb(frames), expected, rtol=1e-4, atol=1e-5)
    # a whole CLIPModel folder gives its vision tower with the right projection width
    assert load_backbone(f"clip:{tiny_clip_dir(tmp_path, full=True)}").dim == 12
    summary = run(video_dir / "a.mp4", tmp_path / "store", backbone=f"clip:{folder}", frame_size=None, num_frames=2,
                  fps=None)
    store = open_store(summary["store"])
    assert store["a"].shape == (2, 12) and store.meta["extractor"]["frame_size"] == 32
    assert store.meta["extractor"]["weights_hash"] == bb.weights_hash


def test_clip_weights_that_do_not_fit_are_refused(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    folder = tmp_path / "no-projection"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(folder)
    with pytest.raises(CheckpointError, match="visual_projection"):
        load_backbone("clip", str(folder))


def _key_digest(state: dict) -> str:
    keys = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(state.items()) if not k.startswith("fc."))
    return hashlib.sha256(keys.encode()).hexdigest()


def test_local_resnet_has_torchvision_state_dict_layout():
    # digests of torchvision 0.28 resnet18/resnet50 state_dict keys and shapes (without fc)
    assert _key_digest(ResNet([2, 2, 2, 2], False).state_dict()) == \
        "8c978ff63e1cde5ffdd141e1ca08af871ffa681d2fd6e147332ef870ed427471"
    assert _key_digest(ResNet([3, 4, 6, 3], True).state_dict()) == \
        "e1a41511a976079190f9349563709294882315f73b2069d1c903ffedd288d4c6"


def test_resnet_backbone_from_a_state_dict(tmp_path):
    torch.manual_seed(0)
    net = ResNet([1, 1, 1, 1], bottleneck=True, base=8).eval()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(10, net.dim)  # a classifier head is ignored
    path = tmp_path / "r.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    bb = load_backbone(f"resnet:{path}")
    assert bb.dim == 256 and bb.name == "resnet-1-1-1-1-bottleneck-w8"
    assert bb.weights_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    frames = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(bb(frames), net(x).numpy(), rtol=1e-4, atol=1e-5)
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(8, 8, 3, 3)}, bad)
    with pytest.raises(CheckpointError, match=str(bad.name)):
        load_backbone("resnet", str(bad))
    (tmp_path / "junk.pth").write_bytes(b"not torch")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_backbone("resnet", str(tmp_path / "junk.pth"))


# --- into training ----------------------------------------------------------------------------

def test_extracted_features_feed_the_taco_dataset(video_dir, tmp_path):
    from vidlang.data.dataset import VideoTextDataset, collate
    from vidlang.data.records import Clip
    from vidlang.text.pretrained import load_tokenizer

    store = open_store(run(good_only(video_dir, tmp_path), tmp_path / "store")["store"])
    clips = [Clip("a", "a grey square fades in"), Clip("b", "a short clip", start=0.2, end=0.6),
             Clip("a", "the second half", start=1.0, end=2.0)]
    ds = VideoTextDataset(clips, store, load_tokenizer(), max_frames=4, max_words=12)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch.video.shape[0] == 3 and batch.video.shape[2] == 64 and batch.video.shape[1] <= 4
    # the segment [1 s, 2 s) at 5 features/s is rows 5..9, subsampled to 4
    np.testing.assert_allclose(batch.video[2].numpy(), store["a"][[5, 6, 8, 9]], rtol=1e-6)


def test_cli_extract(video_dir, tmp_path, capsys):
    out = tmp_path / "store"
    args = ["extract", str(video_dir), "--backbone", "tiny", "--out", str(out), "--num-frames", "3",
            "--frame-size", "16", "--workers", "0", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "extracted 2" in text and "failed 3" in text and "failed empty:" in text and "UNTRAINED" in text
    assert main(args) == 0 and "skipped 2 already done" in capsys.readouterr().out
    assert main(["extract", str(video_dir), "--backbone", "tiny", "--out", str(out), "--fps", "2", "--quiet"]) == 2
    assert "refusing to mix" in capsys.readouterr().err
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.mp4").write_bytes(b"")
    assert main(["extract", str(only_bad), "--backbone", "tiny", "--out", str(tmp_path / "s2"), "--quiet"]) == 2


def test_real_msrvtt_clips(tmp_path):
    videos = CLIPS24 / "videos"
    if not videos.is_dir():
        pytest.skip(f"{videos} not present")
    summary = extract_features(videos, "tiny", tmp_path / "msrvtt", num_frames=4, frame_size=32, workers=2,
                               dim=16, progress=False)
    assert summary["counts"] == {"done": 24, "skipped_existing": 0, "failed": 0}
    store = open_store(tmp_path / "msrvtt")
    assert len(store) == 24 and {"video24", "video9908", "video7202"} <= set(store.ids)
    assert all(store[v].shape == (4, 16) for v in store.ids)
    record = json.loads((tmp_path / "msrvtt" / "video24.meta.json").read_text())
    assert record["video"]["codec"] == "h264" and record["video"]["duration"] == pytest.approx(11.0, abs=0.6)
