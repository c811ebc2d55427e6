"""The conformance kit: checks that a registered component behaves as unimodel's interfaces promise.

Two ways to run it:

- ``pytest --unimodel-conformance`` (the pytest plugin in
  :mod:`unimodel.testing.plugin`, parametrized over the registry), optionally
  narrowed with ``--unimodel-plugin NAME`` and ``--unimodel-select GLOB``;
- the plain functions here, e.g. ``check_model("gpt")``, which raise
  :class:`ConformanceError` on the first problem or return a :class:`Report`.

Importing this package is cheap (pytest imports it in every run through the
plugin); the checks, which need torch, load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from unimodel.testing.cases import Case, Selection

if TYPE_CHECKING:
    from unimodel.testing.checks import (
        ConformanceError,
        NotApplicable,
        Report,
        build_tiny,
        check_capabilities,
        check_component,
        check_config,
        check_config_names,
        check_declaration,
        check_decoder,
        check_determinism,
        check_encoder,
        check_forward,
        check_gradients,
        check_input_errors,
        check_kv_cache,
        check_model,
        check_objective,
        check_preset,
        check_roundtrip,
        model_inputs,
        roundtrip_config,
        run_conformance,
        synthetic_examples,
        synthetic_tokenizer,
        using_registry,
    )

_CHECKS = (
    "ConformanceError",
    "NotApplicable",
    "Report",
    "build_tiny",
    "check_capabilities",
    "check_component",
    "check_config",
    "check_config_names",
    "check_declaration",
    "check_decoder",
    "check_determinism",
    "check_encoder",
    "check_forward",
    "check_gradients",
    "check_input_errors",
    "check_kv_cache",
    "check_model",
    "check_objective",
    "check_preset",
    "check_roundtrip",
    "model_inputs",
    "roundtrip_config",
    "run_conformance",
    "synthetic_examples",
    "synthetic_tokenizer",
    "using_registry",
)


def __getattr__(name: str) -> Any:
    if name in _CHECKS:
        value = getattr(importlib.import_module("unimodel.testing.checks"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unimodel.testing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_CHECKS])


__all__ = ["Case", "Selection", *_CHECKS]
