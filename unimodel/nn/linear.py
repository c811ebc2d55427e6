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

The copies belong to the block, not to the modules: they are held in a
context variable, so two threads generating with one model (or with models
sharing a layer) each read their own, and a module never carries another
call's state.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: the most memory the decoding copies may take (bytes); beyond it decoding uses the parameters
DECODING_COPY_BUDGET = 1 << 30
#: above this many rows (a prompt's prefill) ``linear`` on the parameter is faster than the copies
DECODING_MAX_ROWS = 32


@dataclass(frozen=True)
class Layout:
    """One module's weights in the decoding layout (see :class:`DecodingLayout`)."""

    weight: Tensor  # (k, in/k, out) copy, or (k, in, out/k) view of the parameter when split_out
    bias: Tensor | None  # (k, 1, out): the bias in chunk 0, zeros elsewhere; or the (k, 1, out/k) view
    split_out: bool


#: the layouts of the innermost active :func:`decoding_layout` block of this thread (or task), by module
_ACTIVE: ContextVar[Mapping[DecodingLayout, Layout] | None] = ContextVar("decoding_layout", default=None)
#: blocks open in any thread: with none, a projection skips the context lookup (which torch.compile
#: cannot trace, so training graphs stay whole)
_open_blocks = 0
_open_lock = threading.Lock()


class DecodingLayout:
    """A module whose (out, in) ``weight`` (and optional ``bias``) is read in per-thread chunks
    while :func:`decoding_layout` is active: :class:`Linear`, and the LM head.

    Widening and square layers split the input: ``decode_weight`` is a contiguous
    (k, in/k, out) copy and ``decode_bias`` (k, 1, out) holds the bias in chunk 0 and
    zeros elsewhere, so the batched multiply adds it and the sum over chunks keeps it
    once. Narrowing layers split the output (``decode_split_out``): ``decode_weight``
    is the (k, in, out/k) view of the parameter itself and ``decode_bias`` the
    (k, 1, out/k) view of the bias, so they cost no copy, and the chunks' results
    side by side are the output. The three read the active block of the calling
    thread: ``None``/``False`` outside one.
    """

    weight: Tensor

    def layout_bias(self) -> Tensor | None:
        """The (out,) bias, or ``None`` (``bias`` is declared by the module class it is mixed into)."""
        bias: Tensor | None = getattr(self, "bias", None)
        return bias

    def decoding(self) -> Layout | None:
        """This module's layout in the calling thread's active :func:`decoding_layout` block, if any."""
        if not _open_blocks:
            return None
        active = _ACTIVE.get()
        return None if active is None else active.get(self)

    @property
    def decode_weight(self) -> Tensor | None:
        layout = self.decoding()
        return None if layout is None else layout.weight

    @property
    def decode_bias(self) -> Tensor | None:
        layout = self.decoding()
        return None if layout is None else layout.bias

    @property
    def decode_split_out(self) -> bool:
        layout = self.decoding()
        return layout is not None and layout.split_out

    def project(self, x: Tensor) -> Tensor:
        """``linear(x, weight, bias)``, from the decoding layout when there is one and ``x`` has few rows."""
        layout = self.decoding()  # read once: one consistent (weight, bias, split) for the whole product
        rows = x.numel() // x.shape[-1]
        if layout is None or rows > DECODING_MAX_ROWS:
            return F.linear(x, self.weight, self.layout_bias())
        w, b = layout.weight, layout.bias
        k = w.shape[0]
        if layout.split_out:
            inp = x.reshape(1, rows, -1).expand(k, rows, -1)
            y = torch.bmm(inp, w) if b is None else torch.baddbmm(b, inp, w)
            # (k, rows, out/k) -> (rows, out); for one row the memory order already is that
            y = y.view(1, -1) if rows == 1 else y.transpose(0, 1).reshape(rows, -1)
        else:
            # (k, rows, in/k); one row is a plain view (a strided one would make the multiply copy it)
            chunks = x.reshape(k, 1, -1) if rows == 1 else x.reshape(rows, k, -1).transpose(0, 1)
            y = torch.bmm(chunks, w) if b is None else torch.baddbmm(b, chunks, w)
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


def _layout(m: DecodingLayout, k: int, split_out: bool) -> Layout:
    """``m``'s weights in the decoding layout of ``k`` chunks (see :class:`DecodingLayout`)."""
    d_out, d_in = m.weight.shape
    bias = m.layout_bias()
    weight, bias = m.weight.detach(), bias.detach() if bias is not None else None
    if split_out:
        view = weight.view(k, d_out // k, d_in).transpose(1, 2)
        return Layout(view, None if bias is None else bias.view(k, 1, d_out // k), True)
    w = _transposed(weight).view(k, d_in // k, d_out)
    if bias is None:
        return Layout(w, None, False)
    chunked = bias.new_zeros(k, 1, d_out)
    chunked[0, 0] = bias
    return Layout(w, chunked, False)


@contextmanager
def decoding_layout(
    *modules: nn.Module | None, budget: int = DECODING_COPY_BUDGET, threads: int | None = None
) -> Iterator[bool]:
    """Within the block, the :class:`DecodingLayout` modules in ``modules`` (and their submodules)
    read chunked copies of their weights (see the module docstring). ``None`` entries are skipped.

    ``threads`` (default: torch's intra-op thread count) sets the number of chunks.
    Yields whether the copies were made (not when they would exceed ``budget`` bytes, nor for weights
    off the CPU: the layout serves the CPU's memory bandwidth).
    The copies are snapshots, taken on entry and dropped on exit: the weights must not
    change inside the block (generation does not change them).
    """
    threads = torch.get_num_threads() if threads is None else threads
    outer = _ACTIVE.get() or {}
    layers = {
        id(m): m
        for module in modules
        if module is not None
        for m in module.modules()
        # an enclosing block already laid it out; weights off the CPU keep the device's own GEMV (a copy
        # there would cost device memory and replace one cuBLAS call by a chunked bmm)
        if isinstance(m, DecodingLayout) and m not in outer and m.weight.device.type == "cpu"
    }.values()
    plans = [(m, plan) for m in layers if (plan := _plan(m, threads)) is not None]
    size = sum(m.weight.numel() * m.weight.element_size() for m, (_, split_out) in plans if not split_out)
    if not plans or size > budget:
        yield False
        return
    with torch.no_grad():
        layouts: dict[DecodingLayout, Layout] = {m: _layout(m, k, split_out) for m, (k, split_out) in plans}
    token = _ACTIVE.set({**outer, **layouts})
    _count_block(+1)
    try:
        yield True
    finally:
        _count_block(-1)
        _ACTIVE.reset(token)


def _count_block(change: int) -> None:
    global _open_blocks
    with _open_lock:
        _open_blocks += change
