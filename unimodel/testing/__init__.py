"""The conformance kit: checks that a registered component behaves as unimodel's interfaces promise.

Two ways to run it:

- ``pytest --unimodel-conformance`` (the pytest plugin in
  :mod:`unimodel.testing.plugin`, parametrized over the registry), optionally
  narrowed with ``--unimodel-plugin NAME`` and ``--unimodel-select GLOB``;
- the plain functions here, e.g. ``check_model("gpt")``, which raise
  :class:`ConformanceError` on the first problem or return a :class:`Report`.

docs/plugins.md lists every check and what it catches.

Importing this package is cheap (pytest imports it in every run through the
plugin); the checks, which need torch, load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from unimodel.testing.cases import Case, Selection

if TYPE_CHECKING:
    from unimodel.testing.base import (
        ConformanceError,
        NotApplicable,
        build_tiny,
        kit_context,
        model_inputs,
        roundtrip_config,
        synthetic_examples,
        synthetic_tokenizer,
        using_registry,
    )
    from unimodel.testing.checks import (
        check_capabilities,
        check_config,
        check_determinism,
        check_forward,
        check_gradients,
        check_input_errors,
        check_kv_cache,
        check_preset,
        check_roundtrip,
    )
    from unimodel.testing.components import check_declaration, check_decoder, check_encoder, check_objective
    from unimodel.testing.generation import check_beam_search, check_decoding, check_generation
    from unimodel.testing.objectives import check_padding_loss, check_prepare
    from unimodel.testing.parts import check_pairing
    from unimodel.testing.runner import Report, check_component, check_model, run_conformance
    from unimodel.testing.vocabulary import check_config_names

# public name -> the module that defines it (imported on first use: the checks need torch)
_CHECKS = {
    "ConformanceError": "base",
    "NotApplicable": "base",
    "build_tiny": "base",
    "kit_context": "base",
    "model_inputs": "base",
    "roundtrip_config": "base",
    "synthetic_examples": "base",
    "synthetic_tokenizer": "base",
    "using_registry": "base",
    "check_capabilities": "checks",
    "check_config": "checks",
    "check_determinism": "checks",
    "check_forward": "checks",
    "check_gradients": "checks",
    "check_input_errors": "checks",
    "check_kv_cache": "checks",
    "check_preset": "checks",
    "check_roundtrip": "checks",
    "check_declaration": "components",
    "check_decoder": "components",
    "check_encoder": "components",
    "check_objective": "components",
    "check_beam_search": "generation",
    "check_decoding": "generation",
    "check_generation": "generation",
    "check_padding_loss": "objectives",
    "check_prepare": "objectives",
    "check_pairing": "parts",
    "Report": "runner",
    "check_component": "runner",
    "check_model": "runner",
    "run_conformance": "runner",
    "check_config_names": "vocabulary",
}


def __getattr__(name: str) -> Any:
    if name in _CHECKS:
        value = getattr(importlib.import_module(f"unimodel.testing.{_CHECKS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unimodel.testing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_CHECKS])


__all__ = ["Case", "Selection", *_CHECKS]
