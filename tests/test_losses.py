"""The chunked linear cross-entropy equals linear + cross_entropy, in value, gradients and hits."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unimodel as um
from unimodel.errors import InputError
from unimodel.nn import LMHead, losses
from unimodel.nn.losses import linear_cross_entropy
from unimodel.objectives import lm_loss, token_accuracy


def _leaves(n=37, d=12, v=29, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).requires_grad_()
    w = torch.randn(v, d, generator=g).requires_grad_()
    b = torch.randn(v, generator=g).requires_grad_() if bias else None
    y = torch.randint(0, v, (n,), generator=g)
    return h, w, b, y


@pytest.fixture(params=[1 << 21, 29 * 5], ids=["one-chunk", "chunks-of-5-rows"])
def chunk(request, monkeypatch):
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", request.param)
    return request.param


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("bias", [True, False])
def test_value_gradients_and_hits_equal_the_reference(chunk, smoothing, bias):
    h, w, b, y = _leaves(bias=bias)
    logits = F.linear(h, w, b)
    ref = F.cross_entropy(logits, y, label_smoothing=smoothing)
    (3.0 * ref).backward()  # a scaled loss: the stored gradients are scaled by the incoming one
    ref_grads = [t.grad.clone() for t in (h, w, b) if t is not None]
    for t in (h, w, b):
        if t is not None:
            t.grad = None
    loss, correct = linear_cross_entropy(h, w, b, y, label_smoothing=smoothing)
    (3.0 * loss).backward()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    for got, want in zip([t.grad for t in (h, w, b) if t is not None], ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert int(correct) == int((logits.argmax(-1) == y).sum())
    assert not correct.requires_grad


def test_frozen_weight_gets_no_gradient_and_no_grad_mode_gives_the_same_loss():
    h, w, b, y = _leaves()
    w.requires_grad_(False)
    loss, _ = linear_cross_entropy(h, w, b, y)
    loss.backward()
    assert w.grad is None and h.grad is not None and b.grad is not None
    with torch.no_grad():
        again, _ = linear_cross_entropy(h, w, b, y)
    assert not again.requires_grad
    torch.testing.assert_close(again, loss.detach())


def test_no_rows_is_a_zero_loss_with_zero_gradients():
    h, w, b, y = _leaves(n=0)
    loss, correct = linear_cross_entropy(h, w, b, y)
    loss.backward()
    assert float(loss.detach()) == 0.0 and int(correct) == 0
    assert not w.grad.any() and not b.grad.any()


def test_bf16_autocast_matches_linear_then_cross_entropy():
    h, w, b, y = _leaves(n=64, d=32, v=50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h, w, b).float(), y)
        ref.backward()
        ref_grads = [t.grad.clone() for t in (h, w, b)]
        for t in (h, w, b):
            t.grad = None
        loss, _ = linear_cross_entropy(h, w, b, y)
        loss.backward()
    assert loss.dtype == torch.float32 and h.grad.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-2, atol=1e-2)
    for got, want in zip((h.grad, w.grad, b.grad), ref_grads):
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize(
    "kw",
    [
        dict(transform="gelu", bias=True),  # BERT's MLM head on a tied embedding
        dict(input_scale=0.25),  # T5's rescaled tied head
        dict(logits_bias=True),  # BART's fixed final_logits_bias
        dict(bias=True, logits_bias=True),
    ],
)
def test_lm_head_token_loss_equals_its_logits_loss(kw, chunk):
    torch.manual_seed(0)
    emb = nn.Embedding(29, 12)
    head = LMHead(d_model=12, vocab_size=29, embedding=emb, **kw)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        if head.logits_bias is not None:
            head.logits_bias.normal_()
    h = torch.randn(3, 7, 12, requires_grad=True)
    y = torch.randint(0, 29, (3, 7))
    y[0, :3] = -100  # ignored positions
    params = [h, *head.parameters()]
    ref = lm_loss(head(h), y, shift=False, label_smoothing=0.1)
    ref_grads = torch.autograd.grad(ref, params)
    loss, correct = head.token_loss(h, y, label_smoothing=0.1)
    grads = torch.autograd.grad(loss, params)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    keep = y != -100
    assert int(correct) == int((head(h).argmax(-1)[keep] == y[keep]).sum())


@pytest.mark.parametrize("name", ["gpt2-tiny", "bert-tiny", "t5-tiny", "bart-tiny"])
def test_model_loss_without_logits_equals_the_loss_of_its_logits(name):
    torch.manual_seed(0)
    model = um.build_model(name).eval()  # no dropout: both calls see the same network
    ids = torch.randint(5, model.vocab_size, (2, 9))
    labels = ids.clone()
    labels[1, 6:] = -100
    with_logits = model(input_ids=ids, labels=labels)
    without = model(input_ids=ids, labels=labels, return_logits=False)
    assert with_logits.logits is not None and without.logits is None
    torch.testing.assert_close(without.loss, with_logits.loss, rtol=1e-5, atol=1e-6)
    # the same gradients reach every parameter
    params = [p for p in model.parameters() if p.requires_grad]
    ref = torch.autograd.grad(with_logits.loss, params, allow_unused=True)
    got = torch.autograd.grad(without.loss, params, allow_unused=True)
    for a, b in zip(got, ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    shift = model.objective.token_loss().shift
    assert int(without.n_correct) == round(
        token_accuracy(with_logits.logits, labels, shift=shift) * int((labels[:, 1 if shift else 0 :] != -100).sum())
    )


def test_labels_outside_the_vocabulary_are_refused():
    model = um.build_model("gpt2-tiny")
    ids = torch.randint(5, model.vocab_size, (1, 6))
    for bad in (model.vocab_size, -3):
        labels = ids.clone()
        labels[0, 2] = bad
        for return_logits in (False, True):
            with pytest.raises(InputError, match=f"labels contain {bad}.*-100"):
                model(input_ids=ids, labels=labels, return_logits=return_logits)
