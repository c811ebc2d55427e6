"""BART interop with transformers: tiny random models built locally, both directions, plus generation."""

import json

import pytest
import torch
import transformers
from helpers import assert_peaked, build_tiny, randomize_
from safetensors.torch import load_file, save_file
from unimodel_bart import hf as bart_hf

import unimodel as um
from unimodel.errors import CheckpointError

TINY = dict(
    vocab_size=99,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=37,
    decoder_ffn_dim=37,
    max_position_embeddings=64,
)
REL_TOL = 2e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def hf_bart(**overrides):
    """A tiny random BartForConditionalGeneration with every tensor randomised (final_logits_bias,
    which HF starts at zero, LayerNorms and biases included)."""
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(transformers.BartConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        if overrides.get("tie_word_embeddings") is False:
            model.lm_head.weight.normal_()
            model.model.decoder.embed_tokens.weight.normal_()
    return randomize_(model)


def rel_err(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def padded_batch():
    """Encoder input with right padding in row 1; decoder input with right padding in row 0."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 99, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    ids[1, 7:] = 1
    dec = torch.randint(3, 99, (2, 9), generator=g)
    dec[:, 0] = 2
    dmask = torch.ones_like(dec)
    dmask[0, 5:] = 0
    dec[0, 5:] = 1
    return ids, mask, dec, dmask


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("bart")
    hf_bart().save_pretrained(path)
    return path


VARIANTS = {
    "default": {},
    "scale_embedding": dict(scale_embedding=True),
    "untied": dict(tie_word_embeddings=False),
    "relu-wide-ffn": dict(activation_function="relu", encoder_ffn_dim=48, decoder_ffn_dim=40),
    "uneven-stacks": dict(encoder_layers=3, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=8),
}


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_logits_match_transformers_with_padding(tmp_path, variant):
    hf = hf_bart(**VARIANTS[variant])
    hf.save_pretrained(tmp_path)
    model = um.from_hf(tmp_path)
    ids, mask, dec, dmask = padded_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dmask)
        ours = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dmask)
    keep, src_keep = dmask.bool(), mask.bool()
    assert rel_err(ours.logits[keep], ref.logits[keep]) < REL_TOL
    assert rel_err(ours.encoder_last_hidden_state[src_keep], ref.encoder_last_hidden_state[src_keep]) < REL_TOL
    # the logits bias really is applied: without it the logits move by it
    assert (ours.logits[keep] - (ref.logits[keep] - hf.final_logits_bias)).abs().max() > 1e-2


def test_a_swapped_mapping_fails_parity(hf_folder, monkeypatch):
    """The fixture can see a converter bug: each block's self-attention LayerNorm read as its final one."""
    blocks = dict(bart_hf._SELF)
    blocks["norm_attn"], blocks["norm_ffn"] = blocks["norm_ffn"], blocks["norm_attn"]
    monkeypatch.setattr(bart_hf, "_SELF", blocks)
    hf = transformers.BartForConditionalGeneration.from_pretrained(hf_folder).eval()
    ids, mask, dec, _ = padded_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        ours = um.from_hf(hf_folder)(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert rel_err(ours, ref) > 100 * REL_TOL


def test_shifted_input_ids_reproduce_hf_auto_decoder_inputs(hf_folder):
    """HF BartModel shifts input_ids when no decoder input is given; unimodel spells it model.shift_right(input_ids)."""
    hf = transformers.BartForConditionalGeneration.from_pretrained(hf_folder).eval()
    model = um.from_hf(hf_folder)
    ids = torch.randint(3, 99, (2, 10))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        ours = model(input_ids=ids, decoder_input_ids=model.shift_right(ids)).logits
    assert rel_err(ours, ref) < REL_TOL
    with pytest.raises(um.UnimodelError, match="decoder_input_ids or labels"):
        model(input_ids=ids)


def test_config_and_special_tokens_carried(hf_folder):
    model = um.from_hf(hf_folder)
    assert model.name == "bart" and model.objective_name == "text_infilling"
    c = model.config
    assert (c.d_model, c.n_layers, c.n_decoder_heads, c.d_ff, c.max_positions) == (32, 2, 4, 37, 64)
    assert model.special_tokens == {"bos": 0, "eos": 2, "pad": 1, "decoder_start": 2}
    assert c.forced_eos_token_id == 2
    assert model.encoder.embed_positions.weight.shape == (66, 32)  # max_position_embeddings + 2


def test_folder_without_model_prefix_and_with_tied_copies(hf_folder, tmp_path):
    tensors = load_file(str(hf_folder / "model.safetensors"))
    assert "lm_head.weight" not in tensors and "model.encoder.embed_tokens.weight" not in tensors
    shared = tensors["model.shared.weight"]
    variants = {
        "no_prefix": {k.removeprefix("model."): v for k, v in tensors.items()},
        "copies": {
            **tensors,
            "lm_head.weight": shared.clone(),
            "model.encoder.embed_tokens.weight": shared.clone(),
            "model.decoder.embed_tokens.weight": shared.clone(),
            "model.encoder.version": torch.tensor([2.0]),
        },
        "copies_without_shared": {
            **{k: v for k, v in tensors.items() if k != "model.shared.weight"},
            "model.encoder.embed_tokens.weight": shared.clone(),
        },
    }
    ids, mask, dec, _dmask = padded_batch()
    with torch.no_grad():
        expected = um.from_hf(hf_folder)(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    for name, keys in variants.items():
        folder = tmp_path / name
        folder.mkdir()
        save_file(keys, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text((hf_folder / "config.json").read_text())
        with torch.no_grad():
            got = um.from_hf(folder)(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        assert torch.equal(got, expected), name


def test_missing_final_logits_bias_is_zero_as_in_transformers(hf_folder, tmp_path):
    tensors = load_file(str(hf_folder / "model.safetensors"))
    del tensors["final_logits_bias"]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((hf_folder / "config.json").read_text())
    hf = transformers.BartForConditionalGeneration.from_pretrained(tmp_path).eval()
    model = um.from_hf(tmp_path)
    assert not model.heads["lm"].logits_bias.any()
    ids, mask, dec, _ = padded_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        assert rel_err(model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits, ref) < REL_TOL


def test_bart_model_folder_loads_as_features(tmp_path):
    torch.manual_seed(0)
    hf = randomize_(transformers.BartModel(transformers.BartConfig(**TINY)).eval())
    hf.save_pretrained(tmp_path)
    model = um.from_hf(tmp_path)
    assert model.objective_name == "features" and "lm" not in model.heads
    ids, mask, dec, dmask = padded_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dmask)
        ours = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dmask)
    assert ours.logits is None
    keep = dmask.bool()
    assert rel_err(ours.last_hidden_state[keep], ref.last_hidden_state[keep]) < REL_TOL


def _write(folder, tensors, config_text):
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(config_text)


def test_missing_and_unexpected_keys_are_named(hf_folder, tmp_path):
    tensors = load_file(str(hf_folder / "model.safetensors"))
    config = (hf_folder / "config.json").read_text()
    broken = dict(tensors)
    del broken["model.decoder.layers.1.fc1.bias"]
    del broken["model.encoder.layers.0.self_attn.k_proj.weight"]
    broken["model.encoder.layers.0.adapter.weight"] = torch.zeros(3)
    _write(tmp_path / "missing", broken, config)
    with pytest.raises(CheckpointError) as err:
        um.from_hf(tmp_path / "missing")
    msg = str(err.value)
    assert "model.decoder.layers.1.fc1.bias" in msg and "model.encoder.layers.0.self_attn.k_proj.weight" in msg
    assert "model.encoder.layers.0.adapter.weight" in msg

    extra = {**tensors, "model.decoder.layers.0.adapter.weight": torch.zeros(3), "pooler.dense.bias": torch.zeros(2)}
    _write(tmp_path / "unexpected", extra, config)
    with pytest.raises(CheckpointError, match=r"unexpected keys: .*model\.decoder\.layers\.0\.adapter\.weight") as err:
        um.from_hf(tmp_path / "unexpected")
    assert "pooler.dense.bias" in str(err.value)

    misshapen = {**tensors, "model.encoder.layernorm_embedding.weight": torch.ones(7)}
    _write(tmp_path / "misshapen", misshapen, config)
    with pytest.raises(CheckpointError, match=r"encoder\.layernorm_embedding\.weight.*\(7,\)"):
        um.from_hf(tmp_path / "misshapen")

    fewer_layers = json.loads(config)
    fewer_layers["decoder_layers"] = 1  # the file has a second decoder layer the config does not
    _write(tmp_path / "layers", tensors, json.dumps(fewer_layers))
    with pytest.raises(CheckpointError, match=r"model\.decoder\.layers\.1\.fc1\.weight"):
        um.from_hf(tmp_path / "layers")


@pytest.mark.parametrize(
    "overrides", [{}, {"scale_embedding": True}, {"tie_embeddings": False}], ids=["default", "scaled", "untied"]
)
def test_export_loads_in_transformers_with_equal_logits(tmp_path, overrides):
    model = randomize_(build_tiny("bart", **overrides))
    um.to_hf(model, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "bart" and cfg["architectures"] == ["BartForConditionalGeneration"]
    hf, info = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "out", output_loading_info=True)
    hf.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, mask, dec, dmask = padded_batch()
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dmask).logits
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dmask).logits
    keep = dmask.bool()
    assert rel_err(ours[keep], ref[keep]) < REL_TOL
    assert hf.generation_config.decoder_start_token_id == 2 and hf.generation_config.eos_token_id == 2
    again = um.from_hf(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(
            again(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits,
            model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits,
        )


def test_noncausal_decoder_is_not_exported(tmp_path):
    model = build_tiny("bart", causal_decoder=False, objective="features")
    with pytest.raises(CheckpointError, match="non-causal"):
        um.to_hf(model, tmp_path / "out")


# ---------------------------------------------------------------- generation
@pytest.fixture(scope="module")
def generation_pair(tmp_path_factory):
    """The same tiny BART in transformers and unimodel, and a batch of 2 with a padded encoder input.

    HF's BART-only generation extras (forced EOS, no-repeat n-grams) are off, as
    unimodel's generate does neither. Weights are large (init_std 1) so the
    random model's choices depend on its input; with eos 58 row 0 stops early
    and row 1 runs to the length limit, where beam search departs from greedy.
    """
    torch.manual_seed(0)
    cfg = transformers.BartConfig(
        **TINY, init_std=1.0, eos_token_id=58, forced_eos_token_id=None, no_repeat_ngram_size=0
    )
    hf = randomize_(transformers.BartForConditionalGeneration(cfg).eval())
    hf.generation_config.forced_eos_token_id = None
    hf.generation_config.no_repeat_ngram_size = 0
    folder = tmp_path_factory.mktemp("bart-gen")
    hf.save_pretrained(folder)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 99, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    ids[0, 6:] = 1
    with torch.no_grad():
        assert_peaked(hf(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :5]).logits)
    return hf, um.from_hf(folder), ids, mask


def test_generate_matches_transformers(generation_pair):
    """Greedy and beam search (3 and 4 beams) give transformers' tokens exactly."""
    hf, model, ids, mask = generation_pair
    got = {}
    for num_beams in (1, 3, 4):
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=mask, max_new_tokens=12, num_beams=num_beams, do_sample=False)
        got[num_beams] = model.generate(ids, attention_mask=mask, max_new_tokens=12, num_beams=num_beams)
        assert got[num_beams].tolist() == ref.tolist(), f"num_beams={num_beams}"
    ours = got[1]
    assert (ours[:, 0] == 2).all()  # the decoder sequence starts with BART's start token (eos)
    assert (ours[0] == 1).any() and not (ours[1] == 1).any()  # row 0 hit EOS and was padded; row 1 did not
    assert got[3][1].tolist() != ours[1].tolist()  # beam search really departs from greedy here
