"""The training loop: one code path, resumable exactly from any checkpoint.

    cfg = load_config("configs/taco/msrvtt-ae128.yaml", ["train.steps=2000"])
    summary = train(cfg)
"""
from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vidlang import checkpoint as ckpt
from vidlang.config import Config
from vidlang.data.dataset import UniqueVideoBatchSampler, VideoTextDataset, collate
from vidlang.data.sources import open_source
from vidlang.errors import ConfigError
from vidlang.evaluate import evaluate_retrieval
from vidlang.io import atomic_write_text
from vidlang.models.taco import TACo
from vidlang.report import git_commit
from vidlang.text.idf import TokenWeighter
from vidlang.text.pretrained import load_tokenizer


def cache_dir() -> Path:
    return Path(os.environ.get("VIDLANG_CACHE", Path.home() / ".cache" / "vidlang"))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Experiment:
    """Everything built from a config: data, tokenizer, token weighter and model."""

    cfg: Config
    train_set: VideoTextDataset
    val_set: VideoTextDataset | None
    weighter: TokenWeighter
    model: TACo
    manifest: dict


def build_experiment(cfg: Config) -> Experiment:
    source = open_source(cfg.data)
    train_clips = source.split(cfg.data.train_split or "train")
    val_clips = source.split(cfg.data.val_split) if cfg.data.val_split != "none" else []
    if not train_clips:
        raise ConfigError(f"training split '{cfg.data.train_split}' selects no clips from {cfg.data.root}")
    tokenizer = load_tokenizer(cfg.model.text_encoder)
    weighter = TokenWeighter.fit(
        [c.caption for c in train_clips], tags=cfg.loss.pos_tags, cache_path=cache_dir() / "pos_tags.json"
    )
    common = dict(max_frames=cfg.data.max_frames, max_words=cfg.data.max_words, skip_bad=cfg.data.skip_bad)
    train_set = VideoTextDataset(train_clips, source.store, tokenizer, token_weighter=weighter, **common)
    val_set = VideoTextDataset(val_clips, source.store, tokenizer, token_weighter=weighter, **common) if val_clips else None
    torch.manual_seed(cfg.train.seed)  # the seed decides the initial weights too
    model = TACo(cfg.model, source.store.dim)
    manifest = source.manifest(train=train_set.clips, validation=val_set.clips if val_set else [])
    manifest["skipped_by_dataset"] = {"train": dict(train_set.skipped), "validation": dict(val_set.skipped) if val_set else {}}
    return Experiment(cfg, train_set, val_set, weighter, model, manifest)


def make_optimizer(model: TACo, cfg) -> torch.optim.Optimizer:
    text = [p for p in model.text.bert.parameters() if p.requires_grad]
    text_ids = {id(p) for p in text}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in text_ids]
    groups = [{"params": rest, "lr": cfg.lr}]
    if text:
        groups.append({"params": text, "lr": cfg.text_lr if cfg.text_lr is not None else cfg.lr})
    if cfg.optimizer not in ("adam", "adamw"):
        raise ConfigError(f"train.optimizer must be 'adam' or 'adamw', not {cfg.optimizer!r}")
    kind = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return kind(groups, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)


