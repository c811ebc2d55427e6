"""The conformance kit: over every built-in component, over an outside plugin installed with pip, and
against deliberately broken components (so a pass means something). Also keeps docs/plugins.md honest.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import unimodel as um
import unimodel.testing
from unimodel import hookspecs
from unimodel.interfaces import Cap
from unimodel.registry import Component, Registry, get_registry, set_registry
from unimodel.testing import (
    ConformanceError,
    NotApplicable,
    check_component,
    check_model,
    checks,
    generation,
    objectives,
    parts,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "plugins.md"


def run_kit(tmp_path: Path, *args: str, pythonpath: Path | None = None) -> tuple[int, dict[str, str], str]:
    """Run the kit in a fresh pytest process; returns (exit code, {test id: outcome}, output).

    Autoloading is off so only the kit is active, loaded by its entry-point name as documented.
    """
    junit = tmp_path / "kit.xml"
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "unimodel",
            "--unimodel-conformance",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rfEs",
            f"--junitxml={junit}",
            *args,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    outcomes = {}
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            status = "passed"
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    status = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
            outcomes[case.get("name")] = status
    return proc.returncode, outcomes, proc.stdout + proc.stderr


# ------------------------------------------------------------------ built-in components
def test_kit_passes_on_every_builtin_component(tmp_path):
    code, outcomes, output = run_kit(tmp_path)
    failed = {k: v for k, v in outcomes.items() if v in ("failed", "error")}
    assert code == 0 and not failed, output[-6000:]
    reg = get_registry()
    families = [c for c in reg.components("model") if c.base is None and c.tiny]
    assert families, "no built-in family registers tiny overrides"
    for fam in families:
        for test in (
            "forward",
            "roundtrip",
            "determinism",
            "config_roundtrip",
            "capabilities",
            "input_errors",
            "config_names",
        ):
            assert outcomes.get(f"test_{test}[model:{fam.name}]") == "passed", (test, fam.name)
        if "kv_cache" in fam.provides:
            assert outcomes[f"test_kv_cache[model:{fam.name}]"] == "passed"
        generates = "lm_head" in fam.provides and "causal" in fam.provides
        for test in ("generation", "beam_search"):
            expected = "passed" if generates else "skipped"
            assert outcomes.get(f"test_{test}[model:{fam.name}]") == expected, (test, fam.name)
        for obj in reg.compatible_objectives(fam.provides):
            assert f"test_gradients[model:{fam.name}/objective:{obj}]" in outcomes
    for comp in reg.components():
        assert outcomes.get(f"test_declaration[{comp.kind}:{comp.name}]") == "passed", comp
        if comp.kind in ("encoder", "decoder"):  # every part pairs with the reference part of the other side
            assert outcomes.get(f"test_pairing[{comp.kind}:{comp.name}]") == "passed", comp
        if comp.kind == "decoding":  # every strategy runs
            assert outcomes.get(f"test_decoding[decoding:{comp.name}]") == "passed", comp
        if comp.kind == "objective":
            assert outcomes.get(f"test_prepare[objective:{comp.name}]") == "passed", comp
            # features has no loss; images have no padding
            padding = "skipped" if comp.name == "features" or Cap.CONTINUOUS_INPUT in comp.requires else "passed"
            assert outcomes.get(f"test_padding_loss[objective:{comp.name}]") == padding, comp
        if comp.kind in ("encoder", "decoder"):
            assert outcomes.get(f"test_config_names[{comp.kind}:{comp.name}]") == "passed", comp
    for name in reg.plugins:
        assert outcomes[f"test_plugin_loaded[plugin:{name}]"] == "passed"


def test_kit_is_inactive_without_its_flag(tmp_path):
    (tmp_path / "test_other.py").write_text(
        textwrap.dedent("""
        import sys

        def test_nothing_of_unimodel_was_loaded():
            assert "torch" not in sys.modules
            assert "unimodel.testing.conformance" not in sys.modules
            assert "unimodel.testing.checks" not in sys.modules
    """)
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_other.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr
    assert (
        "--unimodel-conformance"
        in subprocess.run(
            [sys.executable, "-m", "pytest", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
        ).stdout
    )


def test_unknown_plugin_name_is_a_usage_error(tmp_path):
    code, _, output = run_kit(tmp_path, "--unimodel-plugin", "gtp")
    assert code == 4 and "--unimodel-plugin 'gtp': no such unimodel plugin; plugins: " in output


# ------------------------------------------------------------------ an outside plugin, installed with pip
def docs_example_files() -> dict[str, str]:
    """The files of the plugin example in docs/plugins.md (each fenced block after `<!-- file: PATH -->`)."""
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)\n```", DOCS.read_text(), re.S)
    return {path: body + "\n" for path, body in blocks}


@pytest.fixture(scope="module")
def outside_plugin(tmp_path_factory) -> Path:
    """The docs' rmsgpt plugin as its own distribution, installed with pip into a folder of its own."""
    pytest.importorskip("setuptools", reason="the example plugin builds with setuptools")
    src = tmp_path_factory.mktemp("unimodel-rmsgpt")
    files = docs_example_files()
    assert set(files) == {"pyproject.toml", "unimodel_rmsgpt/__init__.py", "unimodel_rmsgpt/model.py"}
    for path, body in files.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(body)
    site = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "unimodel_rmsgpt-0.1.0.dist-info" / "entry_points.txt").is_file()
    return site


