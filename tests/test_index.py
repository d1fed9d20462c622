"""vidlang.retrieval.index and vidlang.retrieval.query: stored features, FAISS stage one, cascade, word × time alignment, CLI."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_data
from vidlang.cli import main
from vidlang.errors import CheckpointError, DataError

QUERY = "a man slices a tomato"


@pytest.fixture(scope="module")
def loaded(trained_run):
    from vidlang.api import load_model

    return load_model(trained_run["out_dir"])


@pytest.fixture(scope="module")
def index32(loaded, data_dir, tmp_path_factory):
    from vidlang.retrieval.index import build_index

    return build_index(loaded, data_dir, tmp_path_factory.mktemp("idx") / "fp32", token_dtype="float32")


@pytest.fixture(scope="module")
def brute(loaded, data_dir):
    """Exact scores by scoring.py on freshly encoded videos: s1, s2, s1+0.5 s2, s1+0.5 s2+s3, per video."""
    from vidlang.inference import encode_text, encode_video
    from vidlang.data.features import open_store
    from vidlang.evaluation.scoring import score_matrix, sentence_and_token_scores

    store = open_store(data_dir)
    videos, texts = encode_video(loaded, [store[v] for v in store.ids]), encode_text(loaded, QUERY)
    s1, s2 = sentence_and_token_scores(loaded.model, videos, texts)
    return {"ids": store.ids, "s1": s1[0], "s2": s2[0],
            "base": score_matrix(loaded.model, videos, texts, "s1+s2")[0],
            "exact": score_matrix(loaded.model, videos, texts, "exact")[0]}


def test_index_search_equals_brute_force(index32, brute):
    from vidlang.retrieval.query import search

    n = len(brute["ids"])
    hits = search(index32, QUERY, k=n, rerank_topk=n)  # every clip reranked: the paper's exact score
    order = torch.sort(brute["exact"], descending=True, stable=True).indices.tolist()
    assert [h.video_id for h in hits] == [brute["ids"][j] for j in order]
    assert [h.score for h in hits] == pytest.approx(brute["exact"][order].tolist(), abs=1e-4)
    for h in hits:
        j = brute["ids"].index(h.video_id)
        assert h.s1 == pytest.approx(float(brute["s1"][j]), abs=1e-4)
        assert h.s2 == pytest.approx(float(brute["s2"][j]), abs=1e-4)
        assert h.s1 + 0.5 * h.s2 + h.s3 == pytest.approx(h.score, abs=1e-5)


def test_cascade_reranks_only_the_stage_one_shortlist(index32, brute):
    from vidlang.retrieval.query import search

    hits = search(index32, QUERY, k=24, rerank_topk=5)
    base_top5 = set(torch.topk(brute["base"], 5).indices.tolist())
    assert {brute["ids"].index(h.video_id) for h in hits[:5]} == base_top5
    assert all(h.s3 is not None for h in hits[:5]) and all(h.s3 is None for h in hits[5:])
    for h in hits:
        j = brute["ids"].index(h.video_id)
        assert h.score == pytest.approx(float(brute["exact" if h.s3 is not None else "base"][j]), abs=1e-4)
    assert [h.score for h in hits[:5]] == sorted((h.score for h in hits[:5]), reverse=True)
    assert [h.score for h in hits[5:]] == sorted((h.score for h in hits[5:]), reverse=True)
    plain = search(index32, QUERY, k=3, rerank=False)
    assert all(h.s3 is None for h in plain) and [h.score for h in plain] == pytest.approx(
        torch.topk(brute["base"], 3).values.tolist(), abs=1e-4)


def test_faiss_shortlist_by_s1(index32, brute):
    from vidlang.retrieval.index import FaissSettings, build_faiss, s1_vectors
    from vidlang.retrieval.query import search

    hits = search(index32, QUERY, k=24, candidates=10, rerank=False)
    assert len(hits) == 10  # only the FAISS shortlist is scored
    top_s1 = {brute["ids"][j] for j in torch.topk(brute["s1"], 10).indices.tolist()}
    assert {h.video_id for h in hits} == top_s1
    # an IVF stage one with a single cell is exact too; nprobe goes through FAISS search parameters
    ivf = dataclasses.replace(index32, faiss_index=build_faiss(s1_vectors(index32.loaded, torch.from_numpy(
        np.array(index32.pooled))), FaissSettings("ivf", nlist=1)))
    again = search(ivf, QUERY, k=24, candidates=10, rerank=False, nprobe=1)
    assert [(h.video_id, h.score) for h in again] == [(h.video_id, h.score) for h in hits]


def test_float16_tokens_within_tolerance(loaded, data_dir, brute, tmp_path):
    """fp16 keeps ~11 significant bits (relative error <= 2^-11 per element); s1 uses float32 pooled
    vectors and stays exact, s2/s3 move by well under 1% of their scale."""
    from vidlang.retrieval.index import build_index
    from vidlang.retrieval.query import search

    index = build_index(loaded, data_dir, tmp_path / "fp16")
    assert index.tokens.dtype == np.float16 and isinstance(index.tokens, np.memmap)
    hits = search(index, QUERY, k=24, rerank_topk=24)
    scale = float(brute["exact"].abs().max())
    for h in hits:
        j = brute["ids"].index(h.video_id)
        assert h.s1 == pytest.approx(float(brute["s1"][j]), abs=1e-5)
        assert h.score == pytest.approx(float(brute["exact"][j]), abs=1e-2 * scale)


def test_index_contents_and_metadata(index32, loaded, data_dir):
    from vidlang.retrieval.index import load_index

    meta = json.loads((index32.path / "index.json").read_text())
    assert meta["num_clips"] == 24 and meta["checkpoint"]["path"] == str(loaded.checkpoint.resolve())
    assert meta["checkpoint"]["git_commit"] == loaded.meta.get("git_commit") and meta["checkpoint"]["config_sha256"]
    assert meta["faiss"]["built"] == "IndexFlatIP" and meta["store"]["num_videos"] == 24
    assert sorted(p.name for p in index32.path.iterdir()) == sorted(
        ["index.json", "video_ids.txt", "segments.npy", "frames.npy", "pooled.npy", "tokens.npy", "mask.npy",
         "faiss.index"])
    again = load_index(index32.path)  # the checkpoint recorded in the index
    assert again.video_ids == index32.video_ids and np.array_equal(again.pooled, index32.pooled)
    assert np.isnan(again.segments).all() and (again.frames == np.arange(6)).all()


def test_clip_segments_and_extractor_meta(loaded, tmp_path):
    from vidlang.inference import encode_video
    from vidlang.data.features import open_store
    from vidlang.retrieval.index import build_index, read_clips
    from vidlang.retrieval.query import search

    data = make_data(tmp_path / "data")
    (data / "meta.json").write_text(json.dumps({"fps": 2.0, "extractor": {"name": "toy", "dim": 8}}))
    (tmp_path / "clips.txt").write_text("# id start end\nvideo1 0.5 2.0\nvideo2\n")
    index = build_index(loaded, data, tmp_path / "idx", clips=read_clips(tmp_path / "clips.txt"), token_dtype="float32")
    assert index.video_ids == ["video1", "video2"] and index.fps == 2.0
    assert index.meta["store"]["meta"]["extractor"] == {"name": "toy", "dim": 8}
    assert index.frames[0].tolist() == [1, 2, 3, -1, -1, -1] and index.mask[0].tolist() == [True] * 3 + [False] * 3
    expected = encode_video(loaded, open_store(data)["video1"][1:4]).encoded.pooled[0].numpy()
    assert np.allclose(index.pooled[0], expected, atol=1e-5)
    hit = next(h for h in search(index, QUERY, k=2) if h.video_id == "video1")
    assert (hit.start_s, hit.end_s, hit.frames, hit.frame_times) == (0.5, 2.0, [1, 2, 3], [0.5, 1.0, 1.5])
    assert all(len(a.per_frame) == 3 and 0.5 <= a.start_s < a.end_s <= 2.0 for a in hit.alignments)
    (tmp_path / "bad.txt").write_text("video1 0.5\n")
    with pytest.raises(DataError, match="bad.txt:1"):
        read_clips(tmp_path / "bad.txt")


def test_bad_video_fails_or_is_skipped(loaded, tmp_path):
    from vidlang.retrieval.index import build_index

    data = make_data(tmp_path / "data")
    feats = np.load(data / "features.npy")
    feats[3, 2, 1] = np.nan
    np.save(data / "features.npy", feats)
    with pytest.raises(DataError, match="video3"):
        build_index(loaded, data, tmp_path / "idx")
    assert not (tmp_path / "idx").exists()
    index = build_index(loaded, data, tmp_path / "idx", skip_bad=True, batch_size=5)
    assert len(index) == 23 and "video3" not in index.video_ids and list(index.meta["skipped"]) == ["video3"]
    assert index.tokens.shape[0] == index.faiss_index.ntotal == 23


def test_index_refuses_another_checkpoint(index32, trained_run, tmp_path):
    from vidlang.api import load_model
    from vidlang.checkpoint import find_checkpoint
    from vidlang.retrieval.index import load_index

    src = find_checkpoint(trained_run["out_dir"])
    same, other = tmp_path / "same", tmp_path / "other"
    shutil.copytree(src, same)
    shutil.copytree(src, other)
    weights = load_file(str(other / "model.safetensors"))
    name = next(k for k in weights if k.startswith("fusion_head"))
    weights[name] = weights[name] + 0.01
    save_file(weights, str(other / "model.safetensors"))
    assert load_index(index32.path, load_model(same)).video_ids == index32.video_ids  # the same weights
    with pytest.raises(CheckpointError, match="weights differ"):
        load_index(index32.path, load_model(other))
    with pytest.raises(CheckpointError, match="weights differ"):
        load_index(index32.path, other)


def test_atomic_write(loaded, data_dir, tmp_path, monkeypatch):
    import vidlang.retrieval.index as vi

    out = tmp_path / "idx"
    vi.build_index(loaded, data_dir, out, faiss="none")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(DataError, match="already exists"):
        vi.build_index(loaded, data_dir, out)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(vi, "build_faiss", boom)
    for target in (out, tmp_path / "new"):  # replacing an index, writing a new one
        with pytest.raises(RuntimeError, match="disk full"):
            vi.build_index(loaded, data_dir, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no partial or temporary folder
    assert sorted(p.name for p in out.iterdir()) == before and "faiss.index" not in before
    assert len(vi.load_index(out, loaded)) == 24


def test_faiss_recall_on_synthetic_vectors():
    from vidlang.retrieval.index import FaissSettings, build_faiss

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    vectors = (centres[rng.integers(0, 40, 6000)] + 0.3 * rng.normal(size=(6000, 32))).astype(np.float32)
    queries = (centres[rng.integers(0, 40, 50)] + 0.3 * rng.normal(size=(50, 32))).astype(np.float32)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert type(build_faiss(vectors, FaissSettings("auto", exact_threshold=10_000))).__name__ == "IndexFlatIP"
    auto = build_faiss(vectors, FaissSettings("auto", exact_threshold=1000))
    assert type(auto).__name__ == "IndexIVFFlat" and auto.nlist == min(int(4 * 6000 ** 0.5), 6000 // 39)
    for settings in (FaissSettings("ivf", nlist=64, nprobe=8), FaissSettings("hnsw", ef_search=64)):
        _, found = build_faiss(vectors, settings).search(queries, 10)
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
        assert recall >= 0.9, (settings.kind, recall)
    assert build_faiss(vectors, FaissSettings("none")) is None


def test_alignment_on_a_planted_frame(loaded):
    """A clip whose frame 3 is the query word's own token embedding (and one whose frames 2 and 4 are
    close to it): the word peaks there, its span is exactly those frames within the margin, and the
    seconds come from the source feature indices."""
    from vidlang.inference import encode_text
    from vidlang.retrieval.index import ClipIndex
    from vidlang.retrieval.query import query_words, search

    query = "a dog eats a cake"
    text = encode_text(loaded, query)
    words = query_words(loaded, query, text.weights[0].numpy())
    assert [w.word for w in words] == ["dog", "eats", "cake"]
    assert sum(w.weight for w in words) == pytest.approx(1.0, abs=1e-5)
    cake = words[2]
    y = text.encoded.tokens[0, cake.pieces].mean(0).numpy()
    width, steps = y.shape[0], 6
    tokens = 1e-3 * np.random.default_rng(0).normal(size=(2, steps, width)).astype(np.float32)
    tokens[0, 3] = y
    tokens[1, 2:5] = [0.9 * y, y, 0.85 * y]  # within the default margin 0.2 of the peak; the rest is not
    frames = np.tile(np.arange(0, 12, 2, dtype=np.int32), (2, 1))  # every other feature, as after subsampling
    index = ClipIndex(loaded, ["one", "two"], np.full((2, 2), np.nan), frames, tokens.mean(1), tokens,
                      np.ones((2, steps), bool), fps=2.0)
    hits = {h.video_id: h for h in search(index, query, k=2, rerank=False)}
    for vid, span, seconds in (("one", (3, 3), (3.0, 3.5)), ("two", (2, 4), (2.0, 4.5))):
        a = next(a for a in hits[vid].alignments if a.word == "cake")
        assert a.frame == 3 and a.span == span and (a.start_s, a.end_s) == seconds
        assert a.per_frame[3] == pytest.approx(float(y @ y), rel=1e-5) and len(a.per_frame) == steps
        assert (a.char_start, a.char_end) == (13, 17)
    # the word strip is the term s2 maximises: its max is the model's token score
    token_sim = loaded.model.token_similarities(index.encoded([0]).encoded, text.encoded)[0, 0]
    for a, w in zip(hits["one"].alignments, words):
        if len(w.pieces) == 1:
            assert a.score == pytest.approx(float(token_sim[w.pieces[0]]), abs=1e-5)


def test_query_words_fallback(loaded, monkeypatch):
    import vidlang.retrieval.query as vs
    from vidlang.errors import VidlangError

    assert [w.word for w in vs.query_words(loaded, "the and of")] == ["the", "and", "of"]  # no noun, no verb

    def no_tagger(*args, **kwargs):
        raise VidlangError("spaCy model missing")

    monkeypatch.setattr(vs, "tag_captions", no_tagger)
    words = vs.query_words(loaded, "a dog, eating!")
    assert [w.word for w in words] == ["a", "dog", "eating"]
    assert all(w.weight == 0 for w in words)


def test_search_bad_arguments(index32, loaded):
    from vidlang.errors import ConfigError
    from vidlang.retrieval.query import search

    with pytest.raises(DataError, match="empty"):
        search(index32, "  ")
    with pytest.raises(ConfigError, match="k >= 1"):
        search(index32, QUERY, k=0)
    with pytest.raises(ConfigError, match="store="):
        search(loaded, QUERY)


def test_cli_index_and_search(trained_run, data_dir, tmp_path, capsys):
    out = tmp_path / "idx"
    assert main(["index", str(trained_run["out_dir"]), "--features", str(data_dir), "--out", str(out),
                 "--faiss", "hnsw", "--fp32-tokens", "--quiet"]) == 0
    assert "indexed 24 clips" in capsys.readouterr().out
    assert json.loads((out / "index.json").read_text())["faiss"]["built"] == "IndexHNSWFlat"
    assert main(["search", str(out), QUERY, "-k", "3", "--rerank-topk", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    hits = result["hits"]
    assert result["query"] == QUERY and [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["s3"] is not None and hits[2]["s3"] is None
    assert [a["word"] for a in hits[0]["alignments"]] == ["man", "slices", "tomato"]
    assert len(hits[0]["alignments"][0]["per_frame"]) == 6
    assert main(["search", str(out), QUERY, "-k", "2", "--no-rerank", "--candidates", "10", "--ef-search", "16"]) == 0
    text = capsys.readouterr().out
    assert "2 of 24 clips" in text and "tomato" in text and "s3 -" in text
    assert main(["search", str(out), QUERY, "--checkpoint", str(tmp_path)]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    assert main(["index", str(trained_run["out_dir"]), "--features", str(data_dir), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
