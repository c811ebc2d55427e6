"""A run's ``[model]`` and ``[objective]`` tables resolved into typed configs, and the tokenizer's values.

:func:`resolve_model_spec` follows a preset chain to its family and builds the
family's config class from the preset values and the table;
:func:`resolve_objective_spec` does the same for the objective and checks that
it fits the model. Neither builds a module: they run when the run config is
loaded, so a misspelled key costs no data reading and no tokenizer training.
Config classes come from the registry records (``Component.config``), so a
key is checked without importing the family's model code or torch; only the
objective's class is imported, once its table's keys have passed.
After the tokenizer exists, :func:`tokenizer_fills` gives the values it
decides (``vocab_size``, special-token ids), applied with ``config.replace``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unimodel.components import applicable_options, provides_when_built
from unimodel.config import Config
from unimodel.errors import ConfigError, IncompatibleObjectiveError, UnimodelError, did_you_mean

if TYPE_CHECKING:
    from unimodel.data.tokenizer import Tokenizer
    from unimodel.interfaces import Objective
    from unimodel.registry import Component, Registry


@dataclass(frozen=True)
class ModelSpec:
    """The ``[model]`` table, resolved.

    ``name`` is the model or preset as written, ``family`` its family's
    component, ``table`` the keys the table sets itself and ``config`` the
    family's config with the preset values and the table applied.
    """

    name: str
    family: Component
    preset_values: Mapping[str, Any]
    table: Mapping[str, Any]
    config: Config
    provides: frozenset[str]

    def filled(self, tokenizer: Tokenizer) -> Config:
        """The config with the values ``tokenizer`` decides filled in (see :func:`tokenizer_fills`)."""
        fills = tokenizer_fills(self, tokenizer)
        return self.config.replace(**fills) if fills else self.config

    def build_spec(self, config: Config | None = None) -> dict[str, Any]:
        """What ``build_model`` takes: the name and every field of ``config`` (default: :attr:`config`)."""
        return {"name": self.name, **(config or self.config).to_dict()}

    def for_objective(self, objective: type[Objective]) -> ModelSpec:
        """This spec with the objective's ``model_options`` applied where the family has the field and the
        table does not set it (``cmlm``: ``causal_decoder = false``), its capabilities recomputed."""
        options = {
            k: v
            for k, v in applicable_options(objective, type(self.config)).items()
            if k not in self.table and getattr(self.config, k) != v
        }
        if not options:
            return self
        config = type(self.config).from_layers(self.preset_values, options, self.table, section=f"model {self.name!r}")
        provides = provides_when_built(self.family, config)
        return dataclasses.replace(self, config=config, provides=frozenset(provides))


@dataclass(frozen=True)
class ObjectiveSpec:
    """The ``[objective]`` table resolved: the name as a user types it, class, typed config and data kind."""

    name: str
    objective_class: type[Objective]
    config: Config
    data_kind: str

    def build_spec(self) -> dict[str, Any]:
        """What ``build_model(objective=...)`` takes."""
        return {"name": self.name, **self.config.to_dict()}


def _registry(registry: Registry | None) -> Registry:
    from unimodel.registry import get_registry

    return registry or get_registry()


def resolve_model_spec(table: Mapping[str, Any], *, registry: Registry | None = None) -> ModelSpec:
    """``[model]`` as a :class:`ModelSpec`: presets followed, every key checked against the family's config."""
    name = table.get("name")
    if not isinstance(name, str):
        raise ConfigError(
            'run: [model] needs a name, a model or preset such as "gpt2-tiny" (see `unimodel list model`)'
        )
    reg = _registry(registry)
    family, preset_values = reg.resolve_model(name)
    config_class = family.config_class()  # a family that names its config class is not imported here
    section = f"model {name!r}"
    values = config_class.canonical({k: v for k, v in table.items() if k not in ("name", "objective")}, section)
    config = config_class.from_layers(preset_values, values, section=section)
    provides = provides_when_built(family, config)
    return ModelSpec(name, family, dict(preset_values), values, config, frozenset(provides))


