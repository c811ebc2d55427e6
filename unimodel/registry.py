"""Plugin discovery and the lazy table of components.

Plugins are found through the ``unimodel`` entry-point group and loaded with
pluggy. Each plugin's hooks are called one plugin at a time so a failure is
pinned on its plugin and recorded (with its traceback) instead of taking the
others down. Components are records (kind, name, import path, metadata); the
import path is followed only when the component is built, so listing never
imports torch or model code.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import importlib
import importlib.metadata
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping
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

KINDS = ("model", "encoder", "decoder", "objective", "decoding", "hf_converter", "corpus", "data")
ENTRY_POINT_GROUP = hookspecs.PROJECT
QUALIFIER = ":"  # "plugin:name" names a component of one plugin


class PluginAbort(Exception):
    """Plugin code raised ``SystemExit`` or another ``BaseException`` (recorded like any plugin failure)."""


@contextlib.contextmanager
def plugin_code() -> Iterator[None]:
    """Run a plugin's import or hook: a ``sys.exit()`` (or a ``KeyboardInterrupt`` raised by the code rather
    than by a real Ctrl-C, or any other ``BaseException``) becomes a :class:`PluginAbort`, so the plugin
    is recorded as failed instead of ending the program. A real Ctrl-C still interrupts."""
    interrupted = False
    # A real Ctrl-C reaches Python through the SIGINT handler (main thread only): note it there.
    watch = threading.current_thread() is threading.main_thread()
    previous: Any = signal.getsignal(signal.SIGINT) if watch else None

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = True
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt

    if watch and previous != signal.SIG_IGN:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    except KeyboardInterrupt:
        if interrupted:
            raise
        raise PluginAbort("raised KeyboardInterrupt while no Ctrl-C was pressed") from None
    except Exception:
        raise
    except BaseException as exc:  # SystemExit and the like: sys.exit() in plugin code must not end the program
        detail = f"({exc.code!r}), as sys.exit() does" if isinstance(exc, SystemExit) else f": {exc}"
        raise PluginAbort(f"raised {type(exc).__name__}{detail}") from None
    finally:
        if watch and previous != signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


TokenizerKind = Literal["bpe", "wordpiece", "unigram"]
DataKind = str  # "text", "pairs", or a registered ``data`` component of a plugin ("images" ...)


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
        config: for a model, encoder, decoder or objective, ``"package.module:ConfigClass"``: its config
            class in a module that does not import torch or the target's module, so a run file is checked
            (:meth:`config_class`) without importing model code. Empty: the target's ``config_class``.
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
        data_kind: for a ``corpus``, the data kind it holds: ``"text"`` (documents), ``"pairs"``
            (source -> target) or a plugin's (``"images"``).
        extra: anything else a plugin wants to carry (shown by ``unimodel info``).
        plugin: set by the registry: the name of the plugin that registered it.

    A component is always reachable by its qualified name ``plugin:name``
    (:attr:`qualified_name`); the plain ``name`` works while no other plugin
    registers the same kind and name.
    """

    kind: str
    name: str
    target: str
    config: str = ""
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
        if not isinstance(self.name, str) or not self.name or QUALIFIER in self.name:
            raise PluginError(
                f"{self.kind} name {self.name!r} must be a non-empty string without {QUALIFIER!r} "
                f"(the registry writes 'plugin{QUALIFIER}name' for the qualified name)"
            )
        if ":" not in self.target and self.base is None:
            raise PluginError(
                f"{self.kind} {self.name!r}: target {self.target!r} must look like 'package.module:attribute'"
            )
        if self.config and ":" not in self.config:
            raise PluginError(
                f"{self.kind} {self.name!r}: config {self.config!r} must look like 'package.module:ConfigClass'"
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
        if not isinstance(self.data_kind, str) or not self.data_kind:
            raise PluginError(
                f"{self.kind} {self.name!r}: data_kind must name a data kind ('text', 'pairs', or a plugin's such as "
                f"'images'), got {self.data_kind!r}"
            )

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

    @property
    def qualified_name(self) -> str:
        """``plugin:name``, unique across plugins (``gpt:clm``)."""
        return f"{self.plugin}{QUALIFIER}{self.name}"

    def load(self) -> Any:
        """Import and return the object at :attr:`target`."""
        return self._import(self.target)

    def config_class(self) -> Any:
        """The component's config class: the one :attr:`config` names, imported without the target's module,
        else the loaded target's ``config_class`` (which imports the target)."""
        if self.config:
            return self._import(self.config)
        return self.load().config_class

    def _import(self, target: str) -> Any:
        module_name, _, attr = target.partition(":")
        try:
            with plugin_code():
                obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:
            raise PluginError(
                f"{self.kind} {self.name!r} from plugin {self.plugin!r} could not be imported "
                f"from {target!r}: {type(exc).__name__}: {exc}"
            ) from exc
        return obj


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
            config=family.config,
            base=family.name,
            summary=summary,
            defaults=values,
            provides=family.provides,
            default_objective=family.default_objective,
            tokenizer=family.tokenizer,
        )
        for name, (summary, values) in table.items()
    ]


def applicable_options(objective: Any, config_class: Any) -> dict[str, Any]:
    """The objective's :attr:`~unimodel.interfaces.Objective.model_options` that ``config_class`` has fields for."""
    fields = set(config_class.field_names())
    return {k: v for k, v in objective.model_options.items() if k in fields}


def provides_when_built(comp: Component, config: Any, family: Any = None) -> frozenset[str]:
    """What model family ``comp`` provides when built with ``config``.

    In order: the config's own ``provides()`` (a config class in a module of its own states there what
    depends on its values, so a run file is checked without importing the model's module); the family's
    ``provides_for(config)`` (``family``, or the loaded target when the record names no separate config
    class); the record's ``provides``.
    """
    own = getattr(config, "provides", None)
    if callable(own):
        return frozenset(own())
    if family is None and not comp.config:
        family = comp.load()
    by_family = getattr(family, "provides_for", None)
    if by_family is not None:
        return frozenset(by_family(config))
    return frozenset(comp.provides)


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
