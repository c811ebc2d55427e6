"""Conformance checks of what a model family declares: its config, its capabilities, its input errors, its presets.

Each ``check_*`` function works like those of :mod:`unimodel.testing.checks`
(which re-exports these): it builds small instances of a registered family and
raises :class:`ConformanceError` naming what was expected and what happened.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from unimodel.errors import IncompatibleObjectiveError, InputError, UnimodelError
from unimodel.interfaces import Cap, Decoder, ModelFamily, Objective
from unimodel.registry import Registry
from unimodel.testing.base import (
    _fail,
    build_tiny,
    check_known_caps,
    family_and_tiny,
    kit_context,
    model_inputs,
    roundtrip_config,
)
from unimodel.testing.cases import compatible_objectives


def check_config(name: str, *, registry: Registry | None = None) -> None:
    """The model config (and each compatible objective's) survives dict, JSON and TOML; unknown keys are errors."""
    from unimodel.model import build_model

    with kit_context(registry) as reg:
        family, tiny = family_and_tiny(name, reg)
        cls: type[ModelFamily] = family.load()
        config = cls.config_class.from_dict(tiny)
        roundtrip_config(config, f"model {name!r}")
        for objective in compatible_objectives(family, reg):
            obj_cls: type[Objective] = reg.load("objective", objective)
            roundtrip_config(obj_cls.config_class.from_dict({}), f"objective {objective!r}")
        model = build_tiny(name, registry=reg)
        spec = json.loads(json.dumps(model.spec()))
        again = build_model(spec["model"], objective=spec["objective"], registry=reg)
        if again.config != model.config or again.objective_name != model.objective_name:
            raise _fail(f"model {name!r}", "model.spec() does not rebuild the same model")


def check_capabilities(name: str, *, registry: Registry | None = None) -> None:
    """Registered ``provides`` are known names and equal the built backbone's, and match its structure;
    the default objective is compatible; every incompatible objective fails at build time."""
    what = f"model {name!r}"
    with kit_context(registry) as reg:
        family, tiny = family_and_tiny(name, reg)
        check_known_caps(family.provides, what, "provides")
        cls: type[ModelFamily] = family.load()
        backbone = cls.build_backbone(cls.config_class.from_dict(tiny))
        declared, built = set(family.provides), set(backbone.provides)
        if declared != built:
            raise _fail(what, f"registered provides {sorted(declared)} but the built backbone provides {sorted(built)}")
        enc, dec = backbone.encoder, backbone.decoder
        rules = {
            Cap.DECODER_ONLY: (enc is None and dec is not None, "decoder_only needs a decoder and no encoder"),
            Cap.ENCODER_ONLY: (enc is not None and dec is None, "encoder_only needs an encoder and no decoder"),
            Cap.ENCODER_DECODER: (enc is not None and dec is not None, "encoder_decoder needs both"),
            Cap.CAUSAL: (
                dec is not None and bool(getattr(dec, "is_causal", False)),
                "causal needs a decoder with is_causal",
            ),
            Cap.NONCAUSAL_DECODER: (
                dec is not None and not getattr(dec, "is_causal", True),
                "noncausal_decoder needs a decoder with is_causal False",
            ),
            Cap.LM_HEAD: (backbone.lm_head is not None, "lm_head needs Backbone.lm_head"),
            Cap.KV_CACHE: (
                dec is not None
                and bool(getattr(dec, "is_causal", False))
                and type(dec).new_cache is not Decoder.new_cache,
                "kv_cache needs a causal decoder that implements Decoder.new_cache",
            ),
        }
        for cap, (ok, rule) in rules.items():
            if cap in built and not ok:
                raise _fail(what, f"declares {cap!r} but its backbone does not fit: {rule}")
        for part in (enc, dec):
            if part is not None:
                for attr in ("d_model", "vocab_size", "max_positions"):
                    if not hasattr(part, attr):
                        raise _fail(what, f"{type(part).__name__} has no attribute {attr!r} (see unimodel.interfaces)")
        compatible = compatible_objectives(family, reg)
        default = family.default_objective
        if default is not None and reg.display_name(reg.get("objective", default)) not in compatible:
            raise _fail(
                what,
                f"default objective {default!r} is not among the compatible ones ({', '.join(compatible)})",
            )
        for comp in reg.components("objective"):
            if reg.display_name(comp) in compatible:
                continue
            try:
                build_tiny(name, comp.qualified_name, registry=reg)
            except IncompatibleObjectiveError as exc:
                if compatible and not any(c in str(exc) for c in compatible):
                    raise _fail(
                        what,
                        f"building with incompatible objective {comp.name!r} fails, but the message "
                        f"does not list the objectives that work: {exc}",
                    ) from exc
            else:
                raise _fail(
                    what,
                    f"objective {comp.name!r} requires {sorted(comp.requires)}, which the model lacks, "
                    "yet building the pair succeeded; it should raise IncompatibleObjectiveError",
                )


def check_input_errors(name: str, *, registry: Registry | None = None) -> None:
    """Ids outside the vocabulary, float ids, 1-D ids and over-long inputs raise InputError; continuous
    inputs without their batch dimension, of integer dtype or holding NaN too."""
    what = f"model {name!r}"
    with kit_context(registry) as reg, torch.no_grad():
        model = build_tiny(name, registry=reg).eval()
        good = model_inputs(model)
        bad_cases: list[tuple[str, dict[str, Any]]] = []
        if Cap.CONTINUOUS_INPUT in model.provides:
            for key, x in good.items():  # no vocabulary: wrong rank, integer values, non-finite values
                nan = x.clone()
                nan.view(-1)[0] = float("nan")
                bad_cases += [
                    (f"{key} without its batch dimension", {**good, key: x[0]}),
                    (f"integer {key}", {**good, key: x.long()}),
                    (f"{key} holding NaN", {**good, key: nan}),
                ]
        for key in [] if bad_cases else good:
            ids = good[key]
            part = model.encoder if key == "input_ids" and model.encoder is not None else model.decoder
            assert part is not None
            high = ids.clone()
            high[0, 0] = part.vocab_size
            low = ids.clone()
            low[-1, -1] = -1
            bad_cases += [
                (f"{key} containing the id vocab_size ({part.vocab_size})", {**good, key: high}),
                (f"{key} containing -1", {**good, key: low}),
                (f"float {key}", {**good, key: ids.float()}),
                (f"1-D {key}", {**good, key: ids[0]}),
            ]
            if part.max_positions is not None:
                long = torch.zeros(1, part.max_positions + 1, dtype=torch.long)
                bad_cases.append(
                    (
                        f"{key} longer than max_positions ({part.max_positions})",
                        {k: (long if k == key else v[:1]) for k, v in good.items()},
                    )
                )
        for label, inputs in bad_cases:
            try:
                model(**inputs)
            except InputError:
                continue
            except Exception as exc:
                raise _fail(
                    what,
                    f"{label} raised {type(exc).__name__} ({exc}); it should raise unimodel's InputError "
                    "with a message naming the problem",
                ) from exc
            raise _fail(what, f"{label} was accepted; it should raise InputError")


def check_preset(name: str, *, registry: Registry | None = None) -> None:
    """A preset resolves through its base chain to a family, and its values form a valid config."""
    what = f"model preset {name!r}"
    with kit_context(registry) as reg:
        try:
            family, values = reg.resolve_model(name)
            cls: type[ModelFamily] = family.load()
            cls.config_class.from_dict(values, section=what)
        except UnimodelError as exc:
            raise _fail(what, str(exc)) from exc
        comp = reg.get("model", name)
        if comp.provides and set(comp.provides) != set(family.provides):
            raise _fail(
                what,
                f"declares provides {sorted(comp.provides)} but its family {family.name!r} "
                f"provides {sorted(family.provides)}",
            )


__all__ = ["check_capabilities", "check_config", "check_input_errors", "check_preset"]
