"""Self-critical sequence training (mvgpt.scst_steps): the loss against the paper's formula, the samples'
log-probabilities against a step-by-step loop, the baselines, the CIDEr-D reward, the lr schedule, and
decoding over an output vocabulary giving the same captions as over the full one."""
from __future__ import annotations

import pytest
import torch

from vidlang import losses
from vidlang.errors import ConfigError
from vidlang.evaluation.caption_metrics import CiderD
from vidlang.evaluation.caption_reward import CiderReward
from vidlang.models import decoding
from vidlang.models.mvgpt import MVGPT
from vidlang.tasks.mvgpt import lr_schedule
from vidlang.text.ptb import ptb_tokenize
from vidlang.train import warmup_linear

from test_mvgpt import make_batch, tiny_cfg  # noqa: E402  (tests/ is on sys.path)


def test_self_critical_loss_matches_the_paper():
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(6, generator=g)).requires_grad_()
    rewards, baseline = torch.rand(6, generator=g), torch.rand(6, generator=g)
    loss = losses.self_critical_loss(logp, rewards, baseline)
    expected = sum(-(float(r) - float(b)) * lp for r, b, lp in zip(rewards, baseline, logp)) / 6
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()  # d loss / d log p(w^s) = -(r - b) / N: a sample better than the baseline is made likelier
    assert torch.allclose(logp.grad, -(rewards - baseline) / 6)
    with pytest.raises(ValueError, match="shapes differ"):
        losses.self_critical_loss(logp, rewards[:3], baseline)


def toy_reward(seq: list[int]) -> float:
    return float(sum(seq) % 11 + len(seq))


class FixedReward:
    """A toy reward that differs between samples, recording what it was asked."""

    def __init__(self):
        self.calls = []

    def __call__(self, clip_index, samples):
        self.calls.append((clip_index.tolist(), [list(s) for s in samples]))
        return torch.tensor([toy_reward(s) for s in samples])


def scst_model(baseline: str = "greedy", samples: int = 3) -> MVGPT:
    torch.manual_seed(0)
    cfg = tiny_cfg("mvgpt.objective=caption", "train.steps=10", "mvgpt.scst_steps=4", f"mvgpt.scst_samples={samples}",
                   f"mvgpt.scst_baseline={baseline}")
    m = MVGPT(cfg, video_dim=8)
    m.decoder.set_output_vocab([*range(2000, 2012), m.ids["sep"]])  # small: some samples end, some are cut
    m.reward = FixedReward()
    return m


