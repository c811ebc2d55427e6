"""T5 interop with transformers: the four v1.0/v1.1 folder variants of transformers 5.x, both directions,
and generation parity. Tiny random models are built locally."""

import json
import shutil

import pytest
import torch
import transformers
from helpers import assert_peaked, build_tiny, randomize_
from safetensors.torch import load_file, save_file
from unimodel_t5 import hf as t5_hf
from unimodel_t5.hf import T5Converter

import unimodel as um
from unimodel.errors import CheckpointError

TINY = dict(vocab_size=99, d_model=32, d_ff=37, num_layers=2, num_heads=4, decoder_start_token_id=0)
VARIANTS = ("t5_v1_0", "t5_v1_1", "t5_v1_1_hubstyle", "t5_v1_1_untied")
REL_TOL = 2e-5

pytestmark = pytest.mark.usefixtures("one_thread")


def hf_t5(**config):
    """A tiny random T5ForConditionalGeneration with every tensor randomised (RMSNorm weights included)."""
    torch.manual_seed(0)
    return randomize_(transformers.T5ForConditionalGeneration(transformers.T5Config(**{**TINY, **config})).eval())


def write_safetensors(folder, tensors):
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The four tiny variants of the spec, written as transformers 5.x writes (or the hub holds) them."""
    root = tmp_path_factory.mktemp("t5")
    out = {name: root / name for name in VARIANTS}
    # v1.0: relu, tied and scaled; d_kv 16 makes the attention width (64) differ from d_model (32)
    hf_t5(d_kv=16).save_pretrained(out["t5_v1_0"])
    # v1.1 as 5.x writes T5Config(tie_word_embeddings=False): no lm_head, scale_decoder_outputs false
    hf_t5(d_kv=8, feed_forward_proj="gated-gelu", tie_word_embeddings=False).save_pretrained(out["t5_v1_1"])
    # hub style: tie_word_embeddings false, no scale_decoder_outputs, a separate lm_head.weight
    hub = out["t5_v1_1_hubstyle"]
    shutil.copytree(out["t5_v1_1"], hub)
    cfg = json.loads((hub / "config.json").read_text())
    for key in ("scale_decoder_outputs", "dense_act_fn", "is_gated_act", "transformers_version"):
        cfg.pop(key, None)
    cfg["tie_word_embeddings"] = False
    (hub / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(str(hub / "model.safetensors"))
    tensors["lm_head.weight"] = torch.randn(99, 32, generator=torch.Generator().manual_seed(1))
    write_safetensors(hub, tensors)
    # the hub-style folder loaded and re-saved by transformers: lm_head written, tie true, scale false
    transformers.T5ForConditionalGeneration.from_pretrained(hub).save_pretrained(out["t5_v1_1_untied"])
    return out


def inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 99, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # a padded encoder row
    dec = torch.randint(2, 99, (2, 9), generator=g)
    dec_mask = torch.ones_like(dec)
    dec_mask[0, 6:] = 0  # a padded decoder row
    return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)


def compare(model, hf):
    """(max abs, max relative) error of the logits on real decoder positions; also checks the encoder."""
    batch = inputs()
    with torch.no_grad():
        ours, ref = model(**batch), hf(**batch)
    keep = batch["decoder_attention_mask"].bool()
    err = (ours.logits[keep] - ref.logits[keep]).abs().max().item()
    rel = err / ref.logits[keep].abs().max().item()
    enc_keep = batch["attention_mask"].bool()
    enc_err = (ours.encoder_last_hidden_state[enc_keep] - ref.encoder_last_hidden_state[enc_keep]).abs().max()
    assert enc_err.item() < 1e-4
    return err, rel


# ------------------------------------------------------------------ import
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(folders, variant):
    hf = transformers.T5ForConditionalGeneration.from_pretrained(folders[variant]).eval()
    model = um.from_hf(folders[variant])
    _, rel = compare(model, hf)
    assert rel < REL_TOL


def test_a_swapped_mapping_fails_parity(folders, monkeypatch):
    """The fixture can see a converter bug: each block's attention RMSNorm read as its feed-forward one."""
    layer_map = t5_hf._layer_map

    def swapped(prefix, hf_prefix, **kw):
        out = layer_map(prefix, hf_prefix, **kw)
        attn, ffn = f"{prefix}.norm_attn.weight", f"{prefix}.norm_ffn.weight"
        out[attn], out[ffn] = out[ffn], out[attn]
        return out

    monkeypatch.setattr(t5_hf, "_layer_map", swapped)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(folders["t5_v1_0"]).eval()
    with pytest.raises(AssertionError):  # compare() checks the encoder states first
        compare(um.from_hf(folders["t5_v1_0"]), hf)
    monkeypatch.setattr(t5_hf, "_layer_map", layer_map)
    assert compare(um.from_hf(folders["t5_v1_0"]), hf)[1] < REL_TOL