def warmup_linear(warmup: int, total: int):
    """Linear warm-up to the base lr over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


class BatchStream:
    """An endless, resumable stream of unique-video batches: its position is (epoch, index)."""

    def __init__(self, dataset: VideoTextDataset, batch_size: int, seed: int, num_workers: int = 0):
        self.dataset = dataset
        self.sampler = UniqueVideoBatchSampler(dataset, batch_size, drop_last=len(dataset.videos) > batch_size, seed=seed)
        self.num_workers = num_workers
        self.epoch, self.index = 0, 0
        self._iter = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index, self._iter = state["epoch"], state["index"], None

    def _start(self) -> None:
        self.sampler.set_epoch(self.epoch)
        batches = list(self.sampler)[self.index :]
        loader = DataLoader(  # its own generator: creating an iterator must not draw from the global RNG
            self.dataset, batch_sampler=batches, collate_fn=collate, num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.epoch),
        )
        self._iter = iter(loader)

    def __next__(self):
        if self._iter is None:
            self._start()
        try:
            batch = next(self._iter)
        except StopIteration:
            self.epoch, self.index = self.epoch + 1, 0
            self._start()
            batch = next(self._iter)
        self.index += 1
        return batch


def _summary_writer(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("tensorboard is not installed: no TensorBoard logs (pip install 'vidlang[train]')")
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def train(cfg: Config, experiment: Experiment | None = None, progress: bool = True) -> dict:
    t_cfg = cfg.train
    out_dir = Path(t_cfg.out_dir)
    torch.manual_seed(t_cfg.seed)
    if t_cfg.threads:
        torch.set_num_threads(t_cfg.threads)
    exp = experiment or build_experiment(cfg)
    model, device = exp.model, pick_device(t_cfg.device)
    model.to(device)
    optimizer = make_optimizer(model, t_cfg)
    schedule = warmup_linear(t_cfg.warmup_steps, t_cfg.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    stream = BatchStream(exp.train_set, t_cfg.batch_size, t_cfg.seed, cfg.data.num_workers)
    negatives_rng = torch.Generator().manual_seed(t_cfg.seed + 1)
    step, best, history, counts = 0, {"metric": -math.inf, "step": None}, [], Counter()
    config_yaml = yaml.safe_dump(cfg.to_dict(), sort_keys=False)

    resume_from = ckpt.latest_checkpoint(out_dir)
    if resume_from is not None:
        ckpt.read_meta(resume_from, expect_model="taco")
        ckpt.load_weights(model, resume_from)
        state = ckpt.load_state(resume_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # the lr of the next step follows this run's schedule (train.steps may have grown since)
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base_lr * schedule(state["step"])
        stream.load_state(state["stream"])
        torch.set_rng_state(state["torch_rng"])
        negatives_rng.set_state(state["negatives_rng"])
        step, best, history = state["step"], state["best"], state["history"]
        counts.update(state["counts"])
        print(f"resuming from {resume_from} at step {step}")

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", config_yaml)
    writer = _summary_writer(out_dir)
    meta = {
        "model": "taco",
        "video_dim": model.video_dim,
        "git_commit": git_commit(),
        "data_manifest": exp.manifest,
        "token_weighter": exp.weighter.state_dict(),
    }

    def save() -> Path:
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "stream": stream.state(),
            "torch_rng": torch.get_rng_state(),
            "negatives_rng": negatives_rng.get_state(),
            "step": step,
            "best": best,
            "history": history,
            "counts": dict(counts),
        }
        return ckpt.save_checkpoint(out_dir, step, model, {**meta, "best": best}, config_yaml, state)

    bar = tqdm(total=t_cfg.steps, initial=step, disable=not progress, desc="train", dynamic_ncols=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t_cfg.bf16)
    tic, clips_seen = time.perf_counter(), 0
    while step < t_cfg.steps:
        model.train()
        batch = next(stream).to(device)
        with autocast:
            out = model(batch, cfg.loss, negatives_rng)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at step {step} on videos {batch.video_ids[:8]}...: "
                "lower train.lr or check the features; no checkpoint was written for this step"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t_cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t_cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        clips_seen += len(batch)
        counts["clips"] += len(batch)
        if "l2_texts" in out:
            counts["l2_skipped_no_token_of_interest"] += len(batch) - out["l2_texts"]
        rate = clips_seen / (time.perf_counter() - tic)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", clips_s=f"{rate:.0f}")
        if writer is not None and (step % t_cfg.log_every == 0 or step == 1):
            for key in ("loss", "l1", "l2", "l3"):
                if key in out:
                    writer.add_scalar(f"train/{key}", float(out[key].detach() if hasattr(out[key], "detach") else out[key]), step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            writer.add_scalar("train/clips_per_s", rate, step)
        evaluate_now = exp.val_set is not None and t_cfg.eval_every and (step % t_cfg.eval_every == 0 or step == t_cfg.steps)
        if evaluate_now:
            metrics = evaluate_retrieval(model, exp.val_set, cfg.eval, device=device)
            history.append({"step": step, **metrics})
            if writer is not None:
                for key, value in metrics.items():
                    writer.add_scalar(f"val/{key}", value, step)
            bar.write(f"step {step}: " + "  ".join(f"{k} {metrics[k]:.2f}" for k in ("t2v_R@1", "t2v_R@5", "v2t_R@1")))
        if evaluate_now or step % t_cfg.save_every == 0 or step == t_cfg.steps:
            if evaluate_now and metrics[cfg.eval.metric] > best["metric"]:
                best = {"metric": metrics[cfg.eval.metric], "step": step, "metrics": metrics}
                saved = save()
                ckpt.mark_best(out_dir, saved)
            else:
                save()
    bar.close()
    if writer is not None:
        writer.close()
    summary = {"steps": step, "best": best, "history": history, "counts": dict(counts),
               "weighter_stats": dict(exp.weighter.stats)}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=float))
    return summary
