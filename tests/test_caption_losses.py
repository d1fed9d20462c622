"""MV-GPT losses against plain loops: token cross-entropy, MLM, BERT masking, and FG / BG / MLM-D /
MLM-E computed by the model on a tiny batch against a loop over items and positions."""
from __future__ import annotations

import math

import pytest
import torch

from vidlang import losses
from vidlang.config import load_config
from vidlang.data.records import CaptionBatch

TINY = ["task=mvgpt", "model.width=32", "model.video_heads=2", "model.fusion_heads=2", "model.fusion_layers=1",
        "model.text_trainable_layers=0", "model.dropout=0", "mvgpt.decoder_layers=2", "mvgpt.decoder_heads=2",
        "mvgpt.mask_prob=0.5"]


def nll(logits_row: torch.Tensor, target: int) -> float:
    """-log softmax(logits)[target], from the definition."""
    m = max(logits_row.tolist())
    z = sum(math.exp(v - m) for v in logits_row.tolist())
    return -(logits_row[target].item() - m - math.log(z))


# ----------------------------------------------------------------------------- pure functions
def test_caption_loss_matches_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    targets = torch.randint(0, 11, (3, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    terms = [nll(logits[b, t], int(targets[b, t])) for b in range(3) for t in range(5) if mask[b, t]]
    assert losses.caption_loss(logits, targets, mask).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    empty = losses.caption_loss(logits.requires_grad_(), targets, torch.zeros_like(mask))
    assert empty.item() == 0.0 and torch.isfinite(empty)
    empty.backward()  # differentiable even with no target token


def test_caption_loss_label_smoothing_matches_loop():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 7, generator=g)
    targets = torch.randint(0, 7, (2, 4), generator=g)
    targets[1, 3] = losses.IGNORE  # an id outside the output vocabulary: masked out, as MVGPT passes it
    mask = targets != losses.IGNORE
    eps = 0.2
    terms = []
    for b in range(2):
        for t in range(4):
            if mask[b, t]:
                uniform = sum(nll(logits[b, t], c) for c in range(7)) / 7
                terms.append((1 - eps) * nll(logits[b, t], int(targets[b, t])) + eps * uniform)
    got = losses.caption_loss(logits, targets, mask, label_smoothing=eps)
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert losses.caption_loss(logits, targets, mask, 0.0).item() == pytest.approx(
        sum(nll(logits[b, t], int(targets[b, t])) for b in range(2) for t in range(4) if mask[b, t]) / 7, rel=1e-5)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.caption_loss(logits, targets, mask, label_smoothing=1.0)


def test_masked_lm_loss_matches_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 9, generator=g)
    labels = torch.full((2, 6), losses.IGNORE)
    labels[0, 1], labels[0, 4], labels[1, 5] = 3, 8, 0
    expected = (nll(logits[0, 1], 3) + nll(logits[0, 4], 8) + nll(logits[1, 5], 0)) / 3
    assert losses.masked_lm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    assert losses.masked_lm_loss(logits, torch.full((2, 6), losses.IGNORE)).item() == 0.0


