"""Plugin discovery and the lazy table of components.

Plugins are found through the ``unimodel`` entry-point group and loaded with
pluggy. Each plugin's hooks are called one plugin at a time so a failure is
pinned on its plugin and recorded (with its traceback) instead of taking the
others down. Components are records (kind, name, import path, metadata); the
import path is followed only when the component is built, so listing never
imports torch or model code.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.metadata
import threading
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import pluggy

from unimodel import hookspecs
from unimodel.errors import (
    ComponentNotFoundError,
    DuplicateComponentError,
    PluginError,
    did_you_mean,
)

KINDS = ("model", "encoder", "decoder", "objective", "decoding", "hf_converter", "corpus")
ENTRY_POINT_GROUP = hookspecs.PROJECT


@dataclass(frozen=True)
class Component:
    """A registered component: metadata plus the import path of what builds it.

    Args:
        kind: one of :data:`KINDS`.
        name: unique within its kind.
        target: ``"package.module:attribute"``, imported only on use.
        summary: one line for ``unimodel list``.
        provides: capabilities a backbone offers (models, encoders, decoders).
        requires: capabilities an objective or decoding strategy needs.
        base: for a model preset, the model it configures.
        defaults: for a preset, the config values it sets on its base.
        default_objective: for a model, the objective used when none is named.
        model_types: for an ``hf_converter``, the HF ``model_type`` values it reads.
        tiny: config overrides that make a small, fast instance (conformance kit).
        extra: anything else a plugin wants to carry.
    """

    kind: str
    name: str
    target: str
    summary: str = ""
    provides: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    base: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    default_objective: str | None = None
    model_types: tuple[str, ...] = ()
    tiny: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    plugin: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PluginError(f"component {self.name!r} has unknown kind {self.kind!r}; kinds are {', '.join(KINDS)}")
        if ":" not in self.target and self.base is None:
            raise PluginError(
                f"{self.kind} {self.name!r}: target {self.target!r} must look like 'package.module:attribute'"
            )
        for attr in ("provides", "requires", "model_types"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        for attr in ("defaults", "tiny", "extra"):
            object.__setattr__(self, attr, MappingProxyType(dict(getattr(self, attr))))

    def load(self) -> Any:
        """Import and return the object at :attr:`target`."""
        module_name, _, attr = self.target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:
            raise PluginError(
                f"{self.kind} {self.name!r} from plugin {self.plugin!r} could not be imported "
                f"from {self.target!r}: {type(exc).__name__}: {exc}"
            ) from exc
        return obj


@dataclass
class PluginRecord:
    """What discovery learned about one plugin."""

    name: str
    source: str  # distribution name, or "<programmatic>"
    api_version: int | None = None
    components: list[Component] = field(default_factory=list)
    error: str | None = None  # one line
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Registry:
    """The plugin manager plus the component table.

    Most code uses the process-wide instance from :func:`get_registry`; tests
    build their own with ``Registry(discover=False)`` and :meth:`add_plugin`.
    """

    def __init__(self, discover: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginRecord] = {}
        self._table: dict[tuple[str, str], Component] = {}
        self._conflicts: dict[tuple[str, str], list[Component]] = {}
        if discover:
            self.discover()

    # ----------------------------------------------------------------- discovery
    def discover(self) -> None:
        """Load every plugin registered under the ``unimodel`` entry-point group."""
        # entry_points() already lists each distribution once, however often it is on sys.path
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(eps, key=lambda e: (e.name != "core", e.name)):
            source = ep.dist.name if ep.dist is not None else "?"
            if ep.name in self.plugins:  # another distribution took this plugin name first
                self._record_name_clash(ep.name, source)
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self._record_failure(ep.name, source, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
                continue
            self.add_plugin(plugin, ep.name, source=source)

    def add_plugin(self, plugin: object, name: str, source: str = "<programmatic>") -> PluginRecord:
        """Register one plugin object and collect its components.

        Failures are recorded on the returned record, never raised.
        """
        if name in self.plugins:
            return self._record_name_clash(name, source)
        record = PluginRecord(name=name, source=source)
        self.plugins[name] = record
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()  # a misspelled hook name is an error, not a silent no-op
        except Exception as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            return self._record_failure(name, source, f"{type(exc).__name__}: {exc}{_hook_hint(plugin)}")

        caller = self.pm.subset_hook_caller  # call this plugin's hooks only
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        try:
            versions = caller("unimodel_api_version", others)()
            record.api_version = versions[0] if versions else None
            if record.api_version is not None and record.api_version != hookspecs.PLUGIN_API_VERSION:
                raise PluginError(
                    f"targets plugin API {record.api_version}, this unimodel speaks {hookspecs.PLUGIN_API_VERSION}"
                )
            lists = caller("unimodel_components", others)()
            comps = [c for lst in lists for c in (lst or [])]
            for c in comps:
                if not isinstance(c, Component):
                    raise PluginError(f"unimodel_components returned {type(c).__name__}, expected Component")
        except Exception as exc:
            self.pm.unregister(plugin)
            return self._record_failure(name, source, f"{type(exc).__name__}: {exc}")

        for c in comps:
            self._add_component(replace(c, plugin=name), record)
        return record

    def _record_failure(self, name: str, source: str, message: str) -> PluginRecord:
        record = self.plugins.get(name) or PluginRecord(name=name, source=source)
        record.error = message
        record.traceback = traceback.format_exc()
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

    def _add_component(self, comp: Component, record: PluginRecord) -> None:
        key = (comp.kind, comp.name)
        if key in self._conflicts:
            self._conflicts[key].append(comp)
            return
        if key in self._table:
            first = self._table.pop(key)
            self._conflicts[key] = [first, comp]
            return
        self._table[key] = comp
        record.components.append(comp)

    # ------------------------------------------------------------------ queries
    @property
    def failed_plugins(self) -> list[PluginRecord]:
        return [p for p in self.plugins.values() if not p.ok]

    @property
    def conflicts(self) -> dict[tuple[str, str], list[Component]]:
        return dict(self._conflicts)

    def names(self, kind: str | None = None, pattern: str | None = None) -> dict[str, list[str]]:
        """Component names by kind, sorted; ``pattern`` is a shell glob on the name."""
        if kind is not None and kind not in KINDS:
            raise ComponentNotFoundError(
                f"unknown component kind {kind!r}.{did_you_mean(kind, KINDS)} Kinds: {', '.join(KINDS)}"
            )
        out: dict[str, list[str]] = {k: [] for k in KINDS if kind in (None, k)}
        for k, n in self._table:
            if k in out and (pattern is None or fnmatch.fnmatchcase(n, pattern)):
                out[k].append(n)
        return {k: sorted(v) for k, v in out.items()}

    def components(self, kind: str | None = None) -> list[Component]:
        return sorted((c for (k, _), c in self._table.items() if kind in (None, k)), key=lambda c: (c.kind, c.name))

    def has(self, kind: str, name: str) -> bool:
        return (kind, name) in self._table

    def get(self, kind: str, name: str) -> Component:
        """The component record, or a :class:`ComponentNotFoundError` that helps."""
        key = (kind, name)
        if key in self._table:
            return self._table[key]
        if key in self._conflicts:
            who = " and ".join(f"plugin {c.plugin!r} ({self.plugins[c.plugin].source})" for c in self._conflicts[key])
            raise DuplicateComponentError(
                f"{kind} {name!r} is registered by both {who}; uninstall one of them or ask its author to rename it"
            )
        available = [n for (k, n) in self._table if k == kind]
        msg = f"no {kind} named {name!r}.{did_you_mean(name, available)}"
        msg += f" Available {kind}s: {', '.join(sorted(available)) or '(none)'}."
        others = [k for k in KINDS if (k, name) in self._table]
        if others:
            msg += f" ({name!r} is {_article(others[0])} {others[0]}, not {_article(kind)} {kind}.)"
        failed = self.failed_plugins
        if failed:
            msg += " Note: " + "; ".join(f"plugin {p.name!r} failed to load ({p.error})" for p in failed)
            msg += " and may have provided it; run `unimodel doctor`."
        raise ComponentNotFoundError(msg)

    def load(self, kind: str, name: str) -> Any:
        return self.get(kind, name).load()

    # ----------------------------------------------------------- model presets
    def resolve_model(self, name: str) -> tuple[Component, dict[str, Any]]:
        """Follow a preset's ``base`` chain to its family; merge the presets' defaults."""
        chain: list[Component] = []
        comp = self.get("model", name)
        while comp.base is not None:
            if comp in chain:
                raise PluginError(f"model preset {name!r} has a cycle in its base chain")
            chain.append(comp)
            comp = self.get("model", comp.base)
        values: dict[str, Any] = {}
        for preset in reversed(chain):
            values.update(preset.defaults)
        return comp, values

    def provides(self, model_name: str) -> frozenset[str]:
        return frozenset(self.resolve_model(model_name)[0].provides)

    def compatible_objectives(self, provides: Iterable[str]) -> list[str]:
        have = set(provides)
        return sorted(c.name for c in self.components("objective") if set(c.requires) <= have)

    def compatible_models(self, requires: Iterable[str]) -> list[str]:
        """Model families (not presets) whose capabilities include ``requires``: by their registered ``provides``,
        or, as ``"name (setting)"``, under a config setting their ``extra["variants"]`` declares."""
        need = set(requires)
        out = []
        for c in self.components("model"):
            if c.base is not None:
                continue
            if need <= set(c.provides):
                out.append(c.name)
            else:
                out += [f"{c.name} ({setting})" for setting in variants_providing(c, need)]
        return out


def variants_providing(comp: Component, requires: Iterable[str]) -> list[str]:
    """The config settings under which model ``comp`` provides ``requires`` (its ``extra["variants"]``:
    ``{"attn_type = 'uni'": (capabilities...)}``)."""
    need = set(requires)
    variants = comp.extra.get("variants", {})
    return [setting for setting, caps in variants.items() if need <= set(caps)]


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
