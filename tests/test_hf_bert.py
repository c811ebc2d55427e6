"""BERT interop with transformers: tiny random models built locally, both directions."""

import json

import pytest
import torch
import transformers
from helpers import build_tiny, randomize_
from safetensors.torch import load_file, save_file
from unimodel_bert import hf as bert_hf

import unimodel as um
from unimodel.errors import CheckpointError

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    initializer_range=0.2,
)  # large weights: every mistake shows in the outputs
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def hf_bert(cls_name="BertForMaskedLM", **overrides):
    """A tiny random BERT with every tensor randomised (init leaves LayerNorms at 1/0 and biases at 0)."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(**{**TINY, **overrides})
    return randomize_(getattr(transformers, cls_name)(cfg).eval())


def save(model, path):
    model.save_pretrained(path)
    return path


def inputs(batch=3, length=13, pad_from=None):
    ids = torch.randint(1, 99, (batch, length))
    types = torch.zeros_like(ids)
    types[:, length // 2 :] = 1
    mask = torch.ones_like(ids)
    if pad_from is not None:
        mask[-1, pad_from:] = 0
        ids[-1, pad_from:] = 0
    return ids, types, mask


def max_err(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def mlm_folder(tmp_path_factory):
    return save(hf_bert(), tmp_path_factory.mktemp("bert_mlm"))


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    return save(hf_bert("BertModel"), tmp_path_factory.mktemp("bert_base_model"))


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded+token-types"])
def test_mlm_logits_match(mlm_folder, padded):
    hf = transformers.BertForMaskedLM.from_pretrained(mlm_folder).eval()
    model = um.from_hf(mlm_folder)
    assert model.objective_name == "mlm" and set(model.heads) == {"lm"} and model.encoder.pooler is None
    ids, types, mask = inputs(pad_from=7 if padded else None)
    kw = dict(attention_mask=mask, token_type_ids=types) if padded else {}
    with torch.no_grad():
        ours, ref = model(input_ids=ids, **kw).logits, hf(input_ids=ids, **kw).logits
    keep = mask.bool()
    assert ref.abs().max() > 0.5  # not a degenerate comparison
    assert max_err(ours[keep], ref[keep]) < TOL


def test_a_swapped_mapping_fails_parity(mlm_folder, monkeypatch):
    """The fixture can see a converter bug: the attention output's LayerNorm read as the FFN output's."""
    keys = dict(bert_hf._LAYER_KEYS)
    for param in ("weight", "bias"):
        keys[f"norm_attn.{param}"], keys[f"norm_ffn.{param}"] = keys[f"norm_ffn.{param}"], keys[f"norm_attn.{param}"]
    monkeypatch.setattr(bert_hf, "_LAYER_KEYS", keys)
    hf = transformers.BertForMaskedLM.from_pretrained(mlm_folder).eval()
    ids, _, _ = inputs()
    with torch.no_grad():
        assert max_err(um.from_hf(mlm_folder)(input_ids=ids).logits, hf(input_ids=ids).logits) > 100 * TOL


def test_mlm_loss_matches(mlm_folder):
    hf = transformers.BertForMaskedLM.from_pretrained(mlm_folder).eval()
    model = um.from_hf(mlm_folder)
    ids, types, mask = inputs(pad_from=9)
    labels = torch.full_like(ids, -100)
    labels[:, 3:6] = ids[:, 3:6]
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
    assert abs(ours.item() - ref.item()) < TOL


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded+token-types"])
def test_base_model_hidden_states_and_pooler_match(base_folder, padded):
    hf = transformers.BertModel.from_pretrained(base_folder).eval()
    model = um.from_hf(base_folder)
    assert model.objective_name == "features" and len(model.heads) == 0
    ids, types, mask = inputs(pad_from=5 if padded else None)
    kw = dict(attention_mask=mask, token_type_ids=types) if padded else {}
    with torch.no_grad():
        ours, ref = model(input_ids=ids, **kw), hf(input_ids=ids, **kw)
    keep = mask.bool()
    assert ours.logits is None
    assert max_err(ours.last_hidden_state[keep], ref.last_hidden_state[keep]) < TOL
    assert max_err(ours.pooler_output, ref.pooler_output) < TOL


@pytest.mark.parametrize(
    "variant",
    [
        dict(tie_word_embeddings=False),
        dict(hidden_act="gelu_new", layer_norm_eps=1e-5),
        dict(hidden_act="relu", type_vocab_size=3),
    ],
    ids=["untied", "gelu_new-eps", "relu-3types"],
)
def test_variants_match(tmp_path, variant):
    hf = hf_bert(**variant)
    if variant.get("tie_word_embeddings") is False:
        with torch.no_grad():
            hf.cls.predictions.decoder.weight.normal_()  # make the untied head really differ
    save(hf, tmp_path)
    model = um.from_hf(tmp_path)
    ids, types, mask = inputs(pad_from=8)
    types[:, -2:] = variant.get("type_vocab_size", 2) - 1
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert max_err(ours[mask.bool()], ref[mask.bool()]) < TOL


# ------------------------------------------------------------------ hub-style files
def _rewrite(src_folder, dst_folder, change):
    tensors = load_file(str(src_folder / "model.safetensors"))
    tensors = change(tensors)
    dst_folder.mkdir(exist_ok=True)
    save_file(tensors, str(dst_folder / "model.safetensors"), metadata={"format": "pt"})
    (dst_folder / "config.json").write_text((src_folder / "config.json").read_text())
    return dst_folder


def test_legacy_hub_style_mlm_file(mlm_folder, tmp_path):
    def legacy(t):
        t = {
            k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
            for k, v in t.items()
        }
        t["bert.embeddings.position_ids"] = torch.arange(64)[None]
        t["cls.seq_relationship.weight"] = torch.randn(2, 32)  # the NSP head of BertForPreTraining files
        t["cls.seq_relationship.bias"] = torch.randn(2)
        t["bert.pooler.dense.weight"] = torch.randn(32, 32)
        t["bert.pooler.dense.bias"] = torch.randn(32)
        t["cls.predictions.decoder.bias"] = t["cls.predictions.bias"].clone()  # saved tied copy
        return t

    folder = _rewrite(mlm_folder, tmp_path / "legacy", legacy)
    assert any(k.endswith("gamma") for k in load_file(str(folder / "model.safetensors")))
    ids = torch.randint(1, 99, (2, 10))
    with torch.no_grad():
        assert torch.equal(um.from_hf(folder)(input_ids=ids).logits, um.from_hf(mlm_folder)(input_ids=ids).logits)


def test_decoder_bias_alone_is_the_output_bias(mlm_folder, tmp_path):
    def only_decoder_bias(t):
        t["cls.predictions.decoder.bias"] = t.pop("cls.predictions.bias")
        return t

    folder = _rewrite(mlm_folder, tmp_path / "decoder_bias", only_decoder_bias)
    ids = torch.randint(1, 99, (2, 10))
    with torch.no_grad():
        assert torch.equal(um.from_hf(folder)(input_ids=ids).logits, um.from_hf(mlm_folder)(input_ids=ids).logits)


def test_base_model_keys_with_prefix(base_folder, tmp_path):
    folder = _rewrite(base_folder, tmp_path / "prefixed", lambda t: {f"bert.{k}": v for k, v in t.items()})
    ids = torch.randint(1, 99, (2, 10))
    with torch.no_grad():
        a, b = um.from_hf(folder)(input_ids=ids), um.from_hf(base_folder)(input_ids=ids)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state) and torch.equal(a.pooler_output, b.pooler_output)


def test_pretraining_folder_keeps_pooler_and_drops_nsp(tmp_path):
    hf = hf_bert("BertForPreTraining")
    save(hf, tmp_path)
    model = um.from_hf(tmp_path)
    assert model.objective_name == "mlm" and model.encoder.pooler is not None
    ids, types, mask = inputs(pad_from=6)
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        pooled = hf.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).pooler_output
    assert max_err(ours.logits[mask.bool()], ref.prediction_logits[mask.bool()]) < TOL
    assert max_err(ours.pooler_output, pooled) < TOL


def test_missing_and_unexpected_keys_are_named(mlm_folder, tmp_path):
    def damage(t):
        del t["bert.encoder.layer.1.output.dense.bias"]
        del t["cls.predictions.transform.dense.weight"]
        t["bert.encoder.layer.0.attention.self.rotary.weight"] = torch.ones(3)
        return t

    folder = _rewrite(mlm_folder, tmp_path / "damaged", damage)
    with pytest.raises(CheckpointError) as err:
        um.from_hf(folder)
    msg = str(err.value)
    assert "missing keys" in msg and "encoder.blocks.1.ffn.down.bias" in msg and "heads.lm.dense.weight" in msg
    assert "unexpected keys" in msg and "encoder.layer.0.attention.self.rotary.weight" in msg


def test_partial_attention_projection_is_reported(mlm_folder, tmp_path):
    def damage(t):
        del t["bert.encoder.layer.0.attention.self.value.weight"]
        return t

    with pytest.raises(CheckpointError, match=r"encoder\.blocks\.0\.attn\.qkv\.weight.*attention\.self\.query\.weight"):
        um.from_hf(_rewrite(mlm_folder, tmp_path / "partial", damage))


def test_unsupported_configs_are_refused(tmp_path):
    cfg = {"model_type": "bert", "architectures": ["BertForQuestionAnswering"], **TINY}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="BertForQuestionAnswering.*supported: BertForMaskedLM"):
        um.from_hf(tmp_path)
    cfg.update(architectures=["BertModel"], position_embedding_type="relative_key")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="relative_key"):
        um.from_hf(tmp_path)


# ------------------------------------------------------------------ export
def test_mlm_export_loads_in_transformers(tmp_path):
    model = randomize_(build_tiny("bert"))
    um.to_hf(model, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["architectures"] == ["BertForMaskedLM"]
    assert not (tmp_path / "out" / "generation_config.json").exists()
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert "bert.pooler.dense.weight" in saved and "cls.predictions.decoder.weight" not in saved
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "out").eval()
    ids, types, mask = inputs(pad_from=4)
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        pooled = (
            transformers.BertModel.from_pretrained(tmp_path / "out")
            .eval()(input_ids=ids, attention_mask=mask, token_type_ids=types)
            .pooler_output
        )
    assert max_err(ours.logits[mask.bool()], ref[mask.bool()]) < TOL
    assert max_err(ours.pooler_output, pooled) < TOL  # the pooler travels with the MLM export
    again = um.from_hf(tmp_path / "out")
    with torch.no_grad():
        back, first = again(input_ids=ids), model(input_ids=ids)
    assert torch.equal(back.logits, first.logits) and torch.equal(back.pooler_output, first.pooler_output)


def test_export_without_pooler_roundtrips(tmp_path):
    model = randomize_(build_tiny("bert", n_layers=1, add_pooler=False, objective="features"))
    um.to_hf(model, tmp_path / "out")
    assert not any("pooler" in k for k in load_file(str(tmp_path / "out" / "model.safetensors")))
    again = um.from_hf(tmp_path / "out")
    assert again.encoder.pooler is None and again.objective_name == "features"
    ids = torch.randint(1, 99, (2, 6))
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)


def test_base_model_roundtrip(base_folder, tmp_path):
    model = um.from_hf(base_folder)
    um.to_hf(model, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == ["BertModel"]
    assert (
        load_file(str(tmp_path / "out" / "model.safetensors")).keys()
        == load_file(str(base_folder / "model.safetensors")).keys()
    )
    hf = transformers.BertModel.from_pretrained(tmp_path / "out").eval()
    ids, types, _mask = inputs()
    with torch.no_grad():
        assert (
            max_err(
                model(input_ids=ids, token_type_ids=types).pooler_output,
                hf(input_ids=ids, token_type_ids=types).pooler_output,
            )
            < TOL
        )


@pytest.mark.parametrize(
    ("cls_name", "objective", "num_labels"),
    [
        ("BertForSequenceClassification", "classify", 3),
        ("BertForSequenceClassification", "classify", 1),
        ("BertForTokenClassification", "tag", 4),
    ],
    ids=["classify", "regression", "tag"],
)
def test_classification_heads_both_ways(tmp_path, cls_name, objective, num_labels):
    hf = hf_bert(cls_name, num_labels=num_labels)
    save(hf, tmp_path / "in")
    model = um.from_hf(tmp_path / "in")
    assert model.objective_name == objective and model.objective.config.num_labels == num_labels
    ids, types, mask = inputs(pad_from=10)
    kw = dict(attention_mask=mask, token_type_ids=types)
    with torch.no_grad():
        ours, ref = model(input_ids=ids, **kw).logits, hf(input_ids=ids, **kw).logits
    if objective == "tag":
        ours, ref = ours[mask.bool()], ref[mask.bool()]
    assert max_err(ours, ref) < TOL
    um.to_hf(model, tmp_path / "out")
    back = getattr(transformers, cls_name).from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        again = back(input_ids=ids, **kw).logits
    if objective == "tag":
        again = again[mask.bool()]
    assert max_err(ours, again) < TOL


# ------------------------------------------------------------------ tokenizer
def test_hf_tokenizer_roles_are_loaded(mlm_folder, tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s"] + [f"t{i}" for i in range(91)]
    folder = _rewrite(mlm_folder, tmp_path / "with_tok", lambda t: t)
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    model = um.from_hf(folder)
    tok = model.tokenizer
    assert {r: tok.special_id(r) for r in ("pad", "unk", "cls", "sep", "mask")} == {
        "pad": 0,
        "unk": 1,
        "cls": 2,
        "sep": 3,
        "mask": 4,
    }
    assert tok.encode("hello worlds") == [5, 6, 7]
    batch = model.objective.prepare(
        [{"input_ids": [2, 5, 6, 7, 3]}], tokenizer=tok, generator=torch.Generator().manual_seed(0)
    )
    assert batch["labels"][0, [0, 4]].tolist() == [-100, -100]
    um.to_hf(model, tmp_path / "out")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert hf_tok.mask_token_id == 4 and hf_tok.convert_tokens_to_ids("##s") == 7


def test_wordpiece_tokenizer_travels_with_the_folder(tmp_path):
    from unimodel.data.tokenizer import Tokenizer

    tok = Tokenizer.train_wordpiece(["hello world, hello unimodel and wordpieces"] * 50, vocab_size=120)
    model = build_tiny("bert", vocab_size=tok.vocab_size, n_layers=1, tokenizer=tok)
    um.to_hf(model, tmp_path / "hf")
    back = um.from_hf(tmp_path / "hf")
    assert back.tokenizer.encode("hello unimodel") == tok.encode("hello unimodel")
    assert back.tokenizer.special_id("mask") == tok.special_id("mask")