def test_mask_tokens_respects_specials_padding_and_rates():
    n, length = 400, 50
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1000, 2000, (n, length), generator=g)
    ids[:, 0], ids[:, 10] = 101, 102  # specials
    mask = torch.ones(n, length, dtype=torch.long)
    mask[:, 40:] = 0  # padding
    masked, labels = losses.mask_tokens(ids, mask, 0.15, torch.Generator().manual_seed(3), [101, 102], 103, 30522)
    chosen = labels != losses.IGNORE
    assert not chosen[:, 0].any() and not chosen[:, 10].any() and not chosen[:, 40:].any()
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the originals
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes
    candidates = n * 38
    assert abs(chosen.sum().item() / candidates - 0.15) < 0.01
    as_mask = (masked[chosen] == 103).float().mean().item()
    kept = (masked[chosen] == ids[chosen]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.03  # 80 / 10 / 10
    again, labels2 = losses.mask_tokens(ids, mask, 0.15, torch.Generator().manual_seed(3), [101, 102], 103, 30522)
    assert torch.equal(again, masked) and torch.equal(labels2, labels)  # seeded: reproducible
    plain, labels3 = losses.mask_tokens(ids, mask, 0.15, torch.Generator().manual_seed(3), [101, 102], 103, 30522,
                                        bert_style=False)
    assert torch.equal(labels3, labels) and (plain[chosen] == 103).all()


# ----------------------------------------------------------------------------- via the model
@pytest.fixture(scope="module")
def model():
    from vidlang.models.mvgpt import MVGPT

    torch.manual_seed(0)
    return MVGPT(load_config(None, TINY), video_dim=8).eval()


@pytest.fixture(scope="module")
def batch() -> CaptionBatch:
    g = torch.Generator().manual_seed(5)
    transcripts = [[101, 1037, 2158, 25609, 1037, 20856, 102], [101, 1996, 3899, 102], [101, 102]]
    targets = [[101, 2009, 2003, 2204, 102], [101, 3899, 102], [101, 1037, 2158, 2003, 4133, 2182, 102]]

    def pad(rows):
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        return ids, (ids != 0).long()

    frames = [6, 3, 5]
    video = torch.zeros(3, 6, 8)
    video_mask = torch.zeros(3, 6, dtype=torch.bool)
    for i, t in enumerate(frames):
        video[i, :t] = torch.randn(t, 8, generator=g)
        video_mask[i, :t] = True
    (ti, tm), (gi, gm) = pad(transcripts), pad(targets)
    return CaptionBatch(video, video_mask, ti, tm, gi, gm, video_ids=["a", "b", "c"])


def _set_objective(model, objective: str):
    from vidlang.models.mvgpt import parse_objective

    model.cfg.mvgpt.objective = objective
    model.parts = parse_objective(objective)


def _item(batch: CaptionBatch, i: int):
    """Item i alone, padding removed."""
    t = int(batch.video_mask[i].sum())
    u = batch.transcript_ids[i, : int(batch.transcript_mask[i].sum())][None]
    w = batch.target_ids[i, : int(batch.target_mask[i].sum())][None]
    return batch.video[i : i + 1, :t], batch.video_mask[i : i + 1, :t], u, w


def _generation_loop(model, batch, direction: str, smoothing: float = 0.0) -> float:
    """-log p(target | frames, text) token by token: one item, one prefix at a time, no cache
    (with ``smoothing`` e: (1 - e) of it plus e times the mean of -log p over the vocabulary)."""
    ids = model.ids
    terms = []
    for i in range(len(batch)):
        video, vmask, u, w = _item(batch, i)
        text, target, cls, bos = (u, w, "cls1", "bos1") if direction == "fg" else (w, u, "cls2", "bos2")
        memory = model.encode(video, vmask, text, torch.ones_like(text), first_token=cls)
        for j in range(1, target.shape[1]):  # predict target[j] from [BOS] target[1:j]
            prefix = torch.cat([torch.tensor([[ids[bos]]]), target[:, 1:j]], 1)
            logits, _ = model.decoder(prefix, memory)
            row = logits[0, -1].double()
            uniform = float(torch.logsumexp(row, 0) - row.mean())  # mean_c -log p(c)
            terms.append((1 - smoothing) * nll(logits[0, -1], int(target[0, j])) + smoothing * uniform)
    return sum(terms) / len(terms)


@torch.no_grad()
def test_fg_and_bg_match_a_loop_over_items_and_positions(model, batch):
    _set_objective(model, "fg+bg")
    out = model(batch)
    assert set(out) == {"fg", "bg", "loss", "objective"}
    assert out["fg"].item() == pytest.approx(_generation_loop(model, batch, "fg"), rel=1e-4)
    assert out["bg"].item() == pytest.approx(_generation_loop(model, batch, "bg"), rel=1e-4)
    assert out["loss"].item() == pytest.approx(out["fg"].item() + out["bg"].item(), rel=1e-6)


def _bert_masking(ids, attention, prob, seed, never, mask_id, vocab):
    """BERT masking token by token, written here (not losses.mask_tokens): a real token outside
    ``never`` is chosen when its first uniform draw is < prob; a chosen token becomes [MASK] when the
    second draw is < 0.8, else a random id (third draw < 0.5; id = floor(fourth draw * vocab)), else
    stays. The draws are one (4, rows, width) uniform tensor from a CPU generator seeded ``seed``."""
    draws = torch.rand((4, *ids.shape), generator=torch.Generator().manual_seed(seed))
    masked, labels = ids.clone(), torch.full_like(ids, losses.IGNORE)
    for r in range(ids.shape[0]):
        for p in range(ids.shape[1]):
            token = int(ids[r, p])
            if not attention[r, p] or token in never or draws[0, r, p] >= prob:
                continue
            labels[r, p] = token
            if draws[1, r, p] < 0.8:
                masked[r, p] = mask_id
            elif draws[2, r, p] < 0.5:
                masked[r, p] = min(int(draws[3, r, p] * vocab), vocab - 1)
    return masked, labels


def _mlm_loop(model, batch, seed: int, decoder_side: bool, directions: tuple[str, ...]) -> tuple[float, int, int]:
    """Masks drawn from the same uniform draws as the model's (texts of the FG rows, then BG rows,
    padded to one width) by ``_bert_masking``, then item by item: the encoder over the masked text, the prediction at each masked position."""
    ids, b = model.ids, len(batch)
    texts = []
    for d in directions:
        src, src_mask = (batch.transcript_ids, batch.transcript_mask) if d == "fg" else (batch.target_ids, batch.target_mask)
        texts.append((src, src_mask, "cls1" if d == "fg" else "cls2"))
    width = max(t[0].shape[1] for t in texts)
    stacked = torch.cat([torch.nn.functional.pad(t[0], (0, width - t[0].shape[1])) for t in texts])
    stacked_mask = torch.cat([torch.nn.functional.pad(t[1], (0, width - t[1].shape[1])) for t in texts])
    for k, t in enumerate(texts):
        stacked[k * b : (k + 1) * b, 0] = ids[t[2]]
    assert (ids["pad"], ids["cls"], ids["sep"], ids["mask"]) == (0, 101, 102, 103)  # BERT's WordPiece vocabulary
    never = {0, 101, 102, 103} | {ids[k] for k in ("cls1", "cls2", "bos1", "bos2")}
    masked, labels = _bert_masking(stacked, stacked_mask, model.cfg.mvgpt.mask_prob, seed, never, 103, 30522)
    terms = []
    for row in range(len(stacked)):
        video, vmask, _, _ = _item(batch, row % b)
        n = int(stacked_mask[row].sum())
        text = masked[row : row + 1, :n]
        memory = model.encode(video, vmask, text, torch.ones_like(text), cacheable=False, first_token=None)
        text_out = memory.tokens[:, :n]
        if decoder_side:
            logits, _ = model.decoder(None, memory, inputs_embeds=text_out, causal=False)
        else:
            logits = model.decoder.lm_logits(model.mlm_e_head(text_out))
        for p in range(n):
            if labels[row, p] != losses.IGNORE:
                terms.append(nll(logits[0, p], int(labels[row, p])))
    padded_rows = int(((labels != losses.IGNORE).any(1) & (stacked_mask == 0).any(1)).sum())
    return sum(terms) / len(terms), len(terms), padded_rows


@torch.no_grad()
def test_mlm_d_matches_a_loop(model, batch):
    _set_objective(model, "pretrain")
    out = model(batch, torch.Generator().manual_seed(13))
    expected, count, padded_rows = _mlm_loop(model, batch, 13, decoder_side=True, directions=("fg", "bg"))
    assert count > 3 and out["mlm_tokens"] == count and padded_rows >= 2  # padding must not leak in
    assert out["mlm_d"].item() == pytest.approx(expected, rel=1e-4)
    # FG/BG read the same masked text (one pass, §2.6.4): the loss differs from the unmasked one
    _set_objective(model, "fg+bg")
    assert out["fg"].item() != pytest.approx(model(batch)["fg"].item(), rel=1e-6)


@torch.no_grad()
def test_mlm_e_matches_a_loop(model, batch):
    _set_objective(model, "mlm_e")
    out = model(batch, torch.Generator().manual_seed(13))
    expected, count, padded_rows = _mlm_loop(model, batch, 13, decoder_side=False, directions=("fg",))
    assert padded_rows == 1
    assert set(out) == {"mlm_e", "mlm_tokens", "loss", "objective"} and out["mlm_tokens"] == count
    assert out["mlm_e"].item() == pytest.approx(expected, rel=1e-4)


@torch.no_grad()
def test_caption_objective_is_fg_with_the_transcript(model, batch):
    _set_objective(model, "caption")
    out = model(batch)
    assert set(out) == {"caption", "loss", "objective"}
    assert out["caption"].item() == pytest.approx(_generation_loop(model, batch, "fg"), rel=1e-4)


@torch.no_grad()
def test_caption_objective_applies_label_smoothing(model, batch):
    _set_objective(model, "caption")
    model.cfg.mvgpt.label_smoothing = 0.1
    try:
        out = model(batch)
    finally:
        model.cfg.mvgpt.label_smoothing = 0.0
    assert out["caption"].item() == pytest.approx(_generation_loop(model, batch, "fg", smoothing=0.1), rel=1e-4)
    assert abs(out["caption"].item() - _generation_loop(model, batch, "fg")) > 1e-3  # near-uniform at init: small
