"""Building models and objectives from specs: ``build_model``, ``build_objective`` and the capability queries.

A spec is a model or preset name, a dict or a ``.toml``/``.json`` file. The
model's config and the objective's are checked, and the objective against the
model's capabilities (its ``model_options`` applied), before any weight is
allocated; :class:`~unimodel.model.Model` is what comes out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unimodel.bounds import build_within_memory
from unimodel.capabilities import Cap
from unimodel.config import Config, read_config_file
from unimodel.errors import ConfigError, IncompatibleObjectiveError, UnimodelError
from unimodel.registry import (
    Component,
    Registry,
    applicable_options,
    get_registry,
    provides_when_built,
    variants_providing,
)

if TYPE_CHECKING:
    from unimodel.data.tokenizer import Tokenizer
    from unimodel.interfaces import ModelFamily, Objective
    from unimodel.model import Model


def split_spec(spec: Any, overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Normalise a model spec to (model section with ``name``, objective section or None)."""
    objective: Any = None
    if isinstance(spec, (str, Path)) and (str(spec).endswith((".toml", ".json")) or Path(spec).is_file()):
        data = read_config_file(spec)
        spec = data.get("model", data)
        objective = data.get("objective")
    if isinstance(spec, str):
        model: dict[str, Any] = {"name": spec}
    elif isinstance(spec, Mapping):
        model = dict(spec)
        model.pop("schema_version", None)
        objective = model.pop("objective", objective)
    else:
        raise ConfigError(
            f"build_model takes a model name, a dict, or a path to a .toml/.json file; got {type(spec).__name__}"
        )
    extra = dict(overrides)
    if "objective" in extra:
        objective = extra.pop("objective")
    model.update(extra)
    if not isinstance(model.get("name"), str):
        raise ConfigError("model spec needs a 'name', a string (a model or preset; see `unimodel list model`)")
    if isinstance(objective, str):
        objective = {"name": objective}
    elif isinstance(objective, Mapping):
        objective = dict(objective)
    elif objective is not None:
        raise ConfigError(
            f"objective must be a name or a table with a name (e.g. {{name = 'fim', rate = 0.5}}), "
            f"got {type(objective).__name__} {objective!r:.60}"
        )
    return model, objective