def test_outside_plugin_is_listed(outside_plugin):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(outside_plugin), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "unimodel", "list", "rmsgpt"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^  rmsgpt\s+decoder-only transformer with RMSNorm.*\(rmsgpt\)$", proc.stdout, re.M)
    assert re.search(r"^  rmsgpt-small\s+.*\[preset of rmsgpt\]\s+\(rmsgpt\)$", proc.stdout, re.M)
    assert "decoder:" in proc.stdout and proc.stderr == ""


def test_outside_plugin_builds_and_trains_a_step(outside_plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(outside_plugin))
    old = set_registry(None)  # rediscover with the new distribution on sys.path
    try:
        reg = get_registry()
        assert reg.plugins["rmsgpt"].ok and reg.plugins["rmsgpt"].source == "unimodel-rmsgpt"
        model = um.build_model("rmsgpt", vocab_size=64, max_positions=32, d_model=32, n_layers=2, n_heads=4, d_ff=48)
        assert model.objective_name == "clm_zloss" and model.name == "rmsgpt"
        assert type(model.decoder).__module__ == "unimodel_rmsgpt.model"
        ids = torch.randint(0, 64, (2, 10))
        out = model.objective(model, model.objective.prepare([{"input_ids": r} for r in ids.tolist()]))
        out.loss.backward()
        assert torch.isfinite(out.loss) and model.decoder.embed.weight.grad is not None
        # the preset resolves through the plugin, and the plugin's objective trains a built-in family
        assert um.build_model("rmsgpt-small", vocab_size=64, max_positions=16).config.d_model == 512
        gpt = um.build_model(
            "gpt",
            vocab_size=64,
            max_positions=32,
            d_model=32,
            n_layers=1,
            n_heads=4,
            objective={"name": "clm_zloss", "z_loss": 1e-3},
        )
        assert gpt.objective.config.z_loss == 1e-3
        # its decoder component pairs with a built-in encoder and gains cross-attention
        pair = um.build_model(
            {
                "name": "encoder-decoder",
                "vocab_size": 64,
                "encoder": {
                    "name": "bert",
                    "max_positions": 32,
                    "d_model": 32,
                    "n_layers": 1,
                    "n_heads": 4,
                    "d_ff": 37,
                },
                "decoder": {
                    "name": "rmsgpt",
                    "max_positions": 32,
                    "d_model": 48,
                    "n_layers": 1,
                    "n_heads": 4,
                    "d_ff": 48,
                },
            }
        )
        assert pair.decoder.cross_attention and pair.objective_name == "seq2seq"
        logits = pair(input_ids=torch.randint(0, 64, (2, 7)), decoder_input_ids=torch.randint(0, 64, (2, 5))).logits
        assert logits.shape == (2, 5, 64)
        report = check_model("rmsgpt")  # the plain-function form of the kit
        assert report.ok and {o.check for o in report.outcomes if o.status == "passed"} >= {
            "forward",
            "roundtrip",
            "kv_cache",
            "determinism",
            "config",
            "capabilities",
            "input_errors",
            "gradients",
        }
    finally:
        set_registry(old)


def test_outside_plugin_passes_the_kit(outside_plugin, tmp_path):
    code, outcomes, output = run_kit(tmp_path, "--unimodel-plugin", "rmsgpt", pythonpath=outside_plugin)
    assert code == 0, output[-4000:]
    expected = [
        "test_plugin_loaded[plugin:rmsgpt]",
        "test_declaration[model:rmsgpt]",
        "test_declaration[model:rmsgpt-small]",
        "test_forward[model:rmsgpt]",
        "test_roundtrip[model:rmsgpt]",
        "test_kv_cache[model:rmsgpt]",
        "test_determinism[model:rmsgpt]",
        "test_config_roundtrip[model:rmsgpt]",
        "test_capabilities[model:rmsgpt]",
        "test_input_errors[model:rmsgpt]",
        "test_preset[model:rmsgpt-small]",
        "test_config_names[model:rmsgpt]",
        "test_config_names[decoder:rmsgpt]",
        "test_objective[objective:clm_zloss]",
        "test_decoder[decoder:rmsgpt]",
        "test_gradients[model:rmsgpt/objective:clm_zloss]",
        "test_gradients[model:rmsgpt/objective:clm]",
        "test_gradients[model:gpt/objective:clm_zloss]",  # either side from the plugin selects the pair
        "test_generation[model:rmsgpt]",
        "test_beam_search[model:rmsgpt]",
        "test_pairing[decoder:rmsgpt]",
        "test_prepare[objective:clm_zloss]",
        "test_padding_loss[objective:clm_zloss]",
    ]
    for test_id in expected:
        assert outcomes.get(test_id) == "passed", (test_id, outcomes.get(test_id))
    assert not any("[model:bert" in k or "objective:mlm" in k for k in outcomes)  # other plugins left out


