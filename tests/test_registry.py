"""The registry: discovery, failure isolation, conflicts, lookups, presets.

Most tests build their own ``Registry(discover=False)`` and add small plugin
objects; the discovery tests put real ``*.dist-info`` folders with entry points
on ``sys.path``, which is what ``pip install`` leaves behind.
"""

from __future__ import annotations

import importlib
import re
import signal
import sys
import textwrap
from pathlib import Path

import pytest

import unimodel
from unimodel import cli, hookimpl
from unimodel.errors import ComponentNotFoundError, DuplicateComponentError, PluginError
from unimodel.hookspecs import PLUGIN_API_VERSION
from unimodel.registry import KINDS, Component, Registry, TokenizerRecipe, get_registry, presets, set_registry


def make_plugin(*components: Component, api: int | None = PLUGIN_API_VERSION) -> object:
    """A plugin object whose hooks return ``components`` (and ``api``, unless None)."""

    class Plugin:
        @hookimpl
        def unimodel_components(self) -> list[Component]:
            return list(components)

    if api is not None:
        Plugin.unimodel_api_version = hookimpl(lambda self: api)  # type: ignore[attr-defined]
    return Plugin()


def model(name: str, **kw) -> Component:
    kw.setdefault("target", "unimodel_gpt.model:GPT")
    kw.setdefault("summary", f"the {name} model")
    return Component(kind="model", name=name, **kw)


def objective(name: str, requires=(), **kw) -> Component:
    return Component(
        kind="objective",
        name=name,
        target="unimodel_gpt.objectives:CausalLM",
        requires=requires,
        summary=f"the {name} objective",
        **kw,
    )


@pytest.fixture
def global_registry():
    """Swap in a fresh registry for the process and restore the old one afterwards."""
    reg = Registry(discover=False)
    old = set_registry(reg)
    yield reg
    set_registry(old)


# ------------------------------------------------------------------ lookups
def test_names_by_kind_sorted_and_filtered():
    reg = Registry(discover=False)
    preset = model("alpha-big", base="alpha", target="")
    reg.add_plugin(make_plugin(model("zeta"), model("alpha"), objective("clm"), preset), "p")
    names = reg.names()
    assert list(names) == list(KINDS)
    assert names["model"] == ["alpha", "alpha-big", "zeta"]
    assert names["objective"] == ["clm"]
    assert reg.names("model", "alpha*") == {"model": ["alpha", "alpha-big"]}
    with pytest.raises(ComponentNotFoundError, match="unknown component kind 'modle'.*Did you mean 'model'"):
        reg.names("modle")
    assert reg.get("model", "zeta").plugin == "p"


def test_unknown_component_suggests_close_names_and_lists_available():
    reg = Registry(discover=False)
    reg.add_plugin(make_plugin(model("gpt"), model("gpt2", base="gpt", target=""), objective("clm")), "p")
    with pytest.raises(ComponentNotFoundError) as err:
        reg.get("model", "gtp")
    msg = str(err.value)
    assert "no model named 'gtp'" in msg and "Did you mean 'gpt'" in msg
    assert "Available models: gpt, gpt2." in msg
    with pytest.raises(ComponentNotFoundError, match=r"\('clm' is an objective, not a model\.\)"):
        reg.get("model", "clm")
    assert isinstance(err.value, KeyError)  # callers that catch KeyError keep working


def test_list_components_of_the_installed_registry():
    names = unimodel.list_components()
    assert {"gpt", "gpt2", "gpt2-tiny"} <= set(names["model"])
    assert {"clm", "fim", "features"} <= set(names["objective"])
    assert "gpt" in names["decoder"] and "gpt2" in names["hf_converter"]
    f_objectives = sorted(n for n in names["objective"] if n.startswith("f"))
    assert unimodel.list_components("objective", "f*") == {"objective": f_objectives}
    assert unimodel.is_component("gpt2") and not unimodel.is_component("gpt2", kind="objective")
    core = get_registry().plugins["core"]
    assert core.ok and core.source == "unimodel" and core.api_version == PLUGIN_API_VERSION