def build_model(
    spec: Any, *, registry: Registry | None = None, tokenizer: Tokenizer | None = None, **overrides: Any
) -> Model:
    """Build a model from a preset name, a dict, or a ``.toml``/``.json`` file.

    Keyword overrides set config fields (``d_model=256``) or the objective
    (``objective="fim"`` or ``objective={"name": "fim", "rate": 0.5}``). The
    objective's :attr:`~unimodel.interfaces.Objective.model_options` are applied
    to the model config where it has those fields (``cmlm`` builds the decoder
    without its causal mask), unless the spec sets them itself.
    """
    reg = registry or get_registry()
    model_spec, objective_spec = split_spec(spec, overrides)
    name = model_spec.pop("name")
    named = reg.get("model", name)
    family_comp, preset_values = reg.resolve_model(name)
    family: type[ModelFamily] = family_comp.load()
    section = f"model {name!r}"
    model_spec = family.config_class.canonical(model_spec, section)
    family.config_class.from_layers(preset_values, model_spec, section=section)  # the user's own mistakes first

    objective_spec = objective_spec or {"name": family_comp.default_objective}
    objective_name = objective_spec.get("name")
    if objective_name is None:
        raise ConfigError(f"model {name!r} has no default objective; name one with objective=...")
    objective_comp = reg.get("objective", objective_name)
    objective_cls: type[Objective] = objective_comp.load()
    options = applicable_options(objective_cls, family.config_class)
    try:
        config = family.config_class.from_layers(preset_values, options, model_spec, section=section)
        provides = model_provides(family, family_comp, config)
    except ConfigError as exc:  # the model cannot take the objective's settings
        fits = _fitting_objectives(reg, family, family_comp, preset_values, model_spec)
        raise IncompatibleObjectiveError(
            f"objective {objective_name!r} builds the model with {_assignments(options)}, which model {name!r} "
            f"cannot take: {exc}. Objectives that work with {name!r}: {', '.join(fits) or '(none)'}."
        ) from exc
    missing = set(objective_comp.requires) - provides
    if missing:
        fits = _fitting_objectives(reg, family, family_comp, preset_values, model_spec)
        runners = reg.compatible_models(objective_comp.requires)
        settings = variants_providing(family_comp, objective_comp.requires)
        hint = f" Model {name!r} provides them when built with {' or '.join(settings)}." if settings else ""
        raise IncompatibleObjectiveError(
            f"objective {objective_name!r} needs {Cap.explain(sorted(missing))}, which model {name!r} does not "
            f"provide{_options_note(objective_cls, family.config_class, model_spec)}.{hint} "
            f"Objectives that work with {name!r}: {', '.join(fits) or '(none)'}. "
            f"Models that can run {objective_name!r}: {', '.join(runners) or '(none registered)'}."
        )
    objective, objective_comp = _build_objective(objective_spec, reg, provides=None, model_name=name)

    shown = reg.display_name(named)  # the plain name unless another plugin registers it too
    backbone, heads = build_within_memory(family, config, objective, f"model {shown!r}")  # or a ResourceError
    missing = set(type(objective).requires) - set(backbone.provides)
    if missing:  # the registry metadata promised more than the built backbone has
        raise IncompatibleObjectiveError(
            f"model {name!r} declares {sorted(provides)} but its backbone lacks "
            f"{sorted(missing)}; this is a bug in plugin {family_comp.plugin!r}"
        )
    objective_name = reg.display_name(objective_comp)
    from unimodel.model import Model  # the model module re-exports this one's names

    if tokenizer is not None:
        from unimodel.data.tokenizer import check_objective_tokens

        check_objective_tokens(tokenizer, objective, objective_name)
    return Model(
        name=reg.display_name(family_comp),
        preset=reg.display_name(named) if named.base is not None else None,
        config=config,
        backbone=backbone,
        objective=objective,
        objective_name=objective_name,
        heads=heads,
        tokenizer=tokenizer,
        provenance={"model": reg.provenance(family_comp), "objective": reg.provenance(objective_comp)},
    )


def model_provides(family: type[ModelFamily], family_comp: Component, config: Config) -> frozenset[str]:
    """Capabilities of ``family`` built with ``config`` (see :func:`unimodel.registry.provides_when_built`)."""
    return provides_when_built(family_comp, config, family)


def capabilities_for(spec: Any, objective: str | None = None, *, registry: Registry | None = None) -> frozenset[str]:
    """Capabilities of model ``spec`` (a name or a dict, as for :func:`build_model`) built for ``objective``.

    The objective's ``model_options`` are applied first (``cmlm`` makes a T5's
    decoder non-causal); builds configs only, no weights. Raises ConfigError
    when the model cannot take the spec or the options.
    """
    reg = registry or get_registry()
    model_spec, _ = split_spec(spec, {})
    family_comp, preset_values = reg.resolve_model(model_spec.pop("name"))
    family: type[ModelFamily] = family_comp.load()
    options = applicable_options(reg.load("objective", objective), family.config_class) if objective else {}
    config = family.config_class.from_layers(preset_values, options, family.config_class.canonical(model_spec))
    return model_provides(family, family_comp, config)


def compatible_objectives(spec: Any, *, registry: Registry | None = None) -> list[str]:
    """Names of the objectives model ``spec`` (a name or a dict, as for :func:`build_model`) builds with.

    Unlike :meth:`Registry.compatible_objectives`, which compares registered
    capabilities, this applies each objective's ``model_options`` to the model
    config first: a T5 fits ``cmlm``, which builds its decoder non-causally.
    Imports the family and the objectives (not a cheap metadata query). A spec
    whose config cannot be built as given (a pairing without its parts) gets
    the registry's answer.
    """
    reg = registry or get_registry()
    model_spec, _ = split_spec(spec, {})
    name = model_spec.pop("name")
    family_comp, preset_values = reg.resolve_model(name)
    family: type[ModelFamily] = family_comp.load()
    try:
        model_spec = family.config_class.canonical(model_spec)
        family.config_class.from_layers(preset_values, model_spec)
    except ConfigError:  # a spec that needs more (a pairing without its parts): the registered capabilities
        return reg.compatible_objectives(family_comp.provides)
    return _fitting_objectives(reg, family, family_comp, preset_values, model_spec)


