"""Conformance check of free pairing: every encoder with the reference decoder, every decoder with the
reference encoder, joined through the ``encoder-decoder`` family exactly as a user joins them.

A part can pass its own checks and still break in a pairing: an encoder whose
vocabulary ignores the ``vocab_size`` the pairing sets, a decoder that
mishandles ``memory_mask`` (which it never sees alone), a part whose output is
cut off from the gradient. This check builds the pair and trains, runs and
generates with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from unimodel.errors import UnimodelError
from unimodel.interfaces import Cap
from unimodel.registry import Component, Registry
from unimodel.testing.checks import ConformanceError, NotApplicable, _close, _fail, _finite, kit_context
from unimodel.testing.generation import can_run, core_strategy

if TYPE_CHECKING:
    from unimodel.model import Model

REFERENCE = "reference"  # the core's encoder and decoder of that name (unimodel.testing.reference)


def _partner(reg: Registry, kind: str) -> Component:
    try:
        return reg.get(kind, REFERENCE, prefer="core")
    except UnimodelError as exc:
        raise NotApplicable(
            f"the reference {kind} is not registered, so there is nothing to pair with: {exc}"
        ) from None


def _pairable(kind: str, comp: Component, what: str) -> None:
    """NotApplicable, with the reason, for a part the pairing cannot take."""
    if not comp.tiny:
        raise NotApplicable(f"{what} registers no `tiny` config overrides; add tiny={{...}} to its Component")
    if Cap.CONTINUOUS_INPUT in comp.provides:
        raise NotApplicable(f"{what} reads continuous inputs; the kit pairs parts that read token ids")
    if kind == "decoder":
        if Cap.LM_HEAD not in comp.provides:
            raise NotApplicable(f"{what} has no LM head, so a pairing has no token loss to train")
        cls = comp.load()
        if "memory_dim" not in cls.config_class.field_names():
            part = cls(cls.config_class.from_dict(dict(comp.tiny)))
            if not getattr(part, "cross_attention", False):
                raise NotApplicable(f"{what} cannot attend to an encoder memory (no memory_dim option)")


def check_pairing(kind: str, name: str, *, registry: Registry | None = None) -> None:
    """Encoder ``name`` with the reference decoder (or decoder ``name`` with the reference encoder), built as
    ``{"name": "encoder-decoder", "encoder": ..., "decoder": ...}``: it builds; a padded source does not leak
    into the decoder's outputs; a training step's gradients reach both sides; it generates."""
    if kind not in ("encoder", "decoder"):
        raise ValueError(f"check_pairing takes kind 'encoder' or 'decoder', not {kind!r}")
    what = f"{kind} {name!r}"
    with kit_context(registry) as reg:
        comp = reg.get(kind, name)
        _pairable(kind, comp, what)
        other = "decoder" if kind == "encoder" else "encoder"
        partner = _partner(reg, other)
        family = reg.display_name(reg.get("model", "encoder-decoder", prefer="core"))
        vocab = comp.tiny.get("vocab_size") or partner.tiny.get("vocab_size") or 64
        mine = {"name": comp.qualified_name, **comp.tiny}
        theirs = {"name": partner.qualified_name, **partner.tiny}
        spec = {"name": family, "vocab_size": vocab, kind: mine, other: theirs}
        what = f"{what} paired with the reference {other} ({partner.qualified_name})"
        from unimodel.model import build_model

        step = "building the pair"
        try:
            model = build_model(spec, registry=reg)
            step = "running the pair"
            _run_pair(model, what)
            step = "training the pair"
            _train_pair(model, what)
            if Cap.CAUSAL in model.provides:
                step = "generating with the pair"
                can_run(model, core_strategy(reg, "greedy"), what)
                src = torch.randint(0, model.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))
                out = model.generate(src, max_new_tokens=3)
                if out.shape[0] != 2 or not 1 < out.shape[1] <= 4:
                    raise _fail(what, f"generating 3 tokens for 2 sources returned shape {tuple(out.shape)}")
        except (ConformanceError, NotApplicable):
            raise
        except Exception as exc:
            raise _fail(
                what, f"{step} raised {type(exc).__name__}: {exc}\n(rebuild it with unimodel.build_model({spec!r}))"
            ) from exc


def _run_pair(model: Model, what: str) -> None:
    """Logits of the right shape, finite; the padded row equals the same row without its padding."""
    g = torch.Generator().manual_seed(2)
    src = torch.randint(0, model.vocab_size, (2, 7), generator=g)
    tgt = torch.randint(0, model.vocab_size, (2, 5), generator=g)
    mask = torch.ones_like(src)
    mask[1, -3:] = 0
    model.eval()
    with torch.no_grad():
        out = model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt)
        if out.logits is None or tuple(out.logits.shape) != (2, 5, model.vocab_size):
            got = None if out.logits is None else tuple(out.logits.shape)
            raise _fail(
                what, f"logits have shape {got}, expected (batch, target length, vocab) = (2, 5, {model.vocab_size})"
            )
        _finite(out.logits, what, "logits")
        alone = model(input_ids=src[1:2, :4], decoder_input_ids=tgt[1:2]).logits
        assert alone is not None
        _close(
            out.logits[1],
            alone[0],
            what,
            "the decoder's outputs for a padded source differ from the same source without its padding: "
            "padding leaks through the encoder (attention_mask) or the decoder's cross-attention (memory_mask)",
        )


def _train_pair(model: Model, what: str) -> None:
    """One seq2seq loss; its gradients reach parameters of both the encoder and the decoder."""
    g = torch.Generator().manual_seed(3)
    src = torch.randint(0, model.vocab_size, (2, 6), generator=g)
    labels = torch.randint(0, model.vocab_size, (2, 4), generator=g)
    model.train()
    loss = model(input_ids=src, labels=labels).loss
    assert loss is not None
    _finite(loss, what, "the loss")
    loss.backward()
    for side in ("encoder", "decoder"):
        part = getattr(model, side)
        if not any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in part.parameters()):
            raise _fail(what, f"no gradient reaches the {side}: its output is cut off from the loss")
    model.zero_grad(set_to_none=True)
    model.eval()


__all__ = ["check_pairing"]
