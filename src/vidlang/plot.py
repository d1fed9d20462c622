"""PNG plots: training curves of a run, and a query's word × time alignment over its top clips.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so
plotting is safe inside a server.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from vidlang.errors import DataError
from vidlang.io import atomic_write_bytes


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the install
        raise DataError("plotting needs matplotlib: pip install 'vidlang[plot]'") from e
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(out, buf.getvalue())
    return out


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from RUN_DIR/tensorboard (all event files; a step logged twice,
    as after a resume, keeps its last value), else from the validation history in summary.json."""
    run_dir = Path(run_dir)
    scalars: dict[str, dict[int, float]] = {}
    tb = run_dir / "tensorboard"
    if tb.is_dir() and any(tb.glob("*tfevents*")):
        from tensorboard.backend.event_processing.event_accumulator import (
            EventAccumulator,
        )

        for file in sorted(tb.glob("*tfevents*")):
            acc = EventAccumulator(str(file), size_guidance={"scalars": 0})
            acc.Reload()
            for tag in acc.Tags().get("scalars", []):
                scalars.setdefault(tag, {}).update((e.step, e.value) for e in acc.Scalars(tag))
    elif (run_dir / "summary.json").is_file():
        try:
            history = json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("history", [])
        except (OSError, json.JSONDecodeError, AttributeError) as e:
            raise DataError(f"cannot read {run_dir / 'summary.json'}: {e}") from e
        for row in history:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    scalars.setdefault(f"val/{key}", {})[int(row["step"])] = float(value)
    if not scalars:
        raise DataError(f"{run_dir} holds no training curves (no tensorboard/ event files, no summary.json history)")
    return {tag: sorted(points.items()) for tag, points in sorted(scalars.items())}


def _grid(fig, tags: list[str], scalars: dict, title: str) -> None:
    cols = min(3, len(tags))
    rows = math.ceil(len(tags) / cols)
    for i, tag in enumerate(tags):
        ax = fig.add_subplot(rows, cols, i + 1)
        steps, values = zip(*scalars[tag])
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()


def plot_training(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """``training.png`` (train/* curves) and ``validation.png`` (val/* retrieval metrics) in ``out_dir``."""
    scalars = read_scalars(run_dir)
    out_dir, written = Path(out_dir), []
    groups = {"training": [t for t in scalars if not t.startswith("val/")],
              "validation": [t for t in scalars if t.startswith("val/") and not t.endswith("num_texts")
                             and not t.endswith("num_videos")]}
    for name, tags in groups.items():
        if not tags:
            continue
        cols, rows = min(3, len(tags)), math.ceil(len(tags) / 3)
        fig = _figure(4 * cols, 2.8 * rows + 0.6)
        _grid(fig, tags, scalars, f"{Path(run_dir).name}: {name}")
        written.append(_save(fig, out_dir / f"{name}.png"))
    return written


def plot_alignment(hits: list, query: str, out: str | Path, top: int = 3) -> Path:
    """Heatmaps, one per hit (the ``top`` best), of query word × frame similarity (``WordAlignment.per_frame``),
    the best frame boxed; seconds on the x axis when the hits know their frame times."""
    hits = [h for h in hits[:top] if h.alignments]
    if not hits:
        raise DataError(f"no hit of {query!r} has a word alignment to plot")
    fig = _figure(8, 1.2 + sum(0.45 * len(h.alignments) + 0.9 for h in hits))
    for i, hit in enumerate(hits):
        ax = fig.add_subplot(len(hits), 1, i + 1)
        strips = np.array([a.per_frame for a in hit.alignments])
        image = ax.imshow(strips, aspect="auto", cmap="viridis", interpolation="nearest")
        for row, a in enumerate(hit.alignments):
            ax.add_patch(_box(a.span[0] - 0.5, row - 0.5, a.span[1] - a.span[0] + 1, 1, "white"))
            ax.plot(a.frame, row, marker="*", color="red", markersize=8)
        ax.set_yticks(range(len(hit.alignments)), [a.word for a in hit.alignments], fontsize=8)
        ticks = np.unique(np.linspace(0, strips.shape[1] - 1, min(strips.shape[1], 10)).round().astype(int))
        labels = [f"{hit.frame_times[t]:.1f}s" for t in ticks] if hit.frame_times else [str(hit.frames[t]) for t in ticks]
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.set_xlabel("time" if hit.frame_times else "feature index", fontsize=8)
        s3 = "" if hit.s3 is None else f", s3 {hit.s3:.2f}"
        ax.set_title(f"#{hit.rank} {hit.video_id}: score {hit.score:.2f} (s1 {hit.s1:.2f}, s2 {hit.s2:.2f}{s3})", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    fig.suptitle(f"query: {query}", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(out))


def _box(x: float, y: float, w: float, h: float, color: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, fill=False, edgecolor=color, linewidth=1.5)
