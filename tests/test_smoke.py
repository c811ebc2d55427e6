import torch

import unimodel as um


def test_build_forward_save_load_roundtrip(tmp_path):
    model = um.build_model("gpt", vocab_size=99, n_positions=64, d_model=32, n_layers=2, n_heads=4).eval()
    ids = torch.randint(0, 99, (2, 10))
    logits = model(input_ids=ids).logits
    assert logits.shape == (2, 10, 99)
    model.save(tmp_path / "ck")
    again = um.load(tmp_path / "ck")
    assert torch.equal(again(input_ids=ids).logits, logits)
