"""Conformance checks of single components: objectives, encoders, decoders, and every record's declaration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from unimodel.config import Config
from unimodel.errors import InputError, UnimodelError
from unimodel.interfaces import Cap, Decoder, Encoder, Objective
from unimodel.nn import MemoryCache, gather_positions
from unimodel.registry import Component, Registry
from unimodel.testing.base import (
    NotApplicable,
    _close,
    _fail,
    _finite,
    check_known_caps,
    kit_context,
    roundtrip_config,
)


# ------------------------------------------------------------------ objectives, encoders, decoders
def check_objective(name: str, *, registry: Registry | None = None) -> None:
    """Declared ``requires`` are known capability names and match the class; the config round-trips."""
    what = f"objective {name!r}"
    with kit_context(registry) as reg:
        comp = reg.get("objective", name)
        check_known_caps(comp.requires, what, "requires")
        cls = comp.load()
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise _fail(what, f"target {comp.target!r} is {cls!r}, not a unimodel.interfaces.Objective subclass")
        if set(cls.requires) != set(comp.requires):
            raise _fail(
                what, f"registered requires {sorted(comp.requires)} but the class declares {sorted(cls.requires)}"
            )
        roles = cls.special_tokens
        if not isinstance(roles, tuple) or not all(isinstance(r, str) for r in roles):
            raise _fail(what, f"special_tokens must be a tuple of role names, got {roles!r}")
        try:
            config = cls.config_class.from_dict({})
        except UnimodelError as exc:
            raise _fail(what, f"its config needs values to be built ({exc}); give every field a default") from exc
        roundtrip_config(config, what)


def _build_part(kind: str, name: str, reg: Registry, **overrides: Any) -> tuple[Component, Any, Config]:
    comp = reg.get(kind, name)
    if not comp.tiny:
        raise NotApplicable(f"{kind} {name!r} registers no `tiny` config overrides; add tiny={{...}} to its Component")
    cls = comp.load()
    base = Encoder if kind == "encoder" else Decoder
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise _fail(f"{kind} {name!r}", f"target {comp.target!r} is {cls!r}, not a unimodel.interfaces.{base.__name__}")
    config = cls.config_class.from_dict({**comp.tiny, **overrides})
    return comp, cls(config), config


def _check_part_basics(kind: str, name: str, comp: Component, part: Encoder[Any] | Decoder[Any]) -> tuple[str, Tensor]:
    what = f"{kind} {name!r}"
    check_known_caps(comp.provides, what, "provides")
    if set(comp.provides) != set(type(part).provides):
        raise _fail(
            what, f"registered provides {sorted(comp.provides)} but the class declares {sorted(type(part).provides)}"
        )
    for attr in ("d_model", "vocab_size", "max_positions"):
        if not hasattr(part, attr):
            raise _fail(what, f"has no attribute {attr!r} (see unimodel.interfaces)")
    emb = part.get_input_embeddings()
    if not isinstance(emb, nn.Embedding) or emb.num_embeddings != part.vocab_size:
        raise _fail(what, f"get_input_embeddings() must return an nn.Embedding of vocab_size={part.vocab_size} rows")
    ids = torch.randint(0, part.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    return what, ids


def check_encoder(name: str, *, registry: Registry | None = None) -> None:
    """An encoder maps ids (B, S) to (B, S, d_model), masks padding, has an LM head and finite gradients."""
    with kit_context(registry) as reg:
        comp, enc, _ = _build_part("encoder", name, reg)
        what, ids = _check_part_basics("encoder", name, comp, enc)
        enc.eval()
        out = enc(ids)
        h = out.last_hidden_state
        if tuple(h.shape) != (2, 6, enc.d_model):
            raise _fail(what, f"last_hidden_state has shape {tuple(h.shape)}, expected {(2, 6, enc.d_model)}")
        _finite(h, what, "last_hidden_state")
        with torch.no_grad():
            mask = torch.ones_like(ids)
            mask[1, -2:] = 0
            padded = enc(ids, attention_mask=mask).last_hidden_state[1, :4]
            alone = enc(ids[1:2, :4]).last_hidden_state[0]
        _close(padded, alone, what, "padding (attention_mask 0) changes the states of real tokens")
        logits = enc.build_lm_head()(h)
        if tuple(logits.shape) != (2, 6, enc.vocab_size):
            raise _fail(
                what, f"build_lm_head() gives logits of shape {tuple(logits.shape)}, expected {(2, 6, enc.vocab_size)}"
            )
        logits.float().pow(2).mean().backward()
        _check_grads(enc, what)


def check_decoder(name: str, *, registry: Registry | None = None) -> None:
    """A decoder maps ids (B, T) to (B, T, d_model); a causal one decodes incrementally with its cache exactly as
    in one pass; one with ``memory_dim`` gains cross-attention that reads the memory.

    A decoder that always cross-attends (``cross_attention`` true as built) is
    given a random memory of width ``memory_dim`` (or ``d_model``).
    """
    with kit_context(registry) as reg:
        comp, dec, config = _build_part("decoder", name, reg)
        what, ids = _check_part_basics("decoder", name, comp, dec)
        dec.eval()
        g = torch.Generator().manual_seed(1)

        def memory_for(part: Any, cfg: Config) -> Tensor | None:
            if not getattr(part, "cross_attention", False):
                return None
            width = getattr(cfg, "memory_dim", None) or part.d_model
            return torch.randn(2, 5, width, generator=g)

        memory = memory_for(dec, config)
        out = dec(ids, memory=memory)
        h = out.last_hidden_state
        if tuple(h.shape) != (2, 6, dec.d_model):
            raise _fail(what, f"last_hidden_state has shape {tuple(h.shape)}, expected {(2, 6, dec.d_model)}")
        _finite(h, what, "last_hidden_state")
        causal = bool(getattr(dec, "is_causal", False))
        if (Cap.CAUSAL in comp.provides) != causal:
            raise _fail(what, f"is_causal is {causal} but 'causal' {'is not' if causal else 'is'} in its provides")
        logits = dec.build_lm_head()(h)
        if tuple(logits.shape) != (2, 6, dec.vocab_size):
            raise _fail(
                what, f"build_lm_head() gives logits of shape {tuple(logits.shape)}, expected {(2, 6, dec.vocab_size)}"
            )
        logits.float().pow(2).mean().backward()
        _check_grads(dec, what)
        with torch.no_grad():
            if Cap.KV_CACHE in comp.provides:
                cache = dec.new_cache(2, 2, dtype=h.dtype, device=h.device)  # small: the cache must grow
                steps = [
                    dec(ids[:, a:b], memory=memory, cache=cache).last_hidden_state
                    for a, b in ((0, 3), (3, 4), (4, 5), (5, 6))
                ]
                _close(
                    torch.cat(steps, 1), h.detach(), what, "incremental decoding with new_cache() differs from one pass"
                )
            if "memory_dim" in dec.config_class.field_names():
                _, xdec, xconfig = _build_part("decoder", name, reg, memory_dim=24)
                xdec.eval()
                if not getattr(xdec, "cross_attention", False):
                    raise _fail(what, "built with memory_dim=24 but cross_attention is False")
                m1, m2 = memory_for(xdec, xconfig), memory_for(xdec, xconfig)
                y1 = xdec(ids, memory=m1).last_hidden_state
                y2 = xdec(ids, memory=m2).last_hidden_state
                if tuple(y1.shape) != (2, 6, xdec.d_model):
                    raise _fail(
                        what, f"with a memory, output shape is {tuple(y1.shape)}, expected {(2, 6, xdec.d_model)}"
                    )
                if torch.equal(y1, y2):
                    raise _fail(what, "with cross-attention, the output does not depend on the memory")
                if "causal_decoder" in dec.config_class.field_names():
                    _check_memory_cache(name, reg, ids, memory_for, what)
            _check_output_positions(name, reg, ids, memory_for, what)


def _check_memory_cache(
    name: str, reg: Registry, ids: Tensor, memory_for: Callable[[Any, Config], Tensor | None], what: str
) -> None:
    """Built non-causal with cross-attention, a decoder that provides ``memory_cache`` gives with one
    :class:`~unimodel.nn.MemoryCache` over several calls (different inputs, one memory) what it gives without."""
    _, dec, config = _build_part("decoder", name, reg, memory_dim=24, causal_decoder=False)
    dec.eval()
    if Cap.MEMORY_CACHE not in getattr(dec, "provides", ()):
        return
    memory = memory_for(dec, config)
    cache = MemoryCache()
    for call, step_ids in enumerate((ids, ids.flip(1), (ids + 1) % dec.vocab_size)):
        got = dec(step_ids, memory=memory, cache=cache).last_hidden_state
        want = dec(step_ids, memory=memory).last_hidden_state
        _close(
            got,
            want,
            what,
            f"built with causal_decoder=false, call {call + 1} with a MemoryCache differs from the same call without "
            "it (the cache may keep only the memory's cross-attention keys/values)",
        )
    if all(kv is None for kv in cache.cross):
        raise _fail(what, "provides memory_cache but kept nothing in the MemoryCache it was given")


def _check_output_positions(
    name: str, reg: Registry, ids: Tensor, memory_for: Callable[[Any, Config], Tensor | None], what: str
) -> None:
    """A decoder that provides ``output_positions`` (built non-causal, where its config chooses) returns, for
    chosen positions of each row, padded rows included, its full output at those positions, and refuses
    positions outside its input."""
    comp = reg.get("decoder", name)
    noncausal = {"causal_decoder": False} if "causal_decoder" in comp.load().config_class.field_names() else {}
    _, dec, config = _build_part("decoder", name, reg, **noncausal)
    dec.eval()
    if Cap.OUTPUT_POSITIONS not in getattr(dec, "provides", ()):
        return
    if getattr(dec, "is_causal", False):
        raise _fail(what, "provides output_positions but is causal: only a non-causal decoder may take them")
    memory = memory_for(dec, config)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    # distinct positions per row, in no order, the last (padded) ones of row 1 among them
    positions = torch.tensor([[4, 0, 2], [5, 1, 3]])
    extra: dict[str, Any] = {} if memory is None else {"memory": memory}
    with torch.no_grad():
        for attention_mask in (None, mask):
            full = dec(ids, attention_mask=attention_mask, **extra).last_hidden_state
            got = dec(ids, attention_mask=attention_mask, output_positions=positions, **extra).last_hidden_state
            if tuple(got.shape) != (2, 3, dec.d_model):
                raise _fail(
                    what,
                    f"with output_positions of shape (2, 3) the output is {tuple(got.shape)}, expected "
                    f"{(2, 3, dec.d_model)}",
                )
            want = gather_positions(full, positions)
            padded = "" if attention_mask is None else ", with padding"
            _close(got, want, what, f"the output at output_positions differs from the full output there{padded}")
        try:
            dec(ids, output_positions=torch.tensor([[0], [ids.shape[1]]]), **extra)
        except InputError:
            return
        raise _fail(what, f"accepted output_positions outside its {ids.shape[1]} inputs (expected an InputError)")


def _check_grads(module: nn.Module, what: str) -> None:
    bad = [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        raise _fail(what, f"non-finite gradients in {', '.join(bad[:5])}")
    if not any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters()):
        raise _fail(what, "no parameter received a gradient")


# ------------------------------------------------------------------ every component
def _check_named_config(comp: Any, target: Any, what: str) -> None:
    """A record's ``config=`` names the class its target uses: run files are checked against that class."""
    try:
        named = comp.config_class()
    except UnimodelError as exc:
        raise _fail(what, f"its config={comp.config!r} cannot be imported: {exc}") from exc
    used = getattr(target, "config_class", None)
    if named is not used:
        raise _fail(
            what,
            f"config={comp.config!r} names {getattr(named, '__name__', named)!r}, but its target's config_class is "
            f"{getattr(used, '__name__', used)!r}; a run file would be checked against a class the component does "
            "not use. Name the target's config class (or leave config out)",
        )


