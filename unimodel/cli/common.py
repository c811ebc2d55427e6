"""Helpers shared by the command line's commands: exit codes, output, tables."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from unimodel.registry import Component, Registry

EXIT_OK = 0
EXIT_BROKEN = 1  # doctor found a problem; a bug (uncaught exception) also exits 1
EXIT_USAGE = 2  # a user error, as argparse uses for bad arguments

_GLOB_CHARS = set("*?[")


# ------------------------------------------------------------------ helpers
def _out(text: str = "", stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stdout)


def _registry() -> Registry:
    from unimodel.registry import get_registry

    return get_registry()


def _table(rows: Sequence[Sequence[str]], indent: str = "  ", gap: str = "  ") -> list[str]:
    """Left-aligned columns; the last column is not padded."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]
        lines.append((indent + gap.join(cells)).rstrip())
    return lines


def _fmt(value: Any) -> str:
    """A config value as the user writes it in TOML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value == "(required)" else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _warn_registry_problems(reg: Registry, stream: TextIO) -> None:
    """One line per broken plugin or name clash, so ``list`` never hides them silently."""
    for rec in reg.failed_plugins:
        _out(f"warning: plugin {rec.name!r} ({rec.source}) failed to load: {rec.error}; run `unimodel doctor`", stream)
    for (kind, name), comps in sorted(reg.conflicts.items()):
        _out(f"warning: {_clash(kind, name, comps)}", stream)


def _clash(kind: str, name: str, comps: Sequence[Component]) -> str:
    who = " and ".join(repr(c.plugin) for c in comps)
    choices = ", ".join(repr(c.qualified_name) for c in comps)
    return f"{kind} {name!r} is registered by plugins {who}; a plain {name!r} is ambiguous, use {choices}"


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _kinds() -> tuple[str, ...]:
    from unimodel.registry import KINDS

    return KINDS
