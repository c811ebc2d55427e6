"""What every conformance check shares: its errors, the kit's context, tiny builds and synthetic data.

Checks use the process-wide registry unless given one; a given registry is
installed for the duration of the check (:func:`kit_context`), because loading
a checkpoint resolves names through the process-wide registry. Models are
built from their family's ``tiny`` overrides, with dropout as the family sets
it there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unimodel.config import Config, to_toml
from unimodel.errors import ConfigError, UnimodelError
from unimodel.interfaces import Cap, ModelFamily
from unimodel.registry import Component, Registry, get_registry, set_registry

if TYPE_CHECKING:
    from unimodel.data.tokenizer import Tokenizer
    from unimodel.model import Model

STANDARD_ROLES = ("pad", "eos", "bos", "unk", "mask", "cls", "sep")
"""Tokenizer roles the synthetic tokenizer always has; an objective's own roles are added."""

ATOL, RTOL = 1e-5, 1e-4  # for results that differ only by the order of float operations


class ConformanceError(AssertionError):
    """A component does not behave as unimodel's interfaces promise."""


class NotApplicable(Exception):
    """The check does not apply to this component; the message says why."""


# ------------------------------------------------------------------ helpers
@contextmanager
def using_registry(registry: Registry | None) -> Iterator[Registry]:
    """Make ``registry`` the process-wide one for the block (``None``: keep the current one)."""
    if registry is None:
        yield get_registry()
        return
    old = set_registry(registry)
    try:
        yield registry
    finally:
        set_registry(old)


