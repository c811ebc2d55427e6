"""The LM head gives the same logits from its decoding copy as from its weight."""

import pytest
import torch
from torch import nn

from unimodel.nn import LMHead, decoding_layout


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"bias": True},
        {"logits_bias": True},
        {"bias": True, "logits_bias": True, "transform": "gelu"},
        {"input_scale": 0.125},
    ],
)
def test_decoding_copy_matches_the_head(kw):
    torch.manual_seed(0)
    emb = nn.Embedding(50, 16)
    head = LMHead(d_model=16, vocab_size=50, embedding=emb, **kw)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # biases away from zero
        if head.logits_bias is not None:
            head.logits_bias.normal_()
    h = torch.randn(3, 16)
    ref = head(h)
    with torch.no_grad(), decoding_layout(head, threads=2) as made:
        assert made and head.decode_weight is not None and head.decode_weight.shape == (2, 8, 50)
        torch.testing.assert_close(head(h), ref, rtol=1e-5, atol=1e-5)
    # the copy is dropped on exit: the head follows later weight changes
    assert head.decode_weight is None
    with torch.no_grad():
        emb.weight.add_(1.0)
    after = head(h)
    assert not torch.allclose(after, ref)
    with torch.no_grad(), decoding_layout(head):
        torch.testing.assert_close(head(h), after, rtol=1e-5, atol=1e-5)
