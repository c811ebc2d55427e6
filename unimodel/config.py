"""Frozen, validated dataclass configs and the loading of config files.

A config class is a frozen dataclass deriving from :class:`Config`. Its fields
are typed and documented (``param(default, "doc")``); ``__post_init__`` checks
types and calls :meth:`Config.check`, where a subclass states the rules that
tie fields together (``d_model % n_heads == 0`` ...). Unknown keys are errors
with a did-you-mean. Configs round-trip through dicts, JSON and TOML.

A field that was renamed keeps its old name as a deprecated alias: the class
lists ``renamed = {"old": "new"}``, and every way in (dicts, TOML and JSON
files, ``build_model`` keywords, saved checkpoints) accepts the old key with a
:class:`RenamedFieldWarning` (a ``DeprecationWarning``) naming the new one.
Giving both is an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import types
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from unimodel.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEMA_VERSION = 1
"""Version of the on-disk config layout; bumped when a saved config would be read differently."""

C = TypeVar("C", bound="Config")

#: the feed-forward activations a family's config may name; :data:`unimodel.nn.ACTIVATIONS` holds their functions
ACTIVATION_NAMES = ("gelu", "gelu_tanh", "relu", "silu", "tanh")


class RenamedFieldWarning(DeprecationWarning):
    """A config key was given under a field's old name; the message names the new one."""


# Python hides DeprecationWarning outside __main__, but here the old name sits in the user's own run file
# or checkpoint, not in library code: show it once per place, as for any warning meant for users.
warnings.filterwarnings("default", category=RenamedFieldWarning)


