"""A run config is checked whole when it is loaded: [model] and [objective] resolve into their config
classes before any data is read or a tokenizer trained."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

import unimodel.data.dataset as dataset
from unimodel import cli
from unimodel.config import Config, param
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


# ------------------------------------------------------------------ checked without importing torch
# One subprocess runs `unimodel train` on each file (the CLI's main, in process) and reports, as JSON, the exit
# statuses, whether torch was imported by then, and again after importing every config class a record names.
_LIGHT_DRIVER = r"""
import json, sys
from unimodel.cli import main
status = [main(argv) for argv in json.loads(sys.argv[1])]
after_runs = "torch" in sys.modules
from unimodel.registry import get_registry
named = sorted(c.qualified_name for c in get_registry().components() if c.config and c.config_class())
print(json.dumps({"status": status, "torch": after_runs, "torch_after_configs": "torch" in sys.modules,
                  "named": named}))
"""

_LIGHT_CASES = {  # file -> (the run file, the error it must report)
    "model": ('[model]\nname = "gpt2-tiny"\nn_layrs = 2\n', "model 'gpt2-tiny': unknown key 'n_layrs'. Did you mean"),
    "bert": ('[model]\nname = "bert-tiny"\nd_modle = 64\n', "model 'bert-tiny': unknown key 'd_modle'"),
    "pair": (
        '[model]\nname = "encoder-decoder"\nencoder = { name = "t5" }\ndecoder = { name = "bart" }\n'
        "causal_decoder = false\nshare_embedings = true\n",
        "unknown key 'share_embedings'. Did you mean 'share_embeddings'?",
    ),
    "objective": (
        '[model]\nname = "xlnet-tiny"\n[objective]\nname = "plm"\nmax_span_lenght = 3\n',
        "objective 'plm': unknown key 'max_span_lenght'",
    ),
    "data": ('[model]\nname = "t5-tiny"\n[data]\ncorpuss = "pydoc"\n', "data: unknown key 'corpuss'. Did you mean"),
    "train": ('[model]\nname = "bart-tiny"\n[train]\nmax_stepz = 3\n', "train: unknown key 'max_stepz'. Did you mean"),
}


def test_run_file_typos_are_reported_without_importing_torch(tmp_path):
    import json
    import subprocess
    import sys

    argvs = []
    for name, (text, _) in _LIGHT_CASES.items():
        (tmp_path / f"{name}.toml").write_text(text)
        argvs.append(["train", f"{name}.toml"])
    (tmp_path / "ok.toml").write_text('[model]\nname = "gpt2-tiny"\n')
    argvs.append(["train", "ok.toml", "--set", "objective.name=clm", "--set", "train.max_stepz=3"])
    proc = subprocess.run(
        [sys.executable, "-c", _LIGHT_DRIVER, json.dumps(argvs)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["status"] == [2] * len(argvs)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(argvs)
    for line, (_, expected) in zip(errors, _LIGHT_CASES.values()):
        assert expected in line
    assert "train: unknown key 'max_stepz'" in errors[-1]  # an override's typo, too
    assert report["torch"] is False
    # every built-in family and objective states its config class in a module that imports no torch
    assert report["torch_after_configs"] is False
    for name in ("gpt:gpt", "gpt:clm", "bert:tag", "t5:t5", "bart:bart", "xlnet:plm", "vqvae:vqvae", "nat:cmlm"):
        assert name in report["named"]


def test_a_records_config_class_is_the_one_its_component_uses():
    from unimodel.config import ACTIVATION_NAMES
    from unimodel.nn import ACTIVATIONS
    from unimodel.registry import get_registry, provides_when_built

    assert tuple(ACTIVATIONS) == ACTIVATION_NAMES
    named = [c for c in get_registry().components() if c.config]
    assert len(named) >= 20
    for comp in named:
        if comp.base is not None:  # a preset: its family's config class
            family, _ = get_registry().resolve_model(comp.qualified_name)
            assert comp.config_class() is family.config_class(), comp.qualified_name
            continue
        assert comp.config_class() is comp.load().config_class, comp.qualified_name
        if comp.kind == "model":
            try:
                config = comp.config_class().from_dict(dict(comp.tiny))
            except ConfigError:  # the pairing has no config of its own without its two sides
                continue
            # the record's capabilities are those of the family's default configuration
            assert provides_when_built(comp, config) == frozenset(comp.provides), comp.qualified_name


@dataclass(frozen=True)
class _OneModuleConfig(Config):
    section = "model 'one-module'"

    width: int = param(8, "hidden width")
    causal: bool = param(True, "a causal decoder")


class _OneModuleFamily:
    """A family whose plugin keeps everything in one module: its record names no config class."""

    config_class = _OneModuleConfig

    @classmethod
    def provides_for(cls, config: _OneModuleConfig) -> frozenset[str]:
        return frozenset({"decoder_only", "causal"} if config.causal else {"decoder_only"})


def test_a_family_without_a_separate_config_module_is_checked_through_its_target():
    from unimodel import hookimpl
    from unimodel.registry import Component, Registry
    from unimodel.training.spec import resolve_model_spec

    class Plugin:
        @hookimpl
        def unimodel_components(self) -> list[Component]:
            target = f"{__name__}:_OneModuleFamily"
            return [Component(kind="model", name="one-module", target=target, provides=("decoder_only", "causal"))]

    reg = Registry(discover=False)
    assert reg.add_plugin(Plugin(), "one").ok
    with pytest.raises(ConfigError, match=r"model 'one-module': unknown key 'widht'\. Did you mean 'width'"):
        resolve_model_spec({"name": "one-module", "widht": 4}, registry=reg)
    spec = resolve_model_spec({"name": "one-module", "causal": False}, registry=reg)
    assert isinstance(spec.config, _OneModuleConfig) and spec.config.causal is False
    assert spec.provides == {"decoder_only"}  # the family's provides_for, read through the loaded target
