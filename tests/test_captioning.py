"""MV-GPT through the toolkit: `vidlang train` on narration (pretraining) and captions (fine-tuning),
starting from pretrained weights, validation metrics and the best checkpoint, resume, the public
`caption` API and `vidlang caption` (a scored data folder, one .npy)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vidlang import api
from vidlang.cli import main
from vidlang.config import load_config
from vidlang.worlds.narrated import NarratedConfig, write_narrated_world
from vidlang.errors import CheckpointError, ConfigError
from vidlang.train import train

TINY = ["task=mvgpt", "model.width=32", "model.video_heads=2", "model.fusion_heads=2", "model.fusion_layers=1",
        "model.text_trainable_layers=0", "model.dropout=0", "mvgpt.decoder_layers=1", "mvgpt.decoder_heads=2",
        "decode.max_len=8", "decode.method=greedy", "data.max_frames=8", "train.batch_size=8",
        "train.warmup_steps=1", "train.lr=1e-3", "train.log_every=1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_narrated_world(tmp_path_factory.mktemp("narrated") / "world", NarratedConfig(num_scenes=10, frames=4))


def pretrain_cfg(world, out, *extra):
    return load_config(None, [*TINY, f"data.features={world.features}", f"data.transcripts={world.transcripts}",
                              f"data.train_split={world.root / 'train_ids.txt'}",
                              f"data.val_split={world.root / 'val_ids.txt'}", "mvgpt.objective=pretrain",
                              "eval.metric=val_loss", f"train.out_dir={out}", *extra])


def caption_cfg(world, out, *extra):
    return load_config(None, [*TINY, f"data.features={world.features}", f"data.annotations={world.captions}",
                              f"data.transcripts={world.transcripts}", "data.train_split=train",
                              "data.val_split=validate", "mvgpt.objective=caption", "eval.metric=CIDEr",
                              f"train.out_dir={out}", *extra])


@pytest.fixture(scope="module")
def pretrained(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pretrain"
    summary = train(pretrain_cfg(world, out, "train.steps=4", "train.eval_every=2", "train.save_every=2"),
                    progress=False)
    return out, summary


@pytest.fixture(scope="module")
def captioner(world, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "caption"
    summary = train(caption_cfg(world, out, "train.steps=3", "train.eval_every=3", f"train.init_from={pretrained[0]}"),
                    progress=False)
    return out, summary


def test_pretraining_reports_each_loss_and_keeps_the_lowest_val_loss(pretrained):
    out, summary = pretrained
    losses = [h["val_loss"] for h in summary["history"]]
    assert [h["step"] for h in summary["history"]] == [2, 4]
    assert {"val_fg", "val_bg", "val_mlm_d"} <= set(summary["history"][0])
    assert summary["best"]["metric"] == min(losses)  # a loss: lower is better
    meta = json.loads((out / (out / "best").read_text().strip() / "meta.json").read_text())
    assert meta["model"] == "mvgpt" and "token_weighter" not in meta


def test_fine_tuning_starts_from_the_pretrained_weights(world, pretrained, captioner, tmp_path):
    cfg = caption_cfg(world, tmp_path / "zero", "train.steps=0", f"train.init_from={pretrained[0]}")
    from vidlang.tasks.mvgpt import build_caption_experiment

    exp = build_caption_experiment(cfg)
    before = {k: v.clone() for k, v in exp.model.state_dict().items()}
    train(cfg, exp, progress=False)
    latest = load_file(str(pretrained[0] / (pretrained[0] / "latest").read_text().strip() / "model.safetensors"))
    assert all(torch.equal(exp.model.state_dict()[k], latest[k]) for k in latest)
    assert any(not torch.equal(before[k], latest[k]) for k in latest)
    run = captioner[0]
    meta = json.loads((run / (run / "latest").read_text().strip() / "meta.json").read_text())
    assert meta["init_from"] == str(pretrained[0])


def test_caption_validation_scores_greedy_captions(world, captioner, tmp_path):
    """The validation numbers are those of the best checkpoint's greedy captions, one per validation
    step, against all of its references: recomputed here caption by caption (a batch of one each)."""
    from vidlang.data.narration import collate_captions
    from vidlang.evaluation.caption_metrics import CaptionScorer
    from vidlang.tasks.mvgpt import build_caption_experiment

    run, summary = captioner
    metrics = summary["best"]["metrics"]
    assert {"val_loss", "BLEU-4", "ROUGE-L", "CIDEr"} <= set(metrics) and "METEOR" not in metrics
    loaded = api.load_model(run)  # the best checkpoint
    assert loaded.checkpoint.name == f"step-{summary['best']['step']:06d}"
    val = build_caption_experiment(caption_cfg(world, tmp_path / "unused")).val_set
    refs: dict[str, list[str]] = {}
    for key, clip in zip(val.keys, val.clips):
        refs.setdefault(key, []).append(clip.caption)
    preds = {}
    with torch.no_grad():
        for i, key in enumerate(val.keys):
            if key not in preds:
                b = collate_captions([val[i]])
                seq = loaded.model.generate(b.video, b.video_mask, b.transcript_ids, b.transcript_mask, method="greedy")[0]
                preds[key] = loaded.tokenizer.decode(seq, skip_special_tokens=True).strip()
    assert len(preds) == 2 * 4 and all(len(r) == 3 for r in refs.values())  # 2 validation scenes x 4 steps, 3 refs
    with CaptionScorer(meteor=False) as scorer:
        want = scorer.score(preds, refs).corpus
    for k in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert metrics[k] == pytest.approx(want[k], abs=1e-6), k


def test_caption_validation_scores_against_every_reference(world, tmp_path, monkeypatch):
    """A captioner that outputs each step's *second* reference is perfect against all references
    (BLEU-4 = 1); scored against fewer references it would not be. (The tiny captioner above is too
    weak for its scores to tell which references were used.)"""
    from vidlang.evaluation import captioning
    from vidlang.evaluation.caption_metrics import CaptionScorer
    from vidlang.tasks.mvgpt import build_caption_experiment

    cfg = caption_cfg(world, tmp_path / "unused")
    exp = build_caption_experiment(cfg)
    refs: dict[str, list[str]] = {}
    for key, clip in zip(exp.val_set.keys, exp.val_set.clips):
        refs.setdefault(key, []).append(clip.caption)
    assert all(len(set(r)) == 3 for r in refs.values())  # three different references per step
    second = {k: r[1] for k, r in refs.items()}
    monkeypatch.setattr(captioning, "generate_captions", lambda *a, **kw: dict(second))
    with CaptionScorer(meteor=False) as scorer:
        got = captioning.evaluate_captioning(exp.model, exp.val_set, cfg, scorer=scorer)
        against_first = scorer.score(second, {k: r[:1] for k, r in refs.items()}).corpus
    assert got["BLEU-4"] == pytest.approx(1.0, abs=1e-6) and got["ROUGE-L"] == pytest.approx(1.0)
    assert against_first["BLEU-4"] < 0.9  # the check above can tell


def test_init_from_a_taco_checkpoint_is_refused(world, trained_run, tmp_path):
    with pytest.raises(CheckpointError, match="taco"):
        train(caption_cfg(world, tmp_path / "x", "train.steps=1", f"train.init_from={trained_run['out_dir']}"),
              progress=False)


def test_resume_equals_uninterrupted(world, tmp_path):
    steps = ["train.eval_every=0", "train.save_every=2", "mvgpt.freeze_visual_steps=2"]
    straight = tmp_path / "straight"
    train(pretrain_cfg(world, straight, "train.steps=4", *steps), progress=False)
    split = tmp_path / "split"
    train(pretrain_cfg(world, split, "train.steps=2", *steps), progress=False)
    train(pretrain_cfg(world, split, "train.steps=4", *steps), progress=False)
    a = load_file(str(straight / "step-000004" / "model.safetensors"))
    b = load_file(str(split / "step-000004" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra, match", [
    (["eval.metric=t2v_R@1", "train.steps=1", "train.eval_every=1"], "eval.metric"),
    (["task=clip"], "task"),
])
def test_bad_settings_are_named(world, tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        train(caption_cfg(world, tmp_path / "x", *extra), progress=False)


def test_pretraining_needs_transcripts(world, tmp_path):
    cfg = pretrain_cfg(world, tmp_path / "x", "train.steps=1")
    cfg.data.transcripts = ""
    with pytest.raises(ConfigError, match="data.transcripts"):
        train(cfg, progress=False)


def test_api_caption_and_kinds(world, captioner, trained_run):
    loaded = api.load_model(captioner[0])
    assert isinstance(loaded, api.LoadedCaptioner)
    feats = np.load(world.features / "features.npy")[:2, :8]
    one = api.caption(loaded, feats[0], "okay so now we make the red ball slide to the right")
    many = api.caption(loaded, list(feats), method="beam", beam_size=2)
    assert isinstance(one, str) and len(many) == 2 and all(isinstance(c, str) for c in many)
    assert api.caption(loaded, list(feats[:1]), method="greedy") == [api.caption(loaded, feats[0], method="greedy")]
    with pytest.raises(CheckpointError, match="mvgpt"):
        api.load_model(trained_run["out_dir"], kind="mvgpt")
    with pytest.raises(CheckpointError, match="taco"):
        api.load_model(captioner[0], kind="taco")
    with pytest.raises(CheckpointError, match="MV-GPT"):
        api.caption(api.load_model(trained_run["out_dir"]), feats[0])


def test_cli_caption_scores_a_folder_and_writes_captions(world, captioner, tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(["caption", str(captioner[0]), "--data", str(world.root), "--features", str(world.features),
                 "--annotations", str(world.captions), "--split", str(world.root / "val_ids.txt"),
                 "--transcripts", str(world.transcripts), "--method", "greedy", "--no-meteor", "--json",
                 "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads(out.read_text())
    assert result["metrics"] == printed["metrics"] and result["scoring"].startswith("greedy")
    assert result["split"].endswith("val_ids.txt") and result["extra"]["meteor"] is False
    lines = [json.loads(x) for x in out.with_suffix(".captions.jsonl").read_text().splitlines()]
    assert len(lines) == result["extra"]["videos"] == 2 * 4  # 2 validation scenes x 4 steps
    assert all(len(x["references"]) == 3 and isinstance(x["caption"], str) for x in lines)


def exp_tokenizer(cfg):
    from vidlang.text.pretrained import load_tokenizer

    return load_tokenizer(cfg.model.text_encoder)


def test_training_vocabulary_is_kept_with_the_checkpoint(world, tmp_path):
    out = tmp_path / "vocab"
    from vidlang.tasks.mvgpt import build_caption_experiment

    cfg = caption_cfg(world, out, "train.steps=2", "train.eval_every=2", "mvgpt.output_vocab=train")
    exp = build_caption_experiment(cfg)
    # The training texts' WordPieces, tokenized here from the clips (not read from the experiment), + [SEP]
    trained = {i for c in exp.train_set.clips for text in (c.caption, c.transcript or "")
               for i in exp_tokenizer(cfg)(text)["input_ids"]}
    assert set(exp.meta["output_vocab"]) == trained  # train texts only: no validation word leaks in
    assert 29999 not in trained
    exp.val_set.targets[0] = exp.val_set.targets[0][:-1] + [29999, exp.val_set.targets[0][-1]]  # a word never trained
    summary = train(cfg, exp, progress=False)
    expected = sum(tok not in trained for t in exp.val_set.targets for tok in t[1:])  # every predicted token
    assert expected > 1  # validation words the training texts lack, and the injected one
    assert summary["best"]["metrics"]["val_targets_outside_vocab"] == expected  # counted
    loaded = api.load_model(out)
    vocab = set(loaded.meta["output_vocab"])
    assert loaded.model.decoder.vocab_mask.sum() == len(vocab) < 1000  # the world's words, not BERT's 30k
    caps = api.caption(loaded, list(np.load(world.features / "features.npy")[:3, :8]))
    ids = [i for c in caps for i in loaded.tokenizer(c, add_special_tokens=False)["input_ids"]]
    assert set(ids) <= vocab


def test_cli_caption_one_npy(world, captioner, tmp_path, capsys):
    npy = tmp_path / "clip.npy"
    np.save(npy, np.load(world.features / "features.npy")[0, :8])
    assert main(["caption", str(captioner[0]), "--features", str(npy), "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out)["caption"], str)
    assert main(["caption", str(captioner[0])]) == 2  # neither --data nor a .npy: an error, not a traceback


def test_vivit_trains_end_to_end_from_raw_frames(tmp_path):
    world = write_narrated_world(tmp_path / "pixels", NarratedConfig(num_scenes=4, frames=4, size=16), raw_frames=True)
    cfg = load_config(None, [*TINY, f"data.features={world.frames}", f"data.annotations={world.captions}",
                             "data.train_split=train", "data.val_split=validate", "mvgpt.objective=caption",
                             "mvgpt.visual=vivit", "mvgpt.frame_size=16", "mvgpt.tubelet_size=8",
                             "eval.metric=val_loss", "train.steps=2", "train.eval_every=2", f"train.out_dir={tmp_path / 'run'}"])
    from vidlang.tasks.mvgpt import build_caption_experiment

    exp = build_caption_experiment(cfg)
    before = {k: v.clone() for k, v in exp.model.visual.state_dict().items()}
    summary = train(cfg, exp, progress=False)
    assert np.isfinite(summary["best"]["metric"])
    assert any(not torch.equal(before[k], v) for k, v in exp.model.visual.state_dict().items())  # pixels -> ViViT trained
    text = api.caption(api.load_model(tmp_path / "run"), np.load(world.frames / "features.npy")[0, :4].astype(np.float32))
    assert isinstance(text, str)


@pytest.mark.parametrize("recipe", ["configs/mvgpt/msrvtt-ae128.yaml", "configs/mvgpt/narrated-pretrain.yaml",
                                    "configs/mvgpt/narrated-caption.yaml", "src/vidlang/recipes/mvgpt-demo.yaml"])
def test_shipped_mvgpt_recipes_build_their_model(recipe):
    from pathlib import Path

    from vidlang.models.mvgpt import MVGPT

    cfg = load_config(Path(__file__).parents[1] / recipe)
    model = MVGPT(cfg, video_dim=128, load_text_weights=False)
    assert model.width == cfg.model.width and len(model.decoder.layers) == cfg.mvgpt.decoder_layers
