"""Inference scoring (s1 + 0.5·s2 + s3, exact and cascade) against pair-by-pair loops.

A tiny TACo with random video features and random WordPiece ids; the encoded sets are built in
several batches of different lengths, so the padding in ``encode_videos``/``encode_texts`` is exercised.
"""
from __future__ import annotations

import pytest
import torch

from vidlang.evaluation import scoring
from vidlang.config import ModelConfig
from vidlang.models.blocks import Encoded

N_VIDEOS, N_TEXTS = 7, 6


@pytest.fixture(scope="module")
def model():
    from vidlang.models.taco import TACo

    torch.manual_seed(0)
    return TACo(ModelConfig(video_layers=1, fusion_layers=1, text_trainable_layers=0), video_dim=16).eval()


def _video_batches(gen):
    batches = []
    for n, t in ((3, 4), (4, 6)):  # two batches of different lengths
        lengths = torch.randint(1, t + 1, (n,), generator=gen)
        lengths[0] = t
        mask = torch.arange(t)[None] < lengths[:, None]
        batches.append((torch.randn(n, t, 16, generator=gen) * mask[..., None], mask))
    return batches


def _text_batches(gen):
    batches = []
    for n, max_len in ((2, 5), (4, 8)):
        lengths = torch.randint(3, max_len + 1, (n,), generator=gen)
        lengths[0] = max_len
        ids = torch.zeros(n, max_len, dtype=torch.long)
        weights = torch.zeros(n, max_len)
        for i, length in enumerate(lengths.tolist()):
            ids[i, :length] = torch.randint(2000, 8000, (length,), generator=gen)
            ids[i, 0], ids[i, length - 1] = 101, 102  # [CLS] ... [SEP]
            if i != 1:  # text 1 of each batch has no token of interest
                w = torch.rand(length - 2, generator=gen) + 0.05
                weights[i, 1 : length - 1] = w / w.sum()
        batches.append((ids, (ids != 0).long(), weights))
    return batches


@pytest.fixture(scope="module")
def sets(model):
    gen = torch.Generator().manual_seed(3)
    videos = scoring.encode_videos(model, _video_batches(gen))
    texts = scoring.encode_texts(model, _text_batches(gen))
    assert len(videos) == N_VIDEOS and len(texts) == N_TEXTS
    return videos, texts


def _row(enc: Encoded, i: int) -> Encoded:
    return Encoded(enc.tokens[i : i + 1], enc.mask[i : i + 1], enc.pooled[i : i + 1])


def eq5_fusion_score(model, video_tokens: torch.Tensor, text_tokens: torch.Tensor) -> float:
    """s3 = w·z^cls + b (methods.md §1.2, Eq. 5) for one pair, straight through the fusion encoder's
    modules and not through ``fusion_scores``/``FusionEncoder.forward``: the real (unpadded) tokens
    ``[text; video]``, + token type (0 text, 1 video) + position 0..n-1, LayerNorm, every transformer
    layer over the whole sequence, the output at the text [CLS] (row 0), the linear head."""
    f = model.fusion
    x = torch.cat([text_tokens, video_tokens])
    types = torch.tensor([0] * len(text_tokens) + [1] * len(video_tokens))
    x = f.norm(x + f.token_type(types) + f.position(torch.arange(len(x))))
    for layer in f.layers.layers:
        x = layer(x[None])[0]
    head = model.fusion_head
    return float(head.weight[0].double() @ x[0].double() + head.bias[0].double())


@pytest.fixture(scope="module")
def loops(model, sets):
    """s1, s2 and s3 (texts, videos) computed one pair at a time."""
    videos, texts = sets
    v, t, w = videos.encoded, texts.encoded, texts.weights
    s1, s2, s3 = (torch.zeros(N_TEXTS, N_VIDEOS, dtype=torch.float64) for _ in range(3))
    with torch.no_grad():
        for i in range(N_TEXTS):
            for j in range(N_VIDEOS):
                s1[i, j] = float(t.pooled[i].double() @ v.pooled[j].double())
                for p in range(t.tokens.shape[1]):
                    if w[i, p] > 0:
                        frames = [float(t.tokens[i, p].double() @ v.tokens[j, k].double())
                                  for k in range(v.tokens.shape[1]) if v.mask[j, k]]
                        s2[i, j] += w[i, p].item() * max(frames)
                s3[i, j] = eq5_fusion_score(model, v.tokens[j][v.mask[j]], t.tokens[i][t.mask[i]])
    return s1, s2, s3


def _close(a, b, atol=1e-4):
    torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=atol)


def test_encoded_sets_are_padded_consistently(model, sets):
    videos, texts = sets
    assert videos.encoded.tokens.shape[:2] == videos.encoded.mask.shape == (N_VIDEOS, 6)
    assert texts.encoded.tokens.shape[:2] == texts.encoded.mask.shape == texts.weights.shape == (N_TEXTS, 8)
    assert not videos.encoded.mask[:3, 4:].any() and not texts.encoded.mask[:2, 5:].any()
    assert (texts.weights[~texts.encoded.mask] == 0).all()
    assert (texts.weights[[1, 3]] == 0).all()