def check_declaration(kind: str, name: str, *, registry: Registry | None = None) -> None:
    """The record is well-formed: a summary, known capability names, an importable target, a resolvable base,
    and a ``config=`` (when given) naming the target's own config class."""
    what = f"{kind} {name!r}"
    with kit_context(registry) as reg:
        comp = reg.get(kind, name)
        if not comp.summary.strip():
            raise _fail(what, "has no summary; `unimodel list` shows it, so give the Component a one-line summary=")
        check_known_caps(comp.provides, what, "provides")
        check_known_caps(comp.requires, what, "requires")
        if comp.base is not None:
            if kind != "model":
                raise _fail(what, "only model presets may name a base")
            try:
                reg.resolve_model(name)
            except UnimodelError as exc:
                raise _fail(what, f"its base chain does not resolve: {exc}") from exc
            return
        try:
            target = comp.load()
        except UnimodelError as exc:
            raise _fail(what, str(exc)) from exc
        if comp.config:
            _check_named_config(comp, target, what)
        if kind == "hf_converter" and not comp.model_types:
            raise _fail(what, "an hf_converter must list the Hugging Face model_types it reads")
        if kind == "model" and comp.default_objective is not None and not reg.has("objective", comp.default_objective):
            raise _fail(what, f"its default objective {comp.default_objective!r} is not registered")
