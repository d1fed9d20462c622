"""What a score was measured on: the ids scored, their hash, and whether the model trained on them."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vidlang import checkpoint as ckpt
from vidlang.data.sources import ids_sha256
from vidlang.errors import DataError


def held_out(checkpoint: str | Path, video_ids: Iterable[str], allow_train_overlap: bool = False) -> dict:
    """Check that ``checkpoint`` did not train on the videos about to be scored.

    Returns what the result records: the scored ids, their hash, how many the checkpoint trained on
    (None when it does not record its training ids). Raises DataError on any overlap unless
    ``allow_train_overlap`` (then the overlap is stamped in the result)."""
    ids = sorted(set(video_ids))
    trained = ckpt.read_train_ids(checkpoint)
    overlap = sorted(trained & set(ids)) if trained is not None else []
    if overlap and not allow_train_overlap:
        raise DataError(
            f"{len(overlap)} of the {len(ids)} videos to score were in the training split of {checkpoint} "
            f"(e.g. {', '.join(overlap[:3])}): pass --split with held-out ids, or --allow-train-overlap to score "
            "them anyway (the result then says so)")
    return {"video_ids": ids, "num_videos": len(ids), "ids_sha256": ids_sha256(ids),
            "train_overlap": len(overlap) if trained is not None else None}


def describe(info: dict) -> str:
    """One line for the terminal: what was scored."""
    overlap = info["train_overlap"]
    note = ("the checkpoint does not record its training ids: overlap not checked" if overlap is None else
            f"{overlap} of them in the checkpoint's training split" if overlap else "none in the checkpoint's training split")
    return f"scored {info['num_videos']} videos (ids sha256 {info['ids_sha256']}; {note})"
