"""decode.method=rerank: candidates from several decodings, the pick agreeing with the nearest training videos."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import N_TRAIN, read_annotations_json
from helpers import MVGPT_TINY, SAYS, held_out_split, patch_decoder

from vidlang.errors import CheckpointError, ConfigError
from vidlang.evaluation.baselines import rerank_by_neighbours
from vidlang.evaluation.caption_rerank import BANK_FILE, CaptionBank, pick_by_neighbours



def test_pick_follows_the_nearest_training_videos_and_keeps_empty_pools_empty():
    e = np.eye(4, dtype=np.float32)
    bank = CaptionBank(["v0", "v1", "v2", "v3"],
                       [["a dog runs in a park", "a dog runs on grass"], ["a brown dog runs in the park"],
                        ["a man is cooking food", "a man cooks in a kitchen"], ["a man cooks pasta in a kitchen"]],
                       np.stack([e[0] + 0.1 * e[1], e[0], e[2], e[2] + 0.1 * e[3]]))
    pool = ["a dog runs in a park", "a man cooks in a kitchen"]
    picked = pick_by_neighbours([pool, pool, []], np.stack([e[2], e[0], e[1]]), bank, 2)
    assert picked == ["a man cooks in a kitchen", "a dog runs in a park", ""]


def test_bank_round_trips_and_a_bad_file_is_named(tmp_path):
    bank = CaptionBank(["a", "b"], [["x y"], ["z", "w v"]], np.arange(6, dtype=np.float32).reshape(2, 3))
    (tmp_path / BANK_FILE).write_bytes(bank.to_bytes())
    back = CaptionBank.load(tmp_path / BANK_FILE)
    assert back.keys == bank.keys and back.captions == bank.captions and np.array_equal(back.features, bank.features)
    (tmp_path / "bad.safetensors").write_bytes(b"not a bank")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        CaptionBank.load(tmp_path / "bad.safetensors")


@pytest.fixture()
def patched_decoder(monkeypatch):
    patch_decoder(monkeypatch)


@pytest.fixture(scope="module")
def reranking_run(tmp_path_factory, data_dir) -> Path:
    from vidlang.config import load_config
    from vidlang.train import train

    out = tmp_path_factory.mktemp("rerank") / "run"
    train(load_config(None, [*MVGPT_TINY, f"data.root={data_dir}", "data.train_split=train", "data.val_split=validate",
                             "decode.method=rerank", "decode.rerank_neighbours=3", "eval.metric=CIDEr", "train.steps=2", "train.save_every=2",
                             "train.eval_every=2", "train.threads=1", "train.batch_size=8", "data.max_frames=6",
                             f"train.out_dir={out}"]), progress=False)
    return out


def test_a_reranking_run_keeps_its_training_captions_and_says_how_it_scored(reranking_run, data_dir, tmp_path):
    import vidlang

    checkpoint = vidlang.load_model(reranking_run)
    ann = read_annotations_json(data_dir)
    train_ids = [f"video{i}" for i in range(N_TRAIN)]
    assert checkpoint.caption_bank.keys == train_ids  # training videos only, never a validation one
    assert checkpoint.caption_bank.captions == [ann[v]["captions"] for v in train_ids]
    feats = np.load(data_dir / "features.npy")
    assert np.allclose(checkpoint.caption_bank.features, feats[:N_TRAIN].mean(axis=1), atol=1e-6)
    from vidlang.tasks.mvgpt import TASK

    assert TASK.scoring(checkpoint.cfg) == "rerank3 captions, all references"  # validation and test say so
    from vidlang.inference import save_pretrained

    shared = vidlang.load_model(save_pretrained(checkpoint, tmp_path / "shared"))  # a model folder keeps the bank
    assert shared.caption_bank.keys == train_ids


def test_caption_reranks_as_a_plain_loop_over_the_files_would(reranking_run, data_dir, tmp_path, patched_decoder,
                                                              capsys):
    import vidlang
    from vidlang.cli import main

    ann, feats, ids, held, split = held_out_split(data_dir, tmp_path)
    assert main(["caption", str(reranking_run), "--data", str(data_dir), "--split", str(split), "--no-meteor",
                 "--json", "--out", str(tmp_path / "r.json")]) in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["decoding"].startswith("rerank3")
    got = {row["id"]: row["caption"] for row in map(json.loads, open(out["captions_file"]))}
    pools = [list(SAYS.values())] * len(held)
    want = rerank_by_neighbours(pools, feats[:N_TRAIN], [ann[v]["captions"] for v in ids[:N_TRAIN]], feats[held], 3)
    assert [got[ids[i]] for i in held] == want and len(set(want)) > 1
    # the Python API on one array picks the same
    assert vidlang.caption(vidlang.load_model(reranking_run), feats[held[0]]) == want[0]


def test_rerank_without_a_bank_is_a_named_error(data_dir, tmp_path):
    import vidlang
    from vidlang.config import load_config
    from vidlang.train import train

    out = tmp_path / "greedy"
    train(load_config(None, [*MVGPT_TINY, f"data.root={data_dir}", "data.train_split=train", "data.val_split=none",
                             "train.steps=1", "train.save_every=1", "train.eval_every=0", "train.threads=1",
                             "train.batch_size=8", f"train.out_dir={out}"]), progress=False)
    loaded = vidlang.load_model(out)
    assert loaded.caption_bank is None and not list(out.glob(f"*/{BANK_FILE}"))
    with pytest.raises(ConfigError, match=BANK_FILE):
        vidlang.caption(loaded, np.ones((6, 8), np.float32), method="rerank")


def test_rerank_refuses_settings_its_fixed_decodings_ignore(reranking_run):
    import vidlang

    with pytest.raises(ConfigError, match="beam_size"):
        vidlang.caption(vidlang.load_model(reranking_run), np.ones((6, 8), np.float32), beam_size=8)


# --------------------------------------------------------------------- pooled candidates of several captioners
MEMBER_SAYS = {"greedy": "a child paints a fence", "beam": "the dog is eating the apple",
               "beam-nr2": "a woman throws a box"}


def _train_rerank_run(out: Path, data_dir: Path, *extra: str) -> Path:
    from vidlang.config import load_config
    from vidlang.train import train

    train(load_config(None, [*MVGPT_TINY, f"data.root={data_dir}", "data.train_split=train", "data.val_split=none",
                             "decode.method=rerank", "decode.rerank_neighbours=3", "train.steps=1", "train.save_every=1",
                             "train.eval_every=0", "train.threads=1", "train.batch_size=8", "data.max_frames=6",
                             f"train.out_dir={out}", *extra]), progress=False)
    return out


@pytest.fixture(scope="module")
def member_run(tmp_path_factory, data_dir) -> Path:
    return _train_rerank_run(tmp_path_factory.mktemp("member") / "run", data_dir, "train.seed=7")


def _two_voices(monkeypatch, member_seed: int) -> None:
    """The captioner trained with ``member_seed`` says MEMBER_SAYS, every other captioner SAYS."""
    from vidlang.models.mvgpt import MVGPT
    from vidlang.text.pretrained import load_tokenizer

    def generate(self, video, *args, method=None, **settings):
        tok = load_tokenizer(self.cfg.model.text_encoder)
        name = "beam-nr2" if settings.get("no_repeat_ngram") == 2 else (method or self.cfg.decode.method)
        says = MEMBER_SAYS if self.cfg.train.seed == member_seed else SAYS
        return [tok(says[name], add_special_tokens=False)["input_ids"]] * video.shape[0]

    monkeypatch.setattr(MVGPT, "generate", generate)


@pytest.fixture()
def two_voices(monkeypatch):
    _two_voices(monkeypatch, 7)  # member_run's seed


def test_members_candidates_join_the_pools(reranking_run, member_run, data_dir, tmp_path, two_voices, capsys):
    from vidlang.cli import main

    ann, feats, ids, held, split = held_out_split(data_dir, tmp_path)
    assert main(["caption", str(reranking_run), "--members", str(member_run), "--data", str(data_dir), "--split",
                 str(split), "--no-meteor", "--json", "--out", str(tmp_path / "r.json")]) in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["decoding"].startswith("rerank3") and out["decoding"].endswith("-pool2")
    assert json.loads((tmp_path / "r.json").read_text())["extra"]["members"] == [str(member_run / "step-000001")]
    got = {row["id"]: row["caption"] for row in map(json.loads, open(out["captions_file"]))}
    pools = [[*SAYS.values(), *MEMBER_SAYS.values()]] * len(held)
    want = rerank_by_neighbours(pools, feats[:N_TRAIN], [ann[v]["captions"] for v in ids[:N_TRAIN]], feats[held], 3)
    assert [got[ids[i]] for i in held] == want
    assert set(want) & set(MEMBER_SAYS.values()) and set(want) & set(SAYS.values())  # both captioners win somewhere


def test_members_must_read_the_same_inputs_and_training_videos(reranking_run, data_dir, tmp_path, capsys):
    from vidlang.cli import main

    wider = _train_rerank_run(tmp_path / "frames4", data_dir, "data.max_frames=4")
    other_train = _train_rerank_run(tmp_path / "other", data_dir, "data.train_split=index:0:12")
    greedy = _train_rerank_run(tmp_path / "greedy", data_dir, "decode.method=greedy")
    base = ["caption", str(reranking_run), "--data", str(data_dir), "--no-meteor"]
    for member, named in ((wider, "data.max_frames"), (other_train, "caption_bank")):
        assert main([*base, "--members", str(member)]) == 2
        err = capsys.readouterr().err
        assert str(member) in err and named in err and "Traceback" not in err
    assert main(["caption", str(greedy), "--data", str(data_dir), "--no-meteor", "--members", str(reranking_run)]) == 2
    assert "rerank" in capsys.readouterr().err
    assert main(["caption", str(reranking_run), "--features", "x.npy", "--members", str(reranking_run)]) == 2
    assert "--data" in capsys.readouterr().err



# --------------------------------------------------------------------- train.members: one run, several captioners
@pytest.fixture(scope="module")
def pool_run(tmp_path_factory, data_dir) -> Path:
    return _train_rerank_run(tmp_path_factory.mktemp("pool") / "run", data_dir, "train.members=2", "train.seed=0")


@pytest.fixture()
def member_voice(monkeypatch):
    _two_voices(monkeypatch, 1000)  # the run's second member


def test_a_run_of_two_members_trains_both_and_pools_them(pool_run, data_dir, tmp_path, member_voice, capsys):
    from vidlang.checkpoint import read_meta
    from vidlang.cli import main
    from vidlang.config import checkpoint_config
    from vidlang.inference import caption, load_model, save_pretrained

    member = pool_run / "members" / "2" / "step-000001"
    assert checkpoint_config(member).train.seed == 1000 and read_meta(member)["model"] == "mvgpt"
    ann, feats, ids, held, split = held_out_split(data_dir, tmp_path)
    pools = [[*SAYS.values(), *MEMBER_SAYS.values()]] * len(held)
    want = rerank_by_neighbours(pools, feats[:N_TRAIN], [ann[v]["captions"] for v in ids[:N_TRAIN]], feats[held], 3)
    assert set(want) & set(MEMBER_SAYS.values()) and set(want) & set(SAYS.values())
    assert main(["caption", str(pool_run), "--data", str(data_dir), "--split", str(split), "--no-meteor", "--json",
                 "--out", str(tmp_path / "r.json")]) in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["decoding"].endswith("-pool2")
    assert json.loads((tmp_path / "r.json").read_text())["extra"]["members"] == [str(member)]
    got = {row["id"]: row["caption"] for row in map(json.loads, open(out["captions_file"]))}
    assert [got[ids[i]] for i in held] == want
    # the library call and a shared copy pool the same way
    shared = save_pretrained(load_model(pool_run), tmp_path / "shared")
    for loaded in (load_model(pool_run), load_model(shared)):
        assert len(loaded.members) == 1
        assert caption(loaded, [feats[i] for i in held]) == want
    assert main(["caption", str(pool_run), "--data", str(data_dir), "--split", str(split), "--no-meteor", "--json",
                 "--method", "greedy", "--out", str(tmp_path / "g.json")]) in (0, None)
    assert "pool" not in json.loads(capsys.readouterr().out)["decoding"]


def test_members_need_a_pooling_config_and_every_member_folder(pool_run, data_dir, tmp_path, capsys):
    import shutil

    from vidlang.cli import main
    from vidlang.inference import load_model

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("task: mvgpt\n")
    base = ["train", "--quiet", str(recipe), *MVGPT_TINY, f"data.root={data_dir}", "train.steps=1", "train.members=2",
            "data.train_split=train", "data.val_split=none"]
    for extra in (["decode.method=greedy"], ["mvgpt.objective=pretrain", "decode.method=rerank"]):
        assert main([*base, *extra, f"train.out_dir={tmp_path / 'x'}"]) == 2
        err = capsys.readouterr().err
        assert "train.members=2" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    grown = tmp_path / "grown"  # a finished run does not take more members: its checkpoints would not pool them
    shutil.copytree(pool_run, grown)
    with pytest.raises(ConfigError, match="train.members"):
        _train_rerank_run(grown, data_dir, "train.members=3", "train.seed=0")
    assert not (grown / "members" / "3").exists()
    broken = tmp_path / "broken"
    shutil.copytree(pool_run, broken)
    shutil.rmtree(broken / "members" / "2")
    with pytest.raises(CheckpointError, match=r"members/2"):
        load_model(broken)