def test_stacks_of_different_depths_match(tmp_path):
    hf_t5(d_kv=8, num_layers=1, num_decoder_layers=3, feed_forward_proj="gated-gelu").save_pretrained(tmp_path)
    model = um.from_hf(tmp_path)
    assert (model.config.n_layers, model.config.n_decoder_layers) == (1, 3)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert compare(model, hf)[1] < REL_TOL


@pytest.mark.parametrize(
    "variant,tied,scaled",
    [
        ("t5_v1_0", True, True),
        ("t5_v1_1", False, False),
        ("t5_v1_1_hubstyle", False, False),
        ("t5_v1_1_untied", False, False),
    ],
)
def test_head_rules_of_transformers_5(folders, variant, tied, scaled):
    model = um.from_hf(folders[variant])
    head = model.heads["lm"]
    assert (model.config.tie_embeddings, model.config.scales_outputs) == (tied, scaled)
    assert (head.weight is model.encoder.embed_tokens.weight) == tied
    assert head.input_scale == (32**-0.5 if scaled else 1.0)
    tensors = load_file(str(folders[variant] / "model.safetensors"))
    expected = tensors.get("lm_head.weight", tensors["shared.weight"])
    assert torch.equal(head.weight, expected)


def test_config_carried(folders):
    model = um.from_hf(folders["t5_v1_1"])
    c = model.config
    assert (c.d_model, c.head_dim, c.d_ff, c.n_layers, c.n_decoder_layers, c.n_heads) == (32, 8, 37, 2, 2, 4)
    assert c.feed_forward == "gated-gelu" and model.encoder.blocks[0].ffn.act_name == "gelu_tanh"
    assert model.name == "t5" and model.objective_name == "span_corruption"
    assert model.special_tokens == {"eos": 1, "pad": 0, "decoder_start": 0}


def test_decoder_start_falls_back_to_pad():
    spec = T5Converter().spec_from_hf({"model_type": "t5", "vocab_size": 99, "pad_token_id": 3, "eos_token_id": [1]})
    assert spec["decoder_start_token_id"] == 3 and spec["eos_token_id"] == 1
    # and the defaults of a bare config are T5's: v1.0, tied, scaled
    assert spec["tie_embeddings"] and spec["scale_decoder_outputs"] and spec["feed_forward"] == "relu"


