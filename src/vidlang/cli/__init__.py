"""The ``vidlang`` command line: a thin layer over the library (parser.py: the arguments; commands.py:
what each command does). Errors become one short message and an exit code; ``--debug`` shows the traceback."""
from __future__ import annotations

import os
import sys
import traceback

from vidlang.cli.parser import build_parser
from vidlang.errors import VidlangError

__all__ = ["build_parser", "error_message", "main"]


def error_message(exc: BaseException) -> tuple[str, int]:
    """A short message and exit code: 2 for bad input (a VidlangError, a file that is missing or
    unreadable, a training run that diverged), 1 for anything else (a bug)."""
    if isinstance(exc, (VidlangError, FloatingPointError)):
        return f"vidlang: error: {exc}", 2
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"vidlang: error: {exc.strerror or exc}: {exc.filename}", 2
    return (f"vidlang: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback, "
            "and please report it)", 1)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("VIDLANG_DEBUG", "") not in ("", "0")
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - every error becomes a message and an exit code
        if debug:
            traceback.print_exc()
        message, code = error_message(exc)
        print(message, file=sys.stderr)
        return code
    return 0