def _fitting_objectives(
    reg: Registry,
    family: type[ModelFamily],
    family_comp: Component,
    preset_values: Mapping[str, Any],
    model_spec: Mapping[str, Any],
) -> list[str]:
    base: frozenset[str] | None = None
    out = []
    for comp in reg.components("objective"):
        try:
            options = applicable_options(comp.load(), family.config_class)
            if options or base is None:
                config = family.config_class.from_layers(preset_values, options, model_spec)
                provides = model_provides(family, family_comp, config)
                if not options:
                    base = provides
            else:
                provides = base
        except UnimodelError:  # a model that cannot take the objective's options, or a broken plugin
            continue
        if set(comp.requires) <= provides:
            out.append(reg.display_name(comp))
    return sorted(out)


def _assignments(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def _options_note(objective: type[Objective], config_class: type[Config], model_spec: Mapping[str, Any]) -> str:
    """Why the objective's model options did not give the capabilities it needs, when that is why."""
    wanted = objective.model_options
    overridden = {k: model_spec[k] for k, v in wanted.items() if k in model_spec and model_spec[k] != v}
    if overridden:
        return (
            f" as configured: the objective builds the model with {_assignments({k: wanted[k] for k in overridden})}"
            f", but the model spec sets {_assignments(overridden)}; drop that setting"
        )
    absent = [k for k in wanted if k not in config_class.field_names()]
    if absent:
        return f" (its config has no {', '.join(absent)} option to build it as the objective needs)"
    return ""


def build_objective(
    spec: Any,
    *,
    registry: Registry | None = None,
    provides: Any = None,
    model_name: str | None = None,
    **overrides: Any,
) -> Objective:
    """Build an objective by name (plain or ``plugin:name``) or dict. With ``provides`` (a backbone's
    capabilities), an objective that needs more fails with the list of ones that fit."""
    if not isinstance(spec, (str, Mapping)):
        raise ConfigError(f"build_objective takes an objective name or a dict, got {type(spec).__name__}")
    values = {"name": spec} if isinstance(spec, str) else dict(spec)
    values.update(overrides)
    return _build_objective(values, registry or get_registry(), provides=provides, model_name=model_name)[0]


def _build_objective(
    spec: Mapping[str, Any], reg: Registry, *, provides: Any, model_name: str | None
) -> tuple[Objective, Component]:
    values = dict(spec)
    name = values.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError("objective spec needs a 'name', a string (see `unimodel list objective`)")
    comp = reg.get("objective", name)
    if provides is not None:
        missing = set(comp.requires) - set(provides)
        if missing:
            fits = reg.compatible_objectives(provides)
            runners = reg.compatible_models(comp.requires)
            settings = (
                variants_providing(reg.resolve_model(model_name)[0], comp.requires)
                if model_name and reg.has("model", model_name)
                else []
            )
            hint = f" Model {model_name!r} provides them when built with {' or '.join(settings)}." if settings else ""
            raise IncompatibleObjectiveError(
                f"objective {name!r} needs {', '.join(sorted(missing))}, which model {model_name!r} does not provide."
                f"{hint} Objectives that work with {model_name!r}: {', '.join(fits) or '(none)'}. "
                f"Models that can run {name!r}: {', '.join(runners) or '(none registered)'}."
            )
    cls: type[Objective] = comp.load()
    return cls(cls.config_class.from_dict(values, section=f"objective {name!r}")), comp


__all__ = [
    "applicable_options",
    "build_model",
    "build_objective",
    "capabilities_for",
    "compatible_objectives",
    "model_provides",
    "split_spec",
]
