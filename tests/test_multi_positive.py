"""Several captions of one video per batch as positives (``taco.captions_per_video``): the losses against
plain loops, the sampler, collate, the forward pass, and the refusals.

References follow the losses' docstrings with python loops; texts index rows, videos columns, and
``targets[i]`` is text i's video.
"""
from __future__ import annotations

import math

import pytest
import torch
from test_losses import _nll, _weights, batch, taco  # noqa: F401 (fixtures)

from vidlang import losses
from vidlang.config import TacoConfig
from vidlang.data.dataset import UniqueVideoBatchSampler, collate
from vidlang.data.records import Batch
from vidlang.distributed import Shard
from vidlang.errors import ConfigError

TARGETS = [0, 0, 1, 2, 2, 2, 3]  # 7 texts of 4 videos


def ref_multi_sentence_loss(s, targets, tau: float, symmetric: bool) -> float:
    n_t, n_v = s.shape
    t2v = [_nll([s[i, j].item() / tau for j in range(n_v)], targets[i]) for i in range(n_t)]
    if not symmetric:
        return sum(t2v) / n_t
    v2t = []
    for i in range(n_t):  # text i against the texts of the other videos, in its video's column
        v = targets[i]
        pos = math.exp(s[i, v].item() / tau)
        neg = sum(math.exp(s[k, v].item() / tau) for k in range(n_t) if targets[k] != v)
        v2t.append(-math.log(pos / (pos + neg)))
    return (sum(t2v) / n_t + sum(v2t) / n_t) / 2


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("tau", [1.0, 0.4])
def test_multi_positive_sentence_loss_matches_loop(symmetric, tau):
    s = torch.randn(7, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = losses.sentence_loss(s, tau, symmetric, "mean", torch.tensor(TARGETS))
    assert got.item() == pytest.approx(ref_multi_sentence_loss(s, TARGETS, tau, symmetric), rel=1e-10)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_diagonal_targets_are_the_one_caption_loss(reduction):
    s = torch.randn(5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    diagonal = torch.arange(5)
    for symmetric in (True, False):
        torch.testing.assert_close(losses.sentence_loss(s, 0.7, symmetric, reduction, diagonal),
                                   losses.sentence_loss(s, 0.7, symmetric, reduction))
    sim = torch.randn(5, 5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    w = _weights(5, 3, torch.Generator().manual_seed(5), empty=(2,))
    assert losses.token_loss(sim, w, 0.8, reduction, diagonal) == losses.token_loss(sim, w, 0.8, reduction)


def test_multi_positive_token_loss_matches_loop():
    gen = torch.Generator().manual_seed(6)
    sim = torch.randn(7, 4, 3, generator=gen, dtype=torch.float64)
    w = _weights(7, 3, gen, empty=(1,))
    total, count = 0.0, 0
    for i in range(7):
        if w[i].sum() > 0:
            count += 1
            total += sum(w[i, p].item() * _nll([sim[i, j, p].item() for j in range(4)], TARGETS[i])
                         for p in range(3) if w[i, p] > 0)
    loss, used = losses.token_loss(sim, w, 1.0, "mean", torch.tensor(TARGETS))
    assert used == count and loss.item() == pytest.approx(total / count, rel=1e-10)


def test_hard_negatives_never_take_a_positive():
    scores = torch.randn(7, 4, generator=torch.Generator().manual_seed(7))
    own = torch.tensor(TARGETS)[None, :] == torch.arange(4)[:, None]  # (videos, texts)
    neg_videos = losses.hard_negatives(scores, 2, positives=own.T)
    for i, row in enumerate(neg_videos.tolist()):
        others = sorted((j for j in range(4) if j != TARGETS[i]), key=lambda j: -scores[i, j].item())
        assert row == others[:2]
    neg_texts = losses.hard_negatives(scores.T, 10, positives=own)  # K' capped by the largest group
    assert neg_texts.shape == (4, 7 - 3)
    for v, row in enumerate(neg_texts.tolist()):
        assert all(TARGETS[i] != v for i in row)


def test_sampler_gives_distinct_clips_of_each_video():
    clip_video = [v for v in range(9) for _ in range(1 + v % 4)]  # 9 videos with 1-4 clips
    sampler = UniqueVideoBatchSampler(clip_video, 4, seed=1, per_video=2)
    seen = []
    for rows in sampler:
        videos = [clip_video[i] for i in rows]
        assert len(set(rows)) == len(rows)
        groups = list(dict.fromkeys(videos))
        assert len(groups) <= 4 and videos == sorted(videos, key=groups.index)  # a video's clips side by side
        for v in groups:
            assert videos.count(v) == min(2, clip_video.count(v))
        seen += groups
    assert sorted(seen) == list(range(9))  # every video once an epoch
    one = UniqueVideoBatchSampler(clip_video, 4, seed=1)
    assert all(len({clip_video[i] for i in b}) == len(b) for b in one)
    with pytest.raises(ConfigError):
        UniqueVideoBatchSampler(clip_video, 4, per_video=0)


def _item(video_id: str, k: int) -> dict:
    return {"video": torch.full((2, 3), float(k)), "input_ids": torch.tensor([101, 7 + k, 102]),
            "attention_mask": torch.ones(3, dtype=torch.long), "token_weights": torch.zeros(3),
            "video_id": video_id, "clip_index": k}


def test_collate_marks_rows_of_one_video():
    b = collate([_item("a", 0), _item("a", 1), _item("b", 2), _item("c", 3), _item("c", 4)])
    assert b.text_video.tolist() == [0, 0, 1, 2, 2] and b.video_rows.tolist() == [0, 2, 3]
    unique = collate([_item("a", 0), _item("b", 1)])
    assert unique.text_video is None and unique.video_rows is None


def _grouped(one: Batch, repeat: list[int]) -> Batch:
    """``one`` with row i repeated ``repeat[i]`` times (its copies a video's other captions)."""
    rows = torch.tensor([i for i, r in enumerate(repeat) for _ in range(r)])
    text_rows = torch.arange(len(rows)) % len(one)  # other captions: other rows' text
    firsts = torch.tensor([sum(repeat[:i]) for i in range(len(repeat))])
    return Batch(one.video[rows], one.video_mask[rows], one.input_ids[text_rows],
                 one.attention_mask[text_rows], one.token_weights[text_rows],
                 [one.video_ids[i] for i in rows.tolist()], text_video=rows, video_rows=firsts)


def test_forward_with_groups(taco, batch, monkeypatch):  # noqa: F811
    taco.eval()
    cfg = TacoConfig(num_negatives=2)
    with torch.no_grad():
        plain = taco(batch, cfg)
        flagged = taco(_grouped(batch, [1] * len(batch)), cfg)  # every video once, marked as groups
    for key in ("l1", "l2", "l3", "loss"):
        torch.testing.assert_close(flagged[key], plain[key])

    grouped = _grouped(batch, [2, 1, 3, 1, 1, 2])
    targets = grouped.text_video
    calls, original = [], taco.fusion_scores
    monkeypatch.setattr(taco, "fusion_scores", lambda v, t, vi, ti: calls.append((vi, ti)) or original(v, t, vi, ti))
    with torch.no_grad():
        out = taco(grouped, cfg)
        video = taco.encode_video(batch.video, batch.video_mask)
        text = taco.encode_text(grouped.input_ids, grouped.attention_mask)
    s1 = text.pooled.double() @ video.pooled.double().T
    assert out["l1"].item() == pytest.approx(ref_multi_sentence_loss(s1, targets.tolist(), 1.0, True), rel=1e-4)
    video_index, text_index = calls[0]
    n, k = len(grouped), 2
    assert video_index[:n].tolist() == targets.tolist() and text_index[:n].tolist() == list(range(n))
    neg_v, neg_t = video_index[n:n + n * k].view(n, k), text_index[n + n * k:].view(n, k)
    for i in range(n):
        assert targets[i] not in neg_v[i].tolist()
        assert all(targets[t] != targets[i] for t in neg_t[i].tolist())
    taco.train()
    rand = taco(grouped, TacoConfig(negatives="random", num_negatives=2), torch.Generator().manual_seed(0))
    rand["loss"].backward()
    assert torch.isfinite(rand["loss"]) and all(torch.isfinite(p.grad).all() for p in taco.video.parameters()
                                               if p.grad is not None)
    taco.zero_grad(set_to_none=True)
    taco.eval()
    with pytest.raises(ConfigError, match="one process"):  # rank 0 of two
        taco(grouped, cfg, shard=Shard(0, 2, 0, len(grouped), 2 * len(grouped)))


def test_training_with_two_captions_per_video(tmp_path, data_dir):
    from conftest import tiny_config

    from vidlang.tasks.taco import build_experiment
    from vidlang.train import train

    cfg = tiny_config(tmp_path / "run", data_dir, "taco.captions_per_video=2", "train.steps=2")
    exp = build_experiment(cfg)
    seen = []
    forward = exp.model.forward
    exp.model.forward = lambda rows, *a, **k: seen.append(rows) or forward(rows, *a, **k)
    summary = train(cfg, exp, progress=False)
    assert summary["steps"] == 2 and all(math.isfinite(h["loss"]) for h in summary["history"] if "loss" in h)
    assert seen and all(b.text_video is not None and len(b) == 2 * len(b.video_rows) for b in seen)
    assert all(len(set(b.video_ids)) == len(b.video_rows) for b in seen)
    with pytest.raises(ConfigError, match="captions_per_video"):
        build_experiment(tiny_config(tmp_path / "s", data_dir, "taco.captions_per_video=2",
                                     f"data.shards={tmp_path / 'nowhere'}"))


def test_torchrun_is_refused_before_training(tmp_path, data_dir, monkeypatch):
    from conftest import tiny_config

    from vidlang import distributed
    from vidlang.train import train

    monkeypatch.setattr(distributed, "init_from_env", lambda *a, **k: True)  # as rank 0 of two processes
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match=r"one process only, not under torchrun \(2 processes\)"):
        train(tiny_config(tmp_path / "run", data_dir, "taco.captions_per_video=2"), progress=False)
    assert not (tmp_path / "run" / "step-000001").exists()
