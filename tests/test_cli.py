"""The ``vidlang`` command line (train / evaluate) and ``vidlang.api.search``, end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_data, tiny_config, tiny_overrides, write_recipe
from vidlang.cli import main

METRIC_KEYS = [f"{d}_{m}" for d in ("t2v", "v2t") for m in ("R@1", "R@5", "R@10", "R@50", "MedR", "MeanR")]


def test_train_command(tmp_path, data_dir, capsys):
    recipe = write_recipe(tmp_path / "recipe.yaml", data_dir)
    out = tmp_path / "run"
    code = main(["train", str(recipe), *tiny_overrides(out, data_dir, "train.steps=3"), "--quiet"])
    assert code == 0
    assert (out / "latest").read_text().strip() == "step-000003"
    assert (out / "best").read_text().strip() == "step-000003"
    printed = capsys.readouterr().out
    assert "done: 3 steps" in printed and str(out) in printed
    # the recipe's values survive where no override touches them
    cfg = (out / "config.yaml").read_text()
    assert "max_words: 30" in cfg and "width: 16" in cfg and f"root: {data_dir}" in cfg


@pytest.mark.parametrize(
    "override, named",
    [("train.lrr=1", "train.lrr"), ("losss.token_weight=1", "losss"), ("train.steps=abc", "train.steps")],
)
def test_train_command_bad_config_key(tmp_path, data_dir, capsys, override, named):
    recipe = write_recipe(tmp_path / "recipe.yaml", data_dir)
    code = main(["train", str(recipe), *tiny_overrides(tmp_path / "run", data_dir), override])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("vidlang: error:") and f"'{named}'" in err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_train_command_missing_recipe(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def _evaluate(capsys, *args: str) -> dict:
    assert main(["evaluate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_evaluate_every_video_of_the_folder(trained_run, data_dir, capsys, tmp_path):
    # every video, training ones included: only with the flag, and the result says so
    result = _evaluate(capsys, str(trained_run["out_dir"]), "--data", str(data_dir), "--allow-train-overlap")
    assert result["split"] == f"{data_dir.name}:all" and result["scoring"] == "exact"
    m = result["metrics"]
    for key in METRIC_KEYS:
        assert key in m, key
    assert m["num_videos"] == 24 and m["num_texts"] == 72  # train and validation videos: every one
    for d, candidates in (("t2v", 24), ("v2t", 72)):
        r = [m[f"{d}_R@{k}"] for k in (1, 5, 10, 50)]
        assert all(0 <= x <= 100 for x in r) and r == sorted(r)
        assert 1 <= m[f"{d}_MedR"] <= candidates and 1 <= m[f"{d}_MeanR"] <= candidates
    assert m["t2v_R@50"] == 100  # only 24 videos to rank
    written = json.loads(Path(result["result_file"]).read_text())
    assert written["metrics"] == m and written["split"] == result["split"] and written["extra"]["train_overlap"] == 16
    assert written["protocol"] == "all-captions"  # every caption of every video is a query
    assert Path(result["result_file"]).parent == trained_run["out_dir"] / (trained_run["out_dir"] / "best").read_text().strip() / "results"

    # an explicit output path and scoring
    out = tmp_path / "res.json"
    s1 = _evaluate(capsys, str(trained_run["out_dir"]), "--data", str(data_dir), "--scoring", "s1", "--out", str(out),
                   "--allow-train-overlap")
    assert s1["scoring"] == "s1" and json.loads(out.read_text())["scoring"] == "s1"
    assert s1["metrics"]["num_videos"] == 24


def test_evaluate_split_file(trained_run, data_dir, capsys, tmp_path):
    ids = tmp_path / "five.txt"
    ids.write_text("# five validation videos\nvideo16\nvideo18\n\nvideo20\nvideo22\nvideo23\n")
    result = _evaluate(capsys, str(trained_run["out_dir"] / "step-000006"), "--data", str(data_dir),
                       "--split", str(ids))
    assert result["split"] == f"{data_dir.name}:five.txt"
    assert result["metrics"]["num_videos"] == 5 and result["metrics"]["num_texts"] == 15


def test_evaluate_wrong_feature_dim(trained_run, tmp_path, capsys):
    other = make_data(tmp_path / "wide", dim=10)
    assert main(["evaluate", str(trained_run["out_dir"]), "--data", str(other), "--json"]) == 2
    err = capsys.readouterr().err
    assert "dim 10" in err and "expects 8" in err


def test_evaluate_split_with_unknown_video(trained_run, data_dir, tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ann = json.loads((data_dir / "annotations.json").read_text())
    ann["video99"] = {"split": "validate", "captions": ["a cat eats a fish"]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    ids.write_text("video16\nvideo17\nvideo99\n")  # two held-out videos and one without features
    args = ["evaluate", str(trained_run["out_dir"]), "--data", str(data_dir), "--split", str(ids),
            "--annotations", str(tmp_path / "ann.json"), "--json"]
    assert main(args) == 2
    assert "video99" in capsys.readouterr().err
    result = _evaluate(capsys, *args[1:-1], "--skip-bad")  # skipped and counted
    assert result["metrics"]["num_videos"] == 2
    extra = json.loads(Path(result["result_file"]).read_text())["extra"]
    assert extra["skipped"] == {"missing_video": 1}


def test_evaluate_without_checkpoint(tmp_path, data_dir, capsys):
    assert main(["evaluate", str(tmp_path), "--data", str(data_dir)]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------- search
@pytest.fixture(scope="module")
def loaded(trained_run):
    from vidlang.api import load_model

    return load_model(trained_run["out_dir"])


def test_search_returns_top_k_sorted(loaded, data_dir):
    from vidlang.api import search

    (hits,) = search(loaded, "a man slices a tomato", data_dir, k=3)
    assert len(hits) == 3
    ids = [v for v, _ in hits]
    scores = [s for _, s in hits]
    assert len(set(ids)) == 3 and all(v.startswith("video") for v in ids)
    assert scores == sorted(scores, reverse=True)
    two = search(loaded, ["a man slices a tomato", "a dog eats a cake"], data_dir, k=30)
    assert len(two) == 2 and len(two[0]) == 24  # k past the store size: every video
    assert two[0][:3] == hits


def test_search_exact_equals_brute_force(loaded, data_dir):
    from vidlang.api import search
    from vidlang.inference import encode_text, encode_video
    from vidlang.data.features import open_store
    from vidlang.evaluation.scoring import score_matrix

    query = "a man slices a tomato"
    (hits,) = search(loaded, query, data_dir, k=5, scoring="exact")
    store = open_store(data_dir)
    videos = encode_video(loaded, [store[v] for v in store.ids])
    texts = encode_text(loaded, [query])
    e = loaded.cfg.eval
    sim = score_matrix(loaded.model, videos, texts, "exact", e.token_scale, e.rerank_topk, e.batch_pairs)[0]
    order = sim.argsort(descending=True)[:5].tolist()
    assert [v for v, _ in hits] == [store.ids[j] for j in order]
    assert [s for _, s in hits] == pytest.approx(sim[order].tolist(), abs=1e-5)

    # and by hand, one video at a time: s1 + 0.5 * s2 + s3 with the model's own score functions
    m, t = loaded.model, texts.encoded
    by_hand = []
    with torch.no_grad():
        for j in range(len(store.ids)):
            v = type(videos.encoded)(videos.encoded.tokens[j:j + 1], videos.encoded.mask[j:j + 1],
                                     videos.encoded.pooled[j:j + 1])
            s1 = m.sentence_scores(v, t)[0, 0]
            s2 = (m.token_similarities(v, t)[0, 0] * texts.weights[0]).sum()
            s3 = m.fusion_scores(v, t, torch.tensor([0]), torch.tensor([0]))[0]
            by_hand.append(float(s1 + e.token_scale * s2 + s3))
    assert by_hand == pytest.approx(sim.tolist(), abs=1e-4)


def test_search_bad_query(loaded, data_dir):
    from vidlang.api import search
    from vidlang.errors import DataError

    with pytest.raises(DataError, match="empty"):
        search(loaded, "   ", data_dir)


def test_search_wrong_dim_store(loaded, tmp_path):
    from vidlang.api import search
    from vidlang.errors import DataError

    with pytest.raises(DataError, match="dim"):
        search(loaded, "a dog", make_data(tmp_path / "wide", dim=10), k=3)


def test_public_names_are_not_shadowed_by_submodules(trained_run, data_dir):
    import importlib

    import vidlang

    model = vidlang.load_model(trained_run["out_dir"])
    first = vidlang.search(model, "a man slices a tomato", data_dir, k=2)
    for name in ("vidlang.retrieval", "vidlang.retrieval.query", "vidlang.inference", "vidlang.api"):
        importlib.import_module(name)
    assert callable(vidlang.search) and vidlang.search(model, "a man slices a tomato", data_dir, k=2) == first


def test_querybank_normalisation_is_kept_with_the_run_and_applied_by_evaluate(tmp_path, data_dir, capsys):
    """eval.querybank: a fixed draw of training captions sits in every checkpoint's meta.json; validation and
    `vidlang evaluate` apply QB-Norm to t2v with it (stamped), and leave v2t as it was."""
    from vidlang.api import load_model
    from vidlang.data.sources import open_data
    from vidlang.evaluation.metrics import retrieval_metrics
    from vidlang.evaluation.retrieval import bank_similarity, similarity
    from vidlang.evaluation.scoring import querybank_normalise
    from vidlang.train import train

    out = tmp_path / "run"
    summary = train(tiny_config(out, data_dir, "train.steps=4", "eval.querybank=10", "eval.querybank_beta=2"),
                    progress=False)
    meta = json.loads((out / "step-000004" / "meta.json").read_text())
    captions = json.loads((data_dir / "annotations.json").read_text())
    train_captions = {c for v in captions.values() if v["split"] == "train" for c in v["captions"]}
    assert len(meta["querybank"]) == 10 and set(meta["querybank"]) <= train_captions
    from vidlang.tasks.taco import TASK
    assert summary["steps"] == 4 and "QB-Norm" in TASK.scoring(load_model(out).cfg)  # the test-split stamp

    ids = tmp_path / "val.txt"
    ids.write_text("".join(f"video{i}\n" for i in range(16, 24)))
    capsys.readouterr()
    qb = _evaluate(capsys, str(out), "--data", str(data_dir), "--split", str(ids))
    assert "QB-Norm" in qb["scoring"] and "bank of 10 training captions, beta 2" in qb["scoring"]

    loaded = load_model(out)
    source = open_data(data_dir)
    dataset = loaded.dataset([c for c in source.clips if int(c.video_id[5:]) >= 16], source.store)
    cfg = loaded.cfg.eval
    sim, text_to_video = similarity(loaded.model, dataset, cfg)
    bank = bank_similarity(loaded.model, dataset, meta["querybank"], cfg)
    expected = retrieval_metrics(querybank_normalise(sim, bank, 2.0 / float(bank.std())), text_to_video)
    plain = retrieval_metrics(sim, text_to_video)
    for key, value in qb["metrics"].items():
        if key.startswith(("t2v", "v2t")):
            assert value == pytest.approx(expected[key] if key.startswith("t2v") else plain[key]), key



def test_querybank_scores_take_t2v_from_the_normalised_matrix_and_v2t_from_the_raw_one(monkeypatch):
    """retrieval_scores: beta in units of the bank's std, t2v metrics from QB-Norm's matrix, v2t from the raw one."""
    from types import SimpleNamespace

    from vidlang.config import EvalConfig
    from vidlang.evaluation import retrieval
    from vidlang.evaluation.metrics import retrieval_metrics

    sim = torch.tensor([[3.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 3.0]])
    bank = torch.tensor([[0.0, 4.0, 1.0], [2.0, 0.0, 1.0]])
    seen = {}

    def fake_normalise(s, b, beta, dynamic):
        seen["beta"] = beta
        return -s  # a different ranking, to tell which matrix each direction used

    monkeypatch.setattr(retrieval, "bank_similarity", lambda *a, **k: bank)
    monkeypatch.setattr(retrieval, "querybank_normalise", fake_normalise)
    cfg = EvalConfig(querybank=2, querybank_beta=3.0)
    out = retrieval.retrieval_scores(None, SimpleNamespace(querybank=["a", "b"]), sim, [0, 1, 2], cfg)
    assert seen["beta"] == pytest.approx(3.0 / float(bank.std()))
    flipped, plain = retrieval_metrics(-sim, [0, 1, 2]), retrieval_metrics(sim, [0, 1, 2])
    assert out["t2v_R@1"] == flipped["t2v_R@1"] != plain["t2v_R@1"] and out["v2t_R@1"] == plain["v2t_R@1"]
    assert retrieval.retrieval_scores(None, SimpleNamespace(querybank=[]), sim, [0, 1, 2], cfg) == plain


def test_a_run_of_two_members_is_evaluated_on_the_mean_of_their_scores(tmp_path, data_dir, capsys):
    # train.members=2 (beyond the papers): member 2 trains in run/members/2 with seed + 1000
    import copy

    from vidlang.evaluation.retrieval import bank_similarity, scores_with_bank, similarity
    from vidlang.inference import load_model

    from vidlang.config import checkpoint_config
    from vidlang.data.sources import open_data

    out = tmp_path / "pool"
    recipe = write_recipe(tmp_path / "recipe.yaml", data_dir)
    assert main(["train", str(recipe), *tiny_overrides(out, data_dir, "train.steps=2", "train.members=2"), "--quiet"]) == 0
    assert "member 2 of 2" in capsys.readouterr().out
    assert checkpoint_config(out / "members" / "2" / "step-000002").train.seed == 1000
    result = _evaluate(capsys, str(out), "--data", str(data_dir), "--allow-train-overlap")
    assert "mean of 2 members" in result["scoring"]
    sims, banks = [], []
    for run in (out, out / "members" / "2"):  # each member alone
        alone = load_model(run)
        assert alone.members == [] or run == out
        source = open_data(data_dir)
        clips, _ = source.eval_split("all")
        data, cfg = alone.dataset(clips, source.store), copy.copy(alone.cfg.eval)
        sim, text_to_video = similarity(alone.model, data, cfg)
        sims.append(sim)
        banks.append(bank_similarity(alone.model, data, alone.meta["querybank"], cfg))  # QB-Norm's bank (t2v)
    assert not torch.equal(sims[0], sims[1])
    want = scores_with_bank((sims[0] + sims[1]) / 2, (banks[0] + banks[1]) / 2, text_to_video, cfg)
    assert {k: result["metrics"][k] for k in want} == pytest.approx(want)
    with pytest.warns(UserWarning, match="train.members"):
        from vidlang.retrieval.index import build_index

        build_index(load_model(out), source.store)
