"""A linear layer with a decoding layout, and the context that switches it on.

Token-by-token decoding multiplies a few rows by every projection matrix: a
matrix-vector product whose cost is reading the matrix from memory. On the CPU
``linear`` reads an (out, in) matrix for a single row at well under the memory
bandwidth, and with one thread only. Within :func:`decoding_layout` (a generation
call) each :class:`Linear`, and the LM head, multiplies in one chunk per thread,
as one batched multiply in which every thread reads its own contiguous chunk:

- a widening or square layer splits the input: a copy of its weight as k
  contiguous (in/k, out) blocks, the orientation the CPU reads fastest for such
  shapes; the partial results are summed;
- a narrowing layer splits the output: the k (out/k, in) blocks of the parameter
  itself, read in place (no copy), the results side by side.

With a single thread a widening layer reads one (in, out) transposed copy and
the others keep ``linear``. The parameters, the state dict and training are
untouched; the copies live only as long as the block.
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
    """A module whose (out, in) ``weight`` (and optional ``bias``) is read in per-thread chunks
    while :func:`decoding_layout` is active: :class:`Linear`, and the LM head.

    Widening and square layers split the input: ``decode_weight`` is a contiguous
    (k, in/k, out) copy and ``decode_bias`` (k, 1, out) holds the bias in chunk 0 and
    zeros elsewhere, so the batched multiply adds it and the sum over chunks keeps it
    once. Narrowing layers split the output (``decode_split_out``): ``decode_weight``
    is the (k, in, out/k) view of the parameter itself and ``decode_bias`` the
    (k, 1, out/k) view of the bias, so they cost no copy, and the chunks' results
    side by side are the output.
    """

    weight: Tensor
    bias: Tensor | None
    decode_weight: Tensor | None = None
    decode_bias: Tensor | None = None
    decode_split_out: bool = False

    def project(self, x: Tensor) -> Tensor:
        """``linear(x, weight, bias)``, from the decoding layout when there is one and ``x`` has few rows."""
        w = self.decode_weight
        rows = x.numel() // x.shape[-1]
        if w is None or rows > DECODING_MAX_ROWS:
            return F.linear(x, self.weight, self.bias)
        k = w.shape[0]
        if self.decode_split_out:
            inp = x.reshape(1, rows, -1).expand(k, rows, -1)
            y = torch.bmm(inp, w) if self.decode_bias is None else torch.baddbmm(self.decode_bias, inp, w)
            # (k, rows, out/k) -> (rows, out); for one row the memory order already is that
            y = y.view(1, -1) if rows == 1 else y.transpose(0, 1).reshape(rows, -1)
        else:
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
    """``(chunks, split_out)`` for ``m``, or ``None`` when ``linear`` on the parameter is best."""
    d_out, d_in = m.weight.shape
    if d_out < d_in:  # narrowing: split the output, a view of the parameter
        k = _chunks(d_out, threads)
        return (k, True) if k > 1 else None
    k = _chunks(d_in, threads)
    if k == 1 and d_out == d_in:
        return None  # one chunk: only a widening matrix reads faster transposed
    return k, False


def _transposed(w: Tensor, block: int = 512) -> Tensor:
    """``w.t().contiguous()``, copied a block of rows at a time: a block's source and destination stay
    in cache, which makes the copy of a large matrix about twice as fast as one whole-matrix copy."""
    out = w.new_empty(w.shape[1], w.shape[0])
    for start in range(0, w.shape[0], block):
        out[:, start : start + block] = w[start : start + block].t()
    return out


def _decoding_weights(m: DecodingLayout, k: int, split_out: bool) -> tuple[Tensor, Tensor | None]:
    """``(decode_weight, decode_bias)`` for ``m`` (see :class:`DecodingLayout`)."""
    d_out, d_in = m.weight.shape
    weight, bias = m.weight.detach(), m.bias.detach() if m.bias is not None else None
    if split_out:
        return weight.view(k, d_out // k, d_in).transpose(1, 2), None if bias is None else bias.view(k, 1, d_out // k)
    w = _transposed(weight).view(k, d_in // k, d_out)
    if bias is None:
        return w, None
    chunked = bias.new_zeros(k, 1, d_out)
    chunked[0, 0] = bias
    return w, chunked


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
        id(m): m
        for module in modules
        if module is not None
        for m in module.modules()
        if isinstance(m, DecodingLayout) and m.decode_weight is None
    }.values()
    plans = [(m, plan) for m in layers if (plan := _plan(m, threads)) is not None]
    size = sum(m.weight.numel() * m.weight.element_size() for m, (_, split_out) in plans if not split_out)
    if not plans or size > budget:
        yield False
        return
    try:
        with torch.no_grad():
            for m, (k, split_out) in plans:
                m.decode_weight, m.decode_bias = _decoding_weights(m, k, split_out)
                m.decode_split_out = split_out
        yield True
    finally:
        for m, _ in plans:
            for name in ("decode_weight", "decode_bias", "decode_split_out"):
                m.__dict__.pop(name, None)
