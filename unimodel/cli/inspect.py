"""``unimodel list``, ``info`` and ``doctor``: what is installed, read from the registry."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any

from unimodel.errors import UnimodelError

if TYPE_CHECKING:
    from unimodel.registry import Component, Registry

from unimodel.cli.common import (
    _GLOB_CHARS,
    EXIT_BROKEN,
    EXIT_OK,
    _clash,
    _fmt,
    _indent,
    _kinds,
    _out,
    _registry,
    _table,
    _warn_registry_problems,
)


# ------------------------------------------------------------------ list
def cmd_list(args: argparse.Namespace) -> int:
    reg = _registry()
    pattern = args.pattern
    kind = args.kind
    plugins = set(args.plugin or ())
    unknown = sorted(plugins - set(reg.plugins))
    if unknown:
        from unimodel.errors import ComponentNotFoundError, did_you_mean

        raise ComponentNotFoundError(
            f"--plugin {unknown[0]!r}: no such plugin.{did_you_mean(unknown[0], reg.plugins)} "
            f"Plugins: {', '.join(sorted(reg.plugins))}"
        )
    if kind is None and pattern in _kinds() and not any(reg.names(None, f"*{pattern}*").values()):
        kind, pattern = pattern, None  # `unimodel list corpus`: a kind's name, matching no component
    if pattern is not None and not (_GLOB_CHARS & set(pattern)):
        pattern = f"*{pattern}*"  # a bare word matches anywhere in the name
    listed: dict[str, list[Component]] = {}
    for k, names in reg.names(kind, pattern).items():
        comps = [reg.get(k, n) for n in names]
        listed[k] = [c for c in comps if not plugins or c.plugin in plugins]
    if args.json:
        data = {
            k: [{"name": reg.display_name(c), "summary": c.summary, "plugin": c.plugin, "base": c.base} for c in comps]
            for k, comps in listed.items()
        }
        _out(json.dumps(data, indent=2))
        _warn_registry_problems(reg, sys.stderr)
        return EXIT_OK
    shown = 0
    clashes = []
    for k, comps in listed.items():
        if not comps:
            continue
        if shown:
            _out()
        _out(f"{k}:")
        rows = []
        for c in comps:
            summary = c.summary or "(no summary)"
            if c.base is not None:
                summary += f" [preset of {c.base}]"
            rows.append((reg.display_name(c), summary, f"({c.plugin})"))
            if (k, c.name) in reg.conflicts and (k, c.name) not in clashes:
                clashes.append((k, c.name))
        for line in _table(rows):
            _out(line)
        shown += len(comps)
    if clashes:
        _out()
        for k, n in clashes:
            _out(f"conflict: {_clash(k, n, reg.conflicts[(k, n)])}")
    if not shown:
        what = f"{args.kind}s" if args.kind else "components"
        where = f" of plugin(s) {', '.join(sorted(plugins))}" if plugins else ""
        if args.pattern:
            _out(f"no {what}{where} match {args.pattern!r}", sys.stderr)
        else:
            _out(f"no {what}{where} are registered", sys.stderr)
    _warn_registry_problems(reg, sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------ info
_INFO_ORDER = ("model", "objective", "encoder", "decoder", "decoding", "hf_converter", "corpus")


def _pick_kind(reg: Registry, name: str, kind: str | None) -> str:
    if kind is not None:
        reg.get(kind, name)  # raises a helpful not-found error
        return kind
    kinds = [k for k in _INFO_ORDER if reg.has(k, name)]
    if kinds:
        return kinds[0]
    from unimodel.errors import ComponentNotFoundError, did_you_mean

    every = sorted({n for names in reg.names().values() for n in names})
    msg = f"no component named {name!r}"
    if reg.failed_plugins:
        msg += ": " + "; ".join(f"plugin {p.name!r} failed to load ({p.error})" for p in reg.failed_plugins)
        msg += " and may have provided it; run `unimodel doctor`"
    msg += f".{did_you_mean(name, every)} See `unimodel list` for what is registered."
    raise ComponentNotFoundError(msg)


def _config_rows(config_class: Any, values: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for field_name, type_name, default, doc in config_class.describe():
        shown = _fmt(values[field_name]) + " *" if field_name in values else _fmt(default)
        rows.append((field_name, type_name, shown, doc))
    return rows


def _print_fields(title: str, config_class: Any, values: dict[str, Any]) -> None:
    _out(f"{title}:")
    rows = _config_rows(config_class, values)
    if not rows:
        _out("  (no fields)")
        return
    for line in _table([("field", "type", "default", "doc"), *rows]):
        _out(line)
    if values:
        _out("  (* set by the preset)")


def _models_with(reg: Registry, objective: str) -> list[str]:
    from unimodel.model import compatible_objectives

    shown = reg.display_name(reg.get("objective", objective))
    out = []
    for comp in reg.components("model"):
        name = reg.display_name(comp)
        try:
            if shown in compatible_objectives(name, registry=reg):
                out.append(name)
        except UnimodelError:  # a preset whose base is missing is reported by doctor
            continue
    return out


def _header(c: Component, reg: Registry) -> None:
    source = reg.plugins[c.plugin].source if c.plugin in reg.plugins else "?"
    _out(f"{c.name} ({c.kind}) from plugin {c.plugin!r} [{source}]")
    if c.summary:
        _out(f"  {c.summary}")


def cmd_info(args: argparse.Namespace) -> int:
    reg = _registry()
    kind = _pick_kind(reg, args.name, args.kind)
    comp = reg.get(kind, args.name)
    _header(comp, reg)
    also = [k for k in _INFO_ORDER if k != kind and reg.has(k, args.name)]
    if also:
        _out(f"  (also a {', '.join(also)}: `unimodel info {args.name} --kind {also[0]}`)")
    _out()
    if kind == "model":
        from unimodel.model import compatible_objectives

        family, preset_values = reg.resolve_model(comp.name)
        if comp.base is not None:
            chain = [comp.name]
            c = comp
            while c.base is not None:
                c = reg.get("model", c.base)
                chain.append(c.name)
            _out(f"preset chain: {' -> '.join(chain)}")
        _out(f"capabilities: {', '.join(sorted(family.provides)) or '(none)'}")
        default = family.default_objective
        if default is not None and reg.has("objective", default):
            default = reg.display_name(reg.get("objective", default))
        _out(f"default objective: {default or '(none)'}")
        compatible = compatible_objectives(comp.qualified_name, registry=reg)
        _out(f"compatible objectives: {', '.join(compatible) or '(none)'}")
        _out()
        cls = family.load()
        _print_fields(f"config fields of {family.name!r}", cls.config_class, preset_values)
    elif kind == "objective":
        cls = comp.load()
        _out(f"requires: {', '.join(sorted(comp.requires)) or '(nothing)'}")
        roles = getattr(cls, "special_tokens", ())
        _out(f"tokenizer roles needed: {', '.join(roles) or '(none)'}")
        _out(f"works with models: {', '.join(_models_with(reg, comp.qualified_name)) or '(none registered)'}")
        _out()
        _print_fields("config fields", cls.config_class, {})
    else:
        meta = {
            "target": comp.target,
            "provides": ", ".join(comp.provides),
            "requires": ", ".join(comp.requires),
            "model types": ", ".join(comp.model_types),
        }
        for key, value in comp.display_items().items():
            meta[key] = _fmt(value) if not isinstance(value, str) else value
        for line in _table([(f"{k}:", v) for k, v in meta.items() if v]):
            _out(line.strip())
        if kind in ("encoder", "decoder"):
            cls = comp.load()
            config_class = getattr(cls, "config_class", None)
            if config_class is not None:
                _out()
                _print_fields("config fields", config_class, {})
    return EXIT_OK


# ------------------------------------------------------------------ doctor
_VERSIONED = ("torch", "accelerate", "transformers", "tokenizers", "safetensors", "pluggy")


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cmd_doctor(args: argparse.Namespace) -> int:
    from unimodel import __version__
    from unimodel.hookspecs import PLUGIN_API_VERSION

    verbose = args.verbose or args.debug
    problems = 0
    _out(f"unimodel {__version__} (plugin API {PLUGIN_API_VERSION})")
    _out(f"python {platform.python_version()} ({sys.executable})")
    for dist in _VERSIONED:
        _out(f"{dist} {_dist_version(dist)}")
    _out()

    reg = _registry()
    _out("plugins:")
    rows = []
    for rec in sorted(reg.plugins.values(), key=lambda r: r.name):
        api = str(rec.api_version) if rec.api_version is not None else "-"
        status = "OK" if rec.ok else "FAILED"
        source = f"{rec.source} {rec.version}" if rec.version else rec.source
        rows.append((rec.name, source, f"api {api}", f"{len(rec.components)} components", status))
    for line in _table([("name", "distribution", "api", "components", "status"), *rows]):
        _out(line)
    if not reg.plugins:
        _out("  (none: is unimodel installed? `pip install -e .` registers the entry points)")

    for rec in reg.failed_plugins:
        problems += 1
        _out()
        _out(f"FAILED plugin {rec.name!r} ({rec.source}): {rec.error}")
        if verbose and rec.traceback:
            _out(_indent(rec.traceback.rstrip()))
        elif rec.traceback:
            _out("  (run `unimodel doctor -v` for the traceback)")

    clashes = sorted(reg.conflicts.items())
    for (kind, name), comps in clashes:
        who = " and ".join(f"{c.plugin!r} ({reg.plugins[c.plugin].source})" for c in comps if c.plugin in reg.plugins)
        choices = " or ".join(repr(c.qualified_name) for c in comps)
        _out()
        _out(
            f"CONFLICT {kind} {name!r} is registered by plugins {who}; a plain {name!r} is an error, "
            f"name {choices} (or uninstall one, or ask its author to rename it)"
        )

    unversioned = [rec.name for rec in reg.plugins.values() if rec.ok and rec.api_version is None]
    if unversioned:
        _out()
        _out(
            f"warning: plugin(s) {', '.join(sorted(unversioned))} do not declare the plugin API they target; "
            f"implement the unimodel_api_version hook (returning {PLUGIN_API_VERSION})"
        )

    if not args.no_import:
        problems += _doctor_imports(reg, verbose)

    _out()
    # a name clash breaks nothing that names its components qualified, so it is reported, not counted as broken
    clash_note = f"; {len(clashes)} name conflict(s): use qualified names (plugin:name)" if clashes else ""
    if problems:
        _out(f"{problems} problem(s) found{clash_note}", sys.stderr)
        return EXIT_BROKEN
    _out(f"no problems found{clash_note}")
    return EXIT_OK


def _doctor_imports(reg: Registry, verbose: bool) -> int:
    """Import every component's target: a typo there otherwise surfaces only on first use."""
    failures: list[tuple[str, str]] = []
    imported = 0
    start = time.perf_counter()
    for comp in reg.components():
        if comp.base is not None:  # a preset has no target; its base must exist
            if not reg.has("model", comp.base):
                failures.append(
                    (
                        f"model preset {comp.name!r} from plugin {comp.plugin!r}: "
                        f"its base {comp.base!r} is not registered",
                        "",
                    )
                )
            continue
        imported += 1
        try:
            comp.load()
        except UnimodelError as exc:
            failures.append((str(exc), traceback.format_exc()))
    _out()
    _out(
        f"component imports: {imported - sum(1 for _, tb in failures if tb)} of {imported} OK "
        f"({time.perf_counter() - start:.1f}s)"
    )
    for msg, tb in failures:
        _out(f"FAILED {msg}")
        if verbose and tb:
            _out(_indent(tb.rstrip()))
    return len(failures)
