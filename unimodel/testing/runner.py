"""Many checks at once: :func:`check_model`, :func:`check_component` and :func:`run_conformance` return a
:class:`Report` of every outcome (passed, failed, skipped with the reason)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from unimodel.registry import Registry
from unimodel.testing.base import ConformanceError, NotApplicable, kit_context
from unimodel.testing.cases import Selection, compatible_objectives
from unimodel.testing.checks import MODEL_CHECKS, check_gradients, check_preset
from unimodel.testing.components import check_declaration, check_decoder, check_encoder, check_objective


# ------------------------------------------------------------------ aggregate runs
@dataclass
class Outcome:
    check: str
    case: str
    status: str  # "passed", "failed" or "skipped"
    message: str = ""


@dataclass
class Report:
    """What a run of several checks found."""

    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failures

    def run(self, check: str, case: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except NotApplicable as exc:
            self.outcomes.append(Outcome(check, case, "skipped", str(exc)))
        except AssertionError as exc:
            self.outcomes.append(Outcome(check, case, "failed", str(exc)))
        except Exception as exc:  # a crash inside the component is a failure of that component
            self.outcomes.append(Outcome(check, case, "failed", f"{type(exc).__name__}: {exc}"))
        else:
            self.outcomes.append(Outcome(check, case, "passed"))

    def raise_for_failures(self) -> Report:
        if self.failures:
            lines = [f"{len(self.failures)} conformance check(s) failed:"]
            lines += [f"- {o.check}[{o.case}]: {o.message}" for o in self.failures]
            raise ConformanceError("\n".join(lines))
        return self

    def __str__(self) -> str:
        return "\n".join(
            f"{o.status:8} {o.check}[{o.case}]" + (f": {o.message}" if o.message else "") for o in self.outcomes
        )


def model_checks() -> dict[str, Callable[..., None]]:
    """Every check of a model family by its report name: :data:`MODEL_CHECKS` and the generation checks."""
    from unimodel.testing.generation import check_beam_search, check_generation
    from unimodel.testing.vocabulary import check_config_names

    return {
        **MODEL_CHECKS,
        "generation": check_generation,
        "beam_search": check_beam_search,
        "config_names": lambda name: check_config_names("model", name),
    }


def component_checks(kind: str, name: str) -> dict[str, Callable[[], None]]:
    """The checks of one component of ``kind`` other than a model family, by report name."""
    from unimodel.testing.generation import check_decoding
    from unimodel.testing.objectives import check_padding_loss, check_prepare
    from unimodel.testing.parts import check_pairing
    from unimodel.testing.vocabulary import check_config_names

    table: dict[str, dict[str, Callable[[], None]]] = {
        "objective": {
            "objective": lambda: check_objective(name),
            "prepare": lambda: check_prepare(name),
            "padding_loss": lambda: check_padding_loss(name),
        },
        "encoder": {
            "encoder": lambda: check_encoder(name),
            "pairing": lambda: check_pairing("encoder", name),
            "config_names": lambda: check_config_names("encoder", name),
        },
        "decoder": {
            "decoder": lambda: check_decoder(name),
            "pairing": lambda: check_pairing("decoder", name),
            "config_names": lambda: check_config_names("decoder", name),
        },
        "decoding": {"decoding": lambda: check_decoding(name)},
        "model": {"preset": lambda: check_preset(name)},
    }
    return table.get(kind, {})


def check_model(name: str, *, registry: Registry | None = None, raise_on_failure: bool = True) -> Report:
    """Every model check, plus gradients with every compatible objective, for model family (or preset) ``name``."""
    report = Report()
    with kit_context(registry) as reg:
        family, _ = reg.resolve_model(name)
        case = f"model:{name}"
        report.run("declaration", case, lambda: check_declaration("model", name))
        for check, fn in model_checks().items():
            report.run(check, case, functools.partial(fn, name))
        for objective in compatible_objectives(family, reg):
            report.run(
                "gradients", f"{case}/objective:{objective}", functools.partial(check_gradients, name, objective)
            )
    return report.raise_for_failures() if raise_on_failure else report


def check_component(kind: str, name: str, *, registry: Registry | None = None, raise_on_failure: bool = True) -> Report:
    """All checks that apply to one component of any kind."""
    with kit_context(registry) as reg:
        comp = reg.get(kind, name)
        if kind == "model" and comp.base is None:
            return check_model(name, raise_on_failure=raise_on_failure)
        report = Report()
        case = f"{kind}:{name}"
        report.run("declaration", case, lambda: check_declaration(kind, name))
        for check, fn in component_checks(kind, name).items():
            report.run(check, case, fn)
    return report.raise_for_failures() if raise_on_failure else report


def run_conformance(
    select: Sequence[str] = (), plugins: Sequence[str] = (), *, registry: Registry | None = None
) -> Report:
    """Every check over every selected component (``select``: name globs; ``plugins``: plugin names).

    Never raises for a failed check; inspect :attr:`Report.failures` (or call
    :meth:`Report.raise_for_failures`).
    """
    sel = Selection(tuple(select), tuple(plugins))
    report = Report()
    with kit_context(registry) as reg:
        for comp in reg.components():
            if sel.matches(comp):
                name = reg.display_name(comp)
                report.outcomes += check_component(comp.kind, name, raise_on_failure=False).outcomes
    return report


__all__ = ["Outcome", "Report", "check_component", "check_model", "component_checks", "model_checks", "run_conformance"]
