"""GPT-2 interop with transformers: tiny random models built locally, both directions."""

import json

import pytest
import torch
import transformers
from helpers import build_tiny, randomize_
from safetensors.torch import load_file, save_file
from unimodel_gpt import hf as gpt_hf

import unimodel as um
from unimodel.errors import CheckpointError, ComponentNotFoundError

# Hugging Face's names for the registered tiny GPT (tests/helpers.py: build_tiny("gpt"))
TINY = dict(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=98, eos_token_id=98)
TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")


def hf_gpt2(**overrides):
    """A tiny random GPT2LMHeadModel with every tensor randomised (LayerNorms and biases too)."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**{**TINY, **overrides})
    return randomize_(transformers.GPT2LMHeadModel(cfg).eval())


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    hf_gpt2().save_pretrained(path)
    return path


def test_logits_match_transformers(hf_folder):
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_folder).eval()
    model = um.from_hf(hf_folder)
    ids = torch.randint(0, 99, (3, 17))
    with torch.no_grad():
        ours, ref = model(input_ids=ids).logits, hf(ids).logits
    assert (ours - ref).abs().max().item() < TOL


def test_a_swapped_mapping_fails_parity(hf_folder, monkeypatch):
    """The fixture can see a converter bug: reading ln_2 as ln_1 (and back) breaks the logits."""
    keys = dict(gpt_hf._LAYER_KEYS)
    for param in ("weight", "bias"):
        keys[f"norm_attn.{param}"], keys[f"norm_ffn.{param}"] = keys[f"norm_ffn.{param}"], keys[f"norm_attn.{param}"]
    monkeypatch.setattr(gpt_hf, "_LAYER_KEYS", keys)
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_folder).eval()
    ids = torch.randint(0, 99, (2, 9))
    with torch.no_grad():
        assert (um.from_hf(hf_folder)(input_ids=ids).logits - hf(ids).logits).abs().max().item() > 100 * TOL


def test_padded_batch_matches_on_real_tokens(hf_folder):
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_folder).eval()
    model = um.from_hf(hf_folder)
    ids = torch.randint(0, 99, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
        ref = hf(ids, attention_mask=mask).logits
    keep = mask.bool()
    assert (ours[keep] - ref[keep]).abs().max().item() < TOL


def test_special_tokens_and_config_carried(hf_folder):
    model = um.from_hf(hf_folder)
    assert model.name == "gpt" and model.objective_name == "clm"
    assert (model.config.d_model, model.config.n_layers, model.config.n_heads) == (32, 2, 4)
    assert model.special_tokens["eos"] == 98


def test_hub_style_keys_without_prefix_and_with_mask_buffers(hf_folder, tmp_path):
    tensors = load_file(str(hf_folder / "model.safetensors"))
    hub = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    for i in range(2):  # the causal-mask buffers old hub files carry
        hub[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        hub[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    folder = tmp_path / "hub"
    folder.mkdir()
    save_file(hub, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text((hf_folder / "config.json").read_text())
    ids = torch.randint(0, 99, (1, 12))
    assert torch.allclose(um.from_hf(folder)(input_ids=ids).logits, um.from_hf(hf_folder)(input_ids=ids).logits)


@pytest.mark.parametrize(
    "variant",
    [
        dict(tie_word_embeddings=False),
        dict(scale_attn_by_inverse_layer_idx=True),
        dict(activation_function="relu", n_inner=48),
    ],
    ids=["untied", "inverse-layer-scale", "relu-n_inner"],
)
def test_variants_match(tmp_path, variant):
    hf = hf_gpt2(**variant)
    if variant.get("tie_word_embeddings") is False:
        with torch.no_grad():
            hf.lm_head.weight.normal_()  # make the untied head really differ
    hf.save_pretrained(tmp_path)
    model = um.from_hf(tmp_path)
    ids = torch.randint(0, 99, (2, 10))
    with torch.no_grad():
        assert (model(input_ids=ids).logits - hf(ids).logits).abs().max().item() < TOL


def test_export_loads_in_transformers(tmp_path):
    model = build_tiny("gpt", eos_token_id=5)
    randomize_(model)
    um.to_hf(model, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "gpt2"
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 99, (2, 11))
    with torch.no_grad():
        assert (model(input_ids=ids).logits - hf(ids).logits).abs().max().item() < TOL
    assert hf.generation_config.eos_token_id == 5
    # and back again, exactly
    again = um.from_hf(tmp_path / "out")
    assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_tokenizer_travels_with_the_folder(tmp_path):
    from unimodel.data.tokenizer import Tokenizer

    tok = Tokenizer.train_bpe(["hello world, hello unimodel"] * 50, vocab_size=300)
    model = build_tiny("gpt", vocab_size=tok.vocab_size)
    model.tokenizer = tok
    um.to_hf(model, tmp_path / "hf")
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    back = um.from_hf(tmp_path / "hf")
    assert back.tokenizer.encode("hello world") == tok.encode("hello world")
    assert back.tokenizer.special_id("eos") == tok.special_id("eos")


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", **TINY}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="pickle"):
        um.from_hf(tmp_path)


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba99"}))
    with pytest.raises(ComponentNotFoundError, match="mamba99.*supported: .*gpt2"):
        um.from_hf(tmp_path)


def test_missing_and_misshapen_weights_are_listed(hf_folder, tmp_path):
    tensors = load_file(str(hf_folder / "model.safetensors"))
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    tensors["transformer.h.0.ln_1.weight"] = torch.ones(7)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((hf_folder / "config.json").read_text())
    with pytest.raises(CheckpointError) as err:
        um.from_hf(tmp_path)
    msg = str(err.value)
    assert "decoder.blocks.1.ffn.up.bias" in msg and "decoder.blocks.0.norm_attn.weight" in msg and "(7,)" in msg


def test_load_dispatches_hf_folders(hf_folder):
    ids = torch.randint(0, 99, (1, 8))
    assert torch.equal(um.load(hf_folder)(input_ids=ids).logits, um.from_hf(hf_folder)(input_ids=ids).logits)
