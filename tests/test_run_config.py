"""A run config is checked whole when it is loaded: [model] and [objective] resolve into their config
classes before any data is read or a tokenizer trained."""

from __future__ import annotations

from pathlib import Path

import pytest

import unimodel.data.dataset as dataset
from unimodel import cli
from unimodel.data.tokenizer import Tokenizer
from unimodel.errors import ComponentNotFoundError, ConfigError, IncompatibleObjectiveError
from unimodel.training import load_run_config, train

RUN = """\
[model]
name = "gpt2-tiny"
{model}

[objective]
{objective}

[data]
corpus = "pydoc"
max_documents = 4
vocab_size = 300

[train]
max_steps = 2
batch_size = 4
progress = false
"""


@pytest.fixture
def no_data(monkeypatch):
    """Every way a run reads data or trains a tokenizer fails the test; yields the calls made."""
    calls: list[str] = []

    def refuse(what: str):
        def call(*args, **kwargs):
            calls.append(what)
            raise AssertionError(f"{what} was called before the config was checked")

        return call

    monkeypatch.setattr(dataset, "load_data", refuse("load_data"))
    monkeypatch.setattr(dataset, "make_tokenizer", refuse("make_tokenizer"))
    monkeypatch.setattr(Tokenizer, "train", staticmethod(refuse("Tokenizer.train")))
    yield calls


def run_file(tmp_path: Path, *, model: str = "", objective: str = 'name = "clm"') -> Path:
    path = tmp_path / "run.toml"
    path.write_text(RUN.format(model=model, objective=objective))
    return path


def test_a_model_typo_is_reported_before_any_data_is_read(tmp_path, no_data, capsys):
    path = run_file(tmp_path, model="n_layer = 2")
    with pytest.raises(ConfigError, match=r"model 'gpt2-tiny': unknown key 'n_layer'\. Did you mean 'n_layers'"):
        train(path)
    assert cli.main(["train", str(path)]) == 2
    assert "unknown key 'n_layer'. Did you mean 'n_layers'" in capsys.readouterr().err
    assert no_data == []


def test_an_objective_typo_is_reported_before_any_data_is_read(tmp_path, no_data):
    with pytest.raises(ConfigError, match=r"\[objective\] unknown key 'nme'\. Did you mean 'name'\?"):
        train(run_file(tmp_path, objective='nme = "clm"'))
    with pytest.raises(ConfigError, match=r"objective 'fim': unknown key 'rat'\. Did you mean 'rate'"):
        train(run_file(tmp_path, objective='name = "fim"\nrat = 0.5'))
    with pytest.raises(ComponentNotFoundError, match=r"no objective named 'clmm'.*Did you mean 'clm'"):
        train(run_file(tmp_path, objective='name = "clmm"'))
    with pytest.raises(IncompatibleObjectiveError, match="objective 'seq2seq' needs encoder_decoder"):
        train(run_file(tmp_path, objective='name = "seq2seq"'))
    with pytest.raises(ConfigError, match=r"\[objective\] needs a name"):
        train(run_file(tmp_path, objective="label_smoothing = 0.1"))  # a valid option, but which objective?
    assert no_data == []


def test_the_sections_resolve_into_typed_configs_filled_from_the_tokenizer():
    run = load_run_config(
        {
            "model": {"name": "gpt2-tiny", "n_layers": 1, "pad_token_id": 0},
            "objective": {"name": "clm", "label_smoothing": 0.1},
        }
    )
    spec = run.model_spec
    assert type(spec.config).__name__ == "GPTConfig" and spec.family.name == "gpt"
    assert (spec.config.n_layers, spec.config.d_model) == (1, 128)  # the table's value, the preset's value
    assert run.objective_spec.name == "clm" and run.objective_spec.config.label_smoothing == 0.1
    assert run.objective_spec.data_kind == "text"
    tok = Tokenizer.train_bpe(["a small corpus for a small vocabulary"] * 4, vocab_size=280, min_frequency=1)
    filled = spec.filled(tok)
    assert filled.vocab_size == tok.vocab_size
    assert filled.eos_token_id == tok.special_id("eos") and filled.bos_token_id == tok.special_id("bos")
    assert filled.pad_token_id == 0  # set by the table: the tokenizer does not override it
    assert filled.n_layers == 1
