"""What a plugin registers: :class:`Component` records, tokenizer recipes, presets, capability rules.

A record is metadata plus import paths: the target that builds the component
and, optionally, its config class in a module of its own. Nothing is imported
until a record is loaded (:meth:`Component.load`, :meth:`Component.config_class`),
and plugin code runs under :func:`plugin_code`, so a plugin that calls
``sys.exit()`` is recorded as failed instead of ending the program. The
registry (:mod:`unimodel.registry`) collects these records from the plugins.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import threading
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal, get_args

from unimodel.errors import PluginError

KINDS = ("model", "encoder", "decoder", "objective", "decoding", "hf_converter", "corpus", "data")


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


__all__ = [
    "KINDS",
    "QUALIFIER",
    "Component",
    "DataKind",
    "PluginAbort",
    "TokenizerKind",
    "TokenizerRecipe",
    "applicable_options",
    "plugin_code",
    "presets",
    "provides_when_built",
    "variants_providing",
]
