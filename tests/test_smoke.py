import torch
from helpers import build_tiny

import unimodel as um


def test_build_forward_save_load_roundtrip(tmp_path):
    model = build_tiny("gpt")
    ids = torch.randint(0, 99, (2, 10))
    logits = model(input_ids=ids).logits
    assert logits.shape == (2, 10, 99)
    model.save(tmp_path / "ck")
    again = um.load(tmp_path / "ck")
    assert torch.equal(again(input_ids=ids).logits, logits)
