"""The public face of vidlang: a few names for users, re-exported from the layers below.

    import vidlang
    model = vidlang.load_model("runs/demo/taco")            # a run folder or a checkpoint folder
    hits = vidlang.search(model, "a red ball bouncing", features_dir, k=5)
    captioner = vidlang.load_model("runs/demo/mvgpt")       # an MV-GPT run
    text = vidlang.caption(captioner, features)             # (T, D) features -> a sentence
"""
from __future__ import annotations

from vidlang.inference import (
    LoadedCaptioner,
    LoadedModel,
    caption,
    encode_text,
    encode_video,
    load_model,
)
from vidlang.retrieval.query import search_store as search

__all__ = ["LoadedCaptioner", "LoadedModel", "caption", "encode_text", "encode_video", "load_model", "search"]
