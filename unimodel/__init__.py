"""unimodel: one modeling API over the transformer family.

Importing ``unimodel`` is cheap: torch and model code load on first use of an
attribute that needs them, so ``unimodel list`` answers at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unimodel.errors import UnimodelError
from unimodel.hookspecs import PLUGIN_API_VERSION, hookimpl

__version__ = "0.1.0"

_LAZY = {
    "build_model": "unimodel.model",
    "build_objective": "unimodel.model",
    "Model": "unimodel.model",
    "load": "unimodel.checkpoint",
    "from_hf": "unimodel.hf",
    "to_hf": "unimodel.hf",
    "list_components": "unimodel.api",
    "is_component": "unimodel.api",
    "Component": "unimodel.registry",
    "get_registry": "unimodel.registry",
    "Tokenizer": "unimodel.data.tokenizer",
    "Cap": "unimodel.capabilities",
    "Encoder": "unimodel.interfaces",
    "Decoder": "unimodel.interfaces",
    "Objective": "unimodel.interfaces",
    "ModelFamily": "unimodel.interfaces",
    "Backbone": "unimodel.interfaces",
    "ModelOutput": "unimodel.interfaces",
    "ObjectiveOutput": "unimodel.interfaces",
    "Config": "unimodel.config",
    "param": "unimodel.config",
}

if TYPE_CHECKING:
    from unimodel.api import is_component, list_components
    from unimodel.capabilities import Cap
    from unimodel.checkpoint import load
    from unimodel.config import Config, param
    from unimodel.data.tokenizer import Tokenizer
    from unimodel.hf import from_hf, to_hf
    from unimodel.interfaces import (
        Backbone,
        Decoder,
        Encoder,
        ModelFamily,
        ModelOutput,
        Objective,
        ObjectiveOutput,
    )
    from unimodel.model import Model, build_model, build_objective
    from unimodel.registry import Component, get_registry


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'unimodel' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["PLUGIN_API_VERSION", "UnimodelError", "__version__", "hookimpl", *_LAZY]
