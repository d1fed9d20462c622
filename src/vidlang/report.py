"""Result reports: aligned text tables, mean ± std over seeds, stamped result JSON."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vidlang.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "format_mean_std",
    "format_table",
    "git_commit",
    "mean_std",
    "vidlang_version",
    "write_result_json",
]

_PKG_DIR = Path(__file__).resolve().parent


# ---------------------------------------------------------------- tables


def format_mean_std(mean: float, std: float, digits: int = 1) -> str:
    """``format_mean_std(21.71, 0.43) == "21.7 ± 0.4"``."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple) and len(value) == 2:  # (mean, std) from mean_std()
        return format_mean_std(float(value[0]), float(value[1]), digits)
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return str(value)


def format_table(
    results: Mapping[str, Mapping[str, Any]],
    keys: Sequence[str] | None = None,
    digits: int = 1,
    name_header: str = "run",
) -> str:
    """Plain-text table: one row per run name, one column per metric key.

    ``keys`` defaults to every key seen, in order of first appearance. Values may be
    numbers (floats get ``digits`` decimals) or ``(mean, std)`` tuples, printed as
    ``"21.7 ± 0.4"``; a metric missing from a run prints as ``-``. Numbers are
    right-aligned, run names left-aligned.
    """
    if keys is None:
        keys = list(dict.fromkeys(k for row in results.values() for k in row))
    header = [name_header, *keys]
    rows = [[str(name), *(_cell(row.get(k), digits) for k in keys)] for name, row in results.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest]).rstrip()

    return "\n".join(line(r) for r in [header, *rows])


def mean_std(runs: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Per-key mean and sample std (ddof=1; 0.0 for a single run) over runs, e.g. seeds.

    Every run must have the same keys.
    """
    if not runs:
        raise ValueError("mean_std needs at least one run")
    keys = list(runs[0])
    for i, run in enumerate(runs):
        if set(run) != set(keys):
            diff = sorted(set(run) ^ set(keys))
            raise ValueError(f"run {i} has different metric keys from run 0: {diff}")
    out = {}
    for k in keys:
        vals = np.asarray([float(run[k]) for run in runs], dtype=np.float64)
        std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out[k] = (float(vals.mean()), std)
    return out


# ---------------------------------------------------------------- provenance


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(
            ["git", "-C", str(_PKG_DIR), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_commit() -> str | None:
    """HEAD commit of the git repo holding this package's source, or None.

    None when git is missing, the package is not in a work tree, the repo has no
    commit yet, or the package sits in an ignored path of some other repo (e.g. an
    installed copy inside a project's ``.venv``).
    """
    if _git("rev-parse", "--is-inside-work-tree") != "true":
        return None
    if _git("check-ignore", "-q", str(_PKG_DIR)) is not None:  # exit 0: ignored
        return None
    return _git("rev-parse", "HEAD") or None


def git_dirty() -> bool | None:
    """True when tracked files differ from HEAD (uncommitted edits); None without git."""
    if git_commit() is None:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def vidlang_version() -> str:
    """``vidlang.__version__``, else the installed distribution's version, else "0+unknown"."""
    try:
        from vidlang.version import __version__

        return str(__version__)
    except (ImportError, AttributeError):
        pass
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("vidlang")
    except (ImportError, PackageNotFoundError):
        return "0+unknown"


def provenance() -> dict[str, Any]:
    """The code a run is about to use: git commit and whether the checkout is dirty."""
    return {"git_commit": git_commit(), "git_dirty": git_dirty()}


def _jsonable(obj: Any) -> Any:
    """``json.dumps`` default: numpy/torch scalars and arrays, paths, dataclasses, sets."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # torch.Tensor without importing torch
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to result JSON: {obj!r:.80}")


def _check_finite(metrics: Mapping[str, Any]) -> None:
    for k, v in metrics.items():
        if isinstance(v, (float, np.floating)) and not math.isfinite(float(v)):
            raise ValueError(f"metric {k!r} is {v}; refusing to write a non-finite result")


def write_result_json(
    path: str | os.PathLike,
    metrics: Mapping[str, Any],
    *,
    split: str,
    scoring: str,
    protocol: str,
    config: Mapping[str, Any] | Any | None = None,
    extra: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> None:
    """Atomically write ``metrics`` as JSON, stamped with provenance.

    Keys: ``metrics``, ``split``, ``scoring`` (e.g. "dual", "cascade"), ``protocol`` (required: which
    queries were scored, e.g. "1k-A-jsfusion", "all-captions", "paragraph", "clip"; see
    ``vidlang.data.sources.PROTOCOLS``; captioning: "all-references"), ``config``
    (the resolved config: a mapping or a dataclass), ``extra``, ``vidlang_version``,
    ``git_commit`` (None outside a git checkout), ``git_dirty``, ``timestamp``
    (UTC, ISO 8601). Non-finite metric values are refused with ValueError. ``provenance``
    (from :func:`provenance`, taken when the run started) replaces the commit read now, so a
    result names the code that produced it even if the checkout changed during the run.
    """
    _check_finite(metrics)
    if not isinstance(protocol, str) or not protocol.strip():
        raise ValueError(f"a result needs its evaluation protocol (e.g. 'all-captions'), got {protocol!r}")
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    payload = {
        "split": split,
        "scoring": scoring,
        "protocol": protocol,
        "metrics": dict(metrics),
        "config": None if config is None else dict(config),
        "extra": None if extra is None else dict(extra),
        "vidlang_version": vidlang_version(),
        **(dict(provenance) if provenance is not None else {"git_commit": git_commit(), "git_dirty": git_dirty()}),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(payload, indent=2, default=_jsonable, allow_nan=False)
    atomic_write_text(path, text + "\n")
