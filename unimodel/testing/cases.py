"""Which conformance checks apply to which registered components.

Reads registry metadata, so the pytest plugin can parametrize its tests at
collection time; only which objectives fit a family loads the family and the
objectives, since an objective's ``model_options`` change what a family provides.
Each :class:`Case` names the component(s) a check runs on; its :attr:`Case.id`
is the pytest id (``model:gpt``, ``model:gpt/objective:fim``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from unimodel.registry import Component, Registry, get_registry


@dataclass(frozen=True)
class Case:
    """One parametrization of a conformance check.

    ``skip`` is the reason the check cannot run on this component (a model
    family without ``tiny`` overrides, say); such cases are reported as
    skipped, not dropped, so a plugin author sees what is not covered.
    """

    kind: str
    name: str  # as the registry displays it: plain, or plugin:name where two plugins share the name
    objective: str | None = None
    skip: str | None = None

    @property
    def id(self) -> str:
        base = f"{self.kind}:{self.name}"
        return f"{base}/objective:{self.objective}" if self.objective else base


@dataclass(frozen=True)
class Selection:
    """The components a run covers: ``patterns`` are shell globs on names, ``plugins`` plugin names.

    An empty sequence selects everything. Both filters apply together.
    """

    patterns: Sequence[str] = ()
    plugins: Sequence[str] = ()

    def matches(self, comp: Component) -> bool:
        if self.plugins and comp.plugin not in self.plugins:
            return False
        return not self.patterns or any(fnmatch.fnmatchcase(comp.name, p) for p in self.patterns)


NO_TINY = (
    "model family {name!r} registers no `tiny` config overrides, so the kit cannot build a small instance; "
    "add tiny={{...}} (e.g. a 2-layer, width-32 config) to its Component"
)


def _families(reg: Registry) -> list[Component]:
    return [c for c in reg.components("model") if c.base is None]


def model_cases(
    reg: Registry | None = None, sel: Selection = Selection(), *, capability: str | None = None
) -> list[Case]:
    """One case per selected model family (presets are covered through their family's tiny config)."""
    reg = reg or get_registry()
    out = []
    for comp in _families(reg):
        if not sel.matches(comp):
            continue
        if capability is not None and capability not in comp.provides:
            continue
        out.append(Case("model", reg.display_name(comp), skip=None if comp.tiny else NO_TINY.format(name=comp.name)))
    return out


def compatible_objectives(comp: Component, reg: Registry) -> list[str]:
    """The objectives family ``comp`` builds with at its tiny config, each objective's ``model_options`` applied.

    Loads the family and the objectives (see :func:`unimodel.model.compatible_objectives`);
    a family that cannot be loaded gets the answer of its registered capabilities.
    """
    from unimodel.errors import UnimodelError
    from unimodel.model import compatible_objectives as compatible

    try:
        return compatible({"name": comp.qualified_name, **comp.tiny}, registry=reg)
    except UnimodelError:
        return reg.compatible_objectives(comp.provides)


def pair_cases(reg: Registry | None = None, sel: Selection = Selection()) -> list[Case]:
    """(model family, compatible objective) pairs where either side is selected."""
    reg = reg or get_registry()
    out = []
    for comp in _families(reg):
        for obj_name in compatible_objectives(comp, reg):
            obj = reg.get("objective", obj_name)
            if not (sel.matches(comp) or sel.matches(obj)):
                continue
            skip = None if comp.tiny else NO_TINY.format(name=comp.name)
            out.append(Case("model", reg.display_name(comp), obj_name, skip=skip))
    return out


def component_cases(kind: str, reg: Registry | None = None, sel: Selection = Selection()) -> list[Case]:
    """Every selected component of ``kind`` (for encoders and decoders: skipped without tiny overrides)."""
    reg = reg or get_registry()
    out = []
    for comp in reg.components(kind):
        if not sel.matches(comp):
            continue
        skip = None
        if kind in ("encoder", "decoder") and not comp.tiny:
            skip = f"{kind} {comp.name!r} registers no `tiny` config overrides; add tiny={{...}} to its Component"
        out.append(Case(kind, reg.display_name(comp), skip=skip))
    return out


def config_cases(reg: Registry | None = None, sel: Selection = Selection()) -> list[Case]:
    """Every selected component with a config class of its own: model families, encoders, decoders."""
    reg = reg or get_registry()
    kinds = ("model", "encoder", "decoder")
    return [Case(c.kind, c.name) for c in reg.components() if c.kind in kinds and c.base is None and sel.matches(c)]


def preset_cases(reg: Registry | None = None, sel: Selection = Selection()) -> list[Case]:
    reg = reg or get_registry()
    return [
        Case("model", reg.display_name(c)) for c in reg.components("model") if c.base is not None and sel.matches(c)
    ]


def declaration_cases(reg: Registry | None = None, sel: Selection = Selection()) -> list[Case]:
    """Every selected component of every kind."""
    reg = reg or get_registry()
    return [Case(c.kind, reg.display_name(c)) for c in reg.components() if sel.matches(c)]


def plugin_names(reg: Registry | None = None) -> Iterable[str]:
    return (reg or get_registry()).plugins.keys()
