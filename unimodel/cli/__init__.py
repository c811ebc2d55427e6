"""The ``unimodel`` command.

``list`` (and ``doctor --no-import``) read only the registry's metadata, so
they answer without importing torch or any model code. Everything heavy is
imported inside the command that needs it.

User errors (every :class:`~unimodel.errors.UnimodelError`, and files that are
missing or unreadable) print one ``error: ...`` line on stderr and exit with
status 2; ``--debug`` adds the traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from unimodel.cli.common import EXIT_BROKEN, EXIT_OK, EXIT_USAGE
from unimodel.cli.inspect import cmd_doctor, cmd_info, cmd_list
from unimodel.cli.parser import build_parser
from unimodel.cli.run import cmd_convert, cmd_distill, cmd_eval, cmd_generate, cmd_train
from unimodel.errors import UnimodelError


def _user_error_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UnimodelError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):  # `unimodel list | head`: the reader left, nothing to report
            _silence_stdout()
            return EXIT_OK
        if args.debug:
            traceback.print_exc()
        print(f"error: {_user_error_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    # Python flushes stdout at exit; with the pipe gone that would raise again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def __getattr__(name: str) -> Any:
    if name == "TextStreamer":  # it moved to unimodel.generation.text; imported on use (torch)
        from unimodel.generation.text import TextStreamer

        return TextStreamer
    raise AttributeError(f"module 'unimodel.cli' has no attribute {name!r}")


__all__ = [
    "EXIT_BROKEN",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "cmd_convert",
    "cmd_distill",
    "cmd_doctor",
    "cmd_eval",
    "cmd_generate",
    "cmd_info",
    "cmd_list",
    "cmd_train",
    "main",
]
