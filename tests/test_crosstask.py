"""CrossTask readers, the Zhukov DP and the official recall: small cases, plain loops, real annotations."""
from __future__ import annotations

import itertools
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vidlang.data.crosstask import (
    Segment,
    read_annotation,
    read_annotations,
    read_tasks,
    read_video_list,
    step_targets,
)
from vidlang.errors import DataError
from vidlang.evaluation.step_localization import (
    average_recall,
    crosstask_recall,
    frame_step_scores,
    localize_steps,
    uniform_assignment,
    zhukov_dp,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CT = SHARED / "crosstask"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data {path} not present")
    return path


# ----------------------------------------------------------------------------- plain references
def dp_pyx_loop(C: np.ndarray, bg_cost: float = 0.0) -> np.ndarray:
    """A line-by-line reading of DmZhukov/CrossTask dp.pyx (exactly_one=True); unreachable states get inf."""
    T, K = C.shape
    KE = 2 * K + 1
    step = lambda k: 0 if k % 2 == 0 else (k + 1) // 2
    L = -np.ones((T + 1, KE))
    P = -np.ones((T + 1, KE), dtype=int)
    L[0, 0], P[0, 0] = 0, 0
    for t in range(1, T + 1):
        for k in range(KE):
            s, label, value = step(k), -1, 0.0
            for j, ok in ((k, s == 0), (k - 1, True), (k - 2, s != 0)):
                if ok and j >= 0 and P[t - 1, j] != -1 and (label == -1 or value > L[t - 1, j]):
                    label, value = j, L[t - 1, j]
            # An unreachable state: dp.pyx adds the cost to a stale value; it only matters when T == K.
            L[t, k] = np.inf if label == -1 else value + (C[t - 1, s - 1] if s else bg_cost)
            P[t, k] = label
    y = np.zeros((T, K), dtype=np.uint8)
    k = KE - 1 if (L[T, KE - 1] < L[T, KE - 2] or P[T, KE - 2] == -1) else KE - 2
    for t in range(T, 0, -1):
        if step(k):
            y[t - 1, step(k) - 1] = 1
        k = P[t, k]
    return y


def brute_force(C: np.ndarray) -> np.ndarray:
    T, K = C.shape
    best = min(itertools.combinations(range(T), K), key=lambda ts: sum(C[t, k] for k, t in enumerate(ts)))
    y = np.zeros((T, K), dtype=np.uint8)
    y[list(best), range(K)] = 1
    return y


def recall_loop(truth: dict, pred: dict) -> dict:
    out = {}
    for task, videos in truth.items():
        hit = tot = 0
        for vid, yt in videos.items():
            yp = pred[task][vid]
            for k in range(yt.shape[1]):
                if yt[:, k].any():
                    tot += 1
                    hit += sum(1 for t in range(yt.shape[0]) if yt[t, k] and yp[t, k])
        out[task] = hit / tot
    return out


# ----------------------------------------------------------------------------- DP
def test_dp_matches_brute_force_and_pyx_loop():
    rng = np.random.default_rng(0)
    for _ in range(60):
        K = int(rng.integers(1, 4))
        T = int(rng.integers(K, 8))
        C = rng.normal(size=(T, K))
        y = zhukov_dp(C)
        assert (y.sum(axis=0) == 1).all() and np.all(np.diff(y.argmax(axis=0)) > 0)
        np.testing.assert_array_equal(y, brute_force(C))
        np.testing.assert_array_equal(y, dp_pyx_loop(C))
    for _ in range(60):  # integer costs: many ties, broken as dp.pyx breaks them
        K = int(rng.integers(1, 5))
        T = int(rng.integers(K, 12))
        C = rng.integers(-2, 2, size=(T, K)).astype(float)
        bg = float(rng.integers(-1, 2))
        np.testing.assert_array_equal(zhukov_dp(C, bg), dp_pyx_loop(C, bg))


def test_dp_small_case_by_hand():
    # Step 1 is cheapest at frame 3, step 2 at frame 1: order forces a compromise.
    C = np.array([[0, 0], [0, -5], [-1, 0], [-4, 0], [0, -2]], float)
    y = zhukov_dp(C)
    assert y[:, 0].argmax() == 3 and y[:, 1].argmax() == 4  # cost -6 beats (2, 1)-impossible and (0, 1) = -5
    with pytest.raises(DataError, match="T >= K"):
        zhukov_dp(np.zeros((2, 3)))
    with pytest.raises(DataError, match="NaN"):
        zhukov_dp(np.array([[np.nan]]))


def test_localize_steps_uses_log_softmax():
    s = np.array([[5.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    np.testing.assert_array_equal(localize_steps(s), np.array([[1, 0], [0, 0], [0, 1]], np.uint8))
    # Row-wise shifts do not change log_softmax, so they cannot change the decoding.
    np.testing.assert_array_equal(localize_steps(s + np.array([[7.0], [-2.0], [1.0]])), localize_steps(s))


def test_frame_step_scores():
    f = np.array([[3.0, 0.0], [0.0, 0.5], [1.0, 1.0]])
    s = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(frame_step_scores(f, s), [[1, 0], [0, 1], [2 ** -0.5, 2 ** -0.5]])
    np.testing.assert_allclose(frame_step_scores(f, s, normalize=False), f @ s.T)
    with pytest.raises(DataError, match="width"):
        frame_step_scores(f, np.ones((2, 3)))


def test_uniform_assignment_official_rounding():
    y = uniform_assignment(267, 6)
    assert list(y.argmax(axis=0)) == [22, 67, 111, 156, 200, 245]  # round(44.5 * (k + .5)), 111.25 -> 111
    assert list(uniform_assignment(10, 4).argmax(axis=0)) == [1, 4, 6, 9]  # round(1.25)=1, round(3.75)=4, 6.25, 8.75


# ----------------------------------------------------------------------------- recall
def test_recall_small_and_against_loop():
    yt = step_targets([Segment(1, 0.5, 2.2), Segment(3, 4.0, 5.0), Segment(1, 6.0, 6.5)], 8, 3)
    assert yt[:, 0].tolist() == [1, 1, 1, 0, 0, 0, 1, 0] and yt[:, 2].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    yp = np.zeros((8, 3), np.uint8)
    yp[6, 0] = yp[2, 1] = yp[5, 2] = 1  # step 1 hit (2nd segment), step 2 absent, step 3 missed
    r = crosstask_recall({"t": {"v": yt}}, {"t": {"v": yp, "other": yp}})
    assert r == {"t": 0.5}
    rng = np.random.default_rng(1)
    truth, pred = {}, {}
    for task in "abc":
        truth[task], pred[task] = {}, {}
        for v in range(4):
            truth[task][v] = (rng.random((20, 4)) < 0.15).astype(np.uint8)
            truth[task][v][3, 0] = 1
            pred[task][v] = zhukov_dp(rng.normal(size=(20, 4)))
    assert crosstask_recall(truth, pred) == pytest.approx(recall_loop(truth, pred))
    assert average_recall({"a": 0.5, "b": 1.0}) == 0.75
    with pytest.raises(DataError, match="no predictions"):
        crosstask_recall({"t": {"v": yt}}, {})
    with pytest.raises(DataError, match="shape"):
        crosstask_recall({"t": {"v": yt}}, {"t": {"v": yp[:5]}})
    with pytest.raises(DataError, match="no ground-truth step"):
        crosstask_recall({"t": {"v": np.zeros((3, 2))}}, {"t": {"v": np.zeros((3, 2))}})


# ----------------------------------------------------------------------------- readers on bad input
def test_readers_name_file_and_line(tmp_path):
    good = "1\nTask one\nhttp://x\n2\na,b\n\n"
    (tmp_path / "t.txt").write_text(good + "2\nTask two\nhttp://y\n3\na,b\n\n")
    with pytest.raises(DataError, match=r"t.txt:11: task 2 declares 3 steps but lists 2"):
        read_tasks(tmp_path / "t.txt")
    (tmp_path / "t.txt").write_text(good + "x\nT\nu\n1\na\n")
    with pytest.raises(DataError, match=r"t.txt:7: task id 'x'"):
        read_tasks(tmp_path / "t.txt")
    (tmp_path / "v.csv").write_text("1,abc,u\n1,def\n")
    with pytest.raises(DataError, match=r"v.csv:2: expected"):
        read_video_list(tmp_path / "v.csv")
    (tmp_path / "1_-a_b.csv").write_text("2,5.0,7.5\n1,1.0,2\n3,4,oops\n")
    with pytest.raises(DataError, match=r"1_-a_b.csv:3: expected 'step,start,end'"):
        read_annotation(tmp_path / "1_-a_b.csv")
    (tmp_path / "1_-a_b.csv").write_text("2,5.0,7.5\n1,1.0,2\n3,4,3\n")
    with pytest.raises(DataError, match=r"1_-a_b.csv:3: bad segment"):
        read_annotation(tmp_path / "1_-a_b.csv")
    (tmp_path / "1_-a_b.csv").write_text("2,5.0,7.5\n1,1.0,2\n")
    assert read_annotation(tmp_path / "1_-a_b.csv") == [Segment(1, 1.0, 2.0), Segment(2, 5.0, 7.5)]
    tasks = read_tasks(_write(tmp_path / "ok.txt", good))
    folder = tmp_path / "ann"
    folder.mkdir()
    (folder / "1_-a_b.csv").write_text("3,5.0,7.5\n")
    with pytest.raises(DataError, match=r"1_-a_b.csv:1: step 3 is outside 1..2"):
        read_annotations(folder, tasks)
    (folder / "1_-a_b.csv").write_text("2,5.0,7.5\n")
    assert read_annotations(folder, tasks) == {("1", "-a_b"): [Segment(2, 5.0, 7.5)]}
    zpath = tmp_path / "a.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("annotations/1_-a_b.csv", "2,5.0,7.5\n1,x,2\n")
    with pytest.raises(DataError, match=r"a.zip!annotations/1_-a_b.csv:2"):
        read_annotations(zpath, tasks)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- real files
def test_real_tasks_and_video_lists():
    tasks = read_tasks(need(CT / "tasks_primary.txt"))
    assert len(tasks) == 18 and sum(t.n_steps for t in tasks.values()) == 133
    assert {t.n_steps for t in tasks.values()} >= {3, 11} and min(t.n_steps for t in tasks.values()) == 3
    assert tasks["23521"].title == "Make Jello Shots" and tasks["23521"].steps[-1] == "pour mixture into cup"
    assert len(read_tasks(CT / "tasks_related.txt")) == 65
    val = read_video_list(CT / "videos_val.csv")
    assert set(val) == set(tasks) and all(len(v) == 20 for v in val.values())
    allv = read_video_list(CT / "videos.csv")
    assert sum(map(len, allv.values())) == 4700 and sum(len(allv[t]) for t in tasks) == 2750
    assert len({v for vs in allv.values() for v in vs}) == 4607  # 93 rows reuse a video under another task


def _real():
    tasks = read_tasks(need(CT / "tasks_primary.txt"))
    return tasks, read_annotations(need(CT / "annotations.zip"), tasks), read_video_list(CT / "videos_val.csv")


def test_real_annotations():
    tasks, ann, _ = _real()
    assert len(ann) == 2750 and sum(map(len, ann.values())) == 20919
    per_task = {t: sum(1 for (tt, _) in ann if tt == t) for t in tasks}
    assert min(per_task.values()) == 86 and max(per_task.values()) == 252
    overlapping = sum(any(b.start < a.end for a, b in itertools.pairwise(s)) for s in ann.values())
    recurring = sum(len({x.step for x in s}) < len(s) for s in ann.values())
    assert overlapping == 744 and recurring == 1799
    with zipfile.ZipFile(CT / "annotations.zip") as z:  # 49 raw files are not in time order; we sort
        raw = {n: [float(r.split(",")[1]) for r in z.read(n).decode().split()] for n in z.namelist()}
    assert sum(starts != sorted(starts) for starts in raw.values()) == 49
    assert all([s.start for s in segs] == sorted(s.start for s in segs) for segs in ann.values())


def test_real_one_video_by_hand():
    """105222_rzxVluau83Q (16 segments, steps 1-6), T = ceil(266.22) = 267 seconds."""
    _tasks, ann, _ = _real()
    segs = ann[("105222", "rzxVluau83Q")]
    yt = step_targets(segs, 267, 6)
    assert yt[53:57, 2].all() and not yt[52, 2] and not yt[57, 2]  # step 3 at [53.72, 56.12] -> 53..56
    first = {}
    for s in segs:
        first.setdefault(s.step, s)
    oracle = np.zeros_like(yt)
    for k, s in first.items():
        oracle[math.floor(s.start), k - 1] = 1
    shifted = np.roll(oracle, 3, axis=0)  # +3 s: steps 4 (148-150 -> 151) and 5 (220-222 -> 223) miss
    truth = {"105222": {"v": yt}}
    assert crosstask_recall(truth, {"105222": {"v": oracle}}) == {"105222": 1.0}
    assert crosstask_recall(truth, {"105222": {"v": shifted}}) == {"105222": 4 / 6}
    # uniform frames 22, 67, 111, 156, 200, 245: none inside its step (worked out in test_uniform_...)
    assert crosstask_recall(truth, {"105222": {"v": uniform_assignment(267, 6)}}) == {"105222": 0.0}


def test_real_validation_set_oracle_shifted_uniform():
    tasks, ann, val = _real()
    truth, oracle, shifted, uniform = {}, {}, {}, {}
    for task, vids in val.items():
        for t_ in (truth, oracle, shifted, uniform):
            t_[task] = {}
        for vid in vids:
            segs = ann[(task, vid)]
            T, K = math.ceil(max(s.end for s in segs)), tasks[task].n_steps
            yt = step_targets(segs, T, K)
            o, sh = np.zeros_like(yt), np.zeros_like(yt)
            for k in range(K):
                if yt[:, k].any():  # oracle: the first second of the step; shifted: 5 s later (kept inside)
                    o[yt[:, k].argmax(), k] = 1
                    sh[min(yt[:, k].argmax() + 5, T - 1), k] = 1
            truth[task][vid], oracle[task][vid], shifted[task][vid] = yt, o, sh
            uniform[task][vid] = uniform_assignment(T, K)
    r_oracle = crosstask_recall(truth, oracle)
    assert set(r_oracle.values()) == {1.0} and average_recall(r_oracle) == 1.0
    for pred in (shifted, uniform):
        assert crosstask_recall(truth, pred) == pytest.approx(recall_loop(truth, pred))
    # Regression values of this implementation, equal to the plain loop above (T = last annotated second).
    assert average_recall(crosstask_recall(truth, shifted)) == pytest.approx(SHIFTED_5S, abs=1e-4)
    assert average_recall(crosstask_recall(truth, uniform)) == pytest.approx(UNIFORM, abs=1e-4)


SHIFTED_5S = 0.63364  # per task 0.400 .. 0.924
UNIFORM = 0.13443  # per task 0.028 .. 0.303