# ------------------------------------------------------------------ the kit fails what it should fail
BROKEN = '''
import dataclasses
import os
from typing import ClassVar

import torch

from unimodel import PLUGIN_API_VERSION, hookimpl
from unimodel.config import param
from unimodel.interfaces import Backbone, DecoderOutput
from unimodel.registry import Component
from unimodel_gpt.model import GPT, PROVIDES, GPTConfig, GPTDecoder
from unimodel_gpt.objectives import CausalLM
from unimodel.objectives import lm_loss

_TINY = {"vocab_size": 60, "max_positions": 32, "d_model": 32, "n_layers": 2, "n_heads": 4, "dropout": 0.0,
         "attn_dropout": 0.0}
_PROVIDES = ("decoder_only", "causal", "lm_head", "kv_cache")


class ForgetfulDecoder(GPTDecoder):
    \"\"\"Restarts positions at 0 on every call, so cached decoding sees the wrong positions.\"\"\"

    def forward(self, input_ids, **kw):
        kw["position_ids"] = torch.arange(input_ids.shape[1])
        return super().forward(input_ids, **kw)


class StaleMemoryDecoder(GPTDecoder):
    \"\"\"Keeps its first output in a MemoryCache and returns it again: later inputs go unread.\"\"\"

    def forward(self, input_ids, *, cache=None, **kw):
        if cache is None or cache.holds_self:
            return super().forward(input_ids, cache=cache, **kw)
        if "stale" not in cache.extra:
            cache.extra["stale"] = super().forward(input_ids, cache=cache, **kw).last_hidden_state
        return DecoderOutput(last_hidden_state=cache.extra["stale"], cache=cache)


class FirstPositionsDecoder(GPTDecoder):
    \"\"\"Takes output_positions but returns the first K positions, whichever were asked for.\"\"\"

    def forward(self, input_ids, *, output_positions=None, **kw):
        out = super().forward(input_ids, **kw)
        if output_positions is None:
            return out
        k = self.output_queries(output_positions, *input_ids.shape).shape[1]
        return DecoderOutput(last_hidden_state=out.last_hidden_state[:, :k], cache=out.cache)


class ClampingPositionsDecoder(GPTDecoder):
    \"\"\"Clamps output_positions into range instead of refusing those outside its input.\"\"\"

    def forward(self, input_ids, *, output_positions=None, **kw):
        if output_positions is not None:
            output_positions = output_positions.clamp(0, input_ids.shape[1] - 1)
        return super().forward(input_ids, output_positions=output_positions, **kw)


class Forgetful(GPT):
    @classmethod
    def build_backbone(cls, config):
        decoder = ForgetfulDecoder(config)
        return Backbone(encoder=None, decoder=decoder, lm_head=decoder.build_lm_head(), provides=PROVIDES)


class Unseeded(GPT):
    \"\"\"Adds noise from a private generator seeded by the OS: the global seed cannot reproduce it.\"\"\"

    @classmethod
    def build_backbone(cls, config):
        backbone = super().build_backbone(config)
        noise = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        with torch.no_grad():
            backbone.decoder.wte.weight.add_(torch.randn(backbone.decoder.wte.weight.shape, generator=noise))
        return backbone


@dataclasses.dataclass(frozen=True)
class SynonymConfig(GPTConfig):
    \"\"\"Spells shared concepts as other codebases do.\"\"\"

    hidden_size: int = param(32, "width under another name")
    tie_word_embeddings: bool = param(True, "tying under another name")


class Synonymous(GPT):
    config_class = SynonymConfig


@dataclasses.dataclass(frozen=True)
class BadAliasConfig(GPTConfig):
    renamed: ClassVar[dict[str, str]] = {"n_positions": "max_position"}  # points at no field


class BadAlias(GPT):
    config_class = BadAliasConfig


class Misdeclared(CausalLM):
    """Overrides loss() with label smoothing that its token_loss() does not declare."""

    def loss(self, logits, labels):
        return lm_loss(logits, labels, shift=True, label_smoothing=0.2)


@hookimpl
def unimodel_api_version():
    return PLUGIN_API_VERSION


@hookimpl
def unimodel_components():
    return [
        Component(kind="model", name="forgetful", target="um_broken_family:Forgetful", summary="bad cache",
                  provides=_PROVIDES, default_objective="clm", tiny=_TINY),
        Component(kind="model", name="liar", target="unimodel_gpt.model:GPT", summary="claims a pooler",
                  provides=(*_PROVIDES, "pooler"), default_objective="clm", tiny=_TINY),
        Component(kind="model", name="unseeded", target="um_broken_family:Unseeded", summary="random init",
                  provides=_PROVIDES, default_objective="clm", tiny=_TINY),
        Component(kind="model", name="synonymous", target="um_broken_family:Synonymous", summary="synonyms",
                  provides=_PROVIDES, default_objective="clm", tiny=_TINY),
        Component(kind="decoder", name="synonymous", target="um_broken_family:Synonymous", summary="synonyms",
                  provides=_PROVIDES, tiny=_TINY),
        Component(kind="decoder", name="stale_memory", target="um_broken_family:StaleMemoryDecoder",
                  summary="stale memory cache", provides=_PROVIDES, tiny=_TINY),
        Component(kind="decoder", name="first_positions", target="um_broken_family:FirstPositionsDecoder",
                  summary="ignores which output positions", provides=_PROVIDES, tiny=_TINY),
        Component(kind="decoder", name="clamping_positions", target="um_broken_family:ClampingPositionsDecoder",
                  summary="clamps output positions", provides=_PROVIDES, tiny=_TINY),
        Component(kind="model", name="bad_alias", target="um_broken_family:BadAlias", summary="bad renamed map",
                  provides=_PROVIDES, default_objective="clm", tiny=_TINY),
        Component(kind="objective", name="typo_clm", target="unimodel_gpt.objectives:CausalLM",
                  summary="requires a misspelled capability", requires=("decoder_only", "kv-cache")),
        Component(kind="objective", name="wrong_config", target="unimodel_gpt.objectives:FillInTheMiddle",
                  config="unimodel_gpt.config:CLMConfig", summary="names another config class",
                  requires=("decoder_only", "causal", "lm_head")),
        Component(kind="objective", name="lost_config", target="unimodel_gpt.objectives:CausalLM",
                  config="unimodel_gpt.configs:CLMConfig", summary="names a module that does not exist",
                  requires=("decoder_only", "causal", "lm_head")),
        Component(kind="objective", name="misdeclared", target="um_broken_family:Misdeclared",
                  summary="token_loss() disagrees with loss()", requires=("decoder_only", "causal", "lm_head")),
    ]
'''


