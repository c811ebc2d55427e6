"""Tokenizer roles: training reserves them, loading finds them, objectives demand them."""

import pytest

import unimodel as um
from unimodel.data.tokenizer import Tokenizer
from unimodel.errors import ConfigError

TEXTS = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs"] * 40


def test_roles_survive_save_and_load(tmp_path):
    tok = Tokenizer.train_bpe(TEXTS, vocab_size=300)
    tok.save(tmp_path)
    back = Tokenizer.load(tmp_path)
    assert back.roles == tok.roles
    assert back.encode("lazy fox") == tok.encode("lazy fox")


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_roles_found_in_a_bare_tokenizer_json(tmp_path, kind):
    tok = Tokenizer.train(kind, TEXTS, 300)
    tok.backend.save(str(tmp_path / "tokenizer.json"))  # no tokenizer_config.json, as some hub folders
    back = Tokenizer.load(tmp_path)
    for role in ("pad", "mask"):
        if tok.has_role(role):
            assert back.special_id(role) == tok.special_id(role)
    if kind == "unigram":
        assert back.special_id("sentinel_99") == tok.special_id("sentinel_99")


def test_missing_role_message_names_it():
    tok = Tokenizer.train_bpe(TEXTS, vocab_size=300, roles={"eos": "<eos>"})
    with pytest.raises(ConfigError, match=r"no 'mask' token \(it has: eos\)"):
        tok.special_id("mask")


def test_objective_needing_a_token_fails_at_build():
    tok = Tokenizer.train_bpe(TEXTS, vocab_size=300, roles={"eos": "<eos>", "pad": "<pad>"})
    with pytest.raises(ConfigError, match="objective 'fim' needs the special token.*fim_prefix"):
        um.build_model("gpt2-tiny", objective="fim", vocab_size=tok.vocab_size, tokenizer=tok)


def test_too_small_vocab():
    with pytest.raises(ConfigError, match="too small"):
        Tokenizer.train_bpe(TEXTS, vocab_size=100)


def test_unknown_kind():
    with pytest.raises(ConfigError, match="unknown tokenizer kind 'sentencepiece'"):
        Tokenizer.train("sentencepiece", TEXTS, 300)


def test_metadata_survives_save_and_load_and_must_be_an_object(tmp_path):
    import json

    from unimodel.errors import CheckpointError

    tok = Tokenizer.train("bpe", ["hello world"] * 20, 300, {"eos": "<eos>"})
    tok.metadata["source"] = {"path": "/x", "n": 3}
    tok.save(tmp_path)
    assert Tokenizer.load(tmp_path).metadata == {"source": {"path": "/x", "n": 3}}
    cfg = tmp_path / "tokenizer_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "unimodel_metadata": [1]}))
    with pytest.raises(CheckpointError, match="unimodel_metadata must be a JSON object"):
        Tokenizer.load(tmp_path)
