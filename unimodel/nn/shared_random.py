"""Randomness that every data-parallel process must draw alike: structural choices such as the blocks
LayerDrop skips.

Dropout may differ between processes (each sees its own rows), but a choice that changes which
parameters take part in a step must be the same on every process: data-parallel engines reduce
gradients parameter by parameter and expect every process to produce the same set. The trainer opens
:func:`shared_randomness` around each micro-batch's forward with a seed derived from the run seed, the
step and the micro-batch (never the process); a module draws such choices from
:func:`shared_generator`. Outside that context the choices come from torch's global generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_ACTIVE: list[torch.Generator] = []


@contextmanager
def shared_randomness(seed: int) -> Iterator[torch.Generator]:
    """Within the block, :func:`shared_generator` is a CPU generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    _ACTIVE.append(g)
    try:
        yield g
    finally:
        _ACTIVE.pop()


def shared_generator() -> torch.Generator | None:
    """The generator of the innermost :func:`shared_randomness` block, or ``None`` outside one (torch's global
    generator then)."""
    return _ACTIVE[-1] if _ACTIVE else None


def shared_uniform() -> float:
    """One draw from U[0, 1) that agrees across processes inside :func:`shared_randomness` (a host value: it
    decides control flow)."""
    return float(torch.rand((), generator=shared_generator()))


__all__ = ["shared_generator", "shared_randomness", "shared_uniform"]
