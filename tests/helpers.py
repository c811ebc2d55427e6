"""What many test modules share: the families' registered tiny configs, and the randomisation
that makes Hugging Face parity fixtures able to see a wrong mapping.

Test modules import these (``from helpers import build_tiny``); conftest.py holds the fixtures.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import unimodel as um
from unimodel.registry import get_registry


def tiny_config(family: str) -> dict[str, Any]:
    """The config overrides ``family`` registers as its small, fast instance (the conformance kit's too)."""
    return dict(get_registry().get("model", family).tiny)


def build_tiny(family: str, *, seed: int | None = 0, **overrides: Any) -> um.Model:
    """``family`` built from its registered tiny config plus ``overrides``, in eval mode."""
    if seed is not None:
        torch.manual_seed(seed)
    return um.build_model(family, **{**tiny_config(family), **overrides}).eval()


@torch.no_grad()
def randomize_(model: nn.Module, *, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Add ``scale`` * N(0, 1) noise to every floating-point tensor of ``model``'s state dict.

    A freshly initialised reference model keeps LayerNorm weights at 1 and most
    biases at 0; a converter that swapped two of them (``ln_1`` with ``ln_2``, two
    projection biases) would still produce identical logits. After this, every
    tensor differs from every other, so a parity test fails on any wrong mapping.
    Tied tensors are perturbed once. Returns ``model``.
    """
    g = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    for tensor in model.state_dict(keep_vars=True).values():
        if not tensor.is_floating_point() or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        tensor.data.add_(scale * torch.randn(tensor.shape, generator=g, dtype=tensor.dtype))
    constant = constant_tensors(model)
    assert not constant, f"tensors still constant after randomisation: {constant}"
    return model


def constant_tensors(model: nn.Module) -> list[str]:
    """Names of floating-point state-dict tensors (more than one element) whose elements are all equal."""
    return [
        name
        for name, t in model.state_dict().items()
        if t.is_floating_point() and t.numel() > 1 and bool((t == t.flatten()[0]).all())
    ]


def assert_peaked(logits: torch.Tensor, at_least: float = 0.1) -> None:
    """Next-token distributions far from uniform: the mean top probability is at least ``at_least``.

    Generation parity compares tokens; with near-uniform logits (a reference model at its default
    initialisation) the top two tokens often differ by float rounding, and the greedy choice between
    them depends on the order of additions, not on whether the implementation is right.
    """
    top = logits.float().softmax(-1).max(-1).values.mean().item()
    assert top >= at_least, f"mean top-token probability {top:.3f} < {at_least}: logits too close to uniform"
