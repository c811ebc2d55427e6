"""A linear layer with a decoding layout, and the context that switches it on.

Token-by-token decoding multiplies one state per row by every projection matrix:
a matrix-vector product whose cost is reading the matrix from memory. On the CPU
the speed of that read depends on the matrix's layout and shape: a widening
projection (more outputs than inputs: q/k/v, the feed-forward's first layer)
reads about twice as fast from a (in, out) copy as through ``linear`` on the
(out, in) parameter, while a narrowing one (the feed-forward's second layer) is
fastest as it is. :func:`decoding_layout` gives each widening :class:`Linear`,
and the LM head (the widest matrix of all), a transposed copy for the duration of
a generation call, when the copies fit the memory budget; the parameters, the
state dict and training are untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: the most memory the transposed copies may take (bytes); beyond it decoding uses the parameters
DECODING_COPY_BUDGET = 1 << 30


class DecodingLayout:
    """A module whose (out, in) ``weight`` is read from a (in, out) copy while
    :func:`decoding_layout` is active: :class:`Linear`, and the LM head."""

    weight: Tensor
    decode_weight: Tensor | None = None

    def project(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """``linear(x, weight, bias)``, from the decoding copy when there is one."""
        wt = self.decode_weight
        if wt is None:
            return F.linear(x, self.weight, bias)
        rows = x.reshape(-1, x.shape[-1])
        y = rows @ wt if bias is None else torch.addmm(bias, rows, wt)
        return y.view(*x.shape[:-1], wt.shape[1])


class Linear(DecodingLayout, nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) taking part in the decoding layout."""

    def forward(self, x: Tensor) -> Tensor:
        return self.project(x, self.bias)


@contextmanager
def decoding_layout(*modules: nn.Module | None, budget: int = DECODING_COPY_BUDGET) -> Iterator[bool]:
    """Within the block, every widening :class:`DecodingLayout` module in ``modules`` (and their
    submodules) uses a transposed copy of its weight. ``None`` entries are skipped.

    Yields whether the copies were made (not when they would exceed ``budget`` bytes).
    The copies are snapshots, taken on entry and dropped on exit: the weights must not
    change inside the block (generation does not change them).
    """
    layers = {
        id(m): m for module in modules if module is not None for m in module.modules()
        if isinstance(m, DecodingLayout) and m.decode_weight is None and m.weight.shape[0] > m.weight.shape[1]
    }.values()
    size = sum(m.weight.numel() * m.weight.element_size() for m in layers)
    if not layers or size > budget:
        yield False
        return
    try:
        for m in layers:
            m.decode_weight = m.weight.detach().t().contiguous()
        yield True
    finally:
        for m in layers:
            m.__dict__.pop("decode_weight", None)
