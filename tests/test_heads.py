"""The LM head's decoding form computes the same logits as the head."""

import pytest
import torch
from torch import nn

from unimodel.nn import LMHead


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
def test_decoding_form_matches_the_head(kw):
    torch.manual_seed(0)
    emb = nn.Embedding(50, 16)
    head = LMHead(d_model=16, vocab_size=50, embedding=emb, **kw)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # biases away from zero
        if head.logits_bias is not None:
            head.logits_bias.normal_()
    h = torch.randn(3, 16)
    fast = head.for_decoding()
    torch.testing.assert_close(fast(h), head(h), rtol=1e-5, atol=1e-5)
    # a snapshot: later weight changes need a new decoding form
    with torch.no_grad():
        emb.weight.add_(1.0)
    assert not torch.allclose(fast(h), head(h))
    torch.testing.assert_close(head.for_decoding()(h), head(h), rtol=1e-5, atol=1e-5)