@pytest.fixture
def broken_registry(tmp_path, monkeypatch) -> Registry:
    (tmp_path / "um_broken_family.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import unimodel_gpt

    reg = Registry(discover=False)
    reg.add_plugin(unimodel_gpt, "gpt")
    rec = reg.add_plugin(__import__("um_broken_family"), "broken")
    assert rec.ok, rec.error
    return reg


def test_kit_catches_a_wrong_kv_cache(broken_registry):
    with pytest.raises(ConformanceError, match="with the KV cache differ from the full forward pass"):
        checks.check_kv_cache("forgetful", registry=broken_registry)
    checks.check_forward("forgetful", registry=broken_registry)  # a full pass alone cannot see the bug


def test_kit_catches_a_memory_cache_that_keeps_more_than_the_memory(broken_registry):
    check_component("decoder", "gpt", registry=broken_registry)  # the decoder it derives from passes
    with pytest.raises(ConformanceError, match="call 2 with a MemoryCache differs"):
        check_component("decoder", "stale_memory", registry=broken_registry)


def test_kit_catches_output_positions_that_are_not_the_full_outputs_there(broken_registry):
    with pytest.raises(ConformanceError, match="the output at output_positions differs from the full output there"):
        check_component("decoder", "first_positions", registry=broken_registry)
    with pytest.raises(ConformanceError, match="accepted output_positions outside its 6 inputs"):
        check_component("decoder", "clamping_positions", registry=broken_registry)


def test_kit_catches_capabilities_the_backbone_lacks(broken_registry):
    with pytest.raises(ConformanceError, match=r"registered provides \[.*'pooler'.*\] but the built backbone provides"):
        checks.check_capabilities("liar", registry=broken_registry)


def test_kit_catches_initialisation_that_ignores_the_seed(broken_registry):
    with pytest.raises(ConformanceError, match="two builds under the same seed differ"):
        checks.check_determinism("unseeded", registry=broken_registry)


def test_kit_catches_unknown_capability_names(broken_registry):
    with pytest.raises(ConformanceError, match=r"unknown capabilities \['kv-cache'\]\. Did you mean 'kv_cache'"):
        checks.check_objective("typo_clm", registry=broken_registry)
    with pytest.raises(ConformanceError, match="unknown capabilities"):
        checks.check_declaration("objective", "typo_clm", registry=broken_registry)


def test_kit_catches_a_record_naming_another_config_class(broken_registry):
    checks.check_declaration("objective", "fim", registry=broken_registry)  # GPT's own records name theirs
    with pytest.raises(ConformanceError, match=r"names 'CLMConfig', but its target's config_class is 'FIMConfig'"):
        checks.check_declaration("objective", "wrong_config", registry=broken_registry)
    with pytest.raises(ConformanceError, match=r"config='unimodel_gpt.configs:CLMConfig' cannot be imported"):
        checks.check_declaration("objective", "lost_config", registry=broken_registry)


def test_kit_catches_config_fields_outside_the_vocabulary(broken_registry):
    unimodel.testing.check_config_names("model", "gpt", registry=broken_registry)  # the vocabulary's own names pass
    with pytest.raises(
        ConformanceError,
        match=r"'hidden_size' \(call it 'd_model'\), 'tie_word_embeddings' \(call it 'tie_embeddings'\)",
    ):
        unimodel.testing.check_config_names("model", "synonymous", registry=broken_registry)
    report = check_component("decoder", "synonymous", registry=broken_registry, raise_on_failure=False)
    assert [(o.check, o.status) for o in report.outcomes if o.check == "config_names"] == [("config_names", "failed")]
    with pytest.raises(ConformanceError, match=r"renamed maps 'n_positions' -> 'max_position'"):
        unimodel.testing.check_config_names("model", "bad_alias", registry=broken_registry)


def test_kit_catches_a_token_loss_that_disagrees_with_the_loss(broken_registry):
    checks.check_gradients("gpt", "clm", registry=broken_registry)  # the honest declaration passes
    with pytest.raises(ConformanceError, match="token_loss.*must describe loss"):
        checks.check_gradients("gpt", "misdeclared", registry=broken_registry)


def test_check_model_reports_every_failure_at_once(broken_registry):
    report = check_model("forgetful", registry=broken_registry, raise_on_failure=False)
    # its broken cache, and the objective of the same plugin whose token_loss() misstates its loss
    assert [(o.check, o.case) for o in report.failures] == [
        ("kv_cache", "model:forgetful"),
        ("gradients", "model:forgetful/objective:misdeclared"),
    ]
    with pytest.raises(ConformanceError, match=r"2 conformance check\(s\) failed:\n- kv_cache\[model:forgetful\]"):
        report.raise_for_failures()
    assert get_registry() is not broken_registry  # the process-wide registry is back


def test_checks_that_do_not_apply_say_why():
    with pytest.raises(NotApplicable, match="has no loss"):
        checks.check_gradients("gpt", "features")
    with pytest.raises(NotApplicable, match="registers no `tiny`"):
        checks.check_forward("encoder-decoder")


def test_config_roundtrip_check_explains_a_null_field_with_a_non_null_default():
    from unimodel.config import Config, param

    @dataclasses.dataclass(frozen=True)
    class Odd(Config):
        width: int | None = param(8, "a field that may be null but defaults to 8")

    checks.roundtrip_config(Odd(), "odd")
    with pytest.raises(ConformanceError, match="through TOML.*TOML has no null"):
        checks.roundtrip_config(Odd(width=None), "odd")


# ------------------------------------------------------------------ docs/plugins.md stays in step
def test_every_hook_is_documented():
    specs = [n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "unimodel_spec")]
    assert specs, "no hookspecs found"
    text = DOCS.read_text()
    for name in specs:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"#### `{name}({params})" in text, f"hook {name} is not documented in docs/plugins.md"
    documented = re.findall(r"^#### `(unimodel_\w+)\(", text, re.M)
    assert sorted(documented) == sorted(specs), "docs/plugins.md documents hooks that do not exist"


