"""Test helpers shared across modules (and the serve load benchmark): synthetic mp4 files and a tiny
served world (videos -> tiny-backbone features -> a tiny TACo, a tiny MV-GPT and an index)."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# the spoken world (conftest.spoken_world): video0 and video1 get identical frames, only their speech differs
SPOKEN_SAID = {"video0": [(0.0, 2.0, "I spent the whole morning painting the garden fence."),
                          (2.0, 4.0, "The brush was too small for it.")],
               "video1": [(0.5, 3.0, "My grandmother bakes a chocolate cake every Sunday.")]}
SPOKEN_QUERY = "someone talks about baking a chocolate cake"

# A tiny MV-GPT (as tests/test_mvgpt.py's TINY) captioning from the frames alone.
MVGPT_TINY = ["task=mvgpt", "model.width=32", "model.video_heads=2", "model.fusion_heads=2",
              "model.fusion_layers=1", "model.text_trainable_layers=0", "model.dropout=0", "mvgpt.decoder_layers=1",
              "mvgpt.decoder_heads=2", "decode.max_len=8", "mvgpt.objective=caption",
              "mvgpt.use_transcript=false", "decode.method=greedy"]


def level(i: int) -> int:
    """Grey level of frame i in the synthetic videos: the frame index can be read back from pixels."""
    return 20 + 4 * i


def make_video(path: Path, n: int = 50, rate: int = 25, w: int = 64, h: int = 48, codec: str = "libx264",
               frames: list[np.ndarray] | None = None) -> Path:
    import av

    frames = frames or [np.full((h, w, 3), level(i), np.uint8) for i in range(n)]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return path


def build_serve_world(root: Path, *, videos: int = 12, taco_steps: int = 24, mvgpt_steps: int = 60,
                      dim: int = 16) -> dict:
    """Render ``videos`` procedural clips (2 s, 64x64, 8 fps) to mp4, extract tiny-backbone features at
    4 fps, train a tiny TACo and a tiny MV-GPT on their captions, index the store. Returns the paths."""
    import warnings

    from conftest import TINY
    from vidlang.api import load_model
    from vidlang.config import load_config
    from vidlang.worlds.synthetic import WorldConfig, generate_world
    from vidlang.extract import extract_features
    from vidlang.retrieval.index import build_index
    from vidlang.train import train

    root.mkdir(parents=True, exist_ok=True)
    media, store = root / "media", root / "store"
    (media / "clips").mkdir(parents=True, exist_ok=True)
    clips = generate_world(WorldConfig(num_videos=videos, frames=16, size=64, fps=8.0, captions_per_video=3, seed=3))
    for c in clips:
        make_video(media / "clips" / f"{c.video_id}.mp4", rate=8, w=64, h=64, frames=list(c.frames))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "backbone 'tiny-untrained'", UserWarning)
        extract_features(media / "clips", "tiny", store, fps=4.0, frame_size=32, workers=0, dim=dim, progress=False)
    annotations = root / "annotations.json"
    annotations.write_text(json.dumps({c.video_id: {"split": "train", "captions": c.captions} for c in clips}))
    data = [f"data.features={store}", f"data.annotations={annotations}", "data.val_split=none",
            "train.eval_every=0", "train.threads=1", "data.max_frames=8"]
    taco = root / "taco"
    train(load_config(None, [*TINY, *data, f"train.out_dir={taco}", f"train.steps={taco_steps}",
                             f"train.save_every={taco_steps}"]), progress=False)
    mvgpt = root / "mvgpt"
    train(load_config(None, [*MVGPT_TINY, *data, f"train.out_dir={mvgpt}", f"train.steps={mvgpt_steps}",
                             f"train.save_every={mvgpt_steps}", "train.batch_size=12", "train.lr=3e-3",
                             "train.warmup_steps=5"]), progress=False)
    index = root / "index"
    build_index(load_model(taco, kind="taco"), store, index)
    return {"root": root, "media": media, "store": store, "taco": taco, "mvgpt": mvgpt, "index": index,
            "clips": {c.video_id: c.captions for c in clips}}


@contextmanager
def live_server(app, timeout: float = 20.0):
    """Run an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


# what a patched MV-GPT decoder says under each rerank candidate decoding (fixture words: see conftest.scene)
SAYS = {"greedy": "a man slices a tomato", "beam": "a dog throws a ball", "beam-nr2": "the woman is eating the cake"}


def patch_decoder(monkeypatch) -> None:
    """MVGPT.generate says one fixed sentence per decoding, so each rerank pool holds three captions."""
    from vidlang.models.mvgpt import MVGPT
    from vidlang.text.pretrained import load_tokenizer

    real = MVGPT.generate

    def generate(self, video, *args, method=None, **settings):
        real(self, video, *args, method=method, **settings)  # the real decoder still runs with these settings
        tok = load_tokenizer(self.cfg.model.text_encoder)
        name = "beam-nr2" if settings.get("no_repeat_ngram") == 2 else (method or self.cfg.decode.method)
        return [tok(SAYS[name], add_special_tokens=False)["input_ids"]] * video.shape[0]

    monkeypatch.setattr(MVGPT, "generate", generate)


def held_out_split(data_dir: Path, tmp_path: Path):
    """(annotations, features, video ids, held-out row indices, an id-list file of the held-out videos) of the
    tiny data folder (conftest.data_dir)."""
    ann = json.loads((data_dir / "annotations.json").read_text())
    feats = np.load(data_dir / "features.npy")
    ids = [f"video{i}" for i in range(len(feats))]
    held = [i for i, v in enumerate(ids) if ann[v]["split"] != "train"]
    split = tmp_path / "held.txt"
    split.write_text("".join(f"{ids[i]}\n" for i in held))
    return ann, feats, ids, held, split
