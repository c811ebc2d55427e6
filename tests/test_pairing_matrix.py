"""Every registered encoder joins every registered decoder: builds, trains a step with seq2seq, generates."""

import itertools

import pytest
import torch

import unimodel as um
from unimodel.registry import get_registry

REG = get_registry()
ENCODERS = [c for c in REG.components("encoder") if c.tiny]
DECODERS = [c for c in REG.components("decoder") if c.tiny and "causal" in c.provides]
VOCAB = 64


def side(comp, width):
    spec = {k: v for k, v in comp.tiny.items() if k != "vocab_size"}
    for key in ("d_model",):
        if key in spec:
            spec[key] = width
    return {"name": comp.name, **spec}


@pytest.mark.parametrize("enc,dec", list(itertools.product(ENCODERS, DECODERS)), ids=lambda c: c.name)
def test_pair_trains_and_generates(enc, dec):
    assert ENCODERS and DECODERS
    torch.manual_seed(0)
    spec = {
        "name": "encoder-decoder",
        "encoder": side(enc, 32),
        "decoder": side(dec, 48),
        "vocab_size": VOCAB,
        "pad_token_id": 0,
        "decoder_start_token_id": 1,
    }
    model = um.build_model(spec)
    assert model.is_encoder_decoder and type(model.encoder).__name__ == "ProjectedEncoder"  # widths 32 -> 48
    obj = model.objective
    g = torch.Generator().manual_seed(0)
    src = torch.randint(3, VOCAB, (4, 6), generator=g).tolist()
    batch = obj.prepare([{"source": s, "target": s[::-1]} for s in src])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    first = obj(model, batch).loss
    first.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(t).all() for t in grads)
    assert any(t.abs().sum() > 0 for t in grads)  # the loss reaches the encoder through cross-attention
    opt.step()
    model.eval()
    out = model.generate(torch.tensor(src[:2]), max_new_tokens=5)
    assert out.shape == (2, 6) and (out[:, 0] == 1).all()
