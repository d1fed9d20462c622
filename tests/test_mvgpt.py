"""The MV-GPT model: objectives and weights, tied embeddings and checkpoints, the freeze schedule,
generation, ViViT over raw frames, bad input, and the narration collate feeding it."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from vidlang.config import load_config
from vidlang.data.records import CaptionBatch
from vidlang.errors import ConfigError, DataError
from vidlang.models.mvgpt import MVGPT, parse_objective
from vidlang.models.vivit import ViViTEncoder

TINY = ["task=mvgpt", "model.width=32", "model.video_heads=2", "model.fusion_heads=2", "model.fusion_layers=1",
        "model.text_trainable_layers=0", "model.dropout=0", "mvgpt.decoder_layers=1", "mvgpt.decoder_heads=2",
        "decode.max_len=6"]


def tiny_cfg(*extra: str):
    return load_config(None, [*TINY, *extra])


def make_batch(dim: int = 8, steps: int = 5, seed: int = 0, video: torch.Tensor | None = None) -> CaptionBatch:
    g = torch.Generator().manual_seed(seed)
    transcripts = torch.tensor([[101, 1037, 2158, 25609, 1037, 20856, 102], [101, 1996, 3899, 102, 0, 0, 0],
                                [101, 102, 0, 0, 0, 0, 0]])
    targets = torch.tensor([[101, 2009, 2003, 2204, 102], [101, 3899, 102, 0, 0], [101, 1037, 2158, 4133, 102]])
    if video is None:
        video = torch.randn(3, steps, dim, generator=g)
    mask = torch.ones(3, video.shape[1], dtype=torch.bool)
    mask[1, -2:] = False
    video = video * mask[..., None]
    return CaptionBatch(video, mask, transcripts, (transcripts != 0).long(), targets, (targets != 0).long(),
                        video_ids=["v0", "v1", "v2"])


@pytest.fixture(scope="module")
def model() -> MVGPT:
    torch.manual_seed(0)
    return MVGPT(tiny_cfg(), video_dim=8)


def use(model: MVGPT, objective: str, **weights) -> MVGPT:
    model.cfg.mvgpt.objective = objective
    model.parts = parse_objective(objective)
    for key, value in weights.items():
        setattr(model.cfg.mvgpt, key, value)
    return model


# ----------------------------------------------------------------------------- objectives
@pytest.mark.parametrize("objective, keys", [
    ("pretrain", {"fg", "bg", "mlm_d"}), ("fg", {"fg"}), ("fg+mlm_d", {"fg", "mlm_d"}), ("mlm_e", {"mlm_e"}),
    ("fg+bg+mlm_e", {"fg", "bg", "mlm_e"}), ("caption", {"caption"}),
])
def test_each_objective_returns_its_losses(model, objective, keys):
    out = use(model, objective)(make_batch(), torch.Generator().manual_seed(0))
    assert keys <= set(out) and not ({"fg", "bg", "mlm_d", "mlm_e", "caption"} - keys) & set(out)
    assert torch.isfinite(out["loss"]) and out["loss"] is out["objective"]
    assert out["loss"].item() == pytest.approx(sum(out[k].item() for k in keys), rel=1e-5)


def test_logits_of_chosen_positions_equal_the_full_logits(model):
    b = make_batch()
    memory = model.encode(b.video, b.video_mask, b.transcript_ids, b.transcript_mask)
    ids = torch.tensor([[1, 2045, 2003, 102], [1, 2158, 102, 0], [1, 102, 0, 0]])
    full, _ = model.decoder(ids, memory)
    chosen = ids != 0
    only, _ = model.decoder(ids, memory, only=chosen)
    assert torch.allclose(only, full[chosen], atol=1e-5)


def test_output_vocabulary_restricts_training_and_decoding():
    torch.manual_seed(0)
    m = MVGPT(tiny_cfg("mvgpt.objective=caption"), video_dim=8).eval()
    b = make_batch()
    vocab = sorted(set(b.target_ids[b.target_mask.bool()].tolist()) | {2000, 2001})
    m.decoder.set_output_vocab(vocab)
    # the loss, by a plain loop: softmax over the vocabulary's columns of the full logits
    memory = m.encode(None, None, b.transcript_ids, b.transcript_mask, visual=m.encode_visual(b.video, b.video_mask))
    dec_in, labels, label_mask = m._teacher(b.target_ids, b.target_mask, "bos1")
    m.decoder.set_output_vocab(None)
    full, _ = m.decoder(dec_in, memory)
    m.decoder.set_output_vocab(vocab)
    terms = []
    for i in range(len(labels)):
        for t in range(labels.shape[1]):
            if label_mask[i, t]:
                logp = torch.log_softmax(full[i, t, vocab], -1)
                terms.append(-logp[vocab.index(int(labels[i, t]))])
    assert m(b)["caption"].item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    for method in ("greedy", "beam"):
        seqs = m.generate(b.video, b.video_mask, b.transcript_ids, b.transcript_mask, method=method)
        assert all(tok in vocab for seq in seqs for tok in seq)
    with pytest.raises(ConfigError, match="output vocabulary"):
        m.decoder.set_output_vocab([m.decoder.vocab_size])


def test_loss_weights(model):
    batch, weights = make_batch(), dict(fg_weight=2.0, bg_weight=0.5, mlm_weight=3.0)
    out = use(model, "pretrain", **weights)(batch, torch.Generator().manual_seed(1))
    use(model, "pretrain", fg_weight=1.0, bg_weight=1.0, mlm_weight=1.0)
    expected = 2.0 * out["fg"] + 0.5 * out["bg"] + 3.0 * out["mlm_d"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("objective", ["fg+fgx", "mlm_d+mlm_e", "", "captions"])
def test_bad_objective_is_a_config_error(objective):
    with pytest.raises(ConfigError, match="mvgpt.objective"):
        parse_objective(objective)


def test_special_tokens_are_reserved_bert_ids(model):
    assert [model.ids[k] for k in ("cls1", "bos1", "cls2", "bos2")] == [1, 2, 3, 4]  # [unused0..3]
    assert (model.ids["cls"], model.ids["sep"], model.ids["mask"]) == (101, 102, 103)


def test_text_must_start_with_cls(model):
    batch = make_batch()
    batch.transcript_ids[2, 0] = 1037
    with pytest.raises(DataError, match="v2"):
        use(model, "pretrain")(batch)


# ----------------------------------------------------------------------------- tying, gradients, checkpoints
def test_gradients_reach_every_part_and_embeddings_are_tied(model):
    use(model, "pretrain")
    model.zero_grad(set_to_none=True)
    model(make_batch(), torch.Generator().manual_seed(2))["loss"].backward()
    for name in ("visual.project.weight", "fusion.layers.layers.0.linear1.weight", "decoder.layers.0.qkv.weight",
                 "decoder.embed_out.weight", "decoder.out_bias", "text.project.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.decoder.embedding is model.text.bert.get_input_embeddings()
    model.zero_grad(set_to_none=True)


def test_checkpoint_holds_the_shared_embedding_once_and_round_trips(model, tmp_path):
    use(model, "caption").eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    assert sum("word_embeddings" in k for k in state) == 1
    save_file(state, str(tmp_path / "model.safetensors"))  # safetensors refuses shared tensors
    clone = MVGPT(tiny_cfg("mvgpt.objective=caption"), video_dim=8, load_text_weights=False).eval()
    clone.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    batch = make_batch()
    assert clone(batch)["loss"].item() == pytest.approx(model(batch)["loss"].item(), rel=1e-6)
    assert clone.decoder.embedding is clone.text.bert.get_input_embeddings()
    model.train()


def test_a_few_steps_fit_a_tiny_batch():
    torch.manual_seed(1)
    m = MVGPT(tiny_cfg("mvgpt.objective=caption"), video_dim=8)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    batch, history = make_batch(), []
    for _ in range(12):
        loss = m(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.7 * history[0]


def test_freeze_schedule_freezes_then_unfreezes_the_visual_encoder():
    torch.manual_seed(2)
    m = MVGPT(tiny_cfg("mvgpt.objective=fg", "mvgpt.freeze_visual_steps=2", "model.dropout=0.1"), video_dim=8).train()
    batch = make_batch()
    for step, frozen in ((0, True), (1, True), (2, False), (5, False)):
        m.zero_grad(set_to_none=True)
        m.set_step(step)
        m.train()  # the loop calls train() every step: a frozen encoder stays in eval mode
        assert m.visual_frozen is frozen and m.visual.training is not frozen and m.decoder.training
        m(batch)["loss"].backward()
        grads = [p.grad for p in m.visual.parameters()]
        assert all(g is None for g in grads) if frozen else all(g is not None for g in grads)
        assert m.decoder.layers[0].qkv.weight.grad is not None


# ----------------------------------------------------------------------------- generation
@torch.no_grad()
def test_generate_methods(model):
    model.eval()
    b = make_batch()
    args = (b.video, b.video_mask, b.transcript_ids, b.transcript_mask)
    greedy = model.generate(*args, method="greedy")
    assert len(greedy) == 3 and all(isinstance(t, int) for s in greedy for t in s)
    assert all(len(s) <= 6 for s in greedy)  # decode.max_len
    banned = {0, 1, 2, 3, 4, 101, 102, 103}
    assert not banned & {t for s in greedy for t in s}
    assert model.generate(*args, method="beam", beam_size=1) == greedy
    assert model.generate(*args, method="beam", beam_size=3) == model.generate(*args, method="beam", beam_size=3,
                                                                                use_cache=False)
    gen = lambda seed: model.generate(*args, method="nucleus", generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert gen(3) == gen(3)
    # no_repeat_ngram: the untrained model repeats words and word pairs; the constraint removes them
    def repeats(seq, n):
        grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
        return len(grams) - len(set(grams))

    plain = model.generate(*args, method="greedy", max_len=12)
    assert any(repeats(s, 1) for s in plain) and any(repeats(s, 2) for s in plain)  # the check below has work to do
    for n in (1, 2):
        for method, extra in (("greedy", {}), ("beam", {"beam_size": 3})):
            capped = model.generate(*args, method=method, max_len=12, no_repeat_ngram=n, **extra)
            assert all(len(s) <= 12 and repeats(s, n) == 0 for s in capped), (method, n)
    with pytest.raises(ConfigError, match="beam_size"):
        model.generate(*args, method="greedy", beam_size=2)
    with pytest.raises(ConfigError, match="max_len"):
        model.generate(*args, method="greedy", max_len=0)
    with pytest.raises(ConfigError, match="positions"):
        model.generate(*args, method="greedy", max_len=200)
    model.train()


@torch.no_grad()
def test_video_only_captioning_ignores_the_transcript():
    torch.manual_seed(3)
    m = MVGPT(tiny_cfg("mvgpt.use_transcript=false", "mvgpt.objective=caption"), video_dim=8).eval()
    b, other = make_batch(), make_batch()
    other.transcript_ids[0, 1:4] = torch.tensor([2000, 2001, 2002])
    assert m(b)["loss"].item() == pytest.approx(m(other)["loss"].item(), rel=1e-6)
    args = (b.video, b.video_mask)
    assert m.generate(*args, b.transcript_ids, b.transcript_mask) == m.generate(*args, other.transcript_ids,
                                                                                 other.transcript_mask)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="mvgpt.visual"):
        MVGPT(tiny_cfg("mvgpt.visual=s3d"), video_dim=8)
    with pytest.raises(ConfigError, match="top_p"):
        MVGPT(tiny_cfg("decode.top_p=0"), video_dim=8)
    with pytest.raises(ConfigError, match="decoder_heads"):
        MVGPT(tiny_cfg("mvgpt.decoder_heads=5"), video_dim=8)


# ----------------------------------------------------------------------------- ViViT
def vivit(**kw) -> ViViTEncoder:
    torch.manual_seed(0)
    args = dict(frame_size=32, tubelet_time=2, tubelet_size=8, width=32, spatial_layers=1, temporal_layers=1,
                heads=2, max_positions=16, dropout=0.0)
    return ViViTEncoder(**{**args, **kw}).eval()


@torch.no_grad()
def test_vivit_tokens_per_time_step_and_padding():
    enc = vivit()
    frames = torch.rand(2, 8, 32 * 32 * 3)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 4:] = False
    frames[1, 4:] = 0
    out = enc(frames, mask)
    assert out.tokens.shape == (2, 4, 32) and out.mask.tolist() == [[True] * 4, [True, True, False, False]]
    alone = enc(frames[1:, :4], mask[1:, :4])  # the padded clip on its own: same real tokens
    assert torch.allclose(alone.tokens[0], out.tokens[1, :2], atol=1e-5)
    assert torch.allclose(alone.pooled[0], out.pooled[1], atol=1e-5)
    odd = enc(frames[:1, :5], mask[:1, :5])  # 5 frames, t = 2: padded to 6, three tokens
    assert odd.tokens.shape == (1, 3, 32) and odd.mask.all()
    short = enc(frames[:1, :1], mask[:1, :1])  # shorter than one tubelet
    assert short.tokens.shape == (1, 1, 32) and torch.isfinite(short.tokens).all()
    frames2 = frames.clone()
    frames2[0, 0, :10] = 1 - frames2[0, 0, :10]
    assert not torch.allclose(enc(frames2, mask).tokens[0], out.tokens[0])  # pixels matter


def test_vivit_rejects_wrong_sizes():
    enc = vivit()
    with pytest.raises(ConfigError, match=r"32\*32\*3 = 3072.*got 3000"):
        enc(torch.rand(1, 4, 3000), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ConfigError, match="frame_size=30.*tubelet_size=8"):
        vivit(frame_size=30)
    with pytest.raises(ConfigError, match="max_video_positions=16"):
        enc(torch.rand(1, 40, 3072), torch.ones(1, 40, dtype=torch.bool))


def test_mvgpt_with_vivit_trains_from_raw_frames():
    cfg = tiny_cfg("mvgpt.visual=vivit", "mvgpt.objective=pretrain")
    with pytest.raises(ConfigError, match="3072"):
        MVGPT(cfg, video_dim=8)
    torch.manual_seed(4)
    m = MVGPT(cfg, video_dim=32 * 32 * 3)
    batch = make_batch(video=torch.rand(3, 8, 32 * 32 * 3))
    out = m(batch, torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and m.visual.embed.weight.grad.abs().sum() > 0
    m.eval()
    assert len(m.generate(batch.video, batch.video_mask, batch.transcript_ids, batch.transcript_mask,
                          method="greedy", max_len=3)) == 3


# ----------------------------------------------------------------------------- with the data side
def test_narration_collate_feeds_the_model(model):
    narration = pytest.importorskip("vidlang.data.narration")
    items = [{"video": torch.randn(t, 8), "transcript_ids": torch.tensor(u), "target_ids": torch.tensor(w),
              "video_id": f"v{i}", "clip_index": i}
             for i, (t, u, w) in enumerate([(4, [101, 2009, 102], [101, 2003, 2204, 102]), (2, [101, 102], [101, 3899, 102])])]
    batch = narration.collate_captions(items)
    out = use(model, "pretrain")(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
