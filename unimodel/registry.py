"""Plugin discovery and the lazy table of components.

Plugins are found through the ``unimodel`` entry-point group and loaded with
pluggy. Each plugin's hooks are called one plugin at a time so a failure is
pinned on its plugin and recorded (with its traceback) instead of taking the
others down. Components are records (kind, name, import path, metadata:
:mod:`unimodel.components`); the import path is followed only when the
component is built, so listing never imports torch or model code.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.metadata
import sys
import threading
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import pluggy

from unimodel import hookspecs

# the records and the rules that read them live in unimodel.components; their names stay importable from here
from unimodel.components import (
    KINDS,
    QUALIFIER,
    Component,
    DataKind,
    PluginAbort,
    TokenizerKind,
    TokenizerRecipe,
    applicable_options,
    plugin_code,
    presets,
    provides_when_built,
    variants_providing,
)
from unimodel.errors import (
    ComponentNotFoundError,
    DuplicateComponentError,
    PluginError,
    did_you_mean,
)

ENTRY_POINT_GROUP = hookspecs.PROJECT


@dataclass
class PluginRecord:
    """What discovery learned about one plugin."""

    name: str
    source: str  # distribution name, or "<programmatic>"
    version: str | None = None  # the distribution's version
    api_version: int | None = None
    components: list[Component] = field(default_factory=list)
    error: str | None = None  # one line
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Registry:
    """The plugin manager plus the component table.

    A component is found by kind and name. The name is plain (``clm``), which
    must be registered by exactly one plugin, or qualified (``gpt:clm``), which
    names one plugin's component whatever else is installed. A plain name two
    plugins register is an error that lists the qualified choices; nothing is
    resolved by load order.

    Most code uses the process-wide instance from :func:`get_registry`; tests
    build their own with ``Registry(discover=False)`` and :meth:`add_plugin`.
    """

    def __init__(self, discover: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginRecord] = {}
        # (kind, plain name) -> every component registered under it, in registration order
        self._by_name: dict[tuple[str, str], list[Component]] = {}
        if discover:
            self.discover()

    # ----------------------------------------------------------------- discovery
    def discover(self) -> None:
        """Load every plugin registered under the ``unimodel`` entry-point group."""
        # entry_points() already lists each distribution once, however often it is on sys.path
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(eps, key=lambda e: (e.name != "core", e.name)):
            source = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else None
            if ep.name in self.plugins:  # another distribution took this plugin name first
                self._record_name_clash(ep.name, source)
                continue
            try:
                with plugin_code():
                    plugin = ep.load()
            except Exception as exc:
                self._record_failure(ep.name, source, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
                continue
            self.add_plugin(plugin, ep.name, source=source, version=version)

    def add_plugin(
        self, plugin: object, name: str, source: str = "<programmatic>", version: str | None = None
    ) -> PluginRecord:
        """Register one plugin object and collect its components.

        Failures are recorded on the returned record, never raised.
        """
        if name in self.plugins:
            return self._record_name_clash(name, source)
        if QUALIFIER in name:
            return self._record_failure(
                name,
                source,
                f"plugin name {name!r} contains {QUALIFIER!r}, which separates plugin and component in "
                "qualified names; rename the entry point",
                with_traceback=False,
            )
        record = PluginRecord(name=name, source=source, version=version)
        self.plugins[name] = record
        try:
            with plugin_code():
                self.pm.register(plugin, name=name)
            self.pm.check_pending()  # a misspelled hook name is an error, not a silent no-op
        except Exception as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            return self._record_failure(name, source, f"{type(exc).__name__}: {exc}{_hook_hint(plugin)}")

        caller = self.pm.subset_hook_caller  # call this plugin's hooks only
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        try:
            with plugin_code():
                versions = caller("unimodel_api_version", others)()
            record.api_version = versions[0] if versions else None
            if record.api_version is not None and record.api_version != hookspecs.PLUGIN_API_VERSION:
                raise PluginError(
                    f"targets plugin API {record.api_version}, this unimodel speaks {hookspecs.PLUGIN_API_VERSION}"
                )
            with plugin_code():
                lists = caller("unimodel_components", others)()
            comps = [c for lst in lists for c in (lst or [])]
            for c in comps:
                if not isinstance(c, Component):
                    raise PluginError(f"unimodel_components returned {type(c).__name__}, expected Component")
            comps = _claim(comps, name)
        except Exception as exc:
            self.pm.unregister(plugin)
            return self._record_failure(name, source, f"{type(exc).__name__}: {exc}")

        for c in comps:
            self._by_name.setdefault((c.kind, c.name), []).append(c)
            record.components.append(c)
        return record

    def cli_commands(self) -> list[tuple[str, Any]]:
        """``(plugin, CliCommand)`` for every command the loaded plugins add, each plugin's hook called
        alone; a plugin whose hook raises or returns something else adds none and is reported on stderr."""
        from unimodel.hookspecs import CliCommand

        found: list[tuple[str, Any]] = []
        for name, record in self.plugins.items():
            plugin = self.pm.get_plugin(name)
            if plugin is None or record.error is not None:
                continue
            others = [p for p in self.pm.get_plugins() if p is not plugin]
            try:
                with plugin_code():
                    lists = self.pm.subset_hook_caller("unimodel_cli_commands", others)()
                commands = [c for lst in lists for c in (lst or [])]
                bad = [c for c in commands if not isinstance(c, CliCommand)]
                if bad:
                    raise PluginError(f"unimodel_cli_commands returned {type(bad[0]).__name__}, expected CliCommand")
            except Exception as exc:
                print(f"warning: plugin {name!r} adds no commands: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            found += [(name, c) for c in commands]
        return found

    def _record_failure(self, name: str, source: str, message: str, *, with_traceback: bool = True) -> PluginRecord:
        record = self.plugins.get(name) or PluginRecord(name=name, source=source)
        record.error = message
        record.traceback = traceback.format_exc() if with_traceback else None
        record.components = []
        self.plugins[name] = record
        return record

    def _record_name_clash(self, name: str, source: str) -> PluginRecord:
        """A second plugin under a taken name: record it as failed, keep the first one's record."""
        key, n = f"{name} ({source})", 2
        while key in self.plugins:
            key, n = f"{name} ({source}) #{n}", n + 1
        record = PluginRecord(
            name=key,
            source=source,
            error=f"plugin name {name!r} is already taken by the plugin from {self.plugins[name].source!r}; "
            f"rename the entry point in the 'unimodel' group of {source!r}",
        )
        self.plugins[key] = record
        return record

    # ------------------------------------------------------------------ queries
    @property
    def failed_plugins(self) -> list[PluginRecord]:
        return [p for p in self.plugins.values() if not p.ok]

    @property
    def conflicts(self) -> dict[tuple[str, str], list[Component]]:
        """Plain names that several plugins register: ``{(kind, name): [components]}``."""
        return {key: list(comps) for key, comps in self._by_name.items() if len(comps) > 1}

    def display_name(self, comp: Component) -> str:
        """The name a user types for ``comp``: plain while it is unique, else ``plugin:name``."""
        return comp.name if len(self._by_name.get((comp.kind, comp.name), ())) <= 1 else comp.qualified_name

    def names(self, kind: str | None = None, pattern: str | None = None) -> dict[str, list[str]]:
        """Component names by kind, sorted, as :meth:`display_name` gives them.

        ``pattern`` is a shell glob matched against the plain and the qualified name.
        """
        if kind is not None and kind not in KINDS:
            raise ComponentNotFoundError(
                f"unknown component kind {kind!r}.{did_you_mean(kind, KINDS)} Kinds: {', '.join(KINDS)}"
            )
        out: dict[str, list[str]] = {k: [] for k in KINDS if kind in (None, k)}
        for (k, n), comps in self._by_name.items():
            if k not in out:
                continue
            for c in comps:
                if pattern is None or fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(c.qualified_name, pattern):
                    out[k].append(self.display_name(c))
        return {k: sorted(v) for k, v in out.items()}

    def components(self, kind: str | None = None) -> list[Component]:
        """Every registered component (of ``kind``), sorted by kind, name and plugin."""
        return sorted(
            (c for (k, _), comps in self._by_name.items() if kind in (None, k) for c in comps),
            key=lambda c: (c.kind, c.name, c.plugin),
        )

    def lookup(self, kind: str, name: str) -> list[Component]:
        """Every component ``name`` (plain or ``plugin:name``) can mean: none, one, or several."""
        plugin, qualified, plain = name.rpartition(QUALIFIER)
        comps = self._by_name.get((kind, plain), [])
        return [c for c in comps if c.plugin == plugin] if qualified else list(comps)

    def has(self, kind: str, name: str) -> bool:
        """Whether ``name`` names at least one component of ``kind`` (:meth:`get` may still find it ambiguous)."""
        return bool(self.lookup(kind, name))

    def get(self, kind: str, name: str, *, prefer: str | None = None) -> Component:
        """The component record, or an error that helps.

        ``prefer`` is a plugin name: when a plain name is ambiguous and that
        plugin registers it, its component is the one meant (a preset's base,
        say, is its own plugin's model).

        Raises:
            DuplicateComponentError: a plain name several plugins register, listing the qualified choices.
            ComponentNotFoundError: nothing by that name, with the likely cause first.
        """
        found = self.lookup(kind, name)
        if len(found) == 1:
            return found[0]
        if found:
            own = [c for c in found if c.plugin == prefer]
            if own:
                return own[0]
            who = " and ".join(f"{c.plugin!r} ({self._source(c.plugin)})" for c in found)
            choices = " or ".join(repr(c.qualified_name) for c in found)
            raise DuplicateComponentError(
                f"{kind} {name!r} is registered by plugins {who}; name the one you mean: {choices} "
                "(or uninstall one of the plugins, or ask its author to rename the component)"
            )
        raise ComponentNotFoundError(self._not_found(kind, name))

    def _source(self, plugin: str) -> str:
        rec = self.plugins.get(plugin)
        return rec.source if rec is not None else "?"

    def _not_found(self, kind: str, name: str) -> str:
        """The message for a name nothing matches: the likely cause, then what is there."""
        plugin, qualified, plain = name.rpartition(QUALIFIER)
        msg = f"no {kind} named {name!r}"
        failed = [p for p in self.failed_plugins if not qualified or p.name == plugin]
        if qualified and plugin not in self.plugins:
            msg += f": no plugin {plugin!r} is installed (plugins: {', '.join(sorted(self.plugins)) or 'none'})"
        elif qualified and self.plugins[plugin].ok:
            msg += f": plugin {plugin!r} ({self._source(plugin)}) registers no {kind} {plain!r}"
        elif failed:
            msg += ": " + "; ".join(f"plugin {p.name!r} failed to load ({p.error})" for p in failed)
            msg += (
                " and may have provided it; run `unimodel doctor`"
                if not qualified
                else "; run `unimodel doctor -v` for the traceback"
            )
        available = self.names(kind)[kind]
        msg += f".{did_you_mean(name, available)} Available {kind}s: {', '.join(available) or '(none)'}."
        others = [k for k in KINDS if k != kind and self.has(k, name)]
        if others:
            msg += f" ({name!r} is {_article(others[0])} {others[0]}, not {_article(kind)} {kind}.)"
        return msg

    def load(self, kind: str, name: str) -> Any:
        return self.get(kind, name).load()

    def provenance(self, comp: Component) -> dict[str, str | None]:
        """Where ``comp`` comes from: its qualified name and its plugin's distribution and version."""
        rec = self.plugins.get(comp.plugin)
        return {
            "component": comp.qualified_name,
            "distribution": rec.source if rec is not None else None,
            "version": rec.version if rec is not None else None,
        }

    # ----------------------------------------------------------- model presets
    def resolve_model(self, name: str) -> tuple[Component, dict[str, Any]]:
        """Follow a preset's ``base`` chain to its family; merge the presets' defaults.

        A preset's base is looked up preferring the preset's own plugin, so another
        plugin's model of the same name does not capture it.
        """
        chain: list[Component] = []
        comp = self.get("model", name)
        while comp.base is not None:
            if comp in chain:
                raise PluginError(f"model preset {name!r} has a cycle in its base chain")
            chain.append(comp)
            comp = self.get("model", comp.base, prefer=comp.plugin)
        values: dict[str, Any] = {}
        for preset in reversed(chain):
            values.update(preset.defaults)
        return comp, values

    def provides(self, model_name: str) -> frozenset[str]:
        return frozenset(self.resolve_model(model_name)[0].provides)

    def compatible_objectives(self, provides: Iterable[str]) -> list[str]:
        """Names (as :meth:`display_name` gives them) of the objectives whose ``requires`` ``provides`` meets."""
        have = set(provides)
        return sorted(self.display_name(c) for c in self.components("objective") if set(c.requires) <= have)

    def compatible_models(self, requires: Iterable[str]) -> list[str]:
        """Model families (not presets) whose capabilities include ``requires``: by their registered ``provides``,
        or, as ``"name (setting)"``, under a config setting their ``extra["variants"]`` declares."""
        need = set(requires)
        out = []
        for c in self.components("model"):
            if c.base is not None:
                continue
            if need <= set(c.provides):
                out.append(self.display_name(c))
            else:
                out += [f"{self.display_name(c)} ({setting})" for setting in variants_providing(c, need)]
        return out


