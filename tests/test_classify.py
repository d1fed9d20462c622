"""Classification as a task: a probe on raw features or a TACo video encoder, top-1/top-5 on held-out videos."""
from __future__ import annotations

import json

import pytest

from conftest import SUBJECTS, scene, tiny_config
from vidlang.errors import DataError


def _labels(tmp_path, n=24):
    labels = tmp_path / "labels.json"  # the class is the scene's subject: the features carry it
    labels.write_text(json.dumps({f"video{i}": scene(i)[0] for i in range(n)}))
    return labels


def probe_cfg(out, data_dir, labels, *extra):
    return tiny_config(out, data_dir, "task=classify", f"probe.labels={labels}", "train.steps=40", "train.lr=0.05",
                       "train.eval_every=20", "train.save_every=20", "train.warmup_steps=2", "eval.metric=top1", *extra)


def test_raw_probe_learns_the_subject_of_held_out_videos(tmp_path, data_dir):
    from vidlang.train import train

    summary = train(probe_cfg(tmp_path / "run", data_dir, _labels(tmp_path)), progress=False)
    best = summary["best"]["metrics"]
    assert best["num_videos"] == 8
    assert best["top1"] > best["majority_top1"] + 25  # 4 balanced classes: chance 25%, majority <= 50%
    assert summary["classes"] == sorted(SUBJECTS, key=lambda c: (len(c), c))


def test_taco_probe_reads_the_trained_video_encoder(tmp_path, data_dir, trained_run):
    from vidlang.models.loading import model_from_checkpoint
    from vidlang.train import train

    out = tmp_path / "probe"
    train(probe_cfg(out, data_dir, _labels(tmp_path), "probe.encoder=taco", f"probe.encoder_from={trained_run['out_dir']}"),
          progress=False)
    probe, _, meta = model_from_checkpoint(out / (out / "best").read_text().strip(), "probe")
    taco, _, _ = model_from_checkpoint(trained_run["out_dir"] / (trained_run["out_dir"] / "best").read_text().strip())
    for name, tensor in taco.video.state_dict().items():  # the frozen encoder is the TACo one, unchanged
        assert (probe.encoder.state_dict()[name] == tensor).all(), name
    assert meta["probe"]["encoder"] == "taco"


def test_held_out_label_never_seen_in_training_is_an_error(tmp_path, data_dir):
    from vidlang.train import train

    labels = {f"video{i}": "a" if i < 16 else "b" for i in range(24)}
    (tmp_path / "l.json").write_text(json.dumps(labels))
    with pytest.raises(DataError, match="never occur in training"):
        train(probe_cfg(tmp_path / "run", data_dir, tmp_path / "l.json"), progress=False)
