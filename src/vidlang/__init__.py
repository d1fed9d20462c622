"""vidlang: video-language learning (TACo retrieval, MV-GPT captioning).

The public API is small: ``load_model``, ``encode_video``, ``encode_text``, ``search``, ``caption``.
"""
__version__ = "0.1.0"

from vidlang.api import caption, encode_text, encode_video, load_model, search  # noqa: E402

__all__ = ["__version__", "load_model", "encode_video", "encode_text", "search", "caption"]
