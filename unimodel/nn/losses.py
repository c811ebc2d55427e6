"""Cross-entropy of a linear output layer, computed without materialising the logits.

A language-model loss is ``cross_entropy(h @ W.T + b, labels)`` with a (N, V)
logits matrix that is written, read by ``log_softmax``, written again, and then
matched by as many passes in the backward. :func:`linear_cross_entropy` walks
the rows in chunks whose logits stay in cache; for each chunk it computes the
loss, the argmax hits and, when gradients are wanted, the chunk's gradient
``softmax - target`` and its products with ``W`` and ``h`` at once. The backward
then only scales the stored gradients. Peak memory holds one chunk of logits
instead of N rows of them, and the loss passes over memory shrink to one.

Label smoothing follows ``torch.nn.functional.cross_entropy``: the target is
``(1 - eps)`` on the label plus ``eps / V`` on every class.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: the label of a position that is not predicted
IGNORE_INDEX = -100
#: logits elements per chunk on the CPU (fp32: 8 MiB, an L3-sized block)
CHUNK_ELEMENTS = 1 << 21
#: logits elements per chunk on an accelerator (fp32: 256 MiB of logits at most)
DEVICE_CHUNK_ELEMENTS = 1 << 26
#: fewest rows per chunk on an accelerator: each chunk rewrites the whole (V, D) weight gradient, so a
#: chunk of fewer rows would make that product memory-bound instead of a tensor-core GEMM
DEVICE_MIN_ROWS = 1024


def chunk_rows(vocab: int, device_type: str) -> int:
    """Rows of the (rows, vocab) logits block that :func:`linear_cross_entropy` forms at a time.

    On the CPU a chunk's logits fit in the last-level cache (:data:`CHUNK_ELEMENTS`), however few
    rows that leaves. On an accelerator the cache does not hold such blocks anyway and every chunk
    costs a pass over the (V, D) weight gradient, so chunks are large: at least
    :data:`DEVICE_MIN_ROWS` rows, up to :data:`DEVICE_CHUNK_ELEMENTS` logits, a multiple of 128 rows.
    """
    if vocab <= 0:
        raise ValueError(f"vocab must be positive, got {vocab}")
    if device_type == "cpu":
        return max(1, CHUNK_ELEMENTS // vocab)
    rows = max(DEVICE_MIN_ROWS, DEVICE_CHUNK_ELEMENTS // vocab)
    return rows - rows % 128


def linear_cross_entropy(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, *, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``labels``, and the number of hits.

    Args:
        hidden: (N, D) rows.
        weight: (V, D) output matrix; ``bias``: (V,) or ``None``.
        labels: (N,) class ids in ``[0, V)``, or :data:`IGNORE_INDEX` for a row that is not predicted
            (it adds nothing to the loss, its gradient or the hits; dropping such rows beforehand saves
            their work but costs a host sync for the data-dependent shape).
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.

    Returns:
        ``(loss, correct)``: the fp32 mean loss over the predicted rows (differentiable in ``hidden``,
        ``weight`` and ``bias``; 0 when no row is predicted) and how many predicted rows' argmax equals
        the label (an integer tensor). Nothing is read back to the host.

    Under autocast the products run in the autocast dtype and the softmax in fp32,
    as ``linear`` followed by ``cross_entropy`` would. The gradients are formed
    unnormalised (``softmax - target``, within [-1, 1]) and kept in fp32 until the
    backward scales them by the incoming gradient, which under fp16 carries the
    loss scale: no gradient underflows for being divided by N first, and an
    overflow shows as inf in the gradients, where a ``GradScaler`` finds it.
    """
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    inputs = (hidden, weight) if bias is None else (hidden, weight, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _LinearCrossEntropy.apply(hidden, weight, bias, labels, label_smoothing, dtype)
    with torch.autocast(device, enabled=False):
        total, correct, count, _ = _chunks(hidden, weight, bias, labels, label_smoothing, dtype, grads=None)
    return total / count.clamp(min=1), correct


def _chunks(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    eps: float,
    dtype: torch.dtype,
    grads: tuple[bool, bool, bool] | None,
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor | None, Tensor | None, Tensor | None]]:
    """The loss sum, the hits, the number of predicted rows and (when ``grads`` says which) the fp32
    gradients of the loss SUM (the caller divides by the number of predicted rows)."""
    n, vocab = hidden.shape[0], weight.shape[0]
    h, w = hidden.to(dtype), weight.to(dtype)
    b = bias.to(dtype) if bias is not None else None
    predicted = labels != IGNORE_INDEX
    safe_labels = labels.masked_fill(~predicted, 0)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    g_h = g_w = g_b = None
    if grads is not None:
        f32 = torch.float32
        g_h = torch.empty(h.shape, dtype=f32, device=h.device) if grads[0] else None
        g_w = torch.zeros_like(weight, dtype=f32) if grads[1] else None
        g_b = torch.zeros_like(bias, dtype=f32) if grads[2] and bias is not None else None
    rows = chunk_rows(vocab, hidden.device.type)
    for start in range(0, n, rows):
        hc, y, keep = h[start : start + rows], safe_labels[start : start + rows], predicted[start : start + rows]
        logits = (hc @ w.t() if b is None else torch.addmm(b, hc, w.t())).float()  # (c, V)
        lse = torch.logsumexp(logits, dim=-1)
        loss = lse - logits.gather(1, y[:, None]).squeeze(1)
        if eps:
            loss = (1.0 - eps) * loss + eps * (lse - logits.mean(dim=-1))
        total += torch.where(keep, loss, 0.0).sum()
        correct += ((logits.argmax(dim=-1) == y) & keep).sum()
        if grads is None:
            continue
        # d(loss sum)/d(logits) = softmax - target on predicted rows, 0 on the others, formed in place
        g = logits.sub_(lse[:, None]).exp_()
        g.scatter_add_(1, y[:, None], g.new_full((len(y), 1), eps - 1.0))
        if eps:
            g.sub_(eps / vocab)
        g.mul_(keep[:, None])
        _accumulate(g, hc, w, dtype, g_h[start : start + rows] if g_h is not None else None, g_w, g_b)
    count = predicted.sum()
    if grads is not None:
        inv = 1.0 / count.clamp(min=1).to(torch.float32)  # a tensor: no host read
        for g_ in (g_h, g_w, g_b):
            if g_ is not None:
                g_.mul_(inv)
    return total, correct, count, (g_h, g_w, g_b)