def test_component_fields_and_capabilities_are_documented():
    text = DOCS.read_text()
    for f in dataclasses.fields(Component):
        assert re.search(rf"^\| `{f.name}` \|", text, re.M), f"Component.{f.name} is not in docs/plugins.md"
    for cap in Cap.all():
        assert re.search(rf"^\| `{cap}` \|", text, re.M), f"capability {cap} is not in docs/plugins.md"
    assert f"currently {hookspecs.PLUGIN_API_VERSION})" in text


# ------------------------------------------------------------------ the contract checks, each against a broken plugin
CONTRACT = '''
import torch

from unimodel import PLUGIN_API_VERSION, hookimpl
from unimodel.generation import IncrementalDecoder
from unimodel.interfaces import Backbone, Decoder
from unimodel.nn import KVCache
from unimodel.registry import Component
from unimodel_bert.model import BertEncoder
from unimodel_gpt.model import GPT, PROVIDES, GPTDecoder
from unimodel_gpt.objectives import CausalLM

_GPT = {"vocab_size": 60, "max_positions": 32, "d_model": 32, "n_layers": 2, "n_heads": 4, "dropout": 0.0,
        "attn_dropout": 0.0}
_BERT = {"vocab_size": 70, "max_positions": 32, "d_model": 32, "n_layers": 1, "n_heads": 4, "d_ff": 37,
         "dropout": 0.0, "attn_dropout": 0.0}
_DEC = ("decoder_only", "causal", "lm_head", "kv_cache")


def family(decoder_class, provides=PROVIDES):
    class Family(GPT):
        @classmethod
        def build_backbone(cls, config):
            decoder = decoder_class(config)
            return Backbone(encoder=None, decoder=decoder, lm_head=decoder.build_lm_head(), provides=provides)
    return Family


class MaskBlindDecoder(GPTDecoder):
    """Ignores attention_mask: right padding never shows in a causal decoder, left padding does."""

    def forward(self, input_ids, **kw):
        kw["attention_mask"] = None
        return super().forward(input_ids, **kw)


class CacheMaskBlindDecoder(GPTDecoder):
    """Honours attention_mask in a full pass, forgets it when decoding with its cache."""

    def forward(self, input_ids, **kw):
        if kw.get("cache") is not None:
            kw["attention_mask"] = None
        return super().forward(input_ids, **kw)


class NoReorderCache(KVCache):
    def __getattribute__(self, name):
        if name == "reorder":
            raise AttributeError(name)
        return super().__getattribute__(name)


class StuckCache(KVCache):
    def reorder(self, index):
        pass  # keeps every row where it was: beams continue the wrong prefixes


def cache_decoder(cache_class):
    class WithCache(GPTDecoder):
        def new_cache(self, batch, capacity, *, dtype, device):
            c = self.config
            return cache_class(c.n_layers, batch, c.n_heads, c.d_model // c.n_heads, capacity, dtype=dtype,
                               device=device)
    return WithCache


class RunningDecoder(GPTDecoder):
    """Keeps a running mean of its states in a buffer it does not save (persistent=False)."""

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("running", torch.zeros(config.d_model), persistent=False)

    def forward(self, input_ids, **kw):
        out = super().forward(input_ids, **kw)
        if self.training:
            with torch.no_grad():
                self.running.mul_(0.5).add_(0.5 * out.last_hidden_state.mean(dim=(0, 1)))
        out.last_hidden_state = out.last_hidden_state - self.running
        return out


class CachelessDecoder(GPTDecoder):
    """A causal decoder with no cache at all: generation re-runs the prefix."""

    new_cache = Decoder.new_cache

    def forward(self, input_ids, *, attention_mask=None, position_ids=None, memory=None, memory_mask=None):
        return super().forward(input_ids, attention_mask=attention_mask, position_ids=position_ids, memory=memory,
                               memory_mask=memory_mask)


class FixedVocabEncoder(BertEncoder):
    """Builds its embedding for 60 tokens whatever vocab_size the pairing sets."""

    def __init__(self, config):
        super().__init__(config.replace(vocab_size=60))


class NoTokenTypesEncoder(BertEncoder):
    """Declares neither token_type_ids nor position_ids."""

    def forward(self, input_ids, *, attention_mask=None):
        return super().forward(input_ids, attention_mask=attention_mask)


class MemoryMaskBugDecoder(GPTDecoder):
    """Expands memory_mask to (B, 1, 1, S) itself, and GPT's blocks expand it again: only a pairing sees it."""

    def forward(self, input_ids, *, memory_mask=None, **kw):
        if memory_mask is not None:
            memory_mask = memory_mask[:, None, None, :]
        return super().forward(input_ids, memory_mask=memory_mask, **kw)


def _steps(model, inputs, settings, n, choose):
    run = IncrementalDecoder(model, inputs, capacity=settings.prompt_length + n)
    out, logits = [run.prompt], run.prefill()
    for i in range(n):
        token = choose(logits)
        out.append(token[:, None])
        if i + 1 < n:
            logits = run.step(token)
    return torch.cat(out, dim=1)


def overlong(model, inputs, settings):
    return _steps(model, inputs, settings, settings.max_new_tokens + 3, lambda s: s.argmax(-1))


def unseeded(model, inputs, settings):
    draw = lambda s: torch.multinomial(s.softmax(-1), 1).squeeze(1)  # the global RNG, not settings.generator
    return _steps(model, inputs, settings, settings.max_new_tokens, draw)


def past_eos(model, inputs, settings):
    return _steps(model, inputs, settings, settings.max_new_tokens, lambda s: s.argmax(-1))


def honest(model, inputs, settings):
    def draw(s):
        return torch.multinomial(s.softmax(-1), 1, generator=settings.generator).squeeze(1)

    out = _steps(model, inputs, settings, settings.max_new_tokens, draw)
    p = settings.prompt_length
    for eos in settings.eos_token_ids:
        after = (out[:, p:] == eos).int().cumsum(1) - (out[:, p:] == eos).int() > 0
        out[:, p:] = out[:, p:].masked_fill(after, settings.pad_token_id)
    return out


class GlobalNoise(CausalLM):
    """Replaces tokens at random from torch's global RNG, not the generator it is given."""

    def prepare(self, examples, *, tokenizer=None, generator=None):
        batch = super().prepare(examples, tokenizer=tokenizer, generator=generator)
        noise = (torch.rand(batch["input_ids"].shape) < 0.3) & (batch["attention_mask"] == 1)
        batch["input_ids"] = batch["input_ids"].masked_fill(noise, 0)
        return batch


class PadCounting(CausalLM):
    """Labels the padding too (instead of -100), so the loss counts padded positions."""

    def prepare(self, examples, *, tokenizer=None, generator=None):
        batch = super().prepare(examples, tokenizer=tokenizer, generator=generator)
        batch["labels"] = batch["input_ids"].clone()
        return batch


@hookimpl
def unimodel_api_version():
    return PLUGIN_API_VERSION


def _model(name, target, summary, provides=_DEC):
    return Component(kind="model", name=name, target=f"um_contract:{target}", summary=summary, provides=provides,
                     default_objective="gpt:clm", tiny=_GPT)


@hookimpl
def unimodel_components():
    return [
        _model("maskblind", "MaskBlind", "ignores attention_mask"),
        _model("cachemaskblind", "CacheMaskBlind", "ignores attention_mask with its cache"),
        _model("noreorder", "NoReorder", "a cache without reorder"),
        _model("stuck", "Stuck", "a cache whose reorder does nothing"),
        _model("running", "Running", "a running buffer that is not saved"),
        _model("cacheless", "Cacheless", "no KV cache", provides=("decoder_only", "causal", "lm_head")),
        _model("claimscache", "ClaimsCache", "declares kv_cache without new_cache"),
        Component(kind="encoder", name="fixedvocab", target="um_contract:FixedVocabEncoder",
                  summary="ignores the pairing's vocab_size", provides=("encoder_only", "lm_head", "token_types",
                  "pooler"), tiny=_BERT),
        Component(kind="encoder", name="notypes", target="um_contract:NoTokenTypesEncoder",
                  summary="declares no token_type_ids", provides=("encoder_only", "lm_head", "token_types", "pooler"),
                  tiny=_BERT),
        Component(kind="decoder", name="memmaskbug", target="um_contract:MemoryMaskBugDecoder",
                  summary="mishandles memory_mask", provides=_DEC, tiny=_GPT),
        *(Component(kind="decoding", name=n, target=f"um_contract:{n}", summary=n, requires=("causal", "lm_head"))
          for n in ("overlong", "unseeded", "past_eos", "honest")),
        Component(kind="objective", name="global_noise", target="um_contract:GlobalNoise", summary="global RNG",
                  requires=("decoder_only", "causal", "lm_head")),
        Component(kind="objective", name="pad_counting", target="um_contract:PadCounting", summary="labels padding",
                  requires=("decoder_only", "causal", "lm_head")),
    ]


MaskBlind = family(MaskBlindDecoder)
CacheMaskBlind = family(CacheMaskBlindDecoder)
NoReorder = family(cache_decoder(NoReorderCache))
Stuck = family(cache_decoder(StuckCache))
Running = family(RunningDecoder)
Cacheless = family(CachelessDecoder, provides=frozenset({"decoder_only", "causal", "lm_head"}))
ClaimsCache = family(CachelessDecoder)
'''