def _claim(comps: list[Component], plugin: str) -> list[Component]:
    """``comps`` stamped with their plugin; a default objective the plugin registers itself is stored
    qualified (``gpt:clm``), so another plugin's objective of the same name cannot change it."""
    seen: set[tuple[str, str]] = set()
    for c in comps:
        if (c.kind, c.name) in seen:
            raise PluginError(f"registers {c.kind} {c.name!r} twice")
        seen.add((c.kind, c.name))
    out = []
    for c in comps:
        default = c.default_objective
        if default is not None and QUALIFIER not in default and ("objective", default) in seen:
            default = f"{plugin}{QUALIFIER}{default}"
        out.append(replace(c, plugin=plugin, default_objective=default))
    return out


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _hook_hint(plugin: object) -> str:
    """A did-you-mean for hook implementations whose name matches no hook."""
    prefix = f"{hookspecs.PROJECT}_"
    specs = [n for n in dir(hookspecs) if n.startswith(prefix)]
    hints = []
    for attr in dir(plugin):
        if attr.startswith(prefix) and attr not in specs:
            # compare without the shared prefix, which would make every hook look close
            close = difflib.get_close_matches(attr[len(prefix) :], [n[len(prefix) :] for n in specs], n=1, cutoff=0.6)
            if close:
                hints.append(f"{attr!r} -> did you mean {prefix + close[0]!r}?")
    return (" (" + "; ".join(hints) + ")") if hints else ""


_registry: Registry | None = None
_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, discovered on first use."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry()
        return _registry


def set_registry(registry: Registry | None) -> Registry | None:
    """Replace the process-wide registry (``None`` forces rediscovery); returns the old one."""
    global _registry
    with _lock:
        old, _registry = _registry, registry
        return old


__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "QUALIFIER",
    "Component",
    "DataKind",
    "PluginAbort",
    "PluginRecord",
    "Registry",
    "TokenizerKind",
    "TokenizerRecipe",
    "applicable_options",
    "get_registry",
    "plugin_code",
    "presets",
    "provides_when_built",
    "set_registry",
    "variants_providing",
]