def sequence_log_prob_loop(m: MVGPT, memory, seq: list[int]) -> float:
    """log p(seq [SEP]) token by token, from the full prefix each time (the end token only if not cut)."""
    tokens = [m.ids["bos1"]]
    total = 0.0
    targets = seq + ([m.ids["sep"]] if len(seq) < m.cfg.decode.max_len else [])
    for tok in targets:
        logits, _ = m.decoder(torch.tensor([tokens]), memory)
        total += float(torch.log_softmax(logits[0, -1], -1)[tok])
        tokens.append(tok)
    return total


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_scst_step_matches_a_loop(baseline):
    m = scst_model(baseline)
    m.set_step(5)
    assert not m.self_critical  # steps 0-5 are cross-entropy
    m.set_step(6)
    assert m.self_critical
    b = make_batch()
    b.clip_index = torch.tensor([4, 7, 9])
    m.train()
    out = m(b, torch.Generator().manual_seed(1))
    assert set(out) >= {"scst", "reward", "loss"} and "caption" not in out
    sample_call = m.reward.calls[0]
    assert sample_call[0] == [4, 4, 4, 7, 7, 7, 9, 9, 9]  # each clip's index, once per sample
    samples = sample_call[1]
    rewards = torch.tensor([toy_reward(s) for s in samples])
    assert len({len(s) for s in samples}) > 1 and len(set(rewards.tolist())) > 1
    if baseline == "greedy":
        assert m.reward.calls[1][0] == [4, 7, 9]
        base = torch.tensor([toy_reward(s) for s in m.reward.calls[1][1]]).repeat_interleave(3)
    else:
        per = rewards.view(3, 3)
        base = ((per.sum(1, keepdim=True) - per) / 2).flatten()
    m.eval()  # the loop: no dropout (the tiny model has none), the same memory (frames + transcript)
    memory = m.encode(b.video, b.video_mask, b.transcript_ids, b.transcript_mask)
    logps = []
    for i, seq in enumerate(samples):
        clip = slice(i // 3, i // 3 + 1)
        one = type(memory)(memory.tokens[clip], memory.mask[clip], memory.pooled[clip])
        logps.append(sequence_log_prob_loop(m, one, seq))
    expected = -sum((r - bb) * lp for r, bb, lp in zip(rewards.tolist(), base.tolist(), logps)) / len(samples)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert out["reward"].item() == pytest.approx(rewards.mean().item())


def test_scst_validation_keeps_cross_entropy_and_bad_settings_are_named():
    m = scst_model()
    m.set_step(9)
    m.eval()
    assert "caption" in m(make_batch())  # validation losses stay comparable across the phases
    m.train()
    m.reward = None
    b = make_batch()
    b.clip_index = torch.tensor([0, 1, 2])
    with pytest.raises(ConfigError, match="references"):
        m(b)
    with pytest.raises(ConfigError, match="scst_steps"):
        MVGPT(tiny_cfg("mvgpt.objective=caption", "train.steps=3", "mvgpt.scst_steps=4"), video_dim=8)
    with pytest.raises(ConfigError, match="scst_steps"):
        MVGPT(tiny_cfg("mvgpt.objective=pretrain", "train.steps=9", "mvgpt.scst_steps=4"), video_dim=8)
    with pytest.raises(ConfigError, match="scst_samples"):
        MVGPT(tiny_cfg("mvgpt.objective=caption", "train.steps=9", "mvgpt.scst_steps=4", "mvgpt.scst_baseline=mean",
                       "mvgpt.scst_samples=1"), video_dim=8)


def test_cider_reward_is_cider_d_against_the_clips_own_references():
    refs = {"a": ["a man is cooking food", "a man cooks in a kitchen", "someone is cooking"],
            "b": ["a dog runs on the grass", "a dog is running", "dog playing outside"],
            "c": ["a woman sings a song", "a girl is singing on stage"]}
    words = {1: "a", 2: "man", 3: "is", 4: "cooking", 5: "dog", 6: "running", 7: "singing"}
    reward = CiderReward(["b", "a", "c", "a"], refs, lambda ids: " ".join(words[i] for i in ids))
    samples = [[1, 2, 3, 4], [1, 5, 3, 6], [1, 5, 3, 6], []]
    got = reward(torch.tensor([1, 0, 3, 2]), samples)  # clips 1, 0, 3, 2 -> keys a, b, a, c
    cider = CiderD([[ptb_tokenize(c) for c in refs[k]] for k in refs])
    table = cider.video_scores(["a man is cooking", "a dog is running", "a dog is running", ""])
    assert got.tolist() == pytest.approx([table[0, 0], table[1, 1], table[2, 0], table[3, 2]], abs=1e-6)
    assert got[0] > got[2] and got[1] > got[2]  # the right video's references pay more


def test_lr_schedule_is_cross_entropy_then_a_constant_share():
    cfg = tiny_cfg("mvgpt.objective=caption", "train.steps=100", "train.warmup_steps=10", "mvgpt.scst_steps=30",
                   "mvgpt.scst_lr_scale=0.2")
    f, xe = lr_schedule(cfg, warmup_linear), warmup_linear(10, 70)
    assert [f(s) for s in range(70)] == [xe(s) for s in range(70)]
    assert [f(s) for s in range(70, 100)] == [0.2] * 30
    plain = tiny_cfg("mvgpt.objective=caption", "train.steps=100", "train.warmup_steps=10")
    assert [lr_schedule(plain, warmup_linear)(s) for s in range(100)] == [warmup_linear(10, 100)(s) for s in range(100)]


def test_decoding_over_an_output_vocabulary_equals_the_full_width():
    torch.manual_seed(0)
    m = MVGPT(tiny_cfg("mvgpt.objective=caption", "decode.max_len=8"), video_dim=8).eval()
    b = make_batch()
    vocab = sorted(set(range(1000, 1400)) | {m.ids["sep"], 2000, 2003, 2009})
    m.decoder.set_output_vocab(vocab)
    memory = m.encode(b.video, b.video_mask, b.transcript_ids, b.transcript_mask)
    full = decoding._Stepper.__init__

    def full_width(self, *a, **k):  # the former path: full-width logits, -inf outside the vocabulary
        full(self, *a, **k)
        self.vocab = self.lookup = self.token_of = None
        self.subset = {}

    runs = {}
    for mode in ("subset", "full"):
        if mode == "full":
            decoding._Stepper.__init__ = full_width
        try:
            for name, kw in (("greedy", {}), ("beam", {"beam_size": 3}), ("beam", {"beam_size": 3, "no_repeat_ngram": 1})):
                runs[mode, name, str(kw)] = decoding.generate(m.decoder, memory, m.ids["bos1"], m.ids["sep"], name,
                                                              max_len=8, banned=[m.ids["cls"]], **kw)
        finally:
            decoding._Stepper.__init__ = full
    for key, seqs in runs.items():
        assert seqs == runs[("full", *key[1:])], key
        assert all(t in vocab for s in seqs for t in s)
    assert any(len(s) > 1 for s in runs["subset", "greedy", "{}"])


def scst_run(out, data_dir, *extra: str) -> dict:
    from helpers import MVGPT_TINY

    from vidlang.config import load_config
    from vidlang.train import train

    return train(load_config(None, [*MVGPT_TINY, f"data.root={data_dir}", "data.train_split=train", "data.val_split=none",
                                    "train.threads=1", "train.batch_size=6", "data.max_frames=4", "train.warmup_steps=1",
                                    "train.eval_every=0", "train.save_every=100", "train.log_every=1",
                                    f"train.out_dir={out}", *extra]), progress=False)


def test_a_run_switches_to_scst_and_equals_cross_entropy_then_a_resumed_scst_phase(tmp_path, data_dir):
    """5 steps, the last 2 SCST, straight; and 3 cross-entropy steps, then resumed with the SCST phase added
    (how the SCST probes reuse a finished cross-entropy run): the same weights."""
    from safetensors.torch import load_file

    from vidlang.plot import read_scalars

    scst_run(tmp_path / "a", data_dir, "train.steps=5", "mvgpt.scst_steps=2", "train.lr=1e-3")
    logged = read_scalars(tmp_path / "a")
    assert [s for s, _ in logged["train/caption"]] == [1, 2, 3] and [s for s, _ in logged["train/reward"]] == [4, 5]
    assert all(0.0 <= r <= 10.0 for _, r in logged["train/reward"])  # CIDEr-D
    assert [lr for s, lr in logged["train/lr"] if s >= 3] == pytest.approx([1e-4] * 3)  # the lr of steps 4, 5, 6
    scst_run(tmp_path / "b", data_dir, "train.steps=3", "train.lr=1e-3")
    scst_run(tmp_path / "b", data_dir, "train.steps=5", "mvgpt.scst_steps=2", "train.lr=1e-3", "train.resume=force")
    a, b = (load_file(str(p / "step-000005" / "model.safetensors")) for p in (tmp_path / "a", tmp_path / "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_mixed_objective_adds_the_weighted_cross_entropy():
    m = scst_model("mean")
    b = make_batch()
    b.clip_index = torch.tensor([0, 1, 2])
    m.set_step(8)
    m.train()
    alone = m(b, torch.Generator().manual_seed(3))
    m.cfg.mvgpt.scst_xe_weight = 0.5
    mixed = m(b, torch.Generator().manual_seed(3))
    m.cfg.mvgpt.scst_xe_weight = 0.0
    m.eval()
    cross_entropy = m(b)["caption"]  # the same memory and targets: no dropout in the tiny model
    assert mixed["scst"].item() == pytest.approx(alone["scst"].item(), rel=1e-5)
    assert mixed["caption"].item() == pytest.approx(cross_entropy.item(), rel=1e-5)
    assert mixed["loss"].item() == pytest.approx(alone["scst"].item() + 0.5 * cross_entropy.item(), rel=1e-5)
