"""decode.rerank_retriever: a TACo model's sentence score finds the rerank's nearest training videos."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import N_TRAIN, TINY, read_annotations_json
from helpers import MVGPT_TINY, SAYS, held_out_split, patch_decoder

from vidlang.errors import CheckpointError, ConfigError
from vidlang.evaluation.baselines import rerank_by_neighbours
from vidlang.evaluation.caption_rerank import BANK_FILE, CaptionBank, load_retriever

RERANK = ["decode.method=rerank", "decode.rerank_neighbours=3", "data.train_split=train", "data.val_split=none",
          "train.steps=1", "train.save_every=1", "train.eval_every=0", "train.threads=1", "train.batch_size=8",
          "data.max_frames=6"]


def plain_nearest(retriever, clips: list[np.ndarray], captions: list[list[str]], k: int) -> np.ndarray:
    """The paper's s1 of every (clip, training caption) pair, averaged over each video's captions, top k."""
    from vidlang.data.dataset import sample_frames

    model, tok = retriever.model, retriever.tokenizer
    scores = np.zeros((len(clips), len(captions)))
    with torch.no_grad():
        for i, clip in enumerate(clips):
            frames = torch.from_numpy(sample_frames(clip, retriever.max_frames))[None]
            video = model.encode_video(frames, torch.ones(frames.shape[:2], dtype=torch.bool))
            for j, caps in enumerate(captions):
                for c in caps:
                    enc = tok([c], truncation=True, max_length=retriever.max_words, return_tensors="pt")
                    text = model.encode_text(enc["input_ids"], enc["attention_mask"])
                    scores[i, j] += float(model.sentence_scores(video, text)) / len(caps)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.fixture()
def patched_decoder(monkeypatch):
    patch_decoder(monkeypatch)


@pytest.fixture(scope="module")
def retriever_run(tmp_path_factory, data_dir) -> Path:
    """A captioner whose recipe names a TACo recipe as its retriever: one `vidlang train` trains both."""
    from vidlang.cli import main

    root = tmp_path_factory.mktemp("retriever")
    recipe: dict = {"task": "taco"}
    for key, value in (o.split("=") for o in TINY if not o.startswith(("data.train_split", "data.val_split"))):
        section, name = key.split(".")
        recipe.setdefault(section, {})[name] = yaml.safe_load(value)
    taco = root / "taco.yaml"
    taco.write_text(yaml.safe_dump(recipe))
    out, captioner = root / "run", root / "caption.yaml"
    captioner.write_text("task: mvgpt\n")
    command = ["train", "--quiet", str(captioner), *MVGPT_TINY, f"data.root={data_dir}", *RERANK, "train.seed=3",
               f"decode.rerank_retriever={taco}", f"train.out_dir={out}"]
    assert main(command) in (0, None)
    weights = sorted((out / "retriever").glob("step-*/model.safetensors"))
    stamps = [w.stat().st_mtime_ns for w in weights]
    assert main(command) in (0, None)  # the same command again resumes: the finished retriever is not retrained
    assert sorted((out / "retriever").glob("step-*/model.safetensors")) == weights
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    return out


def test_one_run_trains_its_retriever_first_on_the_same_videos(retriever_run, data_dir):
    from vidlang.checkpoint import find_checkpoint
    from vidlang.config import checkpoint_config
    from vidlang.inference import load_model

    retriever = checkpoint_config(find_checkpoint(retriever_run / "retriever", "latest"))
    assert retriever.task == "taco" and retriever.train.seed == 3 and retriever.train.members == 1
    assert retriever.data.root == str(data_dir) and retriever.data.train_split == "train"
    loaded = load_model(retriever_run)
    assert loaded.cfg.decode.rerank_retriever == str(retriever_run / "retriever")
    assert loaded.retriever is not None and loaded.retriever.checkpoint.parent == retriever_run / "retriever"
    ann = read_annotations_json(data_dir)
    captions = [ann[f"video{i}"]["captions"] for i in range(N_TRAIN)]
    bank = CaptionBank.load(loaded.checkpoint / BANK_FILE)
    assert np.allclose(bank.retrieval, loaded.retriever.text_vectors(captions), atol=1e-6)


def test_the_retriever_picks_the_neighbours_the_sentence_score_ranks_first(retriever_run, data_dir, tmp_path,
                                                                           patched_decoder, capsys):
    import vidlang
    from vidlang.cli import main
    from vidlang.inference import caption, load_model, save_pretrained

    ann, feats, ids, held, split = held_out_split(data_dir, tmp_path)
    loaded = load_model(retriever_run)
    captions = [ann[v]["captions"] for v in ids[:N_TRAIN]]
    nearest = plain_nearest(loaded.retriever, [feats[i] for i in held], captions, 3)
    assert np.array_equal(loaded.retriever.nearest([feats[i] for i in held], loaded.caption_bank, 3), nearest)
    pools = [list(SAYS.values())] * len(held)
    want = rerank_by_neighbours(pools, feats[:N_TRAIN], captions, feats[held], 3, nearest=nearest)
    by_features = rerank_by_neighbours(pools, feats[:N_TRAIN], captions, feats[held], 3)
    assert want != by_features  # the fixture tells the two neighbour sources apart
    assert main(["caption", str(retriever_run), "--data", str(data_dir), "--split", str(split), "--no-meteor",
                 "--json", "--out", str(tmp_path / "r.json")]) in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert "-taco" in out["decoding"]
    got = {row["id"]: row["caption"] for row in map(json.loads, open(out["captions_file"]))}
    assert [got[ids[i]] for i in held] == want
    shared = save_pretrained(loaded, tmp_path / "shared")  # the model folder carries its retriever
    shutil.move(str(retriever_run), str(tmp_path / "moved"))
    try:
        assert caption(vidlang.load_model(shared), [feats[i] for i in held]) == want
    finally:
        shutil.move(str(tmp_path / "moved"), str(retriever_run))


def test_a_missing_or_unusable_retriever_is_named(retriever_run, data_dir, tmp_path, capsys):
    from vidlang.cli import main
    from vidlang.inference import load_model

    broken = tmp_path / "broken"  # neither its own retriever/ nor the folder its config names
    shutil.copytree(retriever_run, broken)
    shutil.rmtree(broken / "retriever")
    for config in broken.glob("step-*/config.yaml"):
        config.write_text(config.read_text().replace(str(retriever_run / "retriever"), str(tmp_path / "gone")))
    with pytest.raises(CheckpointError, match="rerank_retriever"):
        load_model(broken)
    with pytest.raises(CheckpointError, match="'taco'"):
        load_retriever(retriever_run)  # a captioner is not a retriever
    stale = tmp_path / "stale"  # a bank whose caption vectors another retriever made
    shutil.copytree(retriever_run, stale)
    for file in stale.glob(f"step-*/{BANK_FILE}"):
        bank = CaptionBank.load(file)
        bank.retrieval = bank.retrieval[::-1].copy()
        file.write_bytes(bank.to_bytes())
    with pytest.raises(CheckpointError, match="retrieval vectors"):
        load_model(stale)
    captioner = tmp_path / "caption.yaml"
    captioner.write_text("task: mvgpt\n")
    for extra, says in (([f"decode.rerank_retriever={captioner}"], "'mvgpt' recipe"),
                        ([f"decode.rerank_retriever={captioner}", "decode.method=greedy"], "decode.method=rerank")):
        assert main(["train", "--quiet", str(captioner), *MVGPT_TINY, f"data.root={data_dir}", *RERANK, *extra,
                     f"train.out_dir={tmp_path / 'x'}"]) == 2
        err = capsys.readouterr().err
        assert "rerank_retriever" in err and says in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_a_retriever_that_trained_on_held_out_videos_is_refused(retriever_run, data_dir, tmp_path, capsys):
    from vidlang.checkpoint import TRAIN_IDS, find_checkpoint
    from vidlang.cli import main
    from vidlang.config import load_config
    from vidlang.tasks.mvgpt import build_caption_experiment

    ann, feats, ids, held, split = held_out_split(data_dir, tmp_path)
    leaky = tmp_path / "leaky"
    shutil.copytree(retriever_run / "retriever", leaky)
    ids_file = find_checkpoint(leaky, "best") / TRAIN_IDS
    ids_file.write_text(ids_file.read_text() + ids[held[0]] + "\n")  # as if it had trained on a held-out video
    with pytest.raises(ConfigError, match=f"validation/test videos .*{ids[held[0]]}"):
        build_caption_experiment(load_config(None, [*MVGPT_TINY, f"data.root={data_dir}", *RERANK,
                                                    "data.val_split=validate", f"decode.rerank_retriever={leaky}"]))
    moved = tmp_path / "moved"  # a captioner whose retriever is the leaky one: scoring those videos is refused
    shutil.copytree(retriever_run, moved)
    shutil.rmtree(moved / "retriever")
    shutil.copytree(leaky, moved / "retriever")
    assert main(["caption", str(moved), "--data", str(data_dir), "--split", str(split), "--no-meteor"]) == 2
    err = capsys.readouterr().err
    assert ids[held[0]] in err and "retriever" in err and "Traceback" not in err


def test_building_a_captioner_with_an_untrained_recipe_is_refused(data_dir, tmp_path):
    from vidlang.config import load_config
    from vidlang.tasks.mvgpt import build_caption_experiment

    with pytest.raises(ConfigError, match="recipe"):
        build_caption_experiment(load_config(None, [*MVGPT_TINY, f"data.root={data_dir}", *RERANK,
                                            f"decode.rerank_retriever={tmp_path / 'taco.yaml'}"]))
