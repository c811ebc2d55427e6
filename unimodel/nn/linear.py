"""A linear layer with a decoding layout, and the context that switches it on.

Token-by-token decoding multiplies a few rows by every projection matrix: a
matrix-vector product whose cost is reading the matrix from memory. On the CPU
``linear`` reads an (out, in) matrix for a single row at well under the memory
bandwidth, and with one thread only. :func:`decoding_layout` gives each
:class:`Linear` (and the LM head) a copy of its weight split along the input
dimension into one chunk per thread, for the duration of a generation call; a
product is then one batched multiply in which every thread reads its own
contiguous chunk, followed by the sum of the partial results. Each chunk is
stored in the orientation its shape reads fastest: (in/k, out) when the layer
widens or keeps the width, (out, in/k) when it narrows. With a single thread
the one chunk is the (in, out) transpose for widening layers, and narrowing ones
keep ``linear``. The parameters, the state dict and training are untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: the most memory the decoding copies may take (bytes); beyond it decoding uses the parameters
DECODING_COPY_BUDGET = 1 << 30
#: above this many rows (a prompt's prefill) ``linear`` on the parameter is faster than the copies
DECODING_MAX_ROWS = 32


class DecodingLayout:
    """A module whose (out, in) ``weight`` (and optional ``bias``) is read from a chunked copy
    while :func:`decoding_layout` is active: :class:`Linear`, and the LM head.

    ``decode_weight`` is (k, in/k, out): contiguous, or for a narrowing layer the
    transposed view of a contiguous (k, out, in/k); ``decode_bias`` is (k, 1, out), the bias in chunk 0 and zeros elsewhere, so the
    batched multiply adds it and the sum over chunks keeps it once.
    """

    weight: Tensor
    bias: Tensor | None
    decode_weight: Tensor | None = None
    decode_bias: Tensor | None = None

    def project(self, x: Tensor) -> Tensor:
        """``linear(x, weight, bias)``, from the decoding copy when there is one and ``x`` has few rows."""
        w = self.decode_weight
        rows = x.numel() // x.shape[-1]
        if w is None or rows > DECODING_MAX_ROWS:
            return F.linear(x, self.weight, self.bias)
        k = w.shape[0]
        # (k, rows, in/k); one row is a plain view (a strided one would make the multiply copy it)
        chunks = x.reshape(k, 1, -1) if rows == 1 else x.reshape(rows, k, -1).transpose(0, 1)
        y = torch.bmm(chunks, w) if self.decode_bias is None else torch.baddbmm(self.decode_bias, chunks, w)
        y = y[0] if k == 1 else y.sum(0)
        return y.view(*x.shape[:-1], y.shape[-1])


class Linear(DecodingLayout, nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) taking part in the decoding layout."""

    def forward(self, x: Tensor) -> Tensor:
        return self.project(x)


def _chunks(d_in: int, threads: int) -> int:
    """The most chunks (at most ``threads``) that split ``d_in`` evenly."""
    return next(k for k in range(max(threads, 1), 0, -1) if d_in % k == 0)


def _plan(m: DecodingLayout, threads: int) -> tuple[int, bool] | None:
    """``(chunks, narrow)`` for ``m``'s decoding copy, or ``None`` when ``linear`` on the parameter is best."""
    d_out, d_in = m.weight.shape
    k = _chunks(d_in, threads)
    if k == 1 and d_out <= d_in:
        return None  # one chunk: only a widening matrix reads faster transposed
    return k, d_out < d_in


def _decoding_copy(m: DecodingLayout, k: int, narrow: bool) -> tuple[Tensor, Tensor | None]:
    """The chunked weight, (k, in/k, out) or, when ``narrow``, the (k, in/k, out) view of a
    contiguous (k, out, in/k); and the (k, 1, out) bias, zero outside chunk 0."""
    d_out, d_in = m.weight.shape
    w = m.weight.detach().view(d_out, k, d_in // k)
    w = w.permute(1, 0, 2).contiguous().transpose(1, 2) if narrow else w.permute(1, 2, 0).contiguous()
    bias = None
    if m.bias is not None:
        bias = m.bias.detach().new_zeros(k, 1, d_out)
        bias[0, 0] = m.bias.detach()
    return w, bias


@contextmanager
def decoding_layout(
    *modules: nn.Module | None, budget: int = DECODING_COPY_BUDGET, threads: int | None = None
) -> Iterator[bool]:
    """Within the block, the :class:`DecodingLayout` modules in ``modules`` (and their submodules)
    read chunked copies of their weights (see the module docstring). ``None`` entries are skipped.

    ``threads`` (default: torch's intra-op thread count) sets the number of chunks.
    Yields whether the copies were made (not when they would exceed ``budget`` bytes).
    The copies are snapshots, taken on entry and dropped on exit: the weights must not
    change inside the block (generation does not change them).
    """
    threads = torch.get_num_threads() if threads is None else threads
    layers = {
        id(m): m for module in modules if module is not None for m in module.modules()
        if isinstance(m, DecodingLayout) and m.decode_weight is None
    }.values()
    plans = [(m, plan) for m in layers if (plan := _plan(m, threads)) is not None]
    size = sum(m.weight.numel() * m.weight.element_size() for m, _ in plans)
    if not plans or size > budget:
        yield False
        return
    try:
        with torch.no_grad():
            for m, (k, narrow) in plans:
                m.decode_weight, m.decode_bias = _decoding_copy(m, k, narrow)
        yield True
    finally:
        for m, _ in plans:
            for name in ("decode_weight", "decode_bias"):
                m.__dict__.pop(name, None)