@contextmanager
def kit_context(registry: Registry | None) -> Iterator[Registry]:
    """What every check runs under: ``registry`` installed (see :func:`using_registry`) and one torch thread.

    The kit's models are tiny; a second intra-op thread only adds synchronisation,
    which on a busy machine makes each forward pass many times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with using_registry(registry) as reg:
            yield reg
    finally:
        torch.set_num_threads(threads)


def _fail(what: str, problem: str) -> ConformanceError:
    return ConformanceError(f"{what}: {problem}")


def _close(actual: Tensor, expected: Tensor, what: str, problem: str) -> None:
    try:
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)
    except AssertionError as exc:
        raise _fail(what, f"{problem}\n{exc}") from None


def _finite(t: Tensor, what: str, name: str) -> None:
    if not torch.isfinite(t).all():
        raise _fail(what, f"{name} holds NaN or inf values")


def family_and_tiny(name: str, reg: Registry) -> tuple[Component, dict[str, Any]]:
    """The family record of model ``name`` and the config values of its small instance."""
    family, preset_values = reg.resolve_model(name)
    if not family.tiny:
        raise NotApplicable(
            f"model family {family.name!r} registers no `tiny` config overrides; add tiny={{...}} to its Component"
        )
    return family, {**preset_values, **family.tiny}


def objective_roles(names: Sequence[str], reg: Registry) -> list[str]:
    """Tokenizer roles the named objectives ask for."""
    roles: list[str] = []
    for n in names:
        cls = reg.load("objective", n)
        roles.extend(getattr(cls, "special_tokens", ()))
    return roles


def synthetic_tokenizer(vocab_size: int, roles: Sequence[str] = ()) -> tuple[Tokenizer, int]:
    """A word-level tokenizer of exactly ``vocab_size`` tokens with a token for every role.

    Ordinary tokens ``t0 t1 ...`` take ids ``0 .. n_plain - 1``; one special
    token per role (``<pad>``, ``<mask>`` ...) takes the ids above. Returns
    ``(tokenizer, n_plain)``; synthetic text uses ids below ``n_plain`` so no
    example contains a special token by accident.
    """
    import tokenizers
    from tokenizers import models, pre_tokenizers

    from unimodel.data.tokenizer import Tokenizer

    wanted = list(dict.fromkeys([*STANDARD_ROLES, *roles]))
    n_plain = vocab_size - len(wanted)
    if n_plain < 8:
        raise ConformanceError(
            f"a vocabulary of {vocab_size} leaves {n_plain} ordinary tokens after the {len(wanted)} special tokens "
            f"({', '.join(wanted)}); give the tiny config a vocab_size of at least {len(wanted) + 8}"
        )
    vocab = {f"t{i}": i for i in range(n_plain)}
    special = {role: f"<{role}>" for role in wanted}
    for j, token in enumerate(special.values()):
        vocab[token] = n_plain + j
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=special["unk"]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(list(special.values()))
    return Tokenizer(backend, special), n_plain


def synthetic_examples(n_plain: int, lengths: Sequence[int] = (12, 9, 16), seed: int = 0) -> list[dict[str, Any]]:
    """Tokenized examples of ragged ``lengths``, ids in ``[0, n_plain)``, in every layout the kit knows.

    Each example carries ``input_ids``; ``label`` (a class, 0 or 1) for
    sequence classification; ``labels`` (a class per token) for tagging; and
    ``source``/``target`` id lists for sequence-to-sequence objectives. An
    objective's ``prepare`` reads the keys it needs.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(0, n_plain, (n,), generator=g).tolist()
        target = torch.randint(0, n_plain, (max(2, n // 2),), generator=g).tolist()
        out.append(
            {"input_ids": ids, "label": i % 2, "labels": [j % 2 for j in range(n)], "source": ids, "target": target}
        )
    return out


def build_tiny(
    name: str,
    objective: str | None = None,
    *,
    registry: Registry | None = None,
    tokenizer: Tokenizer | None = None,
    **overrides: Any,
) -> Model:
    """A small instance of model ``name`` from its family's ``tiny`` overrides (and ``overrides``)."""
    from unimodel.model import build_model

    reg = registry or get_registry()
    _, tiny = family_and_tiny(name, reg)
    spec: dict[str, Any] = {"name": name, **tiny, **overrides}
    if objective is not None:
        spec["objective"] = objective
    return build_model(spec, registry=reg, tokenizer=tokenizer)


def _needs_ids(model: Model, what: str) -> None:
    if Cap.CONTINUOUS_INPUT in model.provides:
        raise NotApplicable(f"{what}: takes continuous inputs; the kit feeds token ids only")


def model_inputs(
    model: Model, *, batch: int = 2, src_len: int = 7, tgt_len: int = 6, seed: int = 0
) -> dict[str, Tensor]:
    """Random in-vocabulary inputs: ``input_ids`` (B, S) and, for encoder-decoders, ``decoder_input_ids`` (B, T)."""
    g = torch.Generator().manual_seed(seed)
    if model.is_encoder_decoder:
        assert model.encoder is not None and model.decoder is not None
        return {
            "input_ids": torch.randint(0, model.encoder.vocab_size, (batch, src_len), generator=g),
            "decoder_input_ids": torch.randint(0, model.decoder.vocab_size, (batch, tgt_len), generator=g),
        }
    main = model.decoder if model.decoder is not None else model.encoder
    assert main is not None
    length = tgt_len if model.decoder is not None else src_len
    return {"input_ids": torch.randint(0, main.vocab_size, (batch, length), generator=g)}


def _main_output(out: Any) -> Tensor:
    return out.logits if out.logits is not None else out.last_hidden_state


def _decoder_key(model: Model) -> str:
    return "decoder_input_ids" if model.is_encoder_decoder else "input_ids"


def _vocab_of(name: str, reg: Registry) -> int:
    family, tiny = family_and_tiny(name, reg)
    cls: type[ModelFamily] = family.load()
    vocab = getattr(cls.config_class.from_dict(tiny), "vocab_size", None)
    if not isinstance(vocab, int):
        raise NotApplicable(f"model {name!r}: its config has no vocab_size, so the kit cannot build token inputs")
    return vocab


def check_known_caps(caps: Collection[str], what: str, field_name: str) -> None:
    known = Cap.all()
    unknown = [c for c in caps if c not in known]
    if unknown:
        from unimodel.errors import did_you_mean

        hints = "".join(did_you_mean(c, known) for c in unknown)
        raise _fail(what, f"{field_name} names unknown capabilities {unknown}.{hints} Known: {', '.join(known)}")


def roundtrip_config(config: Config, what: str) -> None:
    """``config`` equals itself after to_dict/from_dict, JSON and TOML; an unknown key raises ConfigError."""
    from unimodel.config import tomllib

    cls = type(config)
    data = config.to_dict()
    forms: list[tuple[str, Callable[[], Any]]] = [
        ("to_dict/from_dict", lambda: data),
        ("JSON", lambda: json.loads(json.dumps(data))),
        ("TOML", lambda: tomllib.loads(to_toml({"section": data})).get("section", {})),
    ]
    for form, make in forms:
        try:
            back = cls.from_dict(make())
        except (UnimodelError, TypeError, ValueError) as exc:
            raise _fail(what, f"config does not survive {form}: {exc}") from exc
        if back != config:
            diff = {k: (v, back.to_dict().get(k)) for k, v in data.items() if back.to_dict().get(k) != v}
            hint = ""
            if form == "TOML" and any(v is None for v, _ in diff.values()):
                hint = " (TOML has no null: a field that may be null needs null as its default)"
            raise _fail(what, f"config changed through {form}: (saved, read back) = {diff}{hint}")
    try:
        cls.from_dict({**data, "no_such_field_xyz": 1})
    except ConfigError:
        pass
    else:
        raise _fail(what, "an unknown config key was accepted; configs must reject unknown keys")