def resolve_objective_spec(
    table: Mapping[str, Any] | None, model: ModelSpec, *, registry: Registry | None = None
) -> ObjectiveSpec:
    """``[objective]`` (the model's default objective when ``None``) as an :class:`ObjectiveSpec`: every key
    checked against the objective's config, the objective checked against the model's capabilities."""
    reg = _registry(registry)
    values = dict(table or {})
    name = values.pop("name", None) if table is not None else model.family.default_objective
    if table is not None and name is None:
        _refuse_unnamed(values, model, reg)
    if not isinstance(name, str):
        raise ConfigError(
            f'model {model.name!r} has no default objective; name one in [objective], e.g. name = "clm" '
            "(see `unimodel list objective`)"
            if table is None
            else 'run: [objective] name must be a string, e.g. name = "clm"'
        )
    comp = reg.get("objective", name)
    shown = reg.display_name(comp)  # a default objective is stored qualified; messages show the plain name
    # the table's own keys first: an objective that names its config class reports a typo without an import
    config = comp.config_class().from_dict(values, section=f"objective {shown!r}")
    cls: type[Objective] = comp.load()
    try:
        provides = model.for_objective(cls).provides
    except ConfigError:  # the model cannot take the objective's settings: what it provides as it is
        provides = model.provides
    missing = set(comp.requires) - provides
    if missing:
        fits = reg.compatible_objectives(model.provides)
        raise IncompatibleObjectiveError(
            f"objective {shown!r} needs {', '.join(sorted(missing))}, which model {model.name!r} does not provide. "
            f"Objectives that work with {model.name!r}: {', '.join(fits) or '(none)'}."
        )
    from unimodel.data.kinds import data_kind_name

    kind = data_kind_name(cls)
    reg.get("data", kind)  # an unknown data kind fails here, with the kinds that exist
    return ObjectiveSpec(shown, cls, config, kind)


def _refuse_unnamed(values: Mapping[str, Any], model: ModelSpec, registry: Registry) -> None:
    """An ``[objective]`` table without a name: a misspelled ``name`` is reported as such."""
    known = ["name"]
    default = model.family.default_objective
    if default is not None:
        with contextlib.suppress(UnimodelError):  # a broken default: the keys are checked against "name" alone
            known += registry.get("objective", default).config_class().field_names()
    for key in values:
        if key not in known:
            raise ConfigError(
                f"run: [objective] unknown key {key!r}.{did_you_mean(key, known)} The table needs a name, "
                'e.g. name = "clm" (see `unimodel list objective`).'
            )
    raise ConfigError('run: [objective] needs a name, e.g. name = "clm" (see `unimodel list objective`)')


def tokenizer_fills(spec: ModelSpec, tokenizer: Tokenizer) -> dict[str, Any]:
    """The config values ``tokenizer`` decides: ``vocab_size`` and ``<role>_token_id`` fields.

    Only fields the model's config class has are set, and only when the
    ``[model]`` table does not set them itself. Other id fields whose default
    is the family's own eos id (BART starts decoding with eos:
    ``decoder_start_token_id``, ``forced_eos_token_id``) follow the tokenizer's eos.
    """
    config_class = type(spec.config)
    fields = set(config_class.field_names())
    defaults = {f.name: f.default for f in dataclasses.fields(config_class)} | dict(spec.preset_values)
    fills: dict[str, Any] = {}
    if "vocab_size" in fields:
        given = spec.table.get("vocab_size")
        if given is None:
            fills["vocab_size"] = tokenizer.vocab_size
        elif given < tokenizer.vocab_size:
            raise ConfigError(
                f"model: vocab_size {given} is smaller than the tokenizer's vocabulary ({tokenizer.vocab_size}); "
                "leave vocab_size out to take it from the tokenizer"
            )
    for role in tokenizer.roles:
        key = f"{role}_token_id"
        if key in fields and key not in spec.table:
            fills[key] = tokenizer.special_id(role)
    eos_default = defaults.get("eos_token_id")
    if tokenizer.has_role("eos") and isinstance(eos_default, int):
        for key in ("decoder_start_token_id", "forced_eos_token_id"):
            if key in fields and key not in spec.table and defaults.get(key) == eos_default:
                fills[key] = tokenizer.special_id("eos")
    return fills


def model_spec_for(model_section: Mapping[str, Any], tokenizer: Tokenizer, *, registry: Any = None) -> dict[str, Any]:
    """The ``[model]`` table with the values ``tokenizer`` decides added (see :func:`tokenizer_fills`)."""
    spec = resolve_model_spec(model_section, registry=registry)
    return {**model_section, **tokenizer_fills(spec, tokenizer)}


def needed_roles(model: ModelSpec, objective: ObjectiveSpec, *, registry: Registry | None = None) -> list[str]:
    """Tokenizer roles to reserve: those of the run's objective and of every objective its model could train with."""
    reg = _registry(registry)
    roles: list[str] = list(getattr(objective.objective_class, "special_tokens", ()))
    for name in reg.compatible_objectives(model.family.provides):  # the registered record: a stable vocabulary
        if name == objective.name:
            continue
        try:
            cls = reg.load("objective", name)
        except UnimodelError:
            continue  # a broken plugin's objective must not stop this run
        roles.extend(getattr(cls, "special_tokens", ()))
    return list(dict.fromkeys(roles))


__all__ = [
    "ModelSpec",
    "ObjectiveSpec",
    "model_spec_for",
    "needed_roles",
    "resolve_model_spec",
    "resolve_objective_spec",
    "tokenizer_fills",
]