def test_presets_resolve_through_their_base_chain():
    reg = Registry(discover=False)
    reg.add_plugin(
        make_plugin(
            model("fam", provides=("decoder_only",)),
            model("fam-base", base="fam", target="", defaults={"n_layers": 4, "d_model": 64}),
            model("fam-base-wide", base="fam-base", target="", defaults={"d_model": 256}),
            objective("needs-dec", requires=("decoder_only",)),
            objective("needs-enc", requires=("encoder_only",)),
        ),
        "p",
    )
    family, values = reg.resolve_model("fam-base-wide")
    assert family.name == "fam"
    assert values == {"n_layers": 4, "d_model": 256}  # nearer presets win
    assert reg.resolve_model("fam") == (family, {})
    assert reg.provides("fam-base-wide") == frozenset({"decoder_only"})
    assert reg.compatible_objectives(reg.provides("fam-base")) == ["needs-dec"]


def test_preset_cycles_and_missing_bases_are_errors():
    reg = Registry(discover=False)
    reg.add_plugin(
        make_plugin(
            model("a", base="b", target=""),
            model("b", base="a", target=""),
            model("orphan", base="nowhere", target=""),
        ),
        "p",
    )
    with pytest.raises(PluginError, match="cycle"):
        reg.resolve_model("a")
    with pytest.raises(ComponentNotFoundError, match="no model named 'nowhere'"):
        reg.resolve_model("orphan")


# ------------------------------------------------------------------ conflicts
def test_duplicate_names_name_both_plugins_and_the_rest_keeps_working():
    reg = Registry(discover=False)
    reg.add_plugin(make_plugin(model("twin"), model("only-a"), objective("twin")), "plugin-a", source="dist-a")
    reg.add_plugin(make_plugin(model("twin"), model("only-b")), "plugin-b", source="dist-b")
    with pytest.raises(DuplicateComponentError) as err:
        reg.get("model", "twin")
    msg = str(err.value)
    assert "'plugin-a' (dist-a)" in msg and "'plugin-b' (dist-b)" in msg and "rename" in msg
    assert reg.get("model", "only-a").plugin == "plugin-a"
    assert reg.get("model", "only-b").plugin == "plugin-b"
    assert reg.get("objective", "twin").plugin == "plugin-a"  # same name, other kind: no conflict
    assert "twin" not in reg.names("model")["model"]
    assert {"plugin-a:twin", "plugin-b:twin"} <= set(reg.names("model")["model"])
    assert [c.plugin for c in reg.conflicts[("model", "twin")]] == ["plugin-a", "plugin-b"]
    # a third registration joins the conflict instead of winning it
    reg.add_plugin(make_plugin(model("twin")), "plugin-c")
    assert len(reg.conflicts[("model", "twin")]) == 3


def test_qualified_names_reach_each_plugins_component_and_a_plain_clash_lists_them():
    reg = Registry(discover=False)
    reg.add_plugin(make_plugin(objective("clm"), objective("fim")), "gpt", source="unimodel")
    rec = reg.add_plugin(make_plugin(objective("clm"), model("other")), "third", source="third-dist")
    assert [c.name for c in rec.components] == ["clm", "other"]  # a clashing component still belongs to its plugin
    assert reg.get("objective", "gpt:clm").plugin == "gpt" and reg.get("objective", "third:clm").plugin == "third"
    assert reg.get("objective", "fim").qualified_name == "gpt:fim"
    with pytest.raises(DuplicateComponentError) as err:
        reg.get("objective", "clm")
    assert "name the one you mean: 'gpt:clm' or 'third:clm'" in str(err.value)
    assert reg.get("objective", "clm", prefer="third").plugin == "third"
    assert reg.names("objective") == {"objective": ["fim", "gpt:clm", "third:clm"]}
    assert reg.names("objective", "third:*") == {"objective": ["third:clm"]}
    assert reg.compatible_objectives(()) == ["fim", "gpt:clm", "third:clm"]
    with pytest.raises(ComponentNotFoundError, match=r"no objective named 'third:fim': plugin 'third' \(third-dist\)"):
        reg.get("objective", "third:fim")
    with pytest.raises(ComponentNotFoundError, match=r"no objective named 'nope:clm': no plugin 'nope' is installed"):
        reg.get("objective", "nope:clm")


