"""vidlang serve over a real loopback server: search equals the library, captions of indexed clips and
uploads, upload limits and types, media path traversal, malformed requests, OpenAPI, the extractor record."""
from __future__ import annotations

import dataclasses
import http.client
import io
import json
import os
import shutil
from urllib.parse import urlsplit

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

QUERIES = ["a red ball falling", "a large green bar is turning around", "square"]


def get(served, path, **kw):
    return httpx.get(served["url"] + path, timeout=30, **kw)


def post(served, path, **kw):
    return httpx.post(served["url"] + path, timeout=30, **kw)


def raw_get(served, path: str) -> tuple[int, bytes]:
    """GET ``path`` byte for byte (http.client neither normalises nor re-encodes it)."""
    url = urlsplit(served["url"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def clip_bytes(served, vid: str) -> bytes:
    return (served["media"] / "clips" / f"{vid}.mp4").read_bytes()


# ----------------------------------------------------------------------------- health, search
def test_health_and_page(served):
    h = get(served, "/health").json()
    assert h["status"] == "ok" and h["clips"] == 12 and h["uploads"] is True and h["extractor"] == "tiny-untrained"
    assert h["captioner"] == "step-000060" and "/" not in h["checkpoint"]  # names, never paths
    page = get(served, "/")
    assert page.status_code == 200 and 'id="search-form"' in page.text and 'for="q"' in page.text
    assert get(served, "/static/app.js").status_code == 200
    assert page.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("query", QUERIES)
def test_search_equals_the_library(served, query):
    from vidlang.retrieval.index import load_index
    from vidlang.retrieval.query import search

    res = get(served, "/api/search", params={"q": query, "k": 5})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["query"] == query and body["clips"] == 12 and len(body["hits"]) == 5
    expected = json.loads(json.dumps([h.to_dict() for h in search(load_index(served["index"]), query, 5)]))
    got = [{k: v for k, v in h.items() if k not in ("video_url", "strip_url")} for h in body["hits"]]
    assert [h["video_id"] for h in got] == [h["video_id"] for h in expected]
    assert _close(got, expected)
    hit = body["hits"][0]
    assert hit["alignments"] and len(hit["alignments"][0]["per_frame"]) == len(hit["frames"]) == 8
    assert hit["video_url"] == f"/media/clips/{hit['video_id']}.mp4"


def _close(a, b, tol=1e-6) -> bool:
    """Equal JSON trees, floats within ``tol``."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b)
        return all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=tol, abs=tol)
        return True
    assert a == b
    return True


def test_media_and_strip_of_a_hit(served):
    from PIL import Image

    hit = get(served, "/api/search", params={"q": "a ball", "k": 1}).json()["hits"][0]
    video = get(served, hit["video_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.content == clip_bytes(served, hit["video_id"])
    part = get(served, hit["video_url"], headers={"Range": "bytes=0-99"})  # <video> seeks with ranges
    assert part.status_code == 206 and part.content == video.content[:100]
    strip = get(served, hit["strip_url"])
    assert strip.status_code == 200 and strip.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(strip.content))
    assert image.size == (8 * 72, 72)  # the clip's 8 encoded frames, 64x64 scaled to 72 px high
    cached = list(served["app"].state.vidlang.cache_dir.glob("*.jpg"))
    assert cached and get(served, hit["strip_url"]).content == strip.content
    assert get(served, "/api/clips/12/strip.jpg").status_code == 404
    assert get(served, "/api/clips/-1/strip.jpg").status_code == 422


@pytest.mark.parametrize("params", [
    {}, {"q": ""}, {"q": "   "}, {"q": "x" * 501}, {"q": "ball", "k": 0}, {"q": "ball", "k": 101},
    {"q": "ball", "k": "ten"}, {"q": "ball", "k": 2.5}, {"q": "ball", "rerank": "maybe"},
    {"q": "ball", "spoken_weight": 0.5},  # the serve world's index has no transcripts: only 0 is allowed
    {"q": "ball", "spoken_weight": "nan"},
])
def test_malformed_search_is_4xx_with_a_message(served, params):
    res = get(served, "/api/search", params=params)
    assert res.status_code == 422, (params, res.status_code, res.text)
    assert res.json()["detail"]


def test_search_spoken_weight_zero_is_the_visual_search(served):
    plain = get(served, "/api/search", params={"q": "ball"}).json()["hits"]
    assert get(served, "/api/search", params={"q": "ball", "spoken_weight": 0}).json()["hits"] == plain
    assert all(h["spoken"] is None and h["matched"] == "visual" for h in plain)


# ----------------------------------------------------------------------------- captions
def test_caption_of_an_indexed_clip(served):
    from vidlang.api import caption
    from vidlang.data.dataset import cut_segment
    from vidlang.data.features import open_store

    state = served["app"].state.vidlang
    store = open_store(served["store"])
    for body, feats in [({"video_id": "synth00001"}, store["synth00001"]),
                        ({"video_id": "synth00004", "start": 0.5, "end": 1.5},
                         cut_segment(store["synth00004"], 0.5, 1.5, 4.0, "synth00004"))]:
        res = post(served, "/api/caption/clip", json=body)
        assert res.status_code == 200, res.text
        out = res.json()
        assert out["caption"] == caption(state.captioner, feats) and out["caption"].strip()
        assert out["features"] == len(feats) and out["decoding"] == "greedy-max8"
    assert len(cut_segment(store["synth00004"], 0.5, 1.5, 4.0, "x")) == 4


@pytest.mark.parametrize("kwargs, status", [
    ({"json": {"video_id": "nope"}}, 404),
    ({"json": {"video_id": "../synth00001"}}, 404),
    ({"json": {"video_id": "synth00001", "start": 1.5, "end": 0.5}}, 422),
    ({"json": {"video_id": "synth00001", "start": -1}}, 422),
    ({"json": {"video_id": "synth00001", "start": "soon"}}, 422),
    ({"json": {"video_id": ""}}, 422),
    ({"json": {"video_id": "synth00001", "extra": 1}}, 422),
    ({"json": {}}, 422),
    ({"json": ["synth00001"]}, 422),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
    ({"content": b"\xff\xfe", "headers": {"content-type": "application/json"}}, 422),
    ({"content": b"video_id=synth00001", "headers": {"content-type": "text/plain"}}, 422),
])
def test_malformed_clip_caption_requests(served, kwargs, status):
    res = post(served, "/api/caption/clip", **kwargs)
    assert res.status_code == status, (kwargs, res.text)
    assert res.json()["detail"]


def test_caption_batcher_batches_concurrent_requests_and_isolates_failures():
    import threading
    import time

    from vidlang.serve.app import CaptionBatcher

    sizes = []

    def fake(_, features):
        if isinstance(features, list):
            sizes.append(len(features))
            time.sleep(0.05)
            return [fake(None, f) for f in features]
        if features == "bad":
            raise ValueError("bad input")
        return f"caption {features}"

    batcher = CaptionBatcher(None, max_batch=4, caption_fn=fake)
    results: dict = {}

    def ask(x):
        try:
            results[x] = batcher(x)
        except ValueError as e:
            results[x] = e

    threads = [threading.Thread(target=ask, args=(x,)) for x in [*range(9), "bad"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert {k: v for k, v in results.items() if k != "bad"} == {i: f"caption {i}" for i in range(9)}
    assert isinstance(results["bad"], ValueError)
    assert max(sizes) > 1 and max(sizes) <= 4


def test_concurrent_clip_captions_equal_single_ones(served):
    from concurrent.futures import ThreadPoolExecutor

    from vidlang.api import caption
    from vidlang.data.features import open_store

    store, state = open_store(served["store"]), served["app"].state.vidlang
    ids = store.ids * 2
    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda v: post(served, "/api/caption/clip", json={"video_id": v}).json()["caption"], ids))
    assert got == [caption(state.captioner, store[v]) for v in ids]


def test_upload_is_captioned_with_the_index_extractor(served):
    """The upload's features are the store's own (same extractor), so its caption is the stored clip's."""
    from vidlang.api import caption
    from vidlang.data.features import open_store

    vid = "synth00002"
    res = post(served, "/api/caption/upload", files={"file": ("any name.bin", clip_bytes(served, vid), "video/mp4")})
    assert res.status_code == 200, res.text
    out = res.json()
    expected = caption(served["app"].state.vidlang.captioner, open_store(served["store"])[vid])
    assert out["caption"] == expected and out["features"] == 8 and out["duration"] == pytest.approx(2.0)
    assert out["extractor"] == "tiny-untrained"
    assert out["transcript"] is None and out["transcript_source"].startswith("none: the captioner reads frames only")


def test_oversize_uploads_are_413(served):
    junk = os.urandom(1 << 20)
    big = post(served, "/api/caption/upload", files={"file": ("a.mp4", junk, "video/mp4")})  # Content-Length says it
    assert big.status_code == 413 and "limit" in big.json()["detail"]
    slightly = clip_bytes(served, "synth00000") + os.urandom(130_000)  # under the framing slack, over the file limit
    res = post(served, "/api/caption/upload", files={"file": ("a.mp4", slightly, "video/mp4")})
    assert res.status_code == 413, res.text

    def chunks():  # no Content-Length: the streamed body is counted
        boundary = b"--b0undary\r\n"
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'
        for _ in range(16):
            yield os.urandom(64 << 10)
        yield b"\r\n--b0undary--\r\n"

    res = post(served, "/api/caption/upload", content=chunks(),
               headers={"content-type": "multipart/form-data; boundary=b0undary"})
    assert res.status_code == 413, res.text


def _fake_mp4() -> bytes:
    return b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + os.urandom(4000)


@pytest.mark.parametrize("name, data", [
    ("notes.mp4", b"this is text, not a video " * 40),
    ("image.mp4", b"\x89PNG\r\n\x1a\n" + os.urandom(2000)),
    ("fake.mp4", _fake_mp4()),  # the right magic bytes, but FFmpeg cannot read it
    ("empty.mp4", b""),
])
def test_wrong_type_uploads_are_415(served, name, data):
    res = post(served, "/api/caption/upload", files={"file": (name, data, "video/mp4")})
    assert res.status_code == 415, res.text
    assert res.json()["detail"]


def test_malformed_uploads_are_4xx(served):
    clip = clip_bytes(served, "synth00000")
    cases = [
        (dict(json={"file": "x"}), 415),  # not multipart
        (dict(data={"video": "x"}, files={"other": ("a.mp4", clip, "video/mp4")}), 422),  # no 'file' field
        (dict(data={"file": "just text"}, files={"x": ("a.txt", b"x", "text/plain")}), 422),  # 'file' not a file
        (dict(files=[("file", ("a.mp4", clip, "video/mp4")), ("file", ("b.mp4", clip, "video/mp4"))]), 400),
        (dict(content=b"garbage", headers={"content-type": "multipart/form-data"}), 400),  # no boundary
        (dict(content=clip, headers={"content-type": "multipart/form-data; boundary=zz"}), 400),  # no parts
    ]
    for kwargs, status in cases:
        res = post(served, "/api/caption/upload", **kwargs)
        assert res.status_code == status, (kwargs.keys(), res.status_code, res.text)
        assert res.json()["detail"]


def test_without_a_captioner_captions_are_503(serve_world):
    from helpers import live_server
    from vidlang.serve.app import create_app

    with live_server(create_app(serve_world["index"])) as url:
        served = {"url": url}
        assert get(served, "/health").json()["captioner"] is None
        for res in (post(served, "/api/caption/clip", json={"video_id": "synth00001"}),
                    post(served, "/api/caption/upload", files={"file": ("a.mp4", b"x", "video/mp4")})):
            assert res.status_code == 503 and "--captioner" in res.json()["detail"]
        assert get(served, "/api/search", params={"q": "ball"}).status_code == 200
        assert get(served, "/media/clips/synth00000.mp4").status_code == 404  # no media root given


@pytest.mark.parametrize("change, message", [
    ({"weights_hash": "0" * 64}, "differs"),
    ({"backbone": "clip-vit-p32-768x12"}, "--extractor-weights"),
    ({"frame_size": "big"}, "incomplete"),
    (None, "not written by `vidlang extract`"),
])
def test_uploads_refused_when_the_index_extractor_cannot_run(served, change, message):
    from helpers import live_server
    from vidlang.serve.app import create_app

    state = served["app"].state.vidlang
    meta = json.loads(json.dumps(state.index.meta))
    meta["extractor"] = None if change is None else {**meta["extractor"], **change}
    meta["store"]["meta"].pop("extractor")
    index = dataclasses.replace(state.index, meta=meta)
    cmeta = json.loads(json.dumps(state.captioner.meta))  # trained on the same (changed) features
    cmeta["data_manifest"]["store"]["meta"]["extractor"] = meta["extractor"]
    with live_server(create_app(index, dataclasses.replace(state.captioner, meta=cmeta))) as url:
        res = post({"url": url}, "/api/caption/upload", files={"file": ("a.mp4", clip_bytes(served, "synth00000"))})
        assert res.status_code == 409 and message in res.json()["detail"], res.text
        assert get({"url": url}, "/health").json()["uploads"] is False


def test_a_captioner_of_other_features_is_refused(serve_world, tmp_path):
    from vidlang.api import load_model
    from vidlang.errors import ConfigError
    from vidlang.serve.app import create_app

    captioner = load_model(serve_world["mvgpt"])
    captioner.meta = json.loads(json.dumps(captioner.meta))
    captioner.meta["data_manifest"]["store"]["meta"]["extractor"]["fps"] = 2.0
    with pytest.raises(ConfigError, match="another extractor"):
        create_app(serve_world["index"], captioner)


# ----------------------------------------------------------------------------- media
def test_media_traversal_is_refused(served, tmp_path):
    media, root = served["media"], served["root"]
    secret = b"SECRET-BYTES"
    (root / "outside.mp4").write_bytes(secret)
    (media / ".hidden.mp4").write_bytes(secret)
    (media / "notes.txt").write_bytes(secret)
    escape = media / "clips" / "escape.mp4"
    escape.unlink(missing_ok=True)
    escape.symlink_to(root / "outside.mp4")
    inside = media / "clips" / "alias.mp4"
    inside.unlink(missing_ok=True)
    inside.symlink_to(media / "clips" / "synth00000.mp4")
    attempts = [
        "/media/../outside.mp4", "/media/clips/../../outside.mp4", "/media/%2e%2e/outside.mp4",
        "/media/..%2foutside.mp4", "/media/%2e%2e%2foutside.mp4", "/media/clips/%2E%2E/%2E%2E/outside.mp4",
        "/media/%252e%252e%252foutside.mp4", "/media/..%5coutside.mp4", "/media/%5c..%5coutside.mp4",
        f"/media/{root}/outside.mp4", f"/media//{str(root).lstrip('/')}/outside.mp4",
        "/media/%2F" + str(root / "outside.mp4").lstrip("/").replace("/", "%2F"),
        "/media/clips/escape.mp4", "/media/.hidden.mp4", "/media/notes.txt", "/media/clips/synth00000.mp4%00.jpg",
        "/media/./clips/synth00000.mp4", "/media/clips//synth00000.mp4", "/media/C:/outside.mp4",
    ]
    for path in attempts:
        status, body = raw_get(served, path)
        assert status in (403, 404), (path, status)
        assert secret not in body, path
    assert raw_get(served, "/media/clips/escape.mp4")[0] == 403  # a symlink leading out of the root
    assert raw_get(served, "/media/../outside.mp4")[0] == 403
    status, body = raw_get(served, "/media/clips/alias.mp4")  # a symlink that stays inside is fine
    assert status == 200 and body == clip_bytes(served, "synth00000")
    assert raw_get(served, "/static/../serve.py")[0] == 404


# ----------------------------------------------------------------------------- schema, index, CLI
def test_openapi_schema(served):
    schema = get(served, "/openapi.json").json()
    for path in ("/health", "/api/search", "/api/caption/clip", "/api/caption/upload", "/api/clips/{row}/strip.jpg"):
        assert path in schema["paths"], path
    search = schema["paths"]["/api/search"]["get"]
    k = next(p for p in search["parameters"] if p["name"] == "k")
    assert k["schema"]["minimum"] == 1 and k["schema"]["maximum"] == 100
    assert "multipart/form-data" in schema["paths"]["/api/caption/upload"]["post"]["requestBody"]["content"]
    assert "per_frame" in schema["components"]["schemas"]["WordOut"]["properties"]


def test_index_records_the_extractor_and_refuses_a_mixed_store(served, tmp_path, capsys):
    from vidlang.cli import main
    from vidlang.errors import DataError
    from vidlang.retrieval.index import build_index

    meta = json.loads((served["index"] / "index.json").read_text())
    store_meta = json.loads((served["store"] / "meta.json").read_text())
    assert meta["extractor"] == store_meta["extractor"] and meta["extractor"]["backbone"] == "tiny-untrained"
    mixed = tmp_path / "mixed"
    shutil.copytree(served["store"], mixed)
    rec_file = mixed / "synth00003.meta.json"
    rec = json.loads(rec_file.read_text())
    rec["extractor"]["fps"] = 2.0
    rec_file.write_text(json.dumps(rec))
    state = served["app"].state.vidlang
    with pytest.raises(DataError, match="mixes features from different extractors"):
        build_index(state.index.loaded, mixed, tmp_path / "idx")
    assert main(["index", str(served["taco"]), "--features", str(mixed), "--out", str(tmp_path / "idx2"),
                 "--quiet"]) == 2
    assert "mixes features" in capsys.readouterr().err and not (tmp_path / "idx2").exists()


def test_cli_serve_defaults_to_loopback():
    from vidlang.cli import build_parser

    args = build_parser().parse_args(["serve", "idx", "--checkpoint", "ckpt"])
    assert (args.host, args.port, args.max_upload_mb, args.captioner, args.media_root) == ("127.0.0.1", 8000, 50, None, None)


def test_no_pickle_is_loaded(serve_world, monkeypatch):
    """Loading the index, both models and serving requests never unpickles (nor calls torch.load)."""
    import pickle

    import torch

    from helpers import live_server
    from vidlang.serve.app import create_app

    def refuse(*a, **k):
        raise AssertionError("pickle was used")

    for mod, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(mod, name, refuse)
    real_np_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: real_np_load(*a, **{**k, "allow_pickle": False}))
    app = create_app(serve_world["index"], serve_world["mvgpt"], serve_world["media"])
    with live_server(app) as url:
        served = {"url": url}
        assert get(served, "/api/search", params={"q": "ball"}).status_code == 200
        assert post(served, "/api/caption/clip", json={"video_id": "synth00001"}).status_code == 200
        clip = (serve_world["media"] / "clips" / "synth00001.mp4").read_bytes()
        assert post(served, "/api/caption/upload", files={"file": ("a.mp4", clip)}).status_code == 200


@pytest.mark.parametrize("content", [b"", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, b"not a video at all"])
def test_strip_of_a_corrupt_source_video_is_a_data_error(tmp_path, content):
    from vidlang.errors import DataError
    from vidlang.serve.media import strip_jpeg

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(DataError, match="bad.mp4"):  # the server answers 422, not 500
        strip_jpeg(bad, [0.0, 0.5], tmp_path / "cache")