@pytest.fixture(scope="module")
def contract_registry(tmp_path_factory) -> Registry:
    """The core, GPT and BERT plugins plus the fixture plugin `contract` of deliberately broken components."""
    folder = tmp_path_factory.mktemp("contract")
    (folder / "um_contract.py").write_text(CONTRACT)
    sys.path.insert(0, str(folder))
    try:
        import unimodel_bert
        import unimodel_gpt

        import unimodel.builtin

        reg = Registry(discover=False)
        for name, plugin in (("core", unimodel.builtin), ("gpt", unimodel_gpt), ("bert", unimodel_bert)):
            assert reg.add_plugin(plugin, name).ok
        rec = reg.add_plugin(importlib.import_module("um_contract"), "contract")
        assert rec.ok, rec.error
        yield reg
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("um_contract", None)


def test_generation_check_fails_a_decoder_that_ignores_attention_mask(contract_registry):
    checks.check_forward("maskblind", registry=contract_registry)  # right padding cannot show it
    with pytest.raises(ConformanceError, match=r"the logits of row 1 of a left-padded batch differ"):
        generation.check_generation("maskblind", registry=contract_registry)
    generation.check_generation("gpt", registry=contract_registry)


def test_kv_cache_check_compares_every_position_of_a_left_padded_row(contract_registry):
    checks.check_forward("cachemaskblind", registry=contract_registry)
    with pytest.raises(ConformanceError, match="with a left-padded row, outputs decoded incrementally"):
        checks.check_kv_cache("cachemaskblind", registry=contract_registry)