def param(default: Any = dataclasses.MISSING, doc: str = "", **kwargs: Any) -> Any:
    """A dataclass field with a docstring (shown by ``unimodel info``)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or a default_factory for mutable defaults")
    return dataclasses.field(default=default, metadata={"doc": doc}, **kwargs)


_FIELD_TYPES: dict[type, Mapping[str, Any]] = {}


def field_types(cls: type) -> Mapping[str, Any]:
    """``typing.get_type_hints(cls)``, resolved once per class: every config built (one per ``generate``
    call, and more) checks its fields against them, and resolving the annotations costs milliseconds."""
    hints = _FIELD_TYPES.get(cls)
    if hints is None:
        hints = _FIELD_TYPES[cls] = types.MappingProxyType(typing.get_type_hints(cls))
    return hints


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every config. Subclasses are frozen dataclasses."""

    section: ClassVar[str] = "config"  # how error messages name it ("model 'gpt'", "train" ...)
    renamed: ClassVar[Mapping[str, str]] = {}  # deprecated key -> the field that replaced it

    def __post_init__(self) -> None:
        hints = field_types(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                coerced = _coerce(value, hints[f.name])
            except _TypeMismatch as exc:
                raise ConfigError(
                    f"{self.section}: field {f.name!r} must be {_type_name(hints[f.name])}, got {value!r}{exc.where}"
                ) from None
            except _NotFinite as exc:
                raise ConfigError(
                    f"{self.section}: field {f.name!r} must be a finite number, got {exc.value!r}"
                    f"{'' if exc.value is value else f' (in {value!r})'}; NaN and infinity are never valid settings"
                ) from None
            if coerced is not value:
                object.__setattr__(self, f.name, coerced)
        self.check()

    def check(self) -> None:
        """Cross-field rules; raise through :meth:`fail`. Called after type checks."""

    def fail(self, fields: str | tuple[str, ...], problem: str) -> typing.NoReturn:
        names = (fields,) if isinstance(fields, str) else fields
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        raise ConfigError(f"{self.section}: impossible config ({shown}): {problem}")

    def require_positive(self, *names: str) -> None:
        """Fail on the first of ``names`` that is set and not > 0 (``None`` means "unset" and passes).

        For ``layer_norm_eps``, ``init_std``, temperatures, widths and counts."""
        for name in names:
            value = getattr(self, name)
            if value is not None and not value > 0:
                self.fail(name, "must be positive")

    def require_at_least(self, minimum: float, *names: str) -> None:
        """Fail on the first of ``names`` that is set and below ``minimum`` (``None`` passes)."""
        for name in names:
            value = getattr(self, name)
            if value is not None and not value >= minimum:
                self.fail(name, f"must be {minimum} or more")

    def require_fraction(self, *names: str, inclusive: bool = False) -> None:
        """Fail on the first of ``names`` outside [0, 1) (or [0, 1] when ``inclusive``)."""
        for name in names:
            value = getattr(self, name)
            if value is None:
                continue
            if not (0.0 <= value <= 1.0 if inclusive else 0.0 <= value < 1.0):
                self.fail(name, "must be in [0, 1]" if inclusive else "must be in [0, 1)")

    def require_token_ids(self, *names: str, vocab_field: str = "vocab_size") -> None:
        """Fail on the first of ``names`` that is set and outside ``[0, vocab_size)``."""
        vocab = getattr(self, vocab_field)
        for name in names:
            value = getattr(self, name)
            if value is not None and not 0 <= value < vocab:
                self.fail((name, vocab_field), "token id must lie inside the vocabulary")

    # -------------------------------------------------------------- conversion
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def canonical(cls, values: Mapping[str, Any], section: str | None = None) -> dict[str, Any]:
        """``values`` with deprecated keys (:attr:`renamed`) replaced by their new names.

        Each old key gives a :class:`RenamedFieldWarning`; an old key given
        together with its new name is a :class:`ConfigError`. Other keys pass
        unchanged (unknown ones are reported by :meth:`from_dict`).
        """
        out = dict(values)
        for old, new in cls.renamed.items():
            if old not in out:
                continue
            where = section or cls.section
            if new in out:
                raise ConfigError(f"{where}: both {old!r} and {new!r} are given; {old!r} is the old name of {new!r}")
            message = f"{where}: {old!r} is deprecated; it is now called {new!r}"
            warnings.warn(message, RenamedFieldWarning, stacklevel=3)
            out[new] = out.pop(old)
        return out

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any], section: str | None = None) -> C:
        """Build from a mapping; unknown keys are a :class:`ConfigError` with close matches.

        Deprecated keys are accepted under their new names (see :meth:`canonical`).
        """
        values = cls.canonical(values, section)
        known = cls.field_names()
        where = section or cls.section
        for key in values:
            if key not in known:
                # a near miss of an old name suggests the new one ("encoder_layer" -> n_layers)
                close = difflib.get_close_matches(key, [*known, *cls.renamed], n=3, cutoff=0.5)
                names = list(dict.fromkeys(cls.renamed.get(c, c) for c in close))
                hint = (" Did you mean " + " or ".join(map(repr, names)) + "?") if names else ""
                raise ConfigError(f"{where}: unknown key {key!r}.{hint} Known keys: {', '.join(known)}.")
        return cls(**values)

    @classmethod
    def from_layers(cls: type[C], *layers: Mapping[str, Any], section: str | None = None) -> C:
        """Build from mappings applied in order, later keys winning (a preset's values, then overrides).

        Each layer is made :meth:`canonical` on its own, so an override under a
        deprecated name replaces the new-named value of an earlier layer.
        """
        merged: dict[str, Any] = {}
        for layer in layers:
            merged.update(cls.canonical(layer, section))
        return cls.from_dict(merged, section)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self: C, **changes: Any) -> C:
        return type(self).from_layers(self.to_dict(), changes)

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, doc) for each field."""
        hints = field_types(cls)
        old_names = {new: old for old, new in cls.renamed.items()}
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else "(required)"
            doc = f.metadata.get("doc", "")
            if f.name in old_names:
                doc += f" (formerly {old_names[f.name]})"
            rows.append((f.name, _type_name(hints[f.name]), default, doc))
        return rows


class _TypeMismatch(Exception):
    def __init__(self, where: str = "") -> None:
        self.where = where


class _NotFinite(Exception):
    """A float field holding NaN or an infinity (JSON and TOML can both spell them)."""

    def __init__(self, value: float) -> None:
        self.value = value


def _coerce(value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp``; return it, converted where lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg)
            except _TypeMismatch:
                continue
        raise _TypeMismatch()
    if tp is type(None):
        if value is None:
            return value
        raise _TypeMismatch()
    if origin is typing.Literal:
        if value in args:
            return value
        raise _TypeMismatch(f" (choose from {', '.join(repr(a) for a in args)})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _TypeMismatch()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _TypeMismatch()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond the float range
                raise _NotFinite(value) from None
            if not math.isfinite(number):
                raise _NotFinite(number)
            return number
        raise _TypeMismatch()
    if tp is str:
        if isinstance(value, str):
            return value
        raise _TypeMismatch()
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _TypeMismatch()
        item_tp = args[0] if args else Any
        return tuple(_coerce(v, item_tp) for v in value)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _TypeMismatch()
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return tp.from_dict(value)
        raise _TypeMismatch()
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {_type_name(args[0]) if args else 'values'}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------- files
def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.toml`` or ``.json`` config file into a dict (schema version checked)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        elif p.suffix == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
        else:
            raise ConfigError(f"config file {str(p)!r}: use a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid {p.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a table/object at the top level")
    check_schema_version(data, str(p))
    return data


def check_schema_version(data: Mapping[str, Any], where: str) -> None:
    version = data.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise ConfigError(
            f"{where}: schema_version {version!r} is not supported (this unimodel reads up to "
            f"{SCHEMA_VERSION}); upgrade unimodel"
        )


def to_toml(data: Mapping[str, Any]) -> str:
    """Write a dict of scalars and one level of tables as TOML (enough for our configs)."""
    lines: list[str] = []
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    for k, v in data.items():
        if not isinstance(v, Mapping) and v is not None:
            lines.append(f"{k} = {_toml_value(v)}")
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        for k, v in table.items():
            if isinstance(v, Mapping):
                inner = ", ".join(f"{ik} = {_toml_value(iv)}" for ik, iv in v.items() if iv is not None)
                lines.append(f"{k} = {{ {inner} }}")
            elif v is not None:  # TOML has no null: an absent key means the default
                lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines).strip() + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} to TOML")
