"""Calling an encoder or decoder with the inputs its ``forward`` declares.

The model, generation and the conformance kit hand a part only the inputs its
signature names (see "The call contract" in docs/plugins.md); a wrapper module
points at the part whose signature counts with ``forwards_inputs_to``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from unimodel.errors import InputError
from unimodel.interfaces import Decoder, Encoder

# A mask of ones says nothing, so a part that takes no mask loses nothing when it is left out.
_MASKS = frozenset({"attention_mask", "memory_mask"})


# per class: a plain dict, which torch.compile reads as it reads any global (it warns about functools caches)
_SIGNATURES: dict[type, tuple[frozenset[str], bool, str | None]] = {}


def _forward_signature(cls: type) -> tuple[frozenset[str], bool, str | None]:
    """What ``cls.forward`` takes: (keyword-passable names besides ``input_ids``, whether it has
    ``**kwargs``, the name of its first positional parameter). Inspected once per class: this runs on every call."""
    found = _SIGNATURES.get(cls)
    if found is None:
        params = list(inspect.signature(getattr(cls, "forward")).parameters.values())[1:]  # noqa: B009  # without self
        names = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
        found = _SIGNATURES[cls] = (names - {"input_ids"}, var_kw, positional[0] if positional else None)
    return found


def _signature_owner(part: nn.Module) -> nn.Module:
    """The module whose signature ``part`` forwards to: a wrapper names it in ``forwards_inputs_to``."""
    while True:
        attr = getattr(type(part), "forwards_inputs_to", None)
        if attr is None:
            return part
        part = getattr(part, attr)


def accepted_inputs(part: nn.Module) -> frozenset[str]:
    """The input names (besides the ids) that an encoder's or decoder's ``forward`` declares."""
    names, _, _ = _forward_signature(type(_signature_owner(part)))
    return names


def call_part(
    part: nn.Module,
    ids: Tensor | None,
    inputs: Mapping[str, Any],
    *,
    model: str = "?",
    optional: frozenset[str] = frozenset(),
) -> Any:
    """Call an encoder or decoder with ``ids`` and the ``inputs`` its ``forward`` declares.

    An input the part does not declare is left out when it is ``None``, a mask
    of ones, or named in ``optional`` (a hint the caller computed, such as the
    position ids generation derives from padding); any other is an
    :class:`InputError` naming what the part takes. A part whose ``forward``
    takes ``**kwargs`` gets everything.
    """
    names, var_kw, first = _forward_signature(type(_signature_owner(part)))
    if var_kw:
        kwargs = dict(inputs)
    else:
        kwargs = {}
        for key, value in inputs.items():
            if key in names:
                kwargs[key] = value
            elif value is not None and key not in optional and not _says_nothing(key, value):
                _refuse(part, key, names, model)
    if ids is None and first is not None and first != "input_ids" and first in kwargs:
        return part(**kwargs)  # a part whose main input is not ids (pixel_values, say)
    return part(ids, **kwargs)


def _says_nothing(key: str, value: Any) -> bool:
    """A mask of all ones: leaving it out changes nothing."""
    return key in _MASKS and isinstance(value, Tensor) and bool(value.all())


def _refuse(part: nn.Module, key: str, names: frozenset[str], model: str) -> None:
    owner = _signature_owner(part)
    role = "encoder" if isinstance(owner, Encoder) else "decoder" if isinstance(owner, Decoder) else "part"
    hint = ", so it cannot run a padded batch (give it rows of one length)" if key in _MASKS else ""
    raise InputError(
        f"model {model!r}: its {role} ({type(owner).__name__}) does not take {key}{hint}; its forward takes "
        f"input_ids{', ' if names else ''}{', '.join(sorted(names))}"
    )


__all__ = ["accepted_inputs", "call_part"]