def test_beam_search_check_fails_a_cache_without_a_working_reorder(contract_registry):
    checks.check_kv_cache("noreorder", registry=contract_registry)  # greedy decoding never calls reorder
    with pytest.raises(ConformanceError, match=r"new_cache\(\) returned a NoReorderCache without reorder\(index\)"):
        generation.check_beam_search("noreorder", registry=contract_registry)
    with pytest.raises(ConformanceError, match=r"after cache.reorder\(index\) the next step's outputs differ"):
        generation.check_beam_search("stuck", registry=contract_registry)
    generation.check_beam_search("gpt", registry=contract_registry)


def test_roundtrip_check_fails_a_buffer_that_is_not_saved(contract_registry):
    with pytest.raises(ConformanceError, match=r"buffer\(s\) decoder.running differ after loading.*persistent"):
        checks.check_roundtrip("running", registry=contract_registry)


def test_pairing_check_fails_parts_that_break_only_when_paired(contract_registry):
    checks.check_encoder("fixedvocab", registry=contract_registry)  # alone, both look fine
    checks.check_decoder("memmaskbug", registry=contract_registry)
    with pytest.raises(ConformanceError, match=r"encoder 'fixedvocab' paired with the reference decoder.*InputError"):
        parts.check_pairing("encoder", "fixedvocab", registry=contract_registry)
    with pytest.raises(ConformanceError, match=r"decoder 'memmaskbug' paired with the reference encoder.* raised"):
        parts.check_pairing("decoder", "memmaskbug", registry=contract_registry)
    # an encoder that declares no token types or positions pairs: the model passes what it declares
    parts.check_pairing("encoder", "notypes", registry=contract_registry)
    parts.check_pairing("decoder", "gpt", registry=contract_registry)


