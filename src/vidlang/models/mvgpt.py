"""MV-GPT: end-to-end generative pretraining for multimodal video captioning (Seo et al., CVPR 2022).

Read top to bottom as the paper (methods.md §2):

1. Multimodal encoder: a visual encoder (VideoEncoder over stored features, or ViViT over raw
   frames, ``mvgpt.visual``), the BERT text encoder over the text input, and a joint transformer
   over ``[text; video]`` (blocks.FusionEncoder, all output tokens; §2.6.2 uses co-attention).
2. Sentence decoder (models/decoder.py) reading all encoder outputs, with the text encoder's
   WordPiece embeddings tied to its output layer.
3. Objectives (§2.3): FG  -log p(W | F, U)  (text input [CLS1] U, decoder starts with [BOS1]);
   BG  -log p(U | F, W)  ([CLS2] W, [BOS2]); MLM-D: 15% of the encoder text tokens are masked
   (in the same pass as FG/BG) and predicted from the decoder run non-causally over the encoder's
   text-stream outputs, through the tied LM head (§2.6.4); MLM-E predicts them from the encoder's
   text outputs (the Table 2 ablation). "caption" fine-tunes frames + transcript -> caption by FG.
4. Beyond the paper: self-critical sequence training (SCST, Rennie et al. 2017) for the last
   ``mvgpt.scst_steps`` of a captioning run, with a reward the task hands the model (CIDEr-D).

Special tokens use reserved ids of the BERT vocabulary, so it does not change:
[CLS1] = [unused0], [BOS1] = [unused1], [CLS2] = [unused2], [BOS2] = [unused3]; [SEP] ends a sentence.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vidlang import losses
from vidlang.data.records import CaptionBatch
from vidlang.errors import ConfigError, DataError
from vidlang.models import decoding
from vidlang.models.blocks import (
    Encoded,
    FusionEncoder,
    TextEncoder,
    VideoEncoder,
    masked_mean,
)
from vidlang.models.decoder import CaptionDecoder
from vidlang.models.vivit import ViViTEncoder

PARTS = ("fg", "bg", "mlm_d", "mlm_e")
SPECIAL_TOKENS = {"cls1": "[unused0]", "bos1": "[unused1]", "cls2": "[unused2]", "bos2": "[unused3]",
                  "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]", "pad": "[PAD]"}


def parse_objective(objective: str) -> frozenset[str]:
    """'pretrain' -> {fg, bg, mlm_d}; 'caption' -> {caption}; else a '+'-joined subset of PARTS."""
    if objective == "pretrain":
        return frozenset({"fg", "bg", "mlm_d"})
    if objective == "caption":
        return frozenset({"caption"})
    parts = frozenset(p.strip() for p in objective.split("+"))
    if not parts or not parts <= set(PARTS) or {"mlm_d", "mlm_e"} <= parts:
        raise ConfigError(f"mvgpt.objective={objective!r}: use 'pretrain', 'caption' or a '+'-joined set of "
                          f"{', '.join(PARTS)} (at most one of mlm_d, mlm_e)")
    return parts


def _with_first(ids: torch.Tensor, token: int) -> torch.Tensor:
    out = ids.clone()
    out[:, 0] = token
    return out


def _pad(t: torch.Tensor, length: int, value=0) -> torch.Tensor:
    return F.pad(t, (0, length - t.shape[1]), value=value)


class MVGPT(nn.Module):
    def __init__(self, cfg, video_dim: int, load_text_weights: bool = True):
        """``cfg``: a vidlang Config (its ``model`` and ``mvgpt`` sections)."""
        super().__init__()
        m, g, d = cfg.model, cfg.mvgpt, cfg.decode
        self.cfg, self.video_dim = cfg, video_dim
        self.parts = parse_objective(g.objective)
        if g.output_vocab not in ("full", "train"):
            raise ConfigError(f"mvgpt.output_vocab must be 'full' or 'train', not {g.output_vocab!r}")
        if not 0.0 <= g.label_smoothing < 1.0:
            raise ConfigError(f"mvgpt.label_smoothing must be in [0, 1), got {g.label_smoothing}")
        if not 0.0 <= g.mask_prob <= 1.0:
            raise ConfigError(f"mvgpt.mask_prob must be in [0, 1], got {g.mask_prob}")
        decoding.check_settings("greedy" if d.method == "rerank" else d.method, d.max_len, d.beam_size, d.top_p, d.temperature, d.no_repeat_ngram)
        self.ids = self._special_ids(m.text_encoder)

        # 1. multimodal encoder
        self.text = TextEncoder(m.text_encoder, m.width or None, m.text_trainable_layers, not load_text_weights,
                                m.text_pooling)
        self.width = width = self.text.width
        if g.visual == "features":
            self.visual = VideoEncoder(video_dim, width, m.video_layers, m.video_heads, m.max_video_positions, m.dropout)
        elif g.visual == "vivit":
            self.visual = ViViTEncoder(g.frame_size, g.tubelet_time, g.tubelet_size, width, g.vivit_spatial_layers,
                                       g.vivit_temporal_layers, m.video_heads, m.max_video_positions, m.dropout)
            self.visual.check_dim(video_dim)
        else:
            raise ConfigError(f"mvgpt.visual must be 'features' or 'vivit', not {g.visual!r}")
        text_positions = max(m.max_text_positions, g.max_target_len)
        self.fusion = FusionEncoder(width, m.fusion_layers, m.fusion_heads, m.max_video_positions + text_positions,
                                    m.dropout)
        # 2. decoder, tied to the text encoder's word embeddings
        self.decoder = CaptionDecoder(self.text.bert.get_input_embeddings(), width, g.decoder_layers, g.decoder_heads,
                                      max(text_positions, d.max_len + 1), m.dropout)
        # MLM-E's transform before the tied head (BERT's MLM head); kept in every model so checkpoints match
        self.mlm_e_head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
        self.visual_frozen = False
        # SCST: (clip_index (N,), sampled token ids) -> (N,) rewards, set by the task (tasks/mvgpt.py)
        self.reward: Callable[[torch.Tensor, list[list[int]]], torch.Tensor] | None = None
        self.self_critical = False
        if g.scst_steps and ("caption" not in self.parts or g.scst_steps > cfg.train.steps):
            raise ConfigError(f"mvgpt.scst_steps={g.scst_steps} needs mvgpt.objective=caption and at most "
                              f"train.steps ({cfg.train.steps}) steps")
        if g.scst_baseline == "mean" and g.scst_samples < 2:
            raise ConfigError("mvgpt.scst_baseline=mean needs mvgpt.scst_samples >= 2 (the other samples' mean)")

    @staticmethod
    def _special_ids(text_encoder: str) -> dict[str, int]:
        from vidlang.text.pretrained import load_tokenizer

        tok = load_tokenizer(text_encoder)
        ids = {k: tok.convert_tokens_to_ids(v) for k, v in SPECIAL_TOKENS.items()}
        missing = [SPECIAL_TOKENS[k] for k, i in ids.items() if i is None or i == tok.unk_token_id]
        if missing:
            raise ConfigError(f"the vocabulary of {text_encoder!r} lacks {missing} (MV-GPT needs a BERT WordPiece vocab)")
        return ids

    # -- the freeze schedule (§2.4 †) -------------------------------------------------------------
    def set_step(self, step: int) -> None:
        """Call before each training step: the visual encoder is frozen (no gradient, eval mode, so
        the optimizer skips it) while ``step < mvgpt.freeze_visual_steps``, then trained."""
        self.visual_frozen = step < self.cfg.mvgpt.freeze_visual_steps
        scst = self.cfg.mvgpt.scst_steps
        self.self_critical = scst > 0 and step >= self.cfg.train.steps - scst
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.visual_frozen:
            self.visual.eval()
        return self

    # -- 1. the multimodal encoder ----------------------------------------------------------------
    def encode_visual(self, video: torch.Tensor, video_mask: torch.Tensor) -> Encoded:
        if self.visual_frozen:
            with torch.no_grad():
                return self.visual(video, video_mask)
        return self.visual(video, video_mask)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor, cacheable: bool = True) -> Encoded:
        """BERT over ``ids``. A frozen encoder caches outputs per token sequence; masked (random)
        inputs skip that cache (``cacheable=False``), which would otherwise grow without bound."""
        if cacheable or not self.text.frozen:
            return self.text(ids, mask)
        with torch.no_grad():
            hidden = self.text.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        tokens, real = self.text.project(hidden), mask.bool()
        return Encoded(tokens, real, tokens[:, 0] if self.text.pooling == "cls" else masked_mean(tokens, real))

    def encode(self, video: torch.Tensor, video_mask: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
               *, visual: Encoded | None = None, cacheable: bool = True, first_token: str | None = "cls1") -> Encoded:
        """All multimodal-encoder outputs ``[text; video]``; pooled = the output at the text's first
        token ([CLS1] by default: ``text_ids`` start with [CLS], replaced by ``first_token``)."""
        if first_token is not None:
            self._check_cls(text_ids, "text")
            text_ids = _with_first(text_ids, self.ids[first_token])
        visual = visual if visual is not None else self.encode_visual(video, video_mask)
        return self.fusion.fuse(self.encode_text(text_ids, text_mask, cacheable), visual)

    def _check_cls(self, ids: torch.Tensor, what: str, video_ids=()) -> None:
        bad = (ids[:, 0] != self.ids["cls"]).nonzero().flatten().tolist()
        if bad:
            names = [video_ids[i] for i in bad[:5]] if video_ids else bad[:5]
            raise DataError(f"{what} token ids must start with [CLS] ({self.ids['cls']}); rows {names} do not")

    # -- 3. the objectives ------------------------------------------------------------------------
    def _teacher(self, ids: torch.Tensor, mask: torch.Tensor, bos: str):
        """Decoder input ([BOSx] w_1 .. w_n) and labels (w_1 .. w_n [SEP]) of '[CLS] w_1 .. w_n [SEP]'."""
        return _with_first(ids[:, :-1], self.ids[bos]), ids[:, 1:], mask[:, 1:]

    def warm_text_cache(self, transcripts: list[list[int]], targets: list[list[int]]) -> int:
        """Fill a frozen text encoder's cache with the encoder inputs these texts give ([CLS1] +
        transcript; in pretraining with BG also [CLS2] + target) in one canonical batching
        (TextEncoder.warm_cache). Masked (MLM) inputs are never cached: nothing to warm then."""
        if self.parts & {"mlm_d", "mlm_e"}:
            return 0
        inputs = [[self.ids["cls1"], *t[1:]] for t in transcripts]
        if "bg" in self.parts:
            inputs += [[self.ids["cls2"], *t[1:]] for t in targets]
        return self.text.warm_cache(inputs)

    def pretrained_text_parameters(self):
        """The pretrained text encoder's weights (the optimizer gives them ``train.text_lr``)."""
        return self.text.bert.parameters()

    def forward(self, batch: CaptionBatch, generator: torch.Generator | None = None) -> dict:
        """Losses of ``mvgpt.objective`` on a batch; ``out["loss"]`` (= ``out["objective"]``) is their
        weighted sum. ``generator`` draws the MLM masks (None: the global RNG)."""
        g = self.cfg.mvgpt
        names = list(batch.video_ids)
        self._check_cls(batch.transcript_ids, "transcript", names)
        self._check_cls(batch.target_ids, "target", names)
        visual = self.encode_visual(batch.video, batch.video_mask)
        if "caption" in self.parts:  # fine-tuning: frames (+ transcript) -> caption, the FG path
            ids, mask = batch.transcript_ids, batch.transcript_mask
            if not g.use_transcript:  # '[CLS] [SEP]': video only
                ids, mask = ids[:, :2].clone(), torch.ones_like(mask[:, :2])
                ids[:, 1] = self.ids["sep"]
            memory = self.encode(None, None, ids, mask, visual=visual)
            if self.self_critical and self.training:  # validation keeps the cross-entropy loss
                out = self._self_critical(batch, memory, generator)
                if g.scst_xe_weight:  # a mixed objective (Paulus et al. 2018): SCST + w * cross-entropy
                    out["caption"] = self._caption_loss(batch, memory)
                    out["loss"] = out["objective"] = out["scst"] + g.scst_xe_weight * out["caption"]
                return out
            loss = self._caption_loss(batch, memory)
            return {"caption": loss, "loss": loss, "objective": loss}

        # pretraining: FG reads (F, U) and writes W; BG reads (F, W) and writes U
        passes = []
        if "fg" in self.parts or "bg" not in self.parts:  # MLM alone reads U, as FG does
            passes.append(("cls1", "bos1", batch.transcript_ids, batch.transcript_mask, batch.target_ids,
                           batch.target_mask))
        if "bg" in self.parts:
            passes.append(("cls2", "bos2", batch.target_ids, batch.target_mask, batch.transcript_ids,
                           batch.transcript_mask))
        text_len = max(p[2].shape[1] for p in passes)
        text_ids = torch.cat([_pad(_with_first(p[2], self.ids[p[0]]), text_len) for p in passes])
        text_mask = torch.cat([_pad(p[3], text_len) for p in passes])
        mlm = "mlm_d" in self.parts or "mlm_e" in self.parts
        if mlm:  # masked in the same pass as FG/BG (§2.6.4)
            special = [self.ids[k] for k in ("cls1", "cls2", "bos1", "bos2", "cls", "sep", "mask", "pad")]
            text_ids, mlm_labels = losses.mask_tokens(text_ids, text_mask, g.mask_prob, generator, special,
                                                      self.ids["mask"], self.decoder.vocab_size, g.mask_bert_style)
        n = len(passes)
        visual_n = Encoded(*(t.repeat(n, *[1] * (t.dim() - 1)) for t in (visual.tokens, visual.mask, visual.pooled)))
        memory = self.fusion.fuse(self.encode_text(text_ids, text_mask, cacheable=not mlm), visual_n)

        out: dict[str, torch.Tensor] = {}
        total = memory.tokens.new_zeros(())
        if "fg" in self.parts or "bg" in self.parts:
            dec_len = max(p[4].shape[1] for p in passes) - 1
            teach = [self._teacher(p[4], p[5], p[1]) for p in passes]
            dec_in = torch.cat([_pad(t[0], dec_len) for t in teach])
            labels = torch.cat([_pad(t[1], dec_len) for t in teach])
            label_mask = torch.cat([_pad(t[2], dec_len) for t in teach])
            real = label_mask.bool()
            logits, _ = self.decoder(dec_in, memory, only=real)  # (real target tokens, V)
            row_of = torch.arange(len(real), device=real.device)[:, None].expand_as(real)[real]
            targets = self.decoder.output_targets(labels[real])
            b = len(batch)
            for i, (name, weight) in enumerate(self._generation_parts()):
                rows = (row_of >= i * b) & (row_of < (i + 1) * b)
                out[name] = losses.caption_loss(logits[rows], targets[rows], targets[rows] != losses.IGNORE)  # L_FG / L_BG
                total = total + weight * out[name]
        if mlm:
            text_out = memory.tokens[:, :text_len]
            chosen = mlm_labels != losses.IGNORE  # logits of the masked positions only
            if "mlm_d" in self.parts:  # the decoder, non-causal, over the encoder's text outputs
                mlm_logits, _ = self.decoder(None, memory, inputs_embeds=text_out, causal=False, padding_mask=text_mask,
                                             only=chosen)
            else:
                mlm_logits = self.decoder.lm_logits(self.mlm_e_head(text_out)[chosen], subset=True)
            name = "mlm_d" if "mlm_d" in self.parts else "mlm_e"
            out[name] = losses.masked_lm_loss(mlm_logits, self.decoder.output_targets(mlm_labels[chosen]))
            out["mlm_tokens"] = int((mlm_labels != losses.IGNORE).sum())
            total = total + g.mlm_weight * out[name]
        out["loss"] = out["objective"] = total
        return out

    def _never_generated(self) -> list[int]:
        """Special tokens a caption never holds (the end token [SEP] is allowed)."""
        return [self.ids[k] for k in ("pad", "cls", "mask", "cls1", "bos1", "cls2", "bos2")]

    def _caption_loss(self, batch: CaptionBatch, memory: Encoded) -> torch.Tensor:
        """L_FG of the batch's captions (teacher-forced cross-entropy, optionally label-smoothed)."""
        dec_in, labels, label_mask = self._teacher(batch.target_ids, batch.target_mask, "bos1")
        logits, _ = self.decoder(dec_in, memory, only=label_mask)
        targets = self.decoder.output_targets(labels[label_mask.bool()])
        return losses.caption_loss(logits, targets, targets != losses.IGNORE, self.cfg.mvgpt.label_smoothing)

    def _self_critical(self, batch: CaptionBatch, memory: Encoded, generator: torch.Generator | None) -> dict:
        """SCST: ``scst_samples`` captions sampled per clip (decoder without dropout, temperature 1) are
        rewarded by ``self.reward``; the baseline is the greedy caption's reward (Rennie et al.) or the
        mean of the clip's other samples (``scst_baseline=mean``, Luo 2020). The samples' log-probabilities
        are then computed with gradients, teacher-forced (losses.self_critical_loss)."""
        g, max_len = self.cfg.mvgpt, self.cfg.decode.max_len
        if self.reward is None or batch.clip_index is None:
            raise ConfigError("mvgpt.scst_steps needs the training clips' references (annotated clips, not data.shards)")
        k, bos, eos = g.scst_samples, self.ids["bos1"], self.ids["sep"]
        banned = self._never_generated()
        fixed = Encoded(memory.tokens.detach(), memory.mask, memory.pooled.detach())
        was_training = self.decoder.training
        self.decoder.eval()
        samples = decoding.nucleus(self.decoder, decoding.repeat_memory(fixed, k), bos, eos, max_len, top_p=1.0,
                                   generator=generator, banned=banned)
        greedy = decoding.greedy(self.decoder, fixed, bos, eos, max_len, banned=banned) if g.scst_baseline == "greedy" else None
        self.decoder.train(was_training)
        clips = batch.clip_index.repeat_interleave(k)
        rewards = self.reward(clips, samples).to(memory.tokens.device)
        if greedy is not None:
            baseline = self.reward(batch.clip_index, greedy).to(rewards.device).repeat_interleave(k)
        else:
            per_clip = rewards.view(-1, k)
            baseline = ((per_clip.sum(1, keepdim=True) - per_clip) / (k - 1)).flatten()
        # teacher-forced log p of each sample: input [BOS1] w_1..w_n, labels w_1..w_n [SEP] (no [SEP] if cut at max_len)
        labels = [s + [eos] if len(s) < max_len else s for s in samples]
        width = max(len(t) for t in labels)
        label_ids = torch.tensor([t + [0] * (width - len(t)) for t in labels], device=rewards.device)
        real = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in labels], device=rewards.device).bool()
        dec_in = torch.cat([torch.full_like(label_ids[:, :1], bos), label_ids[:, :-1]], 1)
        logits, _ = self.decoder(dec_in, decoding.repeat_memory(memory, k), only=real)
        token_logp = torch.log_softmax(logits.float(), -1).gather(1, self.decoder.output_targets(label_ids[real])[:, None])
        rows = torch.arange(len(labels), device=real.device)[:, None].expand_as(real)[real]
        seq_logp = token_logp.new_zeros(len(labels)).index_add(0, rows, token_logp.squeeze(1))
        loss = losses.self_critical_loss(seq_logp, rewards, baseline)
        return {"scst": loss, "reward": rewards.mean(), "loss": loss, "objective": loss}

    def _generation_parts(self) -> list[tuple[str, float]]:
        g = self.cfg.mvgpt
        parts = [("fg", g.fg_weight)] if "fg" in self.parts else []
        return parts + ([("bg", g.bg_weight)] if "bg" in self.parts else [])

    # -- captioning -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, video: torch.Tensor, video_mask: torch.Tensor, transcript_ids: torch.Tensor,
                 transcript_mask: torch.Tensor, *, method: str | None = None, generator: torch.Generator | None = None,
                 use_cache: bool = True, **settings) -> list[list[int]]:
        """Caption each clip by the FG path: [CLS1] transcript + frames -> [BOS1] ... [SEP].

        ``method`` and the ``settings`` (max_len, beam_size, length_penalty, no_repeat_ngram, top_p,
        temperature) default to the ``decode`` config. Returns WordPiece ids without [BOS1] and [SEP].
        Call ``model.eval()`` first (dropout stays on in training mode).
        """
        g, d = self.cfg.mvgpt, self.cfg.decode
        method = method or d.method
        if method == "rerank":  # several decodings and the training captions: evaluation/caption_rerank.py
            raise ConfigError("decode.method=rerank is done by vidlang.caption / generate_captions, not MVGPT.generate")
        if not g.use_transcript:
            transcript_ids = torch.tensor([[self.ids["cls"], self.ids["sep"]]], device=video.device).expand(len(video), 2)
            transcript_mask = torch.ones_like(transcript_ids)
        memory = self.encode(video, video_mask, transcript_ids, transcript_mask)
        common = {"max_len": settings.pop("max_len", d.max_len),
                  "no_repeat_ngram": settings.pop("no_repeat_ngram", d.no_repeat_ngram)}
        if method == "beam":
            common |= {"beam_size": settings.pop("beam_size", d.beam_size),
                       "length_penalty": settings.pop("length_penalty", d.length_penalty)}
        elif method == "nucleus":
            common |= {"top_p": settings.pop("top_p", d.top_p), "temperature": settings.pop("temperature", d.temperature),
                       "generator": generator}
        if settings:
            raise ConfigError(f"decoding settings {sorted(settings)} do not apply to method {method!r}")
        return decoding.generate(self.decoder, memory, self.ids["bos1"], self.ids["sep"], method,
                                 banned=self._never_generated(), use_cache=use_cache, **common)
