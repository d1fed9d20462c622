"""The training loop: one code path, resumable exactly from any checkpoint.

    cfg = load_config("configs/taco/msrvtt-ae128.yaml", ["train.steps=2000"])
    summary = train(cfg)
"""
from __future__ import annotations

import contextlib
import inspect
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from vidlang import checkpoint as ckpt
from vidlang import distributed
from vidlang.config import Config, checkpoint_config, config_changes
from vidlang.data.batches import BatchStream
from vidlang.data.records import describe_skip
from vidlang.errors import ConfigError
from vidlang.io import atomic_write_text
from vidlang.report import git_commit
from vidlang.tasks import get_task
from vidlang.tasks.base import Experiment, Task


def pick_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda``...; under torchrun a bare ``cuda`` is this process's GPU (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and distributed.is_distributed():
        device = torch.device("cuda", distributed.local_rank())
    return device


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """Adam(W) over the trainable parameters; a model's pretrained text encoder gets ``train.text_lr``."""
    pretrained = getattr(model, "pretrained_text_parameters", lambda: [])()
    text = [p for p in pretrained if p.requires_grad]
    text_ids = {id(p) for p in text}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in text_ids]
    groups = [{"params": rest, "lr": cfg.lr}]
    if text:
        groups.append({"params": text, "lr": cfg.text_lr if cfg.text_lr is not None else cfg.lr})
    if cfg.optimizer not in ("adam", "adamw"):
        raise ConfigError(f"train.optimizer must be 'adam' or 'adamw', not {cfg.optimizer!r}")
    kind = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    # fused: one kernel per step instead of ~10 passes over every parameter (7x faster on a CPU, benchmarks/)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    return kind(groups, betas=(0.9, 0.999), weight_decay=cfg.weight_decay, fused=fused)


def warmup_linear(warmup: int, total: int):
    """Linear warm-up to the base lr over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def score_test_split(task: Task, exp: Experiment, cfg: Config, out_dir: Path, device, multi: bool) -> dict:
    """``data.test_split``, scored once at the end with the best checkpoint (the last without
    validation), written to ``results/test.json`` stamped "test"."""
    from vidlang.report import write_result_json

    chosen = ckpt.find_checkpoint(out_dir, "best")
    ckpt.load_weights(exp.model, chosen)
    metrics = task.evaluate(exp.model, exp.test_set, cfg, device, multi)
    result = {"split": "test", "spec": cfg.data.test_split, "checkpoint": chosen.name, "metrics": metrics,
              "ids_sha256": exp.manifest.get("test", {}).get("ids_sha256")}
    if distributed.is_main():
        write_result_json(out_dir / "results" / "test.json", metrics, split=f"test:{cfg.data.test_split}",
                          scoring=task.scoring(cfg), protocol=exp.manifest.get("protocol", {}).get("test") or task.name,
                          config=cfg.to_dict(), extra={k: v for k, v in result.items() if k != "metrics"})
        print("test split (scored once): " + "  ".join(f"{k} {metrics[k]:.3g}" for k in task.show_keys(cfg) if k in metrics))
    return result


def lower_is_better(metric: str) -> bool:
    return metric.endswith("loss")


def improved(value: float, best: dict, metric: str) -> bool:
    if best["step"] is None:
        return True
    return value < best["metric"] if lower_is_better(metric) else value > best["metric"]


def backward_step(loss_fn: Callable[[object], dict], batches: Iterable, accum: int, ddp=None, autocast=None,
                  describe: Callable[[object], str] = str) -> list[dict]:
    """Forward and backward over ``accum`` micro-batches, each objective divided by ``accum``: the
    gradients are the mean of the micro-batches' gradients (negatives never cross micro-batches).
    Under DDP gradients are all-reduced once, with the last micro-batch. Raises on a non-finite loss."""
    outs = []
    for i, batch in enumerate(batches):
        last = i == accum - 1
        with ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext():
            with autocast or contextlib.nullcontext():
                out = loss_fn(batch)
            local_ok = bool(torch.isfinite(out["loss"].detach()))
            finite = torch.tensor([float(local_ok)], device=out["loss"].device)
            if ddp is not None:  # a rank-local loss (MV-GPT) may be bad on one rank only: every rank stops together
                finite = distributed.all_sum(finite) / distributed.world_size()
            if float(finite) < 1.0:
                what = (f"non-finite loss {float(out['loss'])} on {describe(batch)}" if not local_ok else
                        f"non-finite loss on another process (the loss of {describe(batch)} here is finite)")
                raise FloatingPointError(
                    f"{what}: lower train.lr or check the features; no checkpoint was written for this step")
            (out["objective"] / accum if accum > 1 else out["objective"]).backward()
        outs.append({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()})
    return outs


def enable_activation_checkpointing(model: torch.nn.Module) -> int:
    """Recompute every transformer layer in backward instead of storing its activations
    (torch.utils.checkpoint, non-reentrant: dropout masks are replayed). Hugging Face encoders use
    their own switch. Weights and their names are unchanged. Returns the number of layers wrapped."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointWrapper,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )
    from transformers import PreTrainedModel

    from vidlang.models.blocks import EncoderLayer

    if any(isinstance(m, CheckpointWrapper) for m in model.modules()):
        return 0  # already done (train() called again on the same experiment)
    layers = (EncoderLayer,)
    count = sum(isinstance(m, layers) for m in model.modules())
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper, check_fn=lambda m: isinstance(m, layers))
    for m in model.modules():
        if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing and any(
                p.requires_grad for p in m.parameters()):
            enable = getattr(m, "activation_checkpointing_enable", None)  # transformers >= 5.x; older: gradient_...
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            count += m.config.num_hidden_layers
    return count