def copy_folder(src, dst, tensors, **config_changes):
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(config_changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    write_safetensors(dst, tensors)
    return dst


def test_embedding_aliases_and_ignored_keys(folders, tmp_path):
    src = folders["t5_v1_0"]
    tensors = load_file(str(src / "model.safetensors"))
    shared = tensors.pop("shared.weight")
    # an old hub layout: both embed_tokens copies, an lm_head equal to them, the unused cross-attention bias
    tensors["encoder.embed_tokens.weight"] = shared
    tensors["decoder.embed_tokens.weight"] = shared.clone()
    tensors["lm_head.weight"] = shared.clone()
    tensors["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(32, 4)
    folder = copy_folder(src, tmp_path / "hub", tensors)
    batch = inputs()
    with torch.no_grad():
        assert torch.equal(um.from_hf(folder)(**batch).logits, um.from_hf(src)(**batch).logits)
    # only the decoder's copy present
    del tensors["encoder.embed_tokens.weight"]
    folder = copy_folder(src, tmp_path / "hub2", tensors)
    with torch.no_grad():
        assert torch.equal(um.from_hf(folder)(**batch).logits, um.from_hf(src)(**batch).logits)


def test_missing_and_unexpected_keys_are_named(folders, tmp_path):
    src = folders["t5_v1_0"]
    tensors = load_file(str(src / "model.safetensors"))
    del tensors["decoder.block.1.layer.2.DenseReluDense.wi.weight"]
    tensors["encoder.block.0.layer.0.SelfAttention.bogus.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        um.from_hf(copy_folder(src, tmp_path / "both", tensors))
    msg = str(err.value)
    assert "missing keys: decoder.block.1.layer.2.DenseReluDense.wi.weight" in msg
    assert "unexpected keys: encoder.block.0.layer.0.SelfAttention.bogus.weight" in msg
    # unexpected only: the loader lists it
    tensors = load_file(str(src / "model.safetensors"))
    tensors["decoder.block.9.layer.0.SelfAttention.q.weight"] = torch.zeros(64, 32)
    with pytest.raises(CheckpointError, match=r"unexpected keys: decoder\.block\.9\.layer\.0\.SelfAttention\.q\."):
        um.from_hf(copy_folder(src, tmp_path / "extra", tensors))
    # a config that promises a gated FFN the file does not have
    tensors = load_file(str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys: encoder\.block\.0\.layer\.1\.DenseReluDense\.wi_0\."):
        um.from_hf(copy_folder(src, tmp_path / "gated", tensors, feed_forward_proj="gated-gelu"))


def test_untied_head_under_a_tied_config_is_refused_with_the_fix(folders, tmp_path):
    src = folders["t5_v1_0"]
    tensors = load_file(str(src / "model.safetensors"))
    tensors["lm_head.weight"] = torch.randn(99, 32)
    with pytest.raises(CheckpointError, match="tie_word_embeddings"):
        um.from_hf(copy_folder(src, tmp_path / "bad", tensors))
    # the fix the message gives loads it, and transformers agrees on the logits
    fixed = copy_folder(src, tmp_path / "fixed", tensors, tie_word_embeddings=False, scale_decoder_outputs=True)
    model = um.from_hf(fixed)
    assert not model.config.tie_embeddings and model.config.scales_outputs
    hf = transformers.T5ForConditionalGeneration.from_pretrained(fixed).eval()
    assert compare(model, hf)[1] < REL_TOL


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("variant", VARIANTS)
def test_export_round_trip(folders, variant, tmp_path):
    model = um.from_hf(folders[variant])
    um.to_hf(model, tmp_path / "out")
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    assert compare(model, hf)[1] < REL_TOL
    again = um.from_hf(tmp_path / "out")
    batch = inputs()
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("tied", [True, False])
def test_native_model_exports(tmp_path, tied):
    model = build_tiny(
        "t5",
        head_dim=16,
        d_ff=40,
        n_decoder_layers=1,
        feed_forward="relu" if tied else "gated-silu",
        tie_embeddings=tied,
        eos_token_id=2,
    )
    randomize_(model)
    um.to_hf(model, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "t5" and cfg["scale_decoder_outputs"] is tied
    assert ("lm_head.weight" in load_file(str(tmp_path / "out" / "model.safetensors"))) is not tied
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    assert (hf.lm_head.weight is hf.shared.weight) is tied
    assert hf.generation_config.decoder_start_token_id == 0 and hf.generation_config.eos_token_id == 2
    assert compare(model, hf)[1] < REL_TOL


# ------------------------------------------------------------------ generation
@pytest.mark.parametrize("variant", ["t5_v1_0", "t5_v1_1"])
def test_generation_matches_transformers(folders, variant):
    hf = transformers.T5ForConditionalGeneration.from_pretrained(folders[variant]).eval()
    model = um.from_hf(folders[variant])
    batch = inputs()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        assert_peaked(hf(**batch).logits)
    greedy_ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    # an eos the model actually emits, so rows finish early and are padded
    eos = int(greedy_ref[0, 4])
    for options in (
        dict(num_beams=1),
        dict(num_beams=3),
        dict(num_beams=4),
        dict(num_beams=1, eos_token_id=eos),
        dict(num_beams=3, eos_token_id=eos),
    ):
        ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, **options)
        ours = model.generate(ids, attention_mask=mask, max_new_tokens=12, **options)
        if "eos_token_id" in options:
            # transformers' beam search fills finished rows with `pad_token_id or eos`, i.e. with eos when
            # pad is 0 (T5's pad); compare through each row's eos, then check that ours pads
            assert ours.shape == ref.shape, options
            if options["num_beams"] == 1:
                assert bool((ours[0, 1:] == eos).any())  # greedy row 0 meets it at step 4 by construction
            after = (ours == eos).long().cumsum(dim=1).roll(1, dims=1).clamp(max=1).bool()
            after[:, 0] = False
            assert torch.equal(ours.masked_fill(after, -1), ref.masked_fill(after, -1)), options
            assert bool((ours[after] == 0).all()) and bool(torch.isin(ref[after], torch.tensor([0, eos])).all())
        else:
            assert torch.equal(ours, ref), options
