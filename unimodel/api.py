"""Registry queries for users: what is there, and is a name known."""

from __future__ import annotations

from unimodel.registry import get_registry


def list_components(kind: str | None = None, pattern: str | None = None) -> dict[str, list[str]]:
    """Registered component names by kind, e.g. ``{"model": ["gpt", "gpt2", ...], ...}``.

    ``pattern`` is a shell glob on the name (``"gpt2*"``). Imports no model code.
    """
    return get_registry().names(kind, pattern)


def is_component(name: str, kind: str = "model") -> bool:
    return get_registry().has(kind, name)
