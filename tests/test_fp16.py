"""fp16 soundness of the chunked linear cross-entropy, on CPU fp16 tensors.

The loss forms its gradients in its forward; under fp16 autocast they must not
underflow before the loss scale reaches them, and an overflowing scale must
still show up as inf in the gradients that a GradScaler inspects.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from unimodel.nn.losses import (
    CHUNK_ELEMENTS,
    DEVICE_CHUNK_ELEMENTS,
    DEVICE_MIN_ROWS,
    IGNORE_INDEX,
    chunk_rows,
    linear_cross_entropy,
)

SCALE = 2.0**16  # GradScaler's initial loss scale


def _grads(loss_fn, h0: Tensor, w0: Tensor, b0: Tensor, *, fp16: bool) -> tuple[Tensor, Tensor, Tensor]:
    """d(loss)/d(hidden, weight, bias) of fp32 leaves, under fp16 autocast with a scaled backward when ``fp16``."""
    h, w, b = (t.clone().requires_grad_() for t in (h0, w0, b0))
    scale = SCALE if fp16 else 1.0
    with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
        loss = loss_fn(h, w, b)
    (loss.float() * scale).backward()
    return h.grad / scale, w.grad / scale, b.grad / scale  # type: ignore[operator]


def _rel(a: Tensor, ref: Tensor) -> float:
    return float((a.double() - ref.double()).norm() / ref.double().norm())


def test_fp16_gradients_as_accurate_as_the_plain_autocast_path() -> None:
    """3,072 tokens, vocabulary 1,024: every gradient of the fused loss within 2x of the error of
    linear + cross_entropy under the same autocast, both against fp32."""
    g = torch.Generator().manual_seed(0)
    n, vocab, width = 3072, 1024, 16
    h0 = torch.randn(n, width, generator=g)
    w0 = torch.randn(vocab, width, generator=g) * 0.5
    b0 = torch.randn(vocab, generator=g) * 0.1
    y = torch.randint(0, vocab, (n,), generator=g)

    def plain(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return F.cross_entropy(F.linear(h, w, b), y)

    def fused(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return linear_cross_entropy(h, w, b, y)[0]

    reference = _grads(plain, h0, w0, b0, fp16=False)
    plain_err = [_rel(a, r) for a, r in zip(_grads(plain, h0, w0, b0, fp16=True), reference, strict=True)]
    fused_err = [_rel(a, r) for a, r in zip(_grads(fused, h0, w0, b0, fp16=True), reference, strict=True)]
    for name, fe, pe in zip(("hidden", "weight", "bias"), fused_err, plain_err, strict=True):
        assert fe <= 2 * pe, f"{name} gradient error {fe:.2e} vs {pe:.2e} on the plain autocast path"


def test_ignored_rows_add_nothing() -> None:
    """Rows labelled -100 are skipped inside the loss (no compaction needed): loss, hits and gradients
    equal the loss of the predicted rows alone."""
    g = torch.Generator().manual_seed(1)
    h0 = torch.randn(40, 8, generator=g)
    w0 = torch.randn(50, 8, generator=g)
    y = torch.randint(0, 50, (40,), generator=g)
    y[::3] = IGNORE_INDEX
    keep = y != IGNORE_INDEX
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    loss, correct = linear_cross_entropy(h, w, None, y, label_smoothing=0.1)
    loss.backward()
    h2, w2 = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    logits = h2[keep] @ w2.t()
    ref = F.cross_entropy(logits, y[keep], label_smoothing=0.1)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    assert int(correct) == int((logits.argmax(-1) == y[keep]).sum())
    torch.testing.assert_close(h.grad, h2.grad)
    torch.testing.assert_close(w.grad, w2.grad)
    assert not h.grad[~keep].any()  # type: ignore[index]
    everything_ignored = torch.full((40,), IGNORE_INDEX)
    with torch.no_grad():
        assert float(linear_cross_entropy(h0, w0, None, everything_ignored)[0]) == 0.0


def _scaled_step(init_scale: float) -> tuple[bool, float]:
    """One GradScaler step of a linear layer (fp32 weights, fp16 autocast) feeding the fused loss;
    returns (whether the weights changed, the scale after the step)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 16)
    head = torch.nn.Parameter(torch.randn(64, 16))
    opt = torch.optim.SGD([*layer.parameters(), head], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    x, y = torch.randn(96, 16), torch.randint(0, 64, (96,))
    before = layer.weight.detach().clone()
    with torch.autocast("cpu", dtype=torch.float16):
        hidden = layer(x)  # fp16: its gradient is cast to fp16 after the scale is applied
        assert hidden.dtype == torch.float16
        loss, _ = linear_cross_entropy(hidden, head, None, y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return not torch.equal(before, layer.weight.detach()), scaler.get_scale()


def test_grad_scaler_skips_an_overflowing_step() -> None:
    changed, scale = _scaled_step(2.0**40)  # fp16 overflows: the scaler must see inf and skip
    assert not changed
    assert scale == 2.0**39
    changed, scale = _scaled_step(2.0**10)
    assert changed
    assert scale == 2.0**10


def test_chunk_rows_per_device() -> None:
    # the CPU keeps a chunk's logits cache-sized however few rows that leaves
    assert chunk_rows(50257, "cpu") == CHUNK_ELEMENTS // 50257 == 41
    assert chunk_rows(10**8, "cpu") == 1
    assert chunk_rows(100, "cpu") == CHUNK_ELEMENTS // 100
    # an accelerator never takes 41-row chunks of a 50k vocabulary
    for device in ("cuda", "mps", "xpu"):
        rows = chunk_rows(50257, device)
        assert rows >= DEVICE_MIN_ROWS and rows % 128 == 0
        assert rows * 50257 <= max(DEVICE_CHUNK_ELEMENTS, DEVICE_MIN_ROWS * 50257)
    assert chunk_rows(1000, "cuda") == DEVICE_CHUNK_ELEMENTS // 1000 - (DEVICE_CHUNK_ELEMENTS // 1000) % 128
    assert chunk_rows(10**6, "cuda") == DEVICE_MIN_ROWS
    with pytest.raises(ValueError):
        chunk_rows(0, "cpu")