def _accumulate(
    g: Tensor, hc: Tensor, w: Tensor, dtype: torch.dtype, g_h: Tensor | None, g_w: Tensor | None, g_b: Tensor | None
) -> None:
    """Add one chunk's products to the fp32 gradients: ``g_h = g @ w``, ``g_w += g.T @ hc``, ``g_b += sum(g)``.

    g (c, V) fp32 gradient of the logits; hc (c, D) the chunk's rows and w (V, D) the weight, both in
    ``dtype``. The products run in ``dtype`` where its range is safe: an fp16 ``g.T @ hc`` sums up to
    c rows of one label and can overflow, so that one runs in fp32.
    """
    low = g.to(dtype) if dtype != torch.float32 else g
    if g_h is not None:
        if dtype == torch.float32:
            torch.mm(g, w, out=g_h)
        else:
            g_h.copy_(low @ w)
    if g_w is not None:
        if dtype in (torch.float32, torch.float16):
            g_w.addmm_(g.t(), hc.float())
        else:
            g_w.add_(low.t() @ hc)  # bf16 has fp32's range; accumulated in fp32
    if g_b is not None:
        g_b.add_(g.sum(0))


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and its fp32 gradients; backward scales them by the incoming gradient."""

    @staticmethod
    def forward(
        ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, eps: float, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        wanted = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        with torch.autocast(hidden.device.type, enabled=False):
            total, correct, count, grads = _chunks(hidden, weight, bias, labels, eps, dtype, grads=wanted)
        ctx.mark_non_differentiable(correct)
        ctx.grads = grads  # fp32 until the backward has scaled them
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total / count.clamp(min=1), correct

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_loss: Tensor, _grad_correct: Tensor) -> tuple[Tensor | None, ...]:
        grads, dtypes = ctx.grads, ctx.dtypes
        del ctx.grads
        scale = grad_loss.to(torch.float32)
        out = [g.mul_(scale).to(dt) if g is not None else None for g, dt in zip(grads, dtypes, strict=True)]
        return out[0], out[1], out[2], None, None, None
