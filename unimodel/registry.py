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
import warnings
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Literal, get_args

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


TokenizerKind = Literal["bpe", "wordpiece", "unigram"]
DataKind = Literal["text", "pairs"]


@dataclass(frozen=True)
class TokenizerRecipe:
    """The tokenizer a family trains on when a run's ``[data] tokenizer`` is not set.

    Args:
        kind: ``"bpe"`` (byte-level), ``"wordpiece"`` or ``"unigram"``.
        roles: special-token role -> token string (``{"pad": "[PAD]", "mask": "[MASK]"}``),
            reserved in this order; roles an objective needs beyond these get a token of their own.
    """

    kind: TokenizerKind
    roles: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in get_args(TokenizerKind):
            raise PluginError(f"tokenizer recipe kind {self.kind!r} is not one of {', '.join(get_args(TokenizerKind))}")
        object.__setattr__(self, "roles", MappingProxyType(dict(self.roles)))

    @classmethod
    def coerce(cls, value: TokenizerRecipe | Mapping[str, Any]) -> TokenizerRecipe:
        """A recipe from itself or from a ``{"kind": ..., "roles": {...}}`` mapping."""
        if isinstance(value, TokenizerRecipe):
            return value
        if isinstance(value, Mapping) and set(value) <= {"kind", "roles"} and "kind" in value:
            return cls(kind=value["kind"], roles=value.get("roles", {}))
        raise PluginError(
            f"a tokenizer recipe is a TokenizerRecipe or {{'kind': ..., 'roles': {{...}}}}, not {value!r}"
        )


# Keys of ``extra`` that carried these fields before they were fields: key -> field name.
_EXTRA_FIELDS = {"options": "options", "data": "data_kind", "exports": "exports", "tokenizer": "tokenizer"}


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
        exports: for an ``hf_converter``, the unimodel models it writes as HF folders.
        tiny: config overrides that make a small, fast instance (conformance kit).
        tokenizer: for a model, encoder or decoder, the tokenizer a run trains when
            ``[data] tokenizer`` is not set (a :class:`TokenizerRecipe` or its dict form).
        options: for a ``decoding`` strategy, the extra ``generate`` options it accepts.
        data_kind: for a ``corpus``, ``"text"`` (documents) or ``"pairs"`` (source -> target).
        extra: anything else a plugin wants to carry (shown by ``unimodel info``).
    """

    kind: str
    name: str
    target: str
    summary: str = ""
    # name collections: any iterable of names on the way in (a frozenset of Cap names, say), a tuple once built
    provides: Collection[str] = ()
    requires: Collection[str] = ()
    base: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    default_objective: str | None = None
    model_types: Collection[str] = ()
    exports: Collection[str] = ()
    tiny: Mapping[str, Any] = field(default_factory=dict)
    tokenizer: TokenizerRecipe | None = None
    options: Collection[str] = ()
    data_kind: DataKind = "text"
    extra: Mapping[str, Any] = field(default_factory=dict)
    plugin: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PluginError(f"component {self.name!r} has unknown kind {self.kind!r}; kinds are {', '.join(KINDS)}")
        if ":" not in self.target and self.base is None:
            raise PluginError(
                f"{self.kind} {self.name!r}: target {self.target!r} must look like 'package.module:attribute'"
            )
        self._adopt_extra_fields()
        for attr in ("provides", "requires", "model_types", "exports", "options"):
            value = getattr(self, attr)
            if isinstance(value, str):
                raise PluginError(f"{self.kind} {self.name!r}: {attr} must list names, not be the string {value!r}")
            # a set has no order of its own: sort it, so listings read the same in every process
            object.__setattr__(self, attr, tuple(sorted(value) if isinstance(value, (set, frozenset)) else value))
        for attr in ("defaults", "tiny", "extra"):
            object.__setattr__(self, attr, MappingProxyType(dict(getattr(self, attr))))
        if self.tokenizer is not None:
            object.__setattr__(self, "tokenizer", TokenizerRecipe.coerce(self.tokenizer))
        if self.data_kind not in get_args(DataKind):
            raise PluginError(f"{self.kind} {self.name!r}: data_kind must be 'text' or 'pairs', got {self.data_kind!r}")

    def _adopt_extra_fields(self) -> None:
        """Move ``extra`` keys that are fields now (``extra={"exports": ...}``) to their fields, with a warning."""
        legacy = [key for key in _EXTRA_FIELDS if key in self.extra]
        if not legacy:
            return
        defaults = {f.name: f.default for f in fields(self)}
        extra = dict(self.extra)
        for key in legacy:
            name = _EXTRA_FIELDS[key]
            if getattr(self, name) != defaults[name]:
                raise PluginError(f"{self.kind} {self.name!r} sets both {name}= and extra[{key!r}]; keep {name}=")
            warnings.warn(
                f"{self.kind} {self.name!r}: Component(extra={{{key!r}: ...}}) is deprecated; "
                f"pass Component({name}=...) instead",
                DeprecationWarning,
                stacklevel=4,
            )
            object.__setattr__(self, name, extra.pop(key))
        object.__setattr__(self, "extra", extra)

    def display_items(self) -> dict[str, Any]:
        """Metadata beyond kind, name and summary that ``unimodel info`` shows (empty values left out)."""
        items: dict[str, Any] = {
            "exports": ", ".join(self.exports),
            "options": ", ".join(self.options),
            "data": self.data_kind if self.kind == "corpus" else "",
            "tokenizer": f"{self.tokenizer.kind}, {len(self.tokenizer.roles)} special tokens" if self.tokenizer else "",
        }
        return {k: v for k, v in {**items, **self.extra}.items() if v not in ("", None, (), {})}

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


def presets(family: Component, table: Mapping[str, tuple[str, Mapping[str, Any]]]) -> list[Component]:
    """Preset components of ``family``: ``table`` maps each preset name to (summary, config values).

    Each preset names ``family`` as its base and shares its capabilities,
    default objective and tokenizer recipe, so a family states them once::

        gpt = Component(kind="model", name="gpt", target="unimodel_gpt.model:GPT", ...)
        return [gpt, *presets(gpt, {"gpt2-tiny": ("2 layers, d 128", {"n_layers": 2, "d_model": 128})})]
    """
    if family.kind != "model":
        raise PluginError(f"presets are models; {family.kind} {family.name!r} cannot be a preset's base")
    return [
        Component(
            kind="model",
            name=name,
            target="",
            base=family.name,
            summary=summary,
            defaults=values,
            provides=family.provides,
            default_objective=family.default_objective,
            tokenizer=family.tokenizer,
        )
        for name, (summary, values) in table.items()
    ]


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