def test_decoding_check_runs_every_strategy_and_fails_broken_ones(contract_registry):
    with pytest.raises(ConformanceError, match=r"returned sequences of length 11; .*max_new_tokens=4"):
        generation.check_decoding("overlong", registry=contract_registry)
    with pytest.raises(ConformanceError, match="two runs with seed=0 give different tokens"):
        generation.check_decoding("unseeded", registry=contract_registry)
    with pytest.raises(ConformanceError, match=r"row 0 goes on after its EOS"):
        generation.check_decoding("past_eos", registry=contract_registry)
    generation.check_decoding("honest", registry=contract_registry)
    for strategy in ("greedy", "sample", "beam"):
        generation.check_decoding(strategy, registry=contract_registry)


def test_objective_checks_fail_unseeded_prepare_and_a_loss_on_padding(contract_registry):
    with pytest.raises(ConformanceError, match=r"prepare\(\) with generators seeded alike gave different input_ids"):
        objectives.check_prepare("global_noise", registry=contract_registry)
    with pytest.raises(ConformanceError, match="changing the token ids at padded positions .* changes the loss"):
        objectives.check_padding_loss("pad_counting", registry=contract_registry)
    objectives.check_prepare("pad_counting", registry=contract_registry)
    objectives.check_padding_loss("global_noise", registry=contract_registry)
    for name in ("clm", "fim", "mlm"):
        objectives.check_prepare(name, registry=contract_registry)
        objectives.check_padding_loss(name, registry=contract_registry)


def test_a_model_without_a_kv_cache_passes_the_kit(contract_registry):
    report = check_model("cacheless", registry=contract_registry, raise_on_failure=False)
    assert report.ok, str(report)
    passed = {o.check for o in report.outcomes if o.status == "passed"}
    assert {"generation", "beam_search", "roundtrip", "forward"} <= passed
    assert {(o.check, o.case) for o in report.outcomes if o.status == "skipped"} == {
        ("kv_cache", "model:cacheless"),
        ("gradients", "model:cacheless/objective:features"),  # no head, no loss
    }


def test_capabilities_check_fails_kv_cache_without_new_cache(contract_registry):
    with pytest.raises(ConformanceError, match="declares 'kv_cache' but .* implements Decoder.new_cache"):
        checks.check_capabilities("claimscache", registry=contract_registry)


def test_check_component_runs_the_new_checks(contract_registry):
    check_component = unimodel.testing.check_component
    report = check_component("encoder", "fixedvocab", registry=contract_registry, raise_on_failure=False)
    assert [(o.check, o.status) for o in report.outcomes] == [
        ("declaration", "passed"),
        ("encoder", "passed"),
        ("pairing", "failed"),
        ("config_names", "passed"),
    ]
    report = check_component("objective", "pad_counting", registry=contract_registry, raise_on_failure=False)
    assert [(o.check, o.status) for o in report.outcomes] == [
        ("declaration", "passed"),
        ("objective", "passed"),
        ("prepare", "passed"),
        ("padding_loss", "failed"),
    ]
