"""pytest plugin for unimodel's conformance kit. Inactive unless ``--unimodel-conformance`` is given.

Installed with unimodel (entry point ``pytest11: unimodel``), so every pytest
run sees its options, and nothing else: without the flag it adds no tests,
no fixtures and imports neither torch nor any model code.

With the flag, pytest also collects :mod:`unimodel.testing.conformance`, whose
tests are parametrized over the registry at collection time: a component is
tested the moment a plugin registers it. Test ids name the component
(``test_roundtrip[model:gpt]``, ``test_gradients[model:gpt/objective:fim]``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from unimodel.testing.cases import Selection

KIT_MODULE = Path(__file__).with_name("conformance.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unimodel", "unimodel conformance kit")
    group.addoption(
        "--unimodel-conformance",
        action="store_true",
        default=False,
        help="run unimodel's conformance checks against every registered component",
    )
    group.addoption(
        "--unimodel-select",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only components whose name matches this shell glob (repeatable), e.g. 'mygpt*'",
    )
    group.addoption(
        "--unimodel-plugin",
        action="append",
        default=[],
        metavar="NAME",
        help="only components registered by this plugin, its entry-point name (repeatable)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("unimodel_conformance"):
        return
    from unimodel.registry import get_registry

    known = get_registry().plugins
    unknown = [p for p in config.getoption("unimodel_plugin") if p not in known]
    if unknown:
        raise pytest.UsageError(
            f"--unimodel-plugin {unknown[0]!r}: no such unimodel plugin; plugins: {', '.join(sorted(known))} "
            "(the name is the entry-point name in the 'unimodel' group)"
        )
    # Collected like a test file the user named on the command line, so -k, -x,
    # --lf and reporting behave as for any other test.
    config.args.append(str(KIT_MODULE))


def selection(config: pytest.Config) -> Selection:
    """The components this run covers, from ``--unimodel-select`` and ``--unimodel-plugin``."""
    return Selection(tuple(config.getoption("unimodel_select")), tuple(config.getoption("unimodel_plugin")))


def pytest_report_header(config: pytest.Config) -> str | None:
    if not config.getoption("unimodel_conformance"):
        return None
    from unimodel.registry import get_registry

    reg = get_registry()
    sel = selection(config)
    parts = [f"unimodel conformance kit: {len(reg.plugins)} plugin(s)"]
    if sel.plugins:
        parts.append(f"plugins {', '.join(sel.plugins)}")
    if sel.patterns:
        parts.append(f"names {', '.join(sel.patterns)}")
    failed = [p.name for p in reg.failed_plugins]
    if failed:
        parts.append(f"FAILED to load: {', '.join(failed)} (run `unimodel doctor`)")
    return "; ".join(parts)