def _summary_writer(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("tensorboard is not installed: no TensorBoard logs (pip install 'vidlang[train]')")
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def describe_changes(changed: dict[str, tuple]) -> str:
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in changed.items()))


def _rank_seed(seed: int, rank: int) -> int:
    return seed + 1_000_003 * rank  # each rank its own dropout stream; rank 0 keeps the one-process stream


def resumable_changes(checkpoint: Path, cfg: Config) -> dict[str, tuple]:
    """What ``cfg`` changes in the run of ``checkpoint``; an error unless train.resume=force."""
    changed = config_changes(checkpoint_config(checkpoint), cfg)
    if changed and cfg.train.resume != "force":
        raise ConfigError(f"{checkpoint.parent} holds a run trained with another config ({describe_changes(changed)}): "
                          "resuming would ignore the change; use a new train.out_dir, or train.resume=force "
                          "to resume with the new values")
    return changed


def train_members(cfg: Config, task: Task, progress: bool) -> None:
    """``train.members=K`` (beyond the papers): before the run's own model, K-1 more of the same config, each
    with its own seed (checkpoint.member_seed), in out_dir/members/2..K; each resumes like any run."""
    if (why_not := task.pools_members(cfg)) is not None:
        raise ConfigError(f"train.members={cfg.train.members} trains models whose outputs inference pools, and this "
                          f"config cannot pool them ({why_not}): use train.members=1")
    if (own := ckpt.latest_checkpoint(cfg.train.out_dir)) is not None:
        resumable_changes(own, cfg)  # before the members train
    for m, folder in enumerate(ckpt.member_dirs(cfg.train.out_dir, cfg.train.members), start=2):
        seed = ckpt.member_seed(cfg.train.seed, m)
        if distributed.is_main():
            print(f"member {m} of {cfg.train.members} (train.seed={seed}): {folder}", flush=True)
        train(replace(cfg, train=replace(cfg.train, seed=seed, out_dir=str(folder), members=1)), progress=progress,
              task=task)


