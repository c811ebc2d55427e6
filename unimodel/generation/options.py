"""A decoding strategy's own options given as text (``unimodel generate --option iterations=4``).

:func:`parse_option_items` reads ``key=value`` items (values are TOML literals:
``4``, ``true``, ``[3, 4]``, ``"cosine"``; a bare word is a string).
:func:`check_strategy_options` checks them against what the ``decoding``
component declares: names among its ``options`` (close matches suggested), and
values through its ``config_class`` when it has one, like every config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from unimodel.config import Config, tomllib
from unimodel.errors import ConfigError, InputError, did_you_mean
from unimodel.registry import Registry, get_registry


def parse_option_items(items: Sequence[str], flag: str = "--option") -> dict[str, Any]:
    """``["iterations=4", "schedule=cosine"]`` -> ``{"iterations": 4, "schedule": "cosine"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key or not raw:
            raise InputError(f"{flag} takes key=value (e.g. {flag} iterations=4), got {item!r}")
        if key in out:
            raise InputError(f"{flag} {key} is given twice")
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw  # a bare word: a string (schedule=cosine)
    return out


def check_strategy_options(
    strategy: str, options: Mapping[str, Any], *, registry: Registry | None = None, flag: str = "--option"
) -> None:
    """Raise InputError unless every one of ``options`` is an option decoding strategy ``strategy`` declares,
    with a value its ``config_class`` (if any) accepts. An unknown strategy is a ComponentNotFoundError."""
    reg = registry or get_registry()
    comp = reg.get("decoding", strategy)
    declared = tuple(comp.options)
    for name in options:
        if name not in declared:
            listed = ", ".join(declared) or "none"
            raise InputError(
                f"{flag} {name}: strategy {strategy!r} has no such option.{did_you_mean(name, declared)} "
                f"Its options: {listed}."
            )
    config_class: type[Config] | None = getattr(comp.load(), "config_class", None)
    if config_class is None:
        return
    own = {k: v for k, v in options.items() if k in config_class.field_names()}
    try:
        config_class.from_dict(own, section=f"{flag} ({strategy})")
    except ConfigError as exc:
        raise InputError(str(exc)) from None


__all__ = ["check_strategy_options", "parse_option_items"]
