"""Self-contained model folders: `vidlang export` writes one, load_model reads it with nothing else."""
from __future__ import annotations


import pytest
import torch

from vidlang.cli import main
from vidlang.errors import CheckpointError


def test_exported_folder_loads_without_the_original_text_encoder(trained_run, data_dir, tmp_path, monkeypatch, capsys):
    from vidlang import inference
    from vidlang.data.sources import open_data
    from vidlang.evaluation.retrieval import similarity

    out = tmp_path / "shared-model"
    assert main(["export", str(trained_run["out_dir"]), str(out)]) == 0
    assert {"model.safetensors", "config.yaml", "meta.json", "train_ids.txt", "README.md"} <= {p.name for p in out.iterdir()}
    assert (out / "text_encoder" / "config.json").is_file() and (out / "text_encoder" / "tokenizer.json").is_file()
    assert not (out / "text_encoder" / "model.safetensors").exists()  # the weights are in the model's file
    assert main(["export", str(trained_run["out_dir"]), str(out)]) == 2  # exists: refused without --overwrite
    assert "exists" in capsys.readouterr().err
    card = (out / "README.md").read_text()
    assert "TACo" in card and "t2v_R@1" in card and "ids sha256" in card

    clips = [c for c in open_data(data_dir).clips if c.split == "validate"]
    original = inference.load_model(trained_run["out_dir"])
    expected, _ = similarity(original.model, original.dataset(clips, open_data(data_dir).store), original.cfg.eval)

    import vidlang.text.pretrained as tp

    def gone():
        raise AssertionError("the packaged text encoder was needed")

    monkeypatch.setattr(tp, "default_model_dir", gone)
    shared = inference.load_model(out)
    got, _ = similarity(shared.model, shared.dataset(clips, open_data(data_dir).store), shared.cfg.eval)
    torch.testing.assert_close(got, expected)


def test_unknown_model_name_is_a_short_error(monkeypatch):
    from vidlang.inference import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="checkpoint not found: someone/no-such-model"):
        load_model("someone/no-such-model")
