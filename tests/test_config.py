"""Config validation, loading and round trips."""

import dataclasses
import json

import pytest
from unimodel_gpt.model import GPTConfig

import unimodel as um
from unimodel.config import SCHEMA_VERSION, read_config_file, to_toml
from unimodel.errors import ConfigError


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown key 'n_layer'.*Did you mean 'n_layers'"):
        GPTConfig.from_dict({"n_layer": 3})


def test_unknown_key_through_build_model():
    with pytest.raises(ConfigError, match="d_modle.*d_model"):
        um.build_model("gpt2-tiny", d_modle=64)


def test_impossible_values_name_the_fields():
    with pytest.raises(ConfigError, match=r"d_model=100, n_heads=3.*divisible"):
        GPTConfig(d_model=100, n_heads=3)
    with pytest.raises(ConfigError, match="dropout=1.5"):
        GPTConfig(dropout=1.5)
    with pytest.raises(ConfigError, match="eos_token_id=500, vocab_size=100"):
        GPTConfig(vocab_size=100, eos_token_id=500)


@pytest.mark.parametrize(
    "field,value,expect",
    [
        ("n_layers", "3", "n_layers' must be an integer"),
        ("dropout", True, "must be a number"),
        ("tie_embeddings", 1, "true or false"),
        ("d_ff", 2.5, "an integer or null"),
    ],
)
def test_wrong_types_are_errors(field, value, expect):
    with pytest.raises(ConfigError, match=expect):
        GPTConfig.from_dict({field: value})


def test_lossless_coercions():
    c = GPTConfig.from_dict({"n_layers": 3.0, "dropout": 0})
    assert c.n_layers == 3 and isinstance(c.n_layers, int)
    assert c.dropout == 0.0 and isinstance(c.dropout, float)


def test_configs_are_frozen():
    c = GPTConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.d_model = 3  # type: ignore[misc]
    assert c.replace(d_model=96, n_heads=4).d_model == 96 and c.d_model == 768


def test_dict_json_toml_round_trip(tmp_path):
    c = GPTConfig(d_model=64, n_heads=4, n_layers=3, d_ff=100, eos_token_id=7)
    assert GPTConfig.from_dict(c.to_dict()) == c
    assert GPTConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    p = tmp_path / "m.toml"
    p.write_text(to_toml({"model": {"name": "gpt", **c.to_dict()}}))
    data = read_config_file(p)["model"]
    data.pop("name")
    assert GPTConfig.from_dict(data) == c


def test_model_spec_from_toml_and_json_files(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[model]\nname = "gpt2-tiny"\nvocab_size = 77\nmax_positions = 32\n\n[objective]\nname = "fim"\n')
    m = um.build_model(toml)
    assert (m.config.vocab_size, m.config.n_layers, m.objective_name) == (77, 2, "fim")
    js = tmp_path / "m.json"
    js.write_text(json.dumps({"name": "gpt", "d_model": 32, "n_heads": 4, "n_layers": 1, "vocab_size": 50}))
    assert um.build_model(js).config.d_model == 32


def test_schema_version_checked(tmp_path):
    p = tmp_path / "future.json"
    p.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "model": {"name": "gpt"}}))
    with pytest.raises(ConfigError, match="schema_version.*upgrade unimodel"):
        read_config_file(p)


def test_bad_files():
    with pytest.raises(ConfigError, match="does not exist"):
        read_config_file("/nonexistent/run.toml")


def test_bad_toml(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("[model\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_config_file(p)


def test_describe_lists_fields_with_docs():
    rows = {name: (tp, default, doc) for name, tp, default, doc in GPTConfig.describe()}
    assert rows["n_heads"][1] == 12 and "divide d_model" in rows["n_heads"][2]
    assert rows["d_ff"][0] == "an integer or null"


@pytest.mark.parametrize(
    ("name", "values", "problem"),
    [
        ("t5", {"head_dim": 0}, r"head_dim=0\): must be positive"),
        ("t5", {"n_decoder_layers": -1}, r"n_decoder_layers=-1\): must be positive"),
        ("bart", {"memory_dim": 0}, r"memory_dim=0\): must be positive"),
        ("bart", {"layerdrop": 1.0}, r"layerdrop=1.0\): must be in \[0, 1\)"),
        ("bert", {"vocab_size": 100, "pad_token_id": 100}, r"pad_token_id=100, vocab_size=100\): token id must lie"),
        ("gpt", {"vocab_size": 50, "eos_token_id": -1}, r"eos_token_id=-1, vocab_size=50\): token id must lie"),
    ],
)
def test_shared_range_checks_name_field_and_value(name, values, problem):
    with pytest.raises(ConfigError, match=problem):
        um.build_model({"name": name, **values})


@pytest.mark.parametrize(
    ("objective", "values", "problem"),
    [
        ("text_infilling", {"mask_ratio": 1.5}, r"mask_ratio=1.5\): must be in \[0, 1\]"),
        ("text_infilling", {"poisson_lambda": 0.0}, r"poisson_lambda=0.0\): must be positive"),
        ("span_corruption", {"label_smoothing": 1.0}, r"label_smoothing=1.0\): must be in \[0, 1\)"),
        ("fim", {"rate": -0.1}, r"rate=-0.1\): must be in \[0, 1\]"),
    ],
)
def test_objective_range_checks(objective, values, problem):
    with pytest.raises(ConfigError, match=problem):
        um.build_objective({"name": objective, **values})