def test_a_default_objective_and_a_preset_base_resolve_within_their_plugin():
    reg = Registry(discover=False)
    reg.add_plugin(
        make_plugin(model("fam", default_objective="clm"), model("fam-tiny", base="fam", target=""), objective("clm")),
        "own",
    )
    reg.add_plugin(make_plugin(model("fam"), objective("clm")), "intruder")
    family = reg.resolve_model("fam-tiny")[0]
    assert family.plugin == "own" and family.default_objective == "own:clm"  # stored qualified
    assert reg.get("objective", family.default_objective).plugin == "own"
    with pytest.raises(DuplicateComponentError):
        reg.resolve_model("fam")  # the plain family name is ambiguous, the preset is not


@pytest.mark.parametrize(
    "components, message",
    [
        (lambda: [model("a:b")], "model name 'a:b' must be a non-empty string without ':'"),
        (lambda: [model("twice"), model("twice")], "registers model 'twice' twice"),
    ],
    ids=["colon-in-name", "twice-in-one-plugin"],
)
def test_names_that_would_break_qualification_fail_their_plugin(components, message):
    class Plugin:
        @hookimpl
        def unimodel_components(self):
            return components()

    rec = Registry(discover=False).add_plugin(Plugin(), "p")
    assert not rec.ok and message in rec.error


def test_a_plugin_name_with_a_colon_is_refused():
    rec = Registry(discover=False).add_plugin(make_plugin(model("m")), "a:b")
    assert not rec.ok and "contains ':'" in rec.error


def test_a_second_plugin_under_a_taken_name_does_not_replace_the_first():
    reg = Registry(discover=False)
    first = reg.add_plugin(make_plugin(model("m1")), "same", source="dist-one")
    second = reg.add_plugin(make_plugin(model("m2")), "same", source="dist-two")
    assert first.ok and reg.plugins["same"] is first and reg.get("model", "m1").plugin == "same"
    assert not second.ok and "already taken" in second.error and "dist-one" in second.error
    assert second.name in reg.plugins and not reg.has("model", "m2")


# ------------------------------------------------------------------ failures
def test_a_raising_hook_is_recorded_with_its_traceback_and_others_load():
    class Exploding:
        @hookimpl
        def unimodel_components(self):
            raise RuntimeError("boom while listing components")

    reg = Registry(discover=False)
    reg.add_plugin(make_plugin(model("fine")), "good")
    rec = reg.add_plugin(Exploding(), "bad")
    assert not rec.ok and rec.error == "RuntimeError: boom while listing components"
    assert "Traceback" in rec.traceback and "boom while listing components" in rec.traceback
    assert reg.failed_plugins == [rec]
    assert reg.get("model", "fine").plugin == "good"
    assert not reg.pm.is_registered(Exploding) and len(reg.pm.get_plugins()) == 1  # its hooks are gone
    with pytest.raises(ComponentNotFoundError) as err:
        reg.get("model", "its-model")
    # the likely cause comes first, then what is there
    assert str(err.value).startswith(
        "no model named 'its-model': plugin 'bad' failed to load (RuntimeError: boom while listing components) "
        "and may have provided it; run `unimodel doctor`. Available models: fine."
    )


def test_a_misspelled_hook_is_an_error_with_a_suggestion():
    class Typo:
        @hookimpl
        def unimodel_component(self):  # the hook is unimodel_components
            return [model("never")]

    reg = Registry(discover=False)
    rec = reg.add_plugin(Typo(), "typo")
    assert not rec.ok
    assert "unknown hook 'unimodel_component'" in rec.error
    assert "did you mean 'unimodel_components'" in rec.error
    assert not reg.has("model", "never") and reg.pm.get_plugins() == set()


