"""Config validation, loading and round trips."""

import dataclasses
import json
import math
import typing

import pytest
from unimodel_gpt.model import GPTConfig

import unimodel as um
from unimodel.config import SCHEMA_VERSION, Config, param, read_config_file, to_toml
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


# ------------------------------------------------------------------ NaN, infinity and physical ranges
def _float_fields(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if float in (hints[f.name], *typing.get_args(hints[f.name]))]


def _every_config_class() -> list[type]:
    """The config class of every registered model family, encoder, decoder and objective, plus the run's."""
    from unimodel.data.dataset import DataConfig
    from unimodel.training import TrainConfig

    reg = um.get_registry()
    classes = {DataConfig, TrainConfig}
    for kind in ("model", "encoder", "decoder", "objective"):
        classes |= {c.load().config_class for c in reg.components(kind) if c.base is None}
    return sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def test_every_float_field_of_every_config_refuses_nan_and_infinity():
    refused = []
    for cls in _every_config_class():
        for name in _float_fields(cls):
            for bad in (math.nan, math.inf, -math.inf):
                with pytest.raises(ConfigError, match=rf"field '{name}' must be a finite number, got {bad}"):
                    cls.from_dict({name: bad})
                refused.append((cls.__name__, name, bad))
    # the built-in families' float fields are all in there (a family without any would be a test bug)
    assert {("GPTConfig", "init_std"), ("BertConfig", "layer_norm_eps"), ("TrainConfig", "learning_rate")} <= {
        (c, n) for c, n, _ in refused
    }
    assert len(refused) >= 3 * 40


def test_nan_and_infinity_are_refused_from_files_and_inside_lists(tmp_path):
    path = tmp_path / "model.json"
    path.write_text('{"model": {"name": "gpt2-tiny", "init_std": NaN}}')
    with pytest.raises(ConfigError, match="'init_std' must be a finite number, got nan"):
        um.build_model(str(path))
    path = tmp_path / "model.toml"
    path.write_text('[model]\nname = "gpt2-tiny"\nlayer_norm_eps = inf\n')
    with pytest.raises(ConfigError, match="'layer_norm_eps' must be a finite number, got inf"):
        um.build_model(str(path))

    @dataclasses.dataclass(frozen=True)
    class Weights(Config):
        section = "weights"
        values: tuple[float, ...] = param((1.0,), "per-class weights")
        scale: float | None = param(None, "optional scale")

    with pytest.raises(ConfigError, match=r"'values' must be a finite number, got inf \(in \[1.0, inf\]\)"):
        Weights.from_dict({"values": [1.0, math.inf]})
    with pytest.raises(ConfigError, match="'scale' must be a finite number, got nan"):
        Weights(scale=math.nan)
    with pytest.raises(ConfigError, match="'scale' must be a finite number, got 1000"):
        Weights(scale=10**1000)  # an integer past the float range


@pytest.mark.parametrize(
    ("spec", "values", "problem"),
    [
        ("gpt2-tiny", {"layer_norm_eps": -1.0}, r"layer_norm_eps=-1.0\): must be positive"),
        ("gpt2-tiny", {"layer_norm_eps": 0.0}, r"layer_norm_eps=0.0\): must be positive"),
        ("gpt2-tiny", {"init_std": 0.0}, r"init_std=0.0\): must be positive"),
        ("gpt2-tiny", {"init_std": -0.02}, r"init_std=-0.02\): must be positive"),
        ("bert-tiny", {"init_std": -1.0}, r"init_std=-1.0\): must be positive"),
        ("bert-tiny", {"objective": {"name": "classify", "init_std": 0.0}}, r"init_std=0.0\): must be positive"),
    ],
)
def test_layer_norm_eps_and_init_std_must_be_positive(spec, values, problem):
    with pytest.raises(ConfigError, match=problem):
        um.build_model(spec, **values)


def test_range_helpers_state_a_family_rule_in_one_line():
    @dataclasses.dataclass(frozen=True)
    class Sampler(Config):
        section = "sampler"
        temperature: float = param(1.0, "softmax temperature")
        dropout: float | None = param(None, "optional dropout")
        min_count: float = param(0.0, "counts below are dropped")

        def check(self) -> None:
            self.require_positive("temperature")
            self.require_fraction("dropout")
            self.require_at_least(0.0, "min_count")

    assert Sampler().dropout is None
    with pytest.raises(ConfigError, match=r"temperature=0.0\): must be positive"):
        Sampler(temperature=0.0)
    with pytest.raises(ConfigError, match=r"dropout=1.0\): must be in \[0, 1\)"):
        Sampler(dropout=1.0)
    with pytest.raises(ConfigError, match=r"min_count=-1.0\): must be 0.0 or more"):
        Sampler(min_count=-1.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: um.build_model({"name": 5}), "model spec needs a 'name', a string"),
        (lambda: um.build_model("gpt2-tiny", objective=5), "objective must be a name or a table with a name"),
        (lambda: um.build_objective(123), "build_objective takes an objective name or a dict, got int"),
        (lambda: um.build_objective({"name": 3}), "objective spec needs a 'name', a string"),
    ],
)
def test_specs_of_the_wrong_type_are_config_errors(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
