"""The conformance tests; collected by :mod:`unimodel.testing.plugin` when ``--unimodel-conformance`` is given.

Each test runs one check from :mod:`unimodel.testing.checks` on one case from
:mod:`unimodel.testing.cases`; the parametrization is computed from the
registry when pytest collects this module.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from unimodel.registry import get_registry
from unimodel.testing import cases as C
from unimodel.testing import checks, generation, objectives, parts
from unimodel.testing.base import ConformanceError, NotApplicable
from unimodel.testing.plugin import selection

_CASES: dict[str, Callable[..., list[C.Case]]] = {
    "test_forward": lambda reg, sel: C.model_cases(reg, sel),
    "test_gradients": lambda reg, sel: C.pair_cases(reg, sel),
    "test_roundtrip": lambda reg, sel: C.model_cases(reg, sel),
    "test_kv_cache": lambda reg, sel: C.model_cases(reg, sel, capability="kv_cache"),
    "test_generation": lambda reg, sel: C.model_cases(reg, sel),
    "test_beam_search": lambda reg, sel: C.model_cases(reg, sel),
    "test_determinism": lambda reg, sel: C.model_cases(reg, sel),
    "test_config_roundtrip": lambda reg, sel: C.model_cases(reg, sel),
    "test_capabilities": lambda reg, sel: C.model_cases(reg, sel),
    "test_input_errors": lambda reg, sel: C.model_cases(reg, sel),
    "test_preset": lambda reg, sel: C.preset_cases(reg, sel),
    "test_objective": lambda reg, sel: C.component_cases("objective", reg, sel),
    "test_prepare": lambda reg, sel: C.component_cases("objective", reg, sel),
    "test_padding_loss": lambda reg, sel: C.component_cases("objective", reg, sel),
    "test_pairing": lambda reg, sel: C.component_cases("encoder", reg, sel) + C.component_cases("decoder", reg, sel),
    "test_decoding": lambda reg, sel: C.component_cases("decoding", reg, sel),
    "test_encoder": lambda reg, sel: C.component_cases("encoder", reg, sel),
    "test_decoder": lambda reg, sel: C.component_cases("decoder", reg, sel),
    "test_declaration": lambda reg, sel: C.declaration_cases(reg, sel),
    "test_config_names": lambda reg, sel: C.config_cases(reg, sel),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    reg = get_registry()
    sel = selection(metafunc.config)
    name = metafunc.function.__name__
    if name == "test_plugin_loaded":
        if sel.plugins:
            plugins = sorted(sel.plugins)
        elif sel.patterns:  # the plugins that own a selected component
            plugins = sorted({c.plugin for c in reg.components() if sel.matches(c)})
        else:
            plugins = sorted(reg.plugins)
        metafunc.parametrize("plugin", plugins, ids=[f"plugin:{p}" for p in plugins])
        return
    found = _CASES[name](reg, sel)
    params = [pytest.param(c, id=c.id, marks=[pytest.mark.skip(reason=c.skip)] if c.skip else []) for c in found]
    if not params:  # say so, rather than pytest's anonymous "empty parameter set"
        params = [pytest.param(None, id="none", marks=pytest.mark.skip(reason="no selected component to check"))]
    metafunc.parametrize("case", params)


def _run(fn: Callable[[], None]) -> None:
    try:
        fn()
    except NotApplicable as exc:
        pytest.skip(str(exc))
    except ConformanceError as exc:
        # The message names the component and the problem; the kit's own frames would only add noise.
        pytest.fail(str(exc), pytrace=False)


def test_plugin_loaded(plugin: str) -> None:
    """The plugin imported, its hooks ran, it targets this plugin API, and none of its names clash."""
    reg = get_registry()
    rec = reg.plugins[plugin]
    if not rec.ok:
        pytest.fail(
            f"plugin {plugin!r} ({rec.source}) failed to load: {rec.error}\n{rec.traceback or ''}", pytrace=False
        )
    clashes = [f"{k} {n!r}" for (k, n), comps in reg.conflicts.items() if any(c.plugin == plugin for c in comps)]
    if clashes:
        pytest.fail(
            f"plugin {plugin!r} registers names another plugin also registers: {', '.join(clashes)}; users must "
            "then write qualified names (plugin:name), so rename yours",
            pytrace=False,
        )
    if rec.api_version is None:
        pytest.fail(
            f"plugin {plugin!r} does not declare its plugin API version; implement the unimodel_api_version hook",
            pytrace=False,
        )


def test_declaration(case: C.Case) -> None:
    _run(lambda: checks.check_declaration(case.kind, case.name))


def test_forward(case: C.Case) -> None:
    _run(lambda: checks.check_forward(case.name))


def test_gradients(case: C.Case) -> None:
    objective = case.objective
    assert objective is not None
    _run(lambda: checks.check_gradients(case.name, objective))


def test_roundtrip(case: C.Case) -> None:
    _run(lambda: checks.check_roundtrip(case.name))


def test_kv_cache(case: C.Case) -> None:
    _run(lambda: checks.check_kv_cache(case.name))


def test_generation(case: C.Case) -> None:
    _run(lambda: generation.check_generation(case.name))


def test_beam_search(case: C.Case) -> None:
    _run(lambda: generation.check_beam_search(case.name))


def test_determinism(case: C.Case) -> None:
    _run(lambda: checks.check_determinism(case.name))


def test_config_roundtrip(case: C.Case) -> None:
    _run(lambda: checks.check_config(case.name))


def test_capabilities(case: C.Case) -> None:
    _run(lambda: checks.check_capabilities(case.name))


def test_input_errors(case: C.Case) -> None:
    _run(lambda: checks.check_input_errors(case.name))


def test_preset(case: C.Case) -> None:
    _run(lambda: checks.check_preset(case.name))


def test_objective(case: C.Case) -> None:
    _run(lambda: checks.check_objective(case.name))


def test_prepare(case: C.Case) -> None:
    _run(lambda: objectives.check_prepare(case.name))


def test_padding_loss(case: C.Case) -> None:
    _run(lambda: objectives.check_padding_loss(case.name))


def test_pairing(case: C.Case) -> None:
    _run(lambda: parts.check_pairing(case.kind, case.name))


def test_decoding(case: C.Case) -> None:
    _run(lambda: generation.check_decoding(case.name))


def test_encoder(case: C.Case) -> None:
    _run(lambda: checks.check_encoder(case.name))


def test_decoder(case: C.Case) -> None:
    _run(lambda: checks.check_decoder(case.name))


def test_config_names(case: C.Case) -> None:
    """The config's field names follow unimodel's vocabulary (no ``n_positions``, ``hidden_size`` ...)."""
    from unimodel.testing.vocabulary import check_config_names

    _run(lambda: check_config_names(case.kind, case.name))