def test_a_hook_with_wrong_arguments_is_an_error():
    class WrongArgs:
        @hookimpl
        def unimodel_checkpoint_loaded(self, model, folder):  # the argument is `path`
            pass

    rec = Registry(discover=False).add_plugin(WrongArgs(), "wrong")
    assert not rec.ok and "folder" in rec.error


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda: [Component(kind="widget", name="w", target="m:a")], "unknown kind 'widget'"),
        (lambda: [Component(kind="model", name="m", target="no-colon")], "must look like 'package.module:attribute'"),
        (lambda: [{"kind": "model", "name": "m"}], "returned dict, expected Component"),
        (lambda: [model("m", provides="causal")], "provides must list names, not be the string 'causal'"),
        (lambda: [Component(kind="corpus", name="c", target="m:c", data_kind="")], "data_kind must name a data kind"),
        (lambda: [model("m", tokenizer={"kind": "sentencepiece"})], "kind 'sentencepiece' is not one of"),
        (
            lambda: [Component(kind="hf_converter", name="h", target="m:h", exports=("x",), extra={"exports": ("y",)})],
            "sets both exports= and extra['exports']",
        ),
    ],
    ids=["unknown-kind", "bad-target", "not-a-component", "string-provides", "data-kind", "tokenizer", "both"],
)
def test_malformed_records_fail_their_plugin(bad, message):
    class Malformed:
        @hookimpl
        def unimodel_components(self):
            return bad()

    reg = Registry(discover=False)
    rec = reg.add_plugin(Malformed(), "malformed")
    assert not rec.ok and message in rec.error and rec.components == []


def test_api_version_mismatch_is_recorded_and_the_plugin_not_loaded():
    reg = Registry(discover=False)
    rec = reg.add_plugin(make_plugin(model("future"), api=PLUGIN_API_VERSION + 1), "future")
    assert rec.api_version == PLUGIN_API_VERSION + 1
    assert not rec.ok and f"targets plugin API {PLUGIN_API_VERSION + 1}" in rec.error
    assert not reg.has("model", "future")


def test_a_plugin_without_api_version_loads_and_is_marked():
    reg = Registry(discover=False)
    rec = reg.add_plugin(make_plugin(model("old"), api=None), "old")
    assert rec.ok and rec.api_version is None and reg.has("model", "old")


# ------------------------------------------------------------------ discovery from installed distributions
def write_dist(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """What an installer leaves: a ``*.dist-info`` with METADATA and entry_points.txt, plus the modules."""
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[unimodel]\n{eps}\n")
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))


BROKEN_IMPORT = """
    from unimodel import hookimpl
    raise ImportError("this plugin needs the package 'frobnicate', which is not installed")
"""

GOOD_PLUGIN = """
    from unimodel import PLUGIN_API_VERSION, hookimpl
    from unimodel.registry import Component

    @hookimpl
    def unimodel_api_version():
        return PLUGIN_API_VERSION

    @hookimpl
    def unimodel_components():
        return [Component(kind="objective", name="outside_clm", target="unimodel_gpt.objectives:CausalLM",
                          summary="clm under another name", requires=("decoder_only", "causal", "lm_head"))]
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates importlib's caches
    return tmp_path


def test_discovery_isolates_a_plugin_that_fails_to_import(site, global_registry, capsys):
    write_dist(site, "unimodel-broken", {"broken": "um_broken_plugin"}, {"um_broken_plugin": BROKEN_IMPORT})
    write_dist(site, "unimodel-outside", {"outside": "um_outside_plugin"}, {"um_outside_plugin": GOOD_PLUGIN})
    reg = Registry()
    rec = reg.plugins["broken"]
    assert rec.source == "unimodel-broken" and not rec.ok
    assert "import of 'um_broken_plugin' failed: ImportError" in rec.error and "frobnicate" in rec.error
    assert 'raise ImportError("this plugin needs' in rec.traceback  # the culprit line
    # everything else loaded: the built-ins and the other outside plugin
    assert reg.plugins["gpt"].ok and reg.has("model", "gpt")
    assert reg.plugins["outside"].ok and reg.get("objective", "outside_clm").plugin == "outside"
    with pytest.raises(ComponentNotFoundError, match="plugin 'broken' failed to load .*frobnicate"):
        reg.get("model", "broken-model")

    # doctor reports it and fails; -v adds the traceback
    set_registry(reg)
    assert cli.main(["doctor", "--no-import"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"broken\s+unimodel-broken\s+api -\s+0 components\s+FAILED", out)
    assert "FAILED plugin 'broken' (unimodel-broken): import of 'um_broken_plugin' failed" in out
    assert "Traceback" not in out and "doctor -v" in out
    assert cli.main(["doctor", "--no-import", "-v"]) == 1
    assert 'raise ImportError("this plugin needs' in capsys.readouterr().out


def test_discovery_refuses_a_second_distribution_with_a_taken_plugin_name(tmp_path, monkeypatch):
    # appended, so the installed unimodel comes first on sys.path, as it would for a later install
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])
    importlib.invalidate_caches()
    site = tmp_path
    write_dist(site, "unimodel-impostor", {"gpt": "um_outside_plugin"}, {"um_outside_plugin": GOOD_PLUGIN})
    reg = Registry()
    assert reg.plugins["gpt"].ok and reg.plugins["gpt"].source == "unimodel"  # the built-in keeps its name
    clash = reg.plugins["gpt (unimodel-impostor)"]
    assert not clash.ok and "plugin name 'gpt' is already taken" in clash.error and "unimodel-impostor" in clash.error
    assert not reg.has("objective", "outside_clm")


# ------------------------------------------------------------------ plugins that try to end the program
EXITING_IMPORT = """
    import sys
    sys.exit(3)