def test_single_scores_match_loops(model, sets, loops):
    videos, texts = sets
    s1, s2, s3 = loops
    _close(scoring.score_matrix(model, videos, texts, "s1"), s1)
    _close(scoring.score_matrix(model, videos, texts, "s2"), s2)
    assert (s2[[1, 3]] == 0).all()
    _close(scoring.score_matrix(model, videos, texts, "s3"), s3)
    _close(scoring.score_matrix(model, videos, texts, "s1+s2", token_scale=0.3), s1 + 0.3 * s2)
    _close(scoring.score_matrix(model, videos, texts, "s1+s2"), s1 + 0.5 * s2)


@pytest.mark.parametrize("batch_pairs", [1, 7, N_TEXTS * N_VIDEOS])
def test_exact_matches_loop_for_any_batch_size(model, sets, loops, batch_pairs):
    videos, texts = sets
    s1, s2, s3 = loops
    got = scoring.score_matrix(model, videos, texts, "exact", batch_pairs=batch_pairs)
    assert got.shape == (N_TEXTS, N_VIDEOS)
    _close(got, s1 + 0.5 * s2 + s3)


def test_exact_scores_do_not_depend_on_training_mode(model, sets):
    videos, texts = sets
    model.train()  # score_matrix must switch dropout off itself
    try:
        a = scoring.score_matrix(model, videos, texts, "exact")
    finally:
        model.eval()
    assert torch.equal(a, scoring.score_matrix(model, videos, texts, "exact"))


def test_cascade_with_large_k_equals_exact(model, sets):
    videos, texts = sets
    exact = scoring.score_matrix(model, videos, texts, "exact")
    cascade = scoring.score_matrix(model, videos, texts, "cascade", rerank_topk=max(N_TEXTS, N_VIDEOS))
    _close(cascade, exact, atol=1e-5)
    assert torch.equal(cascade.argsort(1, descending=True), exact.argsort(1, descending=True))


@pytest.mark.parametrize("k", [1, 2])
def test_cascade_small_k(model, sets, loops, k):
    videos, texts = sets
    s1, s2, s3 = loops
    base = s1 + 0.5 * s2
    got = scoring.score_matrix(model, videos, texts, "cascade", rerank_topk=k, batch_pairs=3).double()
    # shortlist by plain loops: each text's top-k videos and each video's top-k texts
    row_top = [sorted(range(N_VIDEOS), key=lambda j: -base[i, j].item())[:k] for i in range(N_TEXTS)]
    col_top = [sorted(range(N_TEXTS), key=lambda i: -base[i, j].item())[:k] for j in range(N_VIDEOS)]
    short = {(i, j) for i in range(N_TEXTS) for j in row_top[i]} | {(i, j) for j in range(N_VIDEOS) for i in col_top[j]}
    for i, j in short:
        assert got[i, j].item() == pytest.approx((base[i, j] + s3[i, j]).item(), abs=1e-4)
    reranked_min = min(got[i, j].item() for i, j in short)
    for i in range(N_TEXTS):
        rest = [j for j in range(N_VIDEOS) if (i, j) not in short]
        assert all(got[i, j] > got[i, r] for j in row_top[i] for r in rest)  # shortlisted first in the row
        assert all(got[i, r].item() < reranked_min for r in rest)  # ... and below every reranked pair
        assert sorted(rest, key=lambda j: -got[i, j].item()) == sorted(rest, key=lambda j: -base[i, j].item())
    for j in range(N_VIDEOS):
        rest = [i for i in range(N_TEXTS) if (i, j) not in short]
        assert all(got[i, j] > got[r, j] for i in col_top[j] for r in rest)
    assert len(short) < N_TEXTS * N_VIDEOS  # the check above is not vacuous


def test_unknown_scoring_raises(model, sets):
    with pytest.raises(ValueError, match="scoring"):
        scoring.score_matrix(model, *sets, "s4")


def test_fusion_score_does_not_depend_on_text_padding(model):
    gen = torch.Generator().manual_seed(5)
    features, vmask = torch.randn(1, 4, 16, generator=gen), torch.ones(1, 4, dtype=torch.bool)
    ids = torch.tensor([[101, 2023, 3000, 102]])
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1)
    zero = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        video = model.encode_video(features, vmask)
        alone = model.fusion_scores(video, model.encode_text(ids, torch.ones_like(ids)), zero, zero)
        in_batch = model.fusion_scores(video, model.encode_text(padded, (padded != 0).long()), zero, zero)
    torch.testing.assert_close(alone, in_batch, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamic", [False, True])
def test_querybank_normalise_matches_loop(dynamic):
    import math

    gen = torch.Generator().manual_seed(3)
    sim, bank = torch.randn(5, 4, generator=gen), torch.randn(9, 4, generator=gen)
    bank[:, 3] -= 5.0  # gallery item 3 is never a bank query's top-1: queries whose top-1 it is stay raw
    sim[0, 3] = 10.0
    beta = 2.0
    out = scoring.querybank_normalise(sim, bank, beta, dynamic=dynamic)
    tops = {max(range(4), key=lambda j: float(bank[b, j])) for b in range(len(bank))}
    for q in range(len(sim)):
        top = max(range(4), key=lambda j: float(sim[q, j]))
        for j in range(4):
            denom = sum(math.exp(beta * float(bank[b, j])) for b in range(len(bank)))
            want = math.exp(beta * float(sim[q, j])) / denom
            want = beta * float(sim[q, j]) if dynamic and top not in tops else math.log(want)
            assert abs(float(out[q, j]) - want) < 1e-4
