"""vidlang: video-language learning (TACo retrieval, MV-GPT captioning).

The public API is small: ``load_model``, ``encode_video``, ``encode_text``, ``score``, ``search``,
``caption``, ``transcribe``, ``preprocess_for``, ``list_models`` (see vidlang.api). They load on first use, so ``import vidlang.config`` does not import torch.
No submodule carries a public function's name, so ``vidlang.search`` stays the function.
"""
from vidlang.version import __version__

__all__ = ["__version__", "load_model", "encode_video", "encode_text", "score", "search", "caption", "transcribe",
           "preprocess_for", "list_models", "save_pretrained"]


def __getattr__(name: str):
    if name in __all__:
        from vidlang import api

        return getattr(api, name)
    raise AttributeError(f"module 'vidlang' has no attribute {name!r}")