"""

INTERRUPTING_IMPORT = """
    raise KeyboardInterrupt  # raised by the code itself, not by a Ctrl-C
"""

CTRL_C_DURING_IMPORT = """
    import os, signal, time
    os.kill(os.getpid(), signal.SIGINT)  # what pressing Ctrl-C does
    time.sleep(5)
"""

EXITING_MODEL_MODULE = """
    import sys
    sys.exit("this module ends the program when imported")
"""


def test_a_plugin_calling_sys_exit_at_import_is_a_failed_plugin(site, global_registry):
    write_dist(site, "unimodel-exits", {"exits": "um_exiting_plugin"}, {"um_exiting_plugin": EXITING_IMPORT})
    write_dist(
        site, "unimodel-breaks", {"breaks": "um_interrupting_plugin"}, {"um_interrupting_plugin": INTERRUPTING_IMPORT}
    )
    write_dist(site, "unimodel-outside", {"outside": "um_outside_plugin"}, {"um_outside_plugin": GOOD_PLUGIN})
    reg = Registry()
    exits, breaks = reg.plugins["exits"], reg.plugins["breaks"]
    assert not exits.ok and "raised SystemExit(3), as sys.exit() does" in exits.error
    assert not breaks.ok and "raised KeyboardInterrupt while no Ctrl-C was pressed" in breaks.error
    assert reg.plugins["outside"].ok and reg.has("model", "gpt")  # the others loaded
    set_registry(reg)
    assert unimodel.build_model("gpt", vocab_size=50, max_positions=8, d_model=8, n_layers=1, n_heads=2) is not None


def test_a_hook_raising_system_exit_is_a_failed_plugin():
    class Exiting:
        @hookimpl
        def unimodel_components(self):
            raise SystemExit(0)

    class Interrupting:
        @hookimpl
        def unimodel_api_version(self):
            raise KeyboardInterrupt

    reg = Registry(discover=False)
    exiting = reg.add_plugin(Exiting(), "exiting")
    interrupting = reg.add_plugin(Interrupting(), "interrupting")
    assert not exiting.ok and "SystemExit(0)" in exiting.error and len(reg.pm.get_plugins()) == 0
    assert not interrupting.ok and "KeyboardInterrupt" in interrupting.error


def test_a_component_module_calling_sys_exit_is_a_plugin_error(site):
    (site / "um_exiting_model.py").write_text(textwrap.dedent(EXITING_MODEL_MODULE))
    reg = Registry(discover=False)
    reg.add_plugin(make_plugin(model("exits", target="um_exiting_model:Family")), "exits")
    with pytest.raises(PluginError, match=r"model 'exits' from plugin 'exits' could not be imported .*SystemExit"):
        reg.load("model", "exits")


def test_a_real_ctrl_c_during_plugin_import_still_interrupts(site, global_registry):
    write_dist(site, "unimodel-slow", {"slow": "um_slow_plugin"}, {"um_slow_plugin": CTRL_C_DURING_IMPORT})
    # Python's own Ctrl-C handler, as in an interactive run: a runner started as a background job ignores SIGINT
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            Registry()
    finally:
        signal.signal(signal.SIGINT, previous)


# ------------------------------------------------------------------ typed metadata
def test_schema_metadata_is_typed_fields_and_old_extra_keys_still_read():
    recipe = TokenizerRecipe(kind="wordpiece", roles={"pad": "[PAD]"})
    typed = [
        model("m", tokenizer=recipe),
        Component(kind="decoding", name="d", target="m:d", options=("iterations",)),
        Component(kind="hf_converter", name="h", target="m:h", model_types=("x",), exports=("m",)),
        Component(kind="corpus", name="c", target="m:c", data_kind="pairs"),
    ]
    with pytest.warns(DeprecationWarning) as record:
        legacy = [
            model("m", extra={"tokenizer": {"kind": "wordpiece", "roles": {"pad": "[PAD]"}}}),
            Component(kind="decoding", name="d", target="m:d", extra={"options": ("iterations",)}),
            Component(kind="hf_converter", name="h", target="m:h", model_types=("x",), extra={"exports": ("m",)}),
            Component(kind="corpus", name="c", target="m:c", extra={"data": "pairs", "note": "kept"}),
        ]
    assert len(record) == 4 and all("is deprecated; pass Component(" in str(w.message) for w in record)
    assert "extra={'exports': ...}" in str(record[2].message) and "Component(exports=...)" in str(record[2].message)
    for new, old in zip(typed, legacy):
        assert (old.tokenizer, old.options, old.exports, old.data_kind) == (
            new.tokenizer,
            new.options,
            new.exports,
            new.data_kind,
        )
    assert dict(legacy[3].extra) == {"note": "kept"}  # only the keys that became fields move
    assert legacy[0].tokenizer == recipe and dict(legacy[0].tokenizer.roles) == {"pad": "[PAD]"}
    # the registry's own copy of a record (replace(plugin=...)) keeps the fields, without a second warning
    reg = Registry(discover=False)
    reg.add_plugin(make_plugin(*typed), "typed")
    assert reg.get("corpus", "c").data_kind == "pairs" and reg.get("decoding", "d").options == ("iterations",)


def test_capability_sets_are_sorted_and_light_to_import():
    import subprocess

    comp = model("m", provides=frozenset({"lm_head", "causal", "kv_cache", "decoder_only"}))
    assert comp.provides == ("causal", "decoder_only", "kv_cache", "lm_head")
    code = (
        "import sys, unimodel_gpt, unimodel_bert, unimodel_t5, unimodel_bart; from unimodel import Cap; "
        "caps = {Cap.DECODER_ONLY, Cap.CAUSAL, Cap.LM_HEAD, Cap.KV_CACHE}; "
        "print(unimodel_gpt.PROVIDES == caps, 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["True", "False"], proc.stderr


def test_families_state_capabilities_once():
    """The registry records and the built backbones read the same sets from the light package (the family's
    config module says which applies to a config)."""
    import unimodel_bart
    import unimodel_bert
    import unimodel_gpt
    import unimodel_t5
    from helpers import build_tiny

    reg = get_registry()
    for package, family in (
        (unimodel_gpt, "gpt"),
        (unimodel_bert, "bert"),
        (unimodel_t5, "t5"),
        (unimodel_bart, "bart"),
    ):
        assert set(reg.get("model", family).provides) == package.PROVIDES
        assert build_tiny(family).provides == package.PROVIDES
        assert importlib.import_module(f"{package.__name__}.config").PROVIDES is package.PROVIDES


def test_presets_helper_shares_the_familys_metadata():
    recipe = TokenizerRecipe(kind="bpe")
    family = model("fam", provides=("causal",), default_objective="clm", tokenizer=recipe, tiny={"n_layers": 1})
    made = presets(family, {"fam-small": ("small", {"n_layers": 2}), "fam-big": ("big", {"n_layers": 8})})
    assert [(p.name, p.base, p.summary, dict(p.defaults)) for p in made] == [
        ("fam-small", "fam", "small", {"n_layers": 2}),
        ("fam-big", "fam", "big", {"n_layers": 8}),
    ]
    assert all(p.provides == ("causal",) and p.default_objective == "clm" and p.tokenizer is recipe for p in made)
    assert all(not p.tiny and p.target == "" for p in made)
    with pytest.raises(PluginError, match="presets are models"):
        presets(objective("o"), {"x": ("x", {})})
    reg = get_registry()
    for name in ("gpt2-tiny", "bert-base", "t5-v1_1-small", "bart-large"):
        preset = reg.get("model", name)
        family_comp = reg.get("model", preset.base)
        assert (preset.provides, preset.tokenizer) == (family_comp.provides, family_comp.tokenizer)
