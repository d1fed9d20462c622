"""Open-ended VideoQA as a task: MV-GPT's encoder over frames + question, a classifier over the K most
frequent training answers (``probe.num_answers``), accuracy as ActivityNet-QA's official script defines it.

Data: ``data.annotations`` is a task world's ``world.json`` (its ``qa``: question, answer, type and the
span it asks about, whose frames the model reads); splits select videos as in any recipe. Accuracy is
exact match over every question of the split (answers outside the vocabulary count wrong), overall and per
question type, beside the answer-prior baselines chosen on the training answers: the most frequent
answer, and the most frequent answer of the question's type.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from vidlang import checkpoint as ckpt
from vidlang.config import Config
from vidlang.data.dataset import cut_segment, encode_caption, pad_videos, sample_frames
from vidlang.data.narration import _pad
from vidlang.data.qa import QAPair, answer_indices, build_answer_vocab
from vidlang.data.records import TensorBatch
from vidlang.data.sources import Source, split_clips
from vidlang.errors import ConfigError, DataError
from vidlang.evaluation.protocol import held_out
from vidlang.evaluation.qa import answers_from_logits, qa_accuracy
from vidlang.models.loading import model_from_checkpoint
from vidlang.models.qa_head import VideoQAModel
from vidlang.tasks.base import Experiment, Task, experiment_manifest
from vidlang.tasks.segmentation import (
    encoder_source,
    load_encoder_weights,
    open_world,
    scored_videos,
)


@dataclass
class QABatch(TensorBatch):
    video: torch.Tensor
    video_mask: torch.Tensor
    question_ids: torch.Tensor
    question_mask: torch.Tensor
    labels: torch.Tensor  # answer index, -1 outside the vocabulary
    question_ids_str: list[str] = field(default_factory=list)


class QuestionSet(torch.utils.data.Dataset):
    """One item per question: the frames of the span it asks about (the whole video without one)."""

    def __init__(self, world, store, video_ids, tokenizer, vocab: list[str], max_frames: int, max_words: int):
        keep = set(video_ids)
        self.records = [q for q in world.qa if q["video_id"] in keep]
        if not self.records:
            raise DataError(f"{world.path}: no question about the {len(keep)} videos of this split")
        missing = sorted({q["video_id"] for q in self.records} - {v for v in keep if v in store})
        if missing:
            raise DataError(f"videos {missing[:3]} of {world.path} are not in the feature store")
        self.pairs = [QAPair(q["question_id"], q["video_id"], q["question"], q["answer"], q["type"]) for q in self.records]
        self.labels = answer_indices([q["answer"] for q in self.records], vocab)
        self.store, self.tokenizer, self.max_frames, self.max_words = store, tokenizer, max_frames, max_words
        self.videos = sorted(keep)
        self.clip_video = list(range(len(self.records)))  # every question its own "video" for the batch sampler
        self.clips, self.skipped = [], Counter()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        q = self.records[i]
        frames = cut_segment(self.store[q["video_id"]], q.get("start"), q.get("end"), self.store.fps, q["video_id"])
        video = torch.from_numpy(np.ascontiguousarray(sample_frames(frames, self.max_frames), dtype=np.float32))
        ids = torch.tensor(encode_caption(self.tokenizer, q["question"], self.max_words)["input_ids"])
        return {"video": video, "question": ids, "label": int(self.labels[i]), "video_id": q["video_id"],
                "question_id": q["question_id"]}


def collate_questions(items: list[dict]) -> QABatch:
    video, mask = pad_videos(items)
    ids, qmask = _pad([it["question"] for it in items])
    return QABatch(video, mask, ids, qmask, torch.tensor([it["label"] for it in items]),
                   [it["question_id"] for it in items])


def answer_priors(pairs: list[QAPair]) -> dict:
    """The most frequent training answer, overall and per question type (ties: alphabetical)."""
    top = lambda answers: build_answer_vocab(answers, 1)[0]
    types = sorted({str(p.qtype) for p in pairs})
    return {"overall": top([p.answer for p in pairs]),
            "per_type": {t: top([p.answer for p in pairs if str(p.qtype) == t]) for t in types}}


def build_experiment(cfg: Config) -> Experiment:
    from vidlang.text.pretrained import load_tokenizer

    p = cfg.probe
    if p.encoder != "mvgpt":
        raise ConfigError(f"videoqa reads MV-GPT's encoder: set probe.encoder=mvgpt (not {p.encoder!r}) and "
                          "probe.encoder_from")
    world, store = open_world(cfg)
    source = Source(store, world.clips())
    splits = split_clips(source, cfg.data, cfg.train.seed)
    folder, encoder_config = encoder_source(cfg)
    tokenizer = load_tokenizer(encoder_config["model"]["text_encoder"])
    train_ids = sorted({c.video_id for c in splits.train})
    train_pairs = world.qa_pairs(train_ids)
    vocab = build_answer_vocab([q.answer for q in train_pairs], p.num_answers)
    make = lambda clips: QuestionSet(world, store, sorted({c.video_id for c in clips}), tokenizer, vocab,
                                     cfg.data.max_frames, cfg.data.max_words) if clips else None
    train_set, val_set, test_set = make(splits.train), make(splits.validation), make(splits.test)
    for ds, clips in ((train_set, splits.train), (val_set, splits.validation), (test_set, splits.test)):
        if ds is not None:
            ds.clips = clips
    encoder_meta = ckpt.read_meta(folder)
    torch.manual_seed(cfg.train.seed)
    model = VideoQAModel(store.dim, len(vocab), encoder_config, encoder_meta.get("output_vocab"), p.hidden, p.dropout,
                         p.finetune)
    load_encoder_weights(model, folder)
    model.meta["priors"] = answer_priors(train_pairs)  # chosen on training answers
    model.meta["answers"] = vocab
    coverage = float((train_set.labels >= 0).mean())
    meta = {"probe": model.meta, "encoder_checkpoint": str(folder), "world": str(world.path)}
    manifest = experiment_manifest(source, splits, train_set, val_set, test_set)
    return Experiment(cfg, train_set, val_set, model, manifest, collate=collate_questions, meta=meta,
                      test_set=test_set, train_ids=train_ids,
                      summary=lambda: {"answers": len(vocab), "train_answer_coverage": coverage})


@torch.no_grad()
def evaluate(model: VideoQAModel, dataset: QuestionSet, cfg: Config | None = None, device="cpu",
             distributed=None) -> dict:
    model.eval()
    vocab, preds = model.meta["answers"], {}
    for a in range(0, len(dataset), 128):
        batch = collate_questions([dataset[i] for i in range(a, min(a + 128, len(dataset)))]).to(device)
        answers = answers_from_logits(model.logits(batch).float().cpu().numpy(), vocab)
        preds.update(zip(batch.question_ids_str, answers))
    priors = model.meta["priors"]
    score = qa_accuracy(preds, dataset.pairs)
    prior = qa_accuracy({q.question_id: priors["overall"] for q in dataset.pairs}, dataset.pairs)
    type_prior = qa_accuracy({q.question_id: priors["per_type"].get(str(q.qtype), priors["overall"])
                              for q in dataset.pairs}, dataset.pairs)
    return {"accuracy": 100 * score.overall, **{f"accuracy_{t}": 100 * v for t, v in sorted(score.per_type.items())},
            "prior_accuracy": 100 * prior.overall, "type_prior_accuracy": 100 * type_prior.overall,
            "in_vocabulary": 100 * float((dataset.labels >= 0).mean()), "num_questions": score.total}


def evaluate_checkpoint(checkpoint, annotations, features, split=None, device="cpu",
                        allow_train_overlap=False) -> tuple[dict, dict]:
    from vidlang.data.features import open_store
    from vidlang.data.step_world import read_step_world
    from vidlang.text.pretrained import load_tokenizer

    folder = ckpt.find_checkpoint(checkpoint)
    model, cfg, meta = model_from_checkpoint(folder, "probe")
    if not isinstance(model, VideoQAModel):
        raise ConfigError(f"{folder} holds another task's head, not a VideoQA answer classifier")
    world, store = read_step_world(annotations), open_store(features)
    ids = scored_videos(world, store, split)
    info = held_out(folder, ids, allow_train_overlap)
    p = meta["probe"]
    tokenizer = load_tokenizer(p["encoder_config"]["model"]["text_encoder"])
    dataset = QuestionSet(world, store, ids, tokenizer, p["answers"], cfg.data.max_frames, cfg.data.max_words)
    return evaluate(model.to(device), dataset, device=device), {**info, "protocol": protocol(p["finetune"], len(p["answers"]))}


def protocol(finetune: bool, k: int) -> str:
    return (f"exact-match accuracy (ActivityNet-QA eval.py), out-of-vocabulary answers wrong; MV-GPT encoder "
            f"({'fine-tuned' if finetune else 'frozen'}) + {k}-answer classifier")


TASK = Task(
    name="videoqa",
    model="probe",
    build=build_experiment,
    forward=lambda model, batch, cfg, generator, shard: model(batch),
    log_keys=("loss",),
    evaluate=evaluate,
    show_keys=lambda cfg: ("accuracy", "prior_accuracy", "type_prior_accuracy"),
    scoring=lambda cfg: protocol(cfg.probe.finetune, cfg.probe.num_answers),
    unused_parameters=lambda cfg: True,
    score_checkpoint=evaluate_checkpoint,
)
