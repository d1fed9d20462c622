"""Retrieval metrics (vs. a plain loop and hand-worked cases) and result reports."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import vidlang.io as vio
from vidlang import report
from vidlang.evaluation import metrics
from vidlang.errors import DataError
from vidlang.evaluation.metrics import retrieval_metrics, t2v_ranks, v2t_ranks
from vidlang.report import (
    atomic_write_text,
    format_mean_std,
    format_table,
    git_commit,
    mean_std,
    write_result_json,
)

# ------------------------------------------------------------ plain-loop reference


def loop_ranks(sim, t2v, tie_break):
    sim = np.asarray(sim, dtype=np.float64)
    n_t, n_v = sim.shape
    t_ranks = []
    for i in range(n_t):
        gt = sim[i, t2v[i]]
        ahead = 0
        for j in range(n_v):
            if j == t2v[i]:
                continue
            if sim[i, j] > gt or (tie_break == "pessimistic" and sim[i, j] == gt):
                ahead += 1
        t_ranks.append(1 + ahead)
    v_ranks = []
    for j in range(n_v):
        own = [i for i in range(n_t) if t2v[i] == j]
        best = max(sim[i, j] for i in own)
        ahead = 0
        for i in range(n_t):
            if i in own:
                continue
            if sim[i, j] > best or (tie_break == "pessimistic" and sim[i, j] == best):
                ahead += 1
        v_ranks.append(1 + ahead)
    return t_ranks, v_ranks


def loop_metrics(sim, t2v, ks, tie_break):
    t, v = loop_ranks(sim, t2v, tie_break)
    out = {}
    for name, r in (("t2v_", t), ("v2t_", v)):
        for k in ks:
            out[f"{name}R@{k}"] = 100.0 * sum(x <= k for x in r) / len(r)
        s = sorted(r)
        n = len(s)
        out[f"{name}MedR"] = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
        out[f"{name}MeanR"] = sum(r) / n
    return out


def random_case(rng, n_videos, per_video, tied):
    t2v = np.repeat(np.arange(n_videos), per_video)
    rng.shuffle(t2v)
    shape = (len(t2v), n_videos)
    sim = rng.integers(0, 4, shape).astype(np.float32) if tied else rng.standard_normal(shape).astype(np.float32)
    return sim, t2v


@pytest.mark.parametrize("tie_break", ["optimistic", "pessimistic"])
@pytest.mark.parametrize("per_video,tied", [(1, False), (1, True), (3, False), (3, True), (5, True)])
def test_matches_plain_loop(tie_break, per_video, tied):
    rng = np.random.default_rng(per_video * 10 + tied)
    for trial in range(3):
        sim, t2v = random_case(rng, n_videos=13 + trial, per_video=per_video, tied=tied)
        got = retrieval_metrics(sim, t2v, ks=(1, 2, 5, 10), tie_break=tie_break)
        want = loop_metrics(sim, t2v.tolist(), (1, 2, 5, 10), tie_break)
        for k, v in want.items():
            assert got[k] == pytest.approx(v), k
        assert got["num_texts"] == len(t2v) and got["num_videos"] == sim.shape[1]


def test_uneven_captions_and_chunking(monkeypatch):
    """Videos with 1..4 captions; tiny chunks so every loop runs many times."""
    rng = np.random.default_rng(7)
    t2v = np.concatenate([np.full(rng.integers(1, 5), j) for j in range(17)])
    sim = rng.integers(0, 3, (len(t2v), 17)).astype(np.float64)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMS", 20)
    for tb in ("optimistic", "pessimistic"):
        t, v = loop_ranks(sim, t2v.tolist(), tb)
        assert t2v_ranks(sim, t2v, tb).tolist() == t
        assert v2t_ranks(sim, t2v, tb).tolist() == v


def test_pessimistic_never_better_and_ties_matter():
    rng = np.random.default_rng(3)
    sim, t2v = random_case(rng, 20, 2, tied=True)
    opt, pes = t2v_ranks(sim, t2v, "optimistic"), t2v_ranks(sim, t2v, "pessimistic")
    assert (pes >= opt).all() and (pes > opt).any()
    # A constant score matrix: optimistic says perfect, pessimistic says worst.
    flat = np.zeros((6, 3))
    t2v = [0, 0, 1, 1, 2, 2]
    assert retrieval_metrics(flat, t2v, tie_break="optimistic")["t2v_R@1"] == 100.0
    m = retrieval_metrics(flat, t2v, tie_break="pessimistic")
    assert m["t2v_R@1"] == 0.0 and m["t2v_MedR"] == 3.0
    assert m["v2t_MedR"] == 5.0  # 4 other texts tie with its best caption


@pytest.mark.parametrize("n_videos,per_video", [(2, 1), (5, 1), (10, 20), (7, 3)])
def test_default_ties_count_against_the_ground_truth(n_videos, per_video):
    """An untrained model that scores everything alike must not look good: all-equal scores give at
    most chance R@1 (here the worst rank) both ways, and a tie with one other item costs a place."""
    t2v = np.repeat(np.arange(n_videos), per_video)
    m = retrieval_metrics(np.full((len(t2v), n_videos), 0.25, dtype=np.float32), t2v)
    assert m["t2v_R@1"] <= 100.0 / n_videos and m["v2t_R@1"] <= 100.0 * per_video / len(t2v)
    assert m["t2v_MedR"] == n_videos and m["v2t_MedR"] == len(t2v) - per_video + 1
    tied = np.eye(n_videos)[t2v]  # the ground truth scores 1 ...
    tied[np.arange(len(t2v)), (t2v + 1) % n_videos] = 1.0  # ... and so does one other video
    assert t2v_ranks(tied, t2v).tolist() == [2] * len(t2v)


# ------------------------------------------------------------ hand-worked cases

HAND = np.array(
    [
        [0.9, 0.1, 0.9],  # text0 (video0): tie with video2
        [0.2, 0.3, 0.8],  # text1 (video1): video2 ahead -> 2
        [0.7, 0.3, 0.6],  # text2 (video2): video0 ahead -> 2
    ]
)


def test_hand_3x3_optimistic():
    m = retrieval_metrics(HAND, [0, 1, 2], ks=(1, 2, 5), tie_break="optimistic")
    # t2v ranks [1, 2, 2]
    assert m["t2v_R@1"] == pytest.approx(100 / 3)
    assert m["t2v_R@2"] == 100.0
    assert m["t2v_MedR"] == 2.0
    assert m["t2v_MeanR"] == pytest.approx(5 / 3)
    # v2t: video0 col [.9 .2 .7] -> 1; video1 col [.1 .3 .3], tie text2 -> 1;
    # video2 col [.9 .8 .6] -> 3.  Ranks [1, 1, 3].
    assert m["v2t_R@1"] == pytest.approx(200 / 3)
    assert m["v2t_R@2"] == pytest.approx(200 / 3)
    assert m["v2t_R@5"] == 100.0
    assert m["v2t_MedR"] == 1.0
    assert m["v2t_MeanR"] == pytest.approx(5 / 3)
    assert (m["num_texts"], m["num_videos"]) == (3, 3)


def test_hand_3x3_pessimistic():
    m = retrieval_metrics(HAND, [0, 1, 2], ks=(1, 2), tie_break="pessimistic")
    # t2v ranks [2, 2, 2]; v2t ranks [1, 2, 3]
    assert m["t2v_R@1"] == 0.0 and m["t2v_R@2"] == 100.0
    assert m["t2v_MedR"] == 2.0 and m["t2v_MeanR"] == 2.0
    assert m["v2t_R@1"] == pytest.approx(100 / 3)
    assert m["v2t_R@2"] == pytest.approx(200 / 3)
    assert m["v2t_MedR"] == 2.0 and m["v2t_MeanR"] == 2.0


def test_hand_two_captions_per_video():
    sim = torch.tensor([[0.2, 0.5], [0.6, 0.1], [0.3, 0.4], [0.9, 0.2]])
    m = retrieval_metrics(sim, [0, 0, 1, 1], ks=(1, 5))
    # t2v ranks [2, 1, 1, 2]
    assert m["t2v_R@1"] == 50.0 and m["t2v_MedR"] == 1.5 and m["t2v_MeanR"] == 1.5
    # video0: best own 0.6, text3's 0.9 ahead -> 2; video1: best own 0.4, text0's 0.5 ahead -> 2
    assert m["v2t_R@1"] == 0.0 and m["v2t_R@5"] == 100.0 and m["v2t_MedR"] == 2.0


def test_own_caption_ties_do_not_count():
    sim = np.array([[0.5, 0.0], [0.5, 0.0], [0.1, 1.0]])
    assert v2t_ranks(sim, [0, 0, 1], "pessimistic").tolist() == [1, 1]


@pytest.mark.parametrize("tie_break", ["optimistic", "pessimistic"])
def test_numpy_torch_and_permuted_candidates_agree(tie_break):
    """The same scores as numpy, torch and a reversed-column (negative-stride) float64 view with the
    ground truth renumbered: the metrics must not depend on the container or the candidates' order,
    ties included (an index-order tie-break, as argsort gives, would differ)."""
    rng = np.random.default_rng(0)
    sim, t2v = random_case(rng, 9, 2, tied=True)
    a = retrieval_metrics(sim, t2v, tie_break=tie_break)
    b = retrieval_metrics(torch.from_numpy(sim), torch.from_numpy(t2v), tie_break=tie_break)
    reversed_cols = sim.astype(np.float64)[:, ::-1]
    c = retrieval_metrics(reversed_cols, list(sim.shape[1] - 1 - t2v), tie_break=tie_break)
    assert a == b == c
    assert a["t2v_R@1"] == pytest.approx(loop_metrics(sim, t2v.tolist(), (1,), tie_break)["t2v_R@1"])


# ------------------------------------------------------------ bad input


def test_bad_input_raises():
    sim = np.zeros((3, 2))
    with pytest.raises(DataError, match="one entry per text"):
        retrieval_metrics(sim, [0, 1])
    with pytest.raises(DataError, match=r"text_to_video\[2\] = 5"):
        retrieval_metrics(sim, [0, 1, 5])
    with pytest.raises(DataError, match="videos \\[1\\] have none"):
        retrieval_metrics(sim, [0, 0, 0])
    nan = sim.copy()
    nan[1, 0] = np.nan
    with pytest.raises(DataError, match="text 1"):
        retrieval_metrics(nan, [0, 1, 1])
    with pytest.raises(DataError, match="2-D"):
        retrieval_metrics(np.zeros(3), [0, 1, 2])
    with pytest.raises(DataError, match="integer"):
        retrieval_metrics(sim, [0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="tie_break"):
        retrieval_metrics(sim, [0, 1, 1], tie_break="random")


# ------------------------------------------------------------ report.py / io.py


def test_format_table_aligned():
    results = {
        "tfidf": {"t2v_R@1": 17.6, "t2v_MedR": 8.0},
        "dual-encoder": {"t2v_R@1": (21.71, 0.43), "t2v_MedR": 5.5, "num_texts": 2000},
    }
    text = format_table(results)
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0].split() == ["run", "t2v_R@1", "t2v_MedR", "num_texts"]
    assert lines[1].split() == ["tfidf", "17.6", "8.0", "-"]
    assert "21.7 ± 0.4" in lines[2] and lines[2].endswith("2000")
    # Right-aligned columns: every line ends each column at the same offset.
    assert len({len(line) for line in lines}) == 1
    only = format_table(results, keys=["t2v_MedR"], digits=2)
    assert only.splitlines()[1].split() == ["tfidf", "8.00"]


def test_mean_std_sample_std():
    runs = [{"R@1": 20.0, "MedR": 5.0}, {"R@1": 22.0, "MedR": 5.0}, {"R@1": 24.0, "MedR": 6.0}]
    ms = mean_std(runs)
    assert ms["R@1"] == pytest.approx((22.0, 2.0))  # ddof=1: sqrt(8/2)
    assert ms["MedR"][1] == pytest.approx(np.std([5, 5, 6], ddof=1))
    assert mean_std(runs[:1])["R@1"] == (20.0, 0.0)
    assert format_mean_std(21.71, 0.43) == "21.7 ± 0.4"
    assert format_mean_std(*ms["R@1"], digits=2) == "22.00 ± 2.00"
    with pytest.raises(ValueError, match="run 1"):
        mean_std([{"a": 1.0}, {"b": 1.0}])
    with pytest.raises(ValueError):
        mean_std([])


def test_write_result_json(tmp_path):
    path = tmp_path / "sub" / "result.json"
    m = {"t2v_R@1": np.float32(17.5), "num_texts": np.int64(2000)}
    write_result_json(path, m, split="val", scoring="dual", protocol="1k-A-jsfusion", config={"lr": 1e-4, "out": tmp_path},
                      extra={"seed": 1})
    doc = json.loads(path.read_text())
    assert doc["split"] == "val" and doc["scoring"] == "dual" and doc["protocol"] == "1k-A-jsfusion"
    assert doc["metrics"] == {"t2v_R@1": 17.5, "num_texts": 2000}
    assert doc["config"] == {"lr": 1e-4, "out": str(tmp_path)} and doc["extra"] == {"seed": 1}
    assert isinstance(doc["vidlang_version"], str) and doc["vidlang_version"]
    assert doc["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", doc["git_commit"])
    assert "T" in doc["timestamp"]
    assert os.listdir(path.parent) == ["result.json"]  # no temp file left
    # A NaN metric is refused and the old file is kept.
    with pytest.raises(ValueError, match="t2v_R@1"):
        write_result_json(path, {"t2v_R@1": float("nan")}, split="val", scoring="dual", protocol="all-captions")
    with pytest.raises(ValueError, match="protocol"):
        write_result_json(path, {"t2v_R@1": 1.0}, split="val", scoring="dual", protocol="")
    with pytest.raises(TypeError, match="protocol"):
        write_result_json(path, {"t2v_R@1": 1.0}, split="val", scoring="dual")  # noqa: required
    assert json.loads(path.read_text())["metrics"]["num_texts"] == 2000


def test_result_is_stamped_with_the_provenance_taken_at_run_start(tmp_path):
    started = {"git_commit": "a" * 40, "git_dirty": False}  # the checkout moved on during the run
    write_result_json(tmp_path / "r.json", {"x": 1.0}, split="val", scoring="s1", protocol="clip",
                      provenance=started)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["git_commit"] == "a" * 40 and doc["git_dirty"] is False


def _git(cwd, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_commit_names_the_head_of_the_package_checkout(tmp_path, monkeypatch):
    """The package's folder in a repo with one commit: that commit; outside a repo, or in an ignored
    folder of a repo (an installed copy inside a .venv): None."""
    repo, pkg = tmp_path / "repo", tmp_path / "repo" / "src" / "vidlang"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("x = 1\n")
    monkeypatch.setattr(report, "_PKG_DIR", pkg)
    _git(repo, "init", "-q")
    assert git_commit() is None  # a work tree without a commit
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert re.fullmatch(r"[0-9a-f]{40}", head) and git_commit() == head
    assert report.git_dirty() is False
    (pkg / "x.py").write_text("x = 2\n")
    assert report.git_dirty() is True
    venv = repo / ".venv" / "vidlang"
    venv.mkdir(parents=True)
    (repo / ".gitignore").write_text(".venv/\n")
    monkeypatch.setattr(report, "_PKG_DIR", venv)
    assert git_commit() is None
    outside = tmp_path / "plain"
    outside.mkdir()
    monkeypatch.setattr(report, "_PKG_DIR", outside)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert git_commit() is None


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(vio.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]