def train(cfg: Config, experiment: Experiment | None = None, progress: bool = True, task: Task | None = None) -> dict:
    """Train (or resume) ``cfg`` with its task (``cfg.task``, or ``task``). Under torchrun every rank
    calls this; ``train.batch_size`` is the global batch, split over the ranks (docs/distributed.md)."""
    t_cfg = cfg.train
    out_dir = Path(t_cfg.out_dir)
    accum = t_cfg.grad_accum_steps
    if accum < 1:
        raise ConfigError(f"train.grad_accum_steps must be >= 1, got {accum}")
    task = task or get_task(cfg.task)
    first, cfg = task.prerequisites(cfg)
    for other in first:  # e.g. the TACo retriever of MV-GPT's rerank, into out_dir/retriever
        if distributed.is_main():
            print(f"first: the {other.task} run in {other.train.out_dir}", flush=True)
        train(other, progress=progress)
    if t_cfg.members > 1:
        train_members(cfg, task, progress)
    multi = distributed.init_from_env(t_cfg.dist_backend, pick_device(t_cfg.device))
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    torch.manual_seed(t_cfg.seed)
    if t_cfg.threads:
        torch.set_num_threads(t_cfg.threads)
    exp = experiment or task.build(cfg)
    skipped = [*exp.manifest.get("skipped_items_by_readers", []),
               *(i for items in exp.manifest.get("skipped_items_by_dataset", {}).values() for i in items)]
    if main and skipped:
        print(f"skipped {len(skipped)} bad items (data.skip_bad; all named in summary.json and meta.json):")
        print("".join(f"  {describe_skip(i)}\n" for i in skipped[:20]), end="")
    if multi and exp.train_stream is None and min(t_cfg.batch_size, len(exp.train_set.videos)) < world:
        raise ConfigError(f"train.batch_size={t_cfg.batch_size} and {len(exp.train_set.videos)} training videos "
                          f"must each be at least the number of processes ({world})")
    if multi and exp.clips_per_video > 1:  # a rank's slice would cut a video's captions apart
        raise ConfigError(f"{exp.clips_per_video} captions per video per batch (taco.captions_per_video) train in "
                          f"one process only, not under torchrun ({world} processes)")
    if multi and rank > 0:
        torch.manual_seed(_rank_seed(t_cfg.seed, rank))
    model, device = exp.model, pick_device(t_cfg.device)
    model.to(device)
    optimizer = make_optimizer(model, t_cfg)
    schedule = task.lr_schedule(cfg, warmup_linear)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if exp.train_stream is not None:  # the task streams its training batches itself (e.g. data.shards)
        stream = exp.train_stream(t_cfg.batch_size, t_cfg.seed, cfg.data.num_workers, rank, world)
    else:
        stream = BatchStream(exp.train_set, t_cfg.batch_size, t_cfg.seed, cfg.data.num_workers, rank, world, exp.collate,
                             exp.clips_per_video)
    negatives_rng = torch.Generator().manual_seed(t_cfg.seed + 1)  # the same on every rank
    step, best, history, counts = 0, {"metric": None, "step": None}, [], Counter()
    config_yaml = yaml.safe_dump(cfg.to_dict(), sort_keys=False)

    resume_from = ckpt.latest_checkpoint(out_dir)
    if resume_from is not None:
        ckpt.read_meta(resume_from, expect_model=task.model)
        ckpt.load_weights(model, resume_from)
        changed = resumable_changes(resume_from, cfg)
        fresh = [{k: g[k] for k in ("initial_lr", "weight_decay")} for g in optimizer.param_groups]
        state = ckpt.load_state(resume_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if changed:  # train.resume=force: the new lr and weight decay apply from here on
            for group, values in zip(optimizer.param_groups, fresh):
                group.update(values)
            scheduler.base_lrs = [v["initial_lr"] for v in fresh]
            if main:
                print(f"resuming with a changed config (train.resume=force): {describe_changes(changed)}")
        # the lr of the next step follows this run's schedule (train.steps may have grown since)
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base_lr * schedule(state["step"])
        stream.load_state(state["stream"])
        ranks_rng = state.get("torch_rng_ranks") or [state["torch_rng"]]
        if len(ranks_rng) == world:
            torch.set_rng_state(ranks_rng[rank])
        elif rank == 0:
            torch.set_rng_state(state["torch_rng"])
        else:  # saved by another number of processes: a fresh dropout stream for this rank
            torch.manual_seed(_rank_seed(t_cfg.seed, rank) + state["step"])
        negatives_rng.set_state(state["negatives_rng"])
        step, best, history = state["step"], state["best"], state["history"]
        if main:  # a kill may have left the pointer behind the state that chose it
            ckpt.point_best(out_dir, best["step"])
        counts.update(state["counts"])
        if main:
            print(f"resuming from {resume_from} at step {step}"
                  + (f" (saved by {len(ranks_rng)} processes, now {world})" if len(ranks_rng) != world else ""))
    elif t_cfg.init_from:
        source = ckpt.find_checkpoint(t_cfg.init_from)
        ckpt.read_meta(source, expect_model=task.model)
        ckpt.load_weights(model, source)
        if main:
            print(f"starting from the weights of {source}")
    if t_cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    runner = model
    if multi:
        from torch.nn.parallel import DistributedDataParallel

        # buffers never change in training: no broadcast before every forward (the flag's name changed in torch 2.13)
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters \
            else "broadcast_buffers"
        runner = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                         find_unused_parameters=task.unused_parameters(cfg), **{no_sync: False})

    writer = None
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", config_yaml)
        writer = _summary_writer(out_dir)
    meta = {
        "model": task.model,
        "task": task.name,
        "video_dim": model.video_dim,
        "git_commit": git_commit(),
        "init_from": str(t_cfg.init_from) if t_cfg.init_from else None,
        "data_manifest": exp.manifest,
        **exp.meta,
    }

    train_ids = "".join(f"{v}\n" for v in exp.train_ids)

    def save(is_best: bool = False) -> Path | None:
        rng_states = distributed.all_gather_object(torch.get_rng_state())  # every rank takes part
        if not main:
            return None
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "stream": stream.state(),
            "torch_rng": rng_states[0],
            "negatives_rng": negatives_rng.get_state(),
            "step": step,
            "best": best,
            "history": history,
            "counts": dict(counts),
        }
        if multi:
            state["torch_rng_ranks"] = rng_states
        return ckpt.save_checkpoint(out_dir, step, model, {**meta, "best": best, "world_size": world}, config_yaml, state,
                                    files={ckpt.TRAIN_IDS: train_ids, **exp.files}, best=is_best)

    def loss_fn(batch):
        shard = distributed.batch_shard(len(batch))
        return {**task.forward(runner, batch, cfg, negatives_rng, shard), "batch_size": shard.total}

    bar = tqdm(total=t_cfg.steps, initial=step, disable=not (progress and main), desc="train", dynamic_ncols=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t_cfg.bf16)
    tic, clips_seen = time.perf_counter(), 0
    while step < t_cfg.steps:
        task.before_step(model, step)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        batches = (next(stream).to(device) for _ in range(accum))
        outs = backward_step(loss_fn, batches, accum, runner if multi else None, autocast,
                             describe=lambda b: f"step {step}, videos {b.video_ids[:8]}...")  # noqa: B023
        if t_cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t_cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        clips = sum(o["batch_size"] for o in outs)
        clips_seen += clips
        counts["clips"] += clips
        for o in outs:
            counts.update(o.get("counts", {}))
        logged = {k: sum(float(o[k]) for o in outs) / accum for k in task.log_keys if k in outs[0]}
        rate = clips_seen / (time.perf_counter() - tic)
        bar.update(1)
        bar.set_postfix(loss=f"{logged['loss']:.3f}", clips_s=f"{rate:.0f}")
        if writer is not None and (step % t_cfg.log_every == 0 or step == 1):
            for key, value in logged.items():
                writer.add_scalar(f"train/{key}", value, step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            writer.add_scalar("train/clips_per_s", rate, step)
        evaluate_now = exp.val_set is not None and t_cfg.eval_every and (step % t_cfg.eval_every == 0 or step == t_cfg.steps)
        if evaluate_now:  # every rank scores its share; all get the same metrics
            metrics = task.evaluate(model, exp.val_set, cfg, device, multi)
            if cfg.eval.metric not in metrics:
                raise ConfigError(f"eval.metric={cfg.eval.metric!r} is not a validation metric of {task.name} "
                                  f"(it reports {sorted(metrics)})")
            history.append({"step": step, **metrics})
            if writer is not None:
                for key, value in metrics.items():
                    writer.add_scalar(f"val/{key}", value, step)
            if main:
                bar.write(f"step {step}: " + "  ".join(f"{k} {metrics[k]:.3g}" for k in task.show_keys(cfg) if k in metrics))
        if evaluate_now or step % t_cfg.save_every == 0 or step == t_cfg.steps:
            if evaluate_now and improved(metrics[cfg.eval.metric], best, cfg.eval.metric):
                best = {"metric": metrics[cfg.eval.metric], "step": step, "metrics": metrics}
                save(is_best=True)
            else:
                save()
    bar.close()
    if writer is not None:
        writer.close()
    summary = {"steps": step, "best": best, "history": history, "counts": dict(counts), "skipped_items": skipped,
               **exp.summary()}
    if exp.test_set is not None:  # scored once, with the checkpoint validation chose (else the last)
        summary["test"] = score_test_split(task, exp, cfg, out_dir, device, multi)
    if main:
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=float))
    distributed.barrier()  # the last checkpoint is complete before any rank goes on (e.g. to resume)
    return summary
