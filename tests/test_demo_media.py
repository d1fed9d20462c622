"""The demo world as real video files, the demo's --quiet, --steps for both models, and its printed commands."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from vidlang.worlds.synthetic import WorldConfig, generate_world, write_world


def decode(path):
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]), float(c.streams.video[0].average_rate)


def test_world_clips_are_playable_mp4s(tmp_path):
    cfg = WorldConfig(num_videos=6, seed=1)
    world = write_world(tmp_path / "w", cfg, videos=True)
    clips = generate_world(cfg)
    assert json.loads((world / "meta.json").read_text())["media"] == "media"
    for c in clips:
        mp4 = world / "media" / f"{c.video_id}.mp4"
        assert mp4.read_bytes()[4:8] == b"ftyp"
        frames, rate = decode(mp4)
        assert frames.shape == (cfg.frames, cfg.size * 4, cfg.size * 4, 3) and rate == cfg.fps
        small = frames[:, 1::4, 1::4].astype(int)  # one pixel of each 4x4 block
        assert np.abs(small - c.frames).mean() < 6, c.video_id  # the rendered clip, up to H.264 loss
        assert json.loads((world / f"{c.video_id}.meta.json").read_text())["source"] == f"media/{c.video_id}.mp4"
    stamp = (world / "media" / "synth00003.mp4").stat().st_mtime_ns
    write_world(world, cfg, videos=True)  # complete: reused, not rewritten
    assert (world / "media" / "synth00003.mp4").stat().st_mtime_ns == stamp
    (world / "media" / "synth00003.mp4").unlink()
    write_world(world, cfg, videos=True)  # a missing video: rebuilt
    assert (world / "media" / "synth00003.mp4").is_file()
    plain = write_world(tmp_path / "plain", cfg)
    assert not (plain / "media").exists() and "media" not in json.loads((plain / "meta.json").read_text())


def test_served_world_finds_the_clip_videos(tmp_path):
    from vidlang.serve.media import media_url, source_video

    world = write_world(tmp_path / "w", WorldConfig(num_videos=4), videos=True)
    src = source_video(world, "synth00001", world / "media")
    assert src == world / "media" / "synth00001.mp4"
    assert media_url(world / "media", src) == "/media/synth00001.mp4"


def test_quiet_silences_bars_and_child_processes(capfd):
    from tqdm.auto import tqdm

    from vidlang.demo import quiet

    with quiet():
        for _ in tqdm(range(3), file=sys.stderr):
            pass
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('PTBTokenizer tokenized 5 tokens')"], check=True)
        print("kept")
    out, err = capfd.readouterr()
    assert "kept" in out and err == ""
    with pytest.raises(RuntimeError), quiet():
        sys.stderr.write("what went wrong\n")
        raise RuntimeError("boom")
    assert "what went wrong" in capfd.readouterr().err  # replayed when the block fails


def test_demo_steps_limit_both_models_and_print_the_serve_commands(tmp_path, capfd):
    from vidlang.cli import main

    code = main(["demo", "--out", str(tmp_path), "--steps", "3", "--videos", "20", "--scenes", "8", "--quiet",
                 "--device", "cpu"])
    out, err = capfd.readouterr()
    assert code == 0 and err == ""
    taco = json.loads((tmp_path / "taco" / "summary.json").read_text())
    mvgpt = json.loads((tmp_path / "mvgpt" / "summary.json").read_text())
    assert taco["steps"] == 3 and mvgpt["steps"] == 3
    assert f"vidlang serve {tmp_path / 'index'} --media-root {tmp_path / 'world' / 'media'}" in out
    assert len(list((tmp_path / "world" / "media").glob("*.mp4"))) == 20
