"""Checkpoints: a folder per save, written to a temporary name then renamed (atomic).

    out_dir/
      step-000500/          model.safetensors, state.pt (optimizer, scheduler, RNG, loop),
                            config.yaml, meta.json (model kind, input dim, step, git commit,
                            data manifest, token weighter, metrics)
      latest                name of the newest complete checkpoint folder
      best                  name of the best one by the validation metric

A run killed at any moment leaves either the old pointer or the new one, each naming a complete folder.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vidlang.errors import CheckpointError
from vidlang.io import atomic_write_text

FORMAT_VERSION = 1


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    meta: dict[str, Any],
    config_yaml: str,
    state: dict[str, Any] | None = None,
    keep: int = 2,
    files: dict[str, str | bytes] | None = None,
    best: bool = False,
) -> Path:
    """Write ``out_dir/step-XXXXXX`` atomically and point ``latest`` at it. Returns the folder.
    ``files``: more files for the folder by name, text or bytes (e.g. ``train_ids.txt``). ``best``: point
    ``best`` at it too, before ``latest``, so a kill never leaves ``latest`` ahead of a stale ``best``
    (a resumed run re-points ``best`` from its state: :func:`point_best`)."""
    out_dir = Path(out_dir)
    final = out_dir / f"step-{step:06d}"
    tmp = out_dir / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    if state is not None:
        torch.save(state, tmp / "state.pt")
    (tmp / "config.yaml").write_text(config_yaml, encoding="utf-8")
    meta = {"format_version": FORMAT_VERSION, "step": step, **meta}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    for name, content in (files or {}).items():
        if isinstance(content, bytes):
            (tmp / name).write_bytes(content)
        else:
            (tmp / name).write_text(content, encoding="utf-8")
    for f in tmp.iterdir():  # make the files durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if best:
        mark_best(out_dir, final)
    atomic_write_text(out_dir / "latest", final.name)
    _prune(out_dir, keep)
    return final


def mark_best(out_dir: str | Path, checkpoint: Path) -> None:
    atomic_write_text(Path(out_dir) / "best", Path(checkpoint).name)


def point_best(out_dir: str | Path, step: int | None) -> None:
    """Make ``best`` name the checkpoint of ``step`` (from a resumed run's state), if it is there."""
    folder = Path(out_dir) / f"step-{step:06d}" if step is not None else None
    if folder is not None and (folder / "meta.json").is_file() and _pointer(Path(out_dir), "best") != folder:
        mark_best(out_dir, folder)


def _pointer(out_dir: Path, name: str) -> Path | None:
    pointer = out_dir / name
    if not pointer.is_file():
        return None
    target = out_dir / pointer.read_text().strip()
    return target if (target / "meta.json").is_file() else None


def _prune(out_dir: Path, keep: int) -> None:
    protected = {p for p in (_pointer(out_dir, "latest"), _pointer(out_dir, "best")) if p}
    steps = sorted(out_dir.glob("step-*"))
    for old in steps[:-keep] if keep > 0 else []:
        if old not in protected:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in out_dir.glob(".tmp-step-*"):  # left by a killed run
        shutil.rmtree(tmp, ignore_errors=True)


def find_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A checkpoint folder, or a run folder (then its ``best``, else ``latest``)."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    found = _pointer(path, which) or _pointer(path, "latest")
    if found is None:
        foreign = sorted(f.name for f in path.iterdir() if f.name in FOREIGN_WEIGHTS) if path.is_dir() else []
        if foreign:
            raise CheckpointError(
                f"{path} holds {', '.join(foreign)} but no meta.json: a Hugging Face / PyTorch weights folder, not a "
                f"vidlang checkpoint (expected {EXPECTED}). To start from such weights, set model.text_encoder "
                "to the folder (text encoders) or train from it with train.init_from pointing at a vidlang run")
        raise CheckpointError(f"{path} holds no complete checkpoint: expected {EXPECTED}, or a run folder with a "
                              "'latest' pointer naming one")
    return found


EXPECTED = "a folder with meta.json, model.safetensors and config.yaml, as written by `vidlang train`"
FOREIGN_WEIGHTS = ("pytorch_model.bin", "model.safetensors", "pytorch_model.bin.index.json",
                   "model.safetensors.index.json", "tf_model.h5", "model.pt", "model.pth", "checkpoint.pth")


MEMBERS_DIR = "members"
RETRIEVER_DIR = "retriever"  # decode.rerank_retriever trained by a run: out_dir/retriever
TEXT_ENCODER_DIR = "text_encoder"  # inside a model folder written by save_pretrained
MEMBER_SEED_STRIDE = 1000


def member_dirs(run: str | Path, members: int) -> list[Path]:
    """The folders of a run's other members (``train.members``): run/members/2 .. run/members/K."""
    return [Path(run) / MEMBERS_DIR / str(m) for m in range(2, members + 1)]


def member_seed(seed: int, m: int) -> int:
    return seed + MEMBER_SEED_STRIDE * (m - 1)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    out_dir = Path(out_dir)
    return _pointer(out_dir, "latest") if out_dir.is_dir() else None


def read_meta(checkpoint: str | Path, expect_model: str | None = None) -> dict[str, Any]:
    checkpoint = Path(checkpoint)
    try:
        meta = json.loads((checkpoint / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {checkpoint / 'meta.json'}: {exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{checkpoint / 'meta.json'} holds a {type(meta).__name__}; expected a JSON object")
    if expect_model is not None and meta.get("model") != expect_model:
        raise CheckpointError(
            f"{checkpoint} holds a '{meta.get('model')}' model, not a '{expect_model}' model"
        )
    return meta


def load_weights(model: torch.nn.Module, checkpoint: str | Path) -> None:
    """Load weights strictly: a checkpoint of another architecture is an error naming the keys."""
    file = Path(checkpoint) / "model.safetensors"
    try:
        weights = load_file(str(file))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"cannot read weights {file}: {exc}") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{file} does not match this model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {wrong[:5]}"
        )
    bad = [k for k, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        t = weights[bad[0]]
        raise CheckpointError(f"{file}: tensor '{bad[0]}' holds {int(torch.isnan(t).sum())} NaN and "
                              f"{int(torch.isinf(t).sum())} infinite values ({len(bad)} such tensors: {bad[:5]}); "
                              "the checkpoint is damaged or training diverged")
    model.load_state_dict(weights)



def load_state(checkpoint: str | Path) -> dict[str, Any]:
    file = Path(checkpoint) / "state.pt"
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read training state {file}: {exc}") from None


TRAIN_IDS = "train_ids.txt"


def read_train_ids(checkpoint: str | Path) -> set[str] | None:
    """The video ids a checkpoint was trained on (``train_ids.txt`` beside its weights), or None for a
    checkpoint that does not record them (written before they were kept)."""
    file = Path(checkpoint) / TRAIN_IDS
    if not file.is_file():
        return None
    return {line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()}
