"""vidlang.plot: training curves and word × time heatmaps are valid PNGs; the CLI ``plot`` command."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vidlang.cli import main
from vidlang.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> np.ndarray:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # something was drawn
    return image


def test_training_curves_from_tensorboard(trained_run, tmp_path):
    from vidlang.plot import plot_training, read_scalars

    scalars = read_scalars(trained_run["out_dir"])
    assert "train/loss" in scalars and "val/t2v_R@1" in scalars
    history = trained_run["summary"]["history"]
    assert [s for s, _ in scalars["val/t2v_R@1"]] == [h["step"] for h in history]
    assert [v for _, v in scalars["val/t2v_R@1"]] == pytest.approx([h["t2v_R@1"] for h in history])
    written = plot_training(trained_run["out_dir"], tmp_path / "plots")
    assert [p.name for p in written] == ["training.png", "validation.png"]
    for p in written:
        assert_png(p)


def test_training_curves_from_summary_json(trained_run, tmp_path):
    from vidlang.plot import plot_training, read_scalars

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run["out_dir"] / "summary.json", run / "summary.json")
    scalars = read_scalars(run)
    assert all(tag.startswith("val/") for tag in scalars) and "val/t2v_MedR" in scalars
    (written,) = plot_training(run, tmp_path / "plots")
    assert written.name == "validation.png"
    assert_png(written)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no training curves"):
        read_scalars(empty)


def test_alignment_heatmap(tmp_path):
    from vidlang.plot import plot_alignment
    from vidlang.retrieval.query import SearchHit, WordAlignment

    strip = [0.1, 0.5, 2.0, 0.4]
    hits = [SearchHit(r, f"video{r}", 3.0 - r, 1.0, 1.0, None if r > 1 else 0.5, r, frames=[0, 2, 4, 6],
                      frame_times=[0.0, 1.0, 2.0, 3.0] if r == 1 else None,
                      alignments=[WordAlignment(w, None, None, 2, 2.0, strip, (2, 2)) for w in ("dog", "eats")])
            for r in (1, 2)]
    assert_png(plot_alignment(hits, "a dog eats", tmp_path / "x.png"))
    with pytest.raises(DataError, match="no hit"):
        plot_alignment([], "a dog eats", tmp_path / "y.png")


def test_cli_plot(trained_run, data_dir, tmp_path, capsys):
    assert main(["plot", str(trained_run["out_dir"]), "--out", str(tmp_path / "curves")]) == 0
    assert "training.png" in capsys.readouterr().out
    assert_png(tmp_path / "curves" / "validation.png")
    index = tmp_path / "idx"
    assert main(["index", str(trained_run["out_dir"]), "--features", str(data_dir), "--out", str(index)]) == 0
    out = tmp_path / "q.png"
    assert main(["plot", "--index", str(index), "--query", "a dog eats a cake", "--out", str(out), "--top", "2"]) == 0
    assert_png(out)
    assert main(["plot", "--index", str(index), "--out", str(out)]) == 2
    assert "--query" in capsys.readouterr().err
    assert main(["plot", "--out", str(out)]) == 2
    assert json.loads((index / "index.json").read_text())["num_clips"] == 24
