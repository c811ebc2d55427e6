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
#: logits elements per chunk (fp32: 8 MiB, an L3-sized block)
CHUNK_ELEMENTS = 1 << 21


def linear_cross_entropy(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, *, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``labels``, and the number of hits.

    Args:
        hidden: (N, D) rows, every one a prediction (drop ignored rows first).
        weight: (V, D) output matrix; ``bias``: (V,) or ``None``.
        labels: (N,) class ids in ``[0, V)``.
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.

    Returns:
        ``(loss, correct)``: the fp32 mean loss (differentiable in ``hidden``,
        ``weight`` and ``bias``; 0 when N is 0: nothing to predict) and
        how many rows' argmax equals the label (an integer tensor).

    Under autocast the products run in the autocast dtype and the softmax in fp32,
    as ``linear`` followed by ``cross_entropy`` would.
    """
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    inputs = (hidden, weight) if bias is None else (hidden, weight, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _LinearCrossEntropy.apply(hidden, weight, bias, labels, label_smoothing, dtype)
    with torch.autocast(device, enabled=False):
        total, correct, _ = _chunks(hidden, weight, bias, labels, label_smoothing, dtype, grads=None)
    return total / max(labels.numel(), 1), correct


def _chunks(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    eps: float,
    dtype: torch.dtype,
    grads: tuple[bool, bool, bool] | None,
) -> tuple[Tensor, Tensor, tuple[Tensor | None, Tensor | None, Tensor | None]]:
    """The loss sum, the hits, and (when ``grads`` says which) the mean loss's gradients."""
    n, vocab = hidden.shape[0], weight.shape[0]
    h = hidden.to(dtype)
    w = weight.to(dtype)
    b = bias.to(dtype) if bias is not None else None
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    g_h = g_w = g_b = None
    if grads is not None:
        g_h = torch.empty_like(h) if grads[0] else None
        g_w = torch.zeros_like(weight, dtype=torch.float32) if grads[1] else None
        g_b = torch.zeros_like(bias, dtype=torch.float32) if grads[2] and bias is not None else None
    rows = max(1, CHUNK_ELEMENTS // vocab)
    for start in range(0, n, rows):
        hc, y = h[start : start + rows], labels[start : start + rows]
        logits = (hc @ w.t() if b is None else torch.addmm(b, hc, w.t())).float()  # (c, V)
        lse = torch.logsumexp(logits, dim=-1)
        loss = lse - logits.gather(1, y[:, None]).squeeze(1)
        if eps:
            loss = (1.0 - eps) * loss + eps * (lse - logits.mean(dim=-1))
        total += loss.sum()
        correct += (logits.argmax(dim=-1) == y).sum()
        if grads is None:
            continue
        # d(mean loss)/d(logits) = (softmax - target) / n, formed in place of the logits
        g = logits.sub_(lse[:, None]).exp_()
        g.scatter_add_(1, y[:, None], g.new_full((len(y), 1), eps - 1.0))
        if eps:
            g.sub_(eps / vocab)
        g = g.mul_(1.0 / n).to(dtype)  # n > 0 inside the loop
        if g_h is not None:
            torch.mm(g, w, out=g_h[start : start + rows])
        if g_w is not None and dtype == torch.float32:
            g_w.addmm_(g.t(), hc)
        elif g_w is not None:
            g_w.add_(g.t() @ hc)  # a low-precision product, accumulated in fp32
        if g_b is not None:
            g_b.add_(g.sum(0, dtype=torch.float32))
    return total, correct, (g_h, g_w, g_b)


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and its gradients; backward scales them by the incoming gradient."""

    @staticmethod
    def forward(
        ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, eps: float, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        wanted = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        with torch.autocast(hidden.device.type, enabled=False):
            total, correct, (g_h, g_w, g_b) = _chunks(hidden, weight, bias, labels, eps, dtype, grads=wanted)
        ctx.mark_non_differentiable(correct)
        ctx.grads = (
            g_h.to(hidden.dtype) if g_h is not None else None,
            g_w.to(weight.dtype) if g_w is not None else None,
            g_b.to(bias.dtype) if g_b is not None and bias is not None else None,
        )
        return total / max(labels.numel(), 1), correct

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_loss: Tensor, _grad_correct: Tensor) -> tuple[Tensor | None, ...]:
        g_h, g_w, g_b = ctx.grads
        del ctx.grads
        scale = grad_loss.to(torch.float32)
        return (
            g_h.mul_(scale) if g_h is not None else None,
            g_w.mul_(scale) if g_w is not None else None,
            g_b.mul_(scale) if g_b is not None else None,
            None,
            None,
            None,
        )
