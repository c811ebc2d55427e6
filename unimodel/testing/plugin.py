"""pytest plugin for unimodel's conformance kit. Inactive unless ``--unimodel-conformance`` is given."""

from __future__ import annotations


def pytest_addoption(parser):
    group = parser.getgroup("unimodel", "unimodel conformance kit")
    group.addoption(
        "--unimodel-conformance",
        action="store_true",
        default=False,
        help="run unimodel's conformance checks against every registered component",
    )
