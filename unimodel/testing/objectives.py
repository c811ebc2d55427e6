"""Conformance checks of an objective's data and loss: a seeded ``prepare`` is reproducible, padding is no loss.

Both run on synthetic examples of different lengths (so batches are padded),
through the tokenizer the kit builds for the objective's roles. The padding
check needs a model: a registered family the objective applies to (one of the
objective's own plugin first).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from unimodel.interfaces import Cap
from unimodel.registry import Registry
from unimodel.testing.checks import (
    NotApplicable,
    _close,
    _fail,
    _needs_ids,
    _vocab_of,
    build_tiny,
    kit_context,
    model_inputs,
    objective_roles,
    synthetic_examples,
    synthetic_tokenizer,
)
from unimodel.testing.generation import model_for

DEFAULT_VOCAB = 128  # for an objective no registered family applies to

# (ids, mask) keys whose padded positions (mask 0) the padding check rewrites
PADDED = (("input_ids", "attention_mask"), ("decoder_input_ids", "decoder_attention_mask"))


def _target(name: str, reg: Registry) -> str | None:
    comp = reg.get("objective", name)
    return model_for(reg, comp.requires, comp.plugin, objective=comp.qualified_name)


def _prepare(obj: Any, examples: list[dict[str, Any]], tok: Any, seed: int, global_seed: int) -> Mapping[str, Any]:
    """``prepare`` under a generator seeded ``seed``, with the global RNGs (torch's and Python's) at ``global_seed``."""
    torch.manual_seed(global_seed)
    random.seed(global_seed)
    return obj.prepare(examples, tokenizer=tok, generator=torch.Generator().manual_seed(seed))


def check_prepare(name: str, *, registry: Registry | None = None) -> None:
    """``prepare`` gives the same batch under generators seeded alike, whatever the global RNGs hold: an
    objective draws its noise only from the ``generator`` it is given (so data order and noise are reproducible
    and each data-loader worker draws its own)."""
    what = f"objective {name!r}"
    with kit_context(registry) as reg, torch.random.fork_rng(devices=[]):
        state = random.getstate()
        try:
            comp = reg.get("objective", name)
            cls = comp.load()
            obj = cls(cls.config_class.from_dict({}))
            if Cap.CONTINUOUS_INPUT in comp.requires:
                tok, examples = None, _continuous_examples(name, reg)
            else:
                target = _target(name, reg)
                vocab = _vocab_of(target, reg) if target is not None else DEFAULT_VOCAB
                tok, n_plain = synthetic_tokenizer(vocab, objective_roles([comp.qualified_name], reg))
                examples = synthetic_examples(n_plain)
            a = _prepare(obj, examples, tok, seed=0, global_seed=1)
            b = _prepare(obj, examples, tok, seed=0, global_seed=2)
        finally:
            random.setstate(state)
        if not isinstance(a, Mapping) or not isinstance(b, Mapping) or set(a) != set(b):
            raise _fail(what, f"prepare() returned different keys for the same examples: {sorted(a)} vs {sorted(b)}")
        differ = [k for k in a if not _same(a[k], b[k])]
        if differ:
            raise _fail(
                what,
                f"prepare() with generators seeded alike gave different {', '.join(differ)}: it draws from a global "
                "RNG (torch.rand without generator=, Python's random); draw only from the generator it is given",
            )


def _continuous_examples(name: str, reg: Registry) -> list[dict[str, Any]]:
    """Examples for an objective of continuous data: the rows of the example inputs of a family it applies
    to (its own plugin's first), ``{"pixel_values": (C, H, W)}`` each, say."""
    comp = reg.get("objective", name)
    fits = [c for c in reg.components("model") if c.base is None and c.tiny and set(comp.requires) <= set(c.provides)]
    fits.sort(key=lambda c: (c.plugin != comp.plugin, c.name))
    if not fits:
        raise NotApplicable(
            f"objective {name!r}: no registered model family with `tiny` overrides provides what it "
            "requires, so the kit has no inputs to prepare"
        )
    model = build_tiny(reg.display_name(fits[0]), registry=reg)
    rows = model_inputs(model, batch=4)
    return [{k: v[i] for k, v in rows.items()} for i in range(4)]


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, Tensor) and isinstance(y, Tensor):
        return x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
    return bool(x == y)


def check_padding_loss(name: str, *, registry: Registry | None = None) -> None:
    """Changing the token ids at padded positions (mask 0) of a ``prepare`` batch leaves the loss unchanged."""
    what = f"objective {name!r}"
    with kit_context(registry) as reg, torch.random.fork_rng(devices=[]), torch.no_grad():
        if Cap.CONTINUOUS_INPUT in reg.get("objective", name).requires:
            raise NotApplicable(f"{what} reads continuous data, which has no padded positions")
        target = _target(name, reg)
        if target is None:
            raise NotApplicable(f"{what}: no registered model family with `tiny` overrides provides what it requires")
        comp = reg.get("objective", name)
        what = f"{what} on model {target!r}"
        torch.manual_seed(0)
        tok, n_plain = synthetic_tokenizer(_vocab_of(target, reg), objective_roles([comp.qualified_name], reg))
        model = build_tiny(target, comp.qualified_name, registry=reg, tokenizer=tok).eval()
        _needs_ids(model, what)
        obj = model.objective
        if obj.primary_head is None:
            raise NotApplicable(f"{what}: it declares no head (primary_head=None), so it has no loss")
        batch = dict(
            obj.prepare(synthetic_examples(n_plain), tokenizer=tok, generator=torch.Generator().manual_seed(0))
        )
        changed, n_pad = dict(batch), 0
        g = torch.Generator().manual_seed(1)
        for ids_key, mask_key in PADDED:
            ids, mask = batch.get(ids_key), batch.get(mask_key)
            if not isinstance(ids, Tensor) or not isinstance(mask, Tensor) or ids.shape != mask.shape:
                continue
            pad = mask == 0
            n_pad += int(pad.sum())
            vocab = model.vocab_size
            other = (ids + torch.randint(1, vocab, ids.shape, generator=g)) % vocab  # another id at every position
            changed[ids_key] = torch.where(pad, other, ids)
        if n_pad == 0:
            raise NotApplicable(
                f"{what}: prepare() padded nothing (no attention_mask with zeros) for examples of different "
                "lengths, so there is no padding to check"
            )
        loss, again = obj(model, batch).loss, obj(model, changed).loss
        _close(
            again,
            loss,
            what,
            "changing the token ids at padded positions (mask 0) changes the loss: padded positions count in the "
            "loss (give their labels -100) or leak through the attention mask",
        )


__all__ = ["check_padding_loss", "check_prepare"]
