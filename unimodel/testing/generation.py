"""Conformance checks of generation: padded batches, beam search and the cache protocol, decoding strategies.

What these catch is what breaks users without failing a forward pass: a decoder
that ignores ``attention_mask`` during cached decoding (a left-padded batch then
generates other tokens than each row alone), a cache without a working
``reorder`` (beam search crashes, or silently follows the wrong beams), and a
plugin strategy that ignores the seed, ``max_new_tokens`` or EOS.

Greedy tokens are compared exactly. When a batched row and the row alone pick
different tokens whose logits are within :data:`TIE` of each other, float
noise decided the choice and the check passes.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unimodel.errors import UnimodelError
from unimodel.interfaces import Cap
from unimodel.registry import Component, Registry
from unimodel.testing.base import _vocab_of, objective_roles, synthetic_tokenizer
from unimodel.testing.checks import (
    ConformanceError,
    NotApplicable,
    _close,
    _decoder_key,
    _fail,
    _main_output,
    _needs_ids,
    build_tiny,
    kit_context,
)

if TYPE_CHECKING:
    from unimodel.model import Model

TIE = 1e-4
"""Logit gap under which two tokens count as tied (relative to the largest logit, at least 1)."""


# ------------------------------------------------------------------ helpers
def core_strategy(reg: Registry, name: str) -> Component:
    """The built-in strategy ``name`` (``greedy``, ``sample``, ``beam``), whatever other plugins register."""
    try:
        return reg.get("decoding", name, prefer="core")
    except UnimodelError as exc:
        raise NotApplicable(f"decoding strategy {name!r} is not available: {exc}") from None


def can_run(model: Model, strategy: Component, what: str) -> None:
    """NotApplicable unless ``strategy`` applies to ``model``."""
    if model.decoder is None or "lm" not in model.heads:
        raise NotApplicable(f"{what} has no decoder with an LM head, so it does not generate tokens")
    missing = sorted(set(strategy.requires) - set(model.provides))
    if missing:
        raise NotApplicable(
            f"decoding strategy {strategy.name!r} needs {', '.join(missing)}, which {what} does not provide"
        )


def start_option(model: Model) -> dict[str, Any]:
    """``decoder_start_token_id=0`` for an encoder-decoder model that has no start token of its own."""
    if not model.is_encoder_decoder or any(model.special_tokens.get(r) is not None for r in ("decoder_start", "bos")):
        return {}
    return {"decoder_start_token_id": 0}


def prompts(model: Model, lengths: tuple[int, ...], seed: int) -> list[Tensor]:
    """Random prompts (1-D id tensors) for the model's first part (the encoder of an encoder-decoder)."""
    part = model.encoder if model.encoder is not None else model.decoder
    assert part is not None
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, part.vocab_size, (n,), generator=g) for n in lengths]


def _generating_part(model: Model) -> Any:
    """The part whose positions the generated tokens take: the decoder, or the encoder of an encoder-only model."""
    part = model.decoder if model.decoder is not None else model.encoder
    assert part is not None
    return part


def room(model: Model, prompt_length: int, wanted: int, what: str) -> int:
    """New tokens to ask for: ``wanted``, or fewer where the position table ends."""
    limit = _generating_part(model).max_positions
    used = decoder_prompt_length(model, prompt_length)
    n = wanted if limit is None else min(wanted, limit - used)
    if n < 2:
        raise NotApplicable(f"{what}: the tiny config's position table ({limit}) leaves no room to generate")
    return n


def run_generate(model: Model, what: str, doing: str, ids: Tensor, **options: Any) -> Tensor:
    """``model.generate``; any error is a conformance failure that says what was being done."""
    try:
        return model.generate(ids, **options)
    except Exception as exc:
        raise _fail(what, f"{doing} raised {type(exc).__name__}: {exc}") from exc


def decoder_prompt_length(model: Model, prompt_length: int) -> int:
    """P, the length of what generation continues: the prompt, or the decoder start token of an encoder-decoder."""
    return 1 if model.is_encoder_decoder else prompt_length


def _check_output(out: Tensor, what: str, doing: str, *, rows: int, prompt: int, new: int, vocab: int) -> None:
    if out.dtype != torch.long or out.dim() != 2 or out.shape[0] != rows:
        raise _fail(what, f"{doing} returned {out.dtype} {tuple(out.shape)}, expected a LongTensor of {rows} rows")
    if not prompt < out.shape[1] <= prompt + new:
        raise _fail(
            what,
            f"{doing} returned sequences of length {out.shape[1]}; with a decoder prompt of {prompt} and "
            f"max_new_tokens={new} the length must be in {prompt + 1}..{prompt + new}",
        )
    if bool((out < 0).any()) or bool((out >= vocab).any()):
        raise _fail(what, f"{doing} returned ids outside the vocabulary of {vocab}")


def _is_tie(model: Model, source: Tensor, decoded: Tensor, a: int, b: int) -> bool:
    """Whether tokens ``a`` and ``b`` are tied as the next token after ``decoded`` (full forward, no cache)."""
    key = _decoder_key(model)
    inputs = {"input_ids": source[None], key: decoded[None]} if model.encoder is not None else {key: decoded[None]}
    logits = _main_output(model(**inputs))[0, -1].float()
    return abs(float(logits[a] - logits[b])) <= TIE * max(1.0, float(logits.abs().max()))


# ------------------------------------------------------------------ checks
def check_generation(name: str, *, registry: Registry | None = None) -> None:
    """Generating for a padded batch gives every row what it gets alone: the same logits at every step
    (teacher-forced with the row's own greedy tokens, on the path strategies use) and the same greedy tokens.

    A decoder-only prompt is left-padded (the decoder then sees ``attention_mask``
    over cached and new tokens and ``position_ids`` that skip the pads); an
    encoder-decoder source is right-padded (the decoder sees ``memory_mask``).
    """
    what = f"model {name!r}"
    with kit_context(registry) as reg, torch.no_grad():
        model = build_tiny(name, registry=reg).eval()
        _needs_ids(model, what)
        can_run(model, core_strategy(reg, "greedy"), what)
        rows = prompts(model, (5, 3), seed=3)
        longest = max(len(r) for r in rows)
        left = model.encoder is None
        batch = torch.zeros(len(rows), longest, dtype=torch.long)
        mask = torch.zeros_like(batch)
        for i, r in enumerate(rows):
            span = slice(longest - len(r), longest) if left else slice(0, len(r))
            batch[i, span], mask[i, span] = r, 1
        options = {"max_new_tokens": room(model, longest, 6, what), **start_option(model)}
        padding = "left-padded" if left else "padded source"
        alone = [run_generate(model, what, "greedy generation of one row", r[None], **options)[0] for r in rows]
        p = decoder_prompt_length(model, longest)
        _compare_forced(model, batch, mask, rows, alone, padding, what)
        batched = run_generate(
            model, what, f"greedy generation of a {padding} batch", batch, attention_mask=mask, **options
        )
        for i, r in enumerate(rows):
            row = batched[i, longest - len(r) :] if left else batched[i]
            n = min(len(row), len(alone[i]))
            differ = (row[:n] != alone[i][:n]).nonzero()
            if len(differ) == 0 and len(row) >= len(alone[i]):
                continue
            t = int(differ[0]) if len(differ) else n
            if t < n and _is_tie(model, r, alone[i][:t], int(row[t]), int(alone[i][t])):
                continue
            raise _fail(
                what,
                f"greedy generation of row {i} in a {padding} batch differs from the row alone at decoder position "
                f"{t} (prompt {p}): batch {row.tolist()}, alone {alone[i].tolist()}",
            )


def _compare_forced(
    model: Model, batch: Tensor, mask: Tensor, rows: list[Tensor], alone: list[Tensor], padding: str, what: str
) -> None:
    """Run the padded batch and each row alone through :class:`IncrementalDecoder`, feeding every row its own
    greedy tokens; the logits before each token must agree."""
    p = decoder_prompt_length(model, batch.shape[1])
    new = [a[(len(r) if model.encoder is None else p) :] for r, a in zip(rows, alone)]
    steps = max(len(t) for t in new)
    tokens = torch.zeros(len(rows), steps, dtype=torch.long)
    for i, t in enumerate(new):
        tokens[i, : len(t)] = t
    batched = _forced_logits(model, batch, mask, tokens)
    for i, r in enumerate(rows):
        single = _forced_logits(model, r[None], None, tokens[i : i + 1, : len(new[i])])
        _close(
            batched[i, : single.shape[1]],
            single[0],
            what,
            f"while generating, the logits of row {i} of a {padding} batch differ from the row's alone (teacher-"
            "forced with its greedy tokens). During cached decoding the decoder must honour attention_mask "
            "(batch, cached + new positions), position_ids and memory_mask: see 'The generation protocol' in "
            "docs/plugins.md",
        )


def _forced_logits(model: Model, ids: Tensor, mask: Tensor | None, tokens: Tensor) -> Tensor:
    """(N, steps + 1, V) fp32: the next-token logits after the prompt and after each of ``tokens`` (N, steps)."""
    from unimodel.generation import GenerationInputs, IncrementalDecoder

    if model.encoder is None:
        inputs = GenerationInputs(ids, mask, ids)
    else:
        start = start_option(model).get("decoder_start_token_id")
        if start is None:
            start = model.special_tokens.get("decoder_start")
            start = model.special_tokens.get("bos") if start is None else start
        if start is None:
            raise _fail(
                f"model {model.name!r}", "an encoder-decoder model needs a decoder_start or bos token to generate"
            )
        encoded = model.encode(ids, attention_mask=mask)
        inputs = GenerationInputs(ids, mask, ids.new_full((ids.shape[0], 1), start), encoder_output=encoded)
    run = IncrementalDecoder(model, inputs, capacity=inputs.decoder_input_ids.shape[1] + tokens.shape[1] + 1)
    logits = [run.prefill()]
    for k in range(tokens.shape[1]):
        logits.append(run.step(tokens[:, k]))
    return torch.stack(logits, dim=1)


def check_beam_search(name: str, *, registry: Registry | None = None) -> None:
    """Beam search (3 beams, 2 returned) runs within ``max_new_tokens`` and gives the same tokens twice; with a
    KV cache, ``reorder(index)`` moves every row the cache holds."""
    what = f"model {name!r}"
    with kit_context(registry) as reg, torch.no_grad():
        model = build_tiny(name, registry=reg).eval()
        _needs_ids(model, what)
        can_run(model, core_strategy(reg, "beam"), what)
        if Cap.KV_CACHE in model.provides:
            _check_reorder(model, what)
        batch = torch.stack(prompts(model, (4, 4), seed=5))
        new = room(model, 4, 5, what)
        options = {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": new, **start_option(model)}
        doing = "beam search (num_beams=3, num_return_sequences=2)"
        out = run_generate(model, what, doing, batch, **options)
        p = decoder_prompt_length(model, batch.shape[1])
        assert model.decoder is not None
        _check_output(out, what, doing, rows=4, prompt=p, new=new, vocab=model.decoder.vocab_size)
        if model.encoder is None and not torch.equal(out[:, :p], batch.repeat_interleave(2, dim=0)):
            raise _fail(what, f"{doing} does not return each prompt before its continuations")
        if not torch.equal(run_generate(model, what, doing, batch, **options), out):
            raise _fail(what, f"{doing} gives other tokens when run again on the same input")


def _check_reorder(model: Model, what: str) -> None:
    """After a 4-token call and ``cache.reorder([2, 0, 0])``, one more step equals a full forward of the
    reordered rows (the protocol beam search relies on)."""
    assert model.decoder is not None
    g = torch.Generator().manual_seed(11)
    key = _decoder_key(model)
    prefix = torch.randint(0, model.decoder.vocab_size, (3, 4), generator=g)
    step = torch.randint(0, model.decoder.vocab_size, (3, 1), generator=g)
    source: dict[str, Tensor] = {}
    if model.encoder is not None:
        source = {"input_ids": torch.randint(0, model.encoder.vocab_size, (3, 5), generator=g)}
    index = torch.tensor([2, 0, 0])
    try:
        cache = model(**source, **{key: prefix}, use_cache=True).past_key_values
    except UnimodelError as exc:
        raise _fail(what, f"a call with use_cache=True raised {type(exc).__name__}: {exc}") from exc
    if cache is None:
        raise _fail(what, "use_cache=True returned no past_key_values")
    length = getattr(cache, "length", None)
    if length != 4:
        raise _fail(
            what,
            f"after one call on 4 positions the cache's length is {length!r}, expected 4; new_cache() must return "
            "an object with `length`, which the decoder moves on with cache.advance(n) after its layers",
        )
    reorder = getattr(cache, "reorder", None)
    if not callable(reorder):
        raise _fail(
            what,
            f"new_cache() returned a {type(cache).__name__} without reorder(index); beam search calls it after "
            "every step so that each row continues the beam it now extends (unimodel.nn.KVCache has one)",
        )
    try:
        reorder(index)
        reordered = {k: v.index_select(0, index) for k, v in source.items()}
        after = _main_output(model(**reordered, **{key: step}, past_key_values=cache))[:, -1]
    except UnimodelError as exc:
        raise _fail(what, f"decoding after cache.reorder(index) raised {type(exc).__name__}: {exc}") from exc
    full = _main_output(model(**reordered, **{key: torch.cat([prefix.index_select(0, index), step], 1)}))[:, -1]
    _close(
        after,
        full,
        what,
        "after cache.reorder(index) the next step's outputs differ from a full forward of the reordered rows: "
        "reorder must select (and may repeat) rows of everything the cache holds, cross-attention state included",
    )


def model_for(
    reg: Registry, requires: Collection[str], plugin: str, *, generates: bool = False, objective: str | None = None
) -> str | None:
    """A registered family (with ``tiny`` overrides, reading token ids) that provides ``requires``: one of
    ``plugin``'s own first, then by name; with ``generates``, one with a decoder and an LM head first.
    With ``objective``, what a family provides built for it counts (its ``model_options`` applied)."""
    fits = []
    for comp in reg.components("model"):
        have = set(comp.provides)
        if comp.base is not None or not comp.tiny or Cap.CONTINUOUS_INPUT in have:
            continue
        if objective is not None and not set(requires) <= have:
            have = set(_capabilities(reg, comp, objective))
        if not set(requires) <= have:
            continue
        fits.append(comp)

    def decodes(c: Component) -> bool:
        return bool(set(c.provides) & {Cap.DECODER_ONLY, Cap.ENCODER_DECODER}) and Cap.LM_HEAD in c.provides

    fits.sort(key=lambda c: (c.plugin != plugin, generates and not decodes(c), c.name))
    return reg.display_name(fits[0]) if fits else None


def _capabilities(reg: Registry, family: Component, objective: str) -> frozenset[str]:
    """What ``family`` at its tiny config provides when built for ``objective`` (nothing if it cannot be)."""
    from unimodel.model import capabilities_for

    try:
        return capabilities_for({"name": family.qualified_name, **family.tiny}, objective, registry=reg)
    except UnimodelError:
        return frozenset()


def decoding_target(reg: Registry, comp: Component) -> tuple[str, str | None] | None:
    """(model, objective) to run decoding strategy ``comp`` on: a family that provides what it requires as
    registered (objective ``None``: the family's default), else one built for an objective whose model options
    give it that (``mask_predict`` runs on a T5 built for ``cmlm``); ``comp``'s plugin's objectives first."""
    target = model_for(reg, comp.requires, comp.plugin, generates=True)
    if target is not None:
        return target, None
    for objective in sorted(reg.components("objective"), key=lambda o: (o.plugin != comp.plugin, o.name)):
        target = model_for(reg, comp.requires, comp.plugin, generates=True, objective=objective.qualified_name)
        if target is not None:
            return target, objective.qualified_name
    return None


def check_decoding(name: str, *, registry: Registry | None = None) -> None:
    """Runs decoding strategy ``name`` on a registered model it applies to: the same output twice with
    ``seed=0``, lengths within ``max_new_tokens``, the prompt kept, and only the pad id after a row's EOS."""
    with kit_context(registry) as reg, torch.no_grad():
        comp = reg.get("decoding", name)
        what = f"decoding strategy {name!r}"
        found = decoding_target(reg, comp)
        if found is None:
            raise NotApplicable(
                f"{what}: no registered model family with `tiny` overrides provides what it requires "
                f"({', '.join(comp.requires) or 'nothing'}), so the kit has nothing to run it on"
            )
        target, objective = found
        if objective is None:
            model = build_tiny(target, registry=reg).eval()
        else:  # built for the objective, with a tokenizer holding the roles it reads (a mask token, say)
            tok, _ = synthetic_tokenizer(_vocab_of(target, reg), objective_roles([objective], reg))
            model = build_tiny(target, objective, registry=reg, tokenizer=tok).eval()
            what += f" (objective {objective!r})"
        what += f" on model {target!r}"
        vocab = _generating_part(model).vocab_size
        batch = torch.stack(prompts(model, (4, 4), seed=7))
        p = decoder_prompt_length(model, batch.shape[1])
        new = room(model, batch.shape[1], 4, what)
        pad = vocab - 1
        options = {"strategy": reg.display_name(comp), "seed": 0, "max_new_tokens": new, **start_option(model)}
        first = run_generate(model, what, "a run", batch, pad_token_id=pad, **options)
        _check_output(first, what, "a run", rows=2, prompt=p, new=new, vocab=vocab)
        if not model.is_encoder_decoder and not torch.equal(first[:, :p], batch):
            raise _fail(what, "the output does not start with the prompt (strategies return prompt + new tokens)")
        if not torch.equal(run_generate(model, what, "a second run", batch, pad_token_id=pad, **options), first):
            raise _fail(
                what,
                "two runs with seed=0 give different tokens; draw random numbers only from settings.generator",
            )
        eos = int(first[0, p])  # a token the strategy emits: as EOS, row 0 should end at once
        pad = pad if eos != pad else pad - 1
        ended = run_generate(
            model, what, "a run with eos_token_id", batch, eos_token_id=eos, pad_token_id=pad, **options
        )
        _check_output(ended, what, "a run with eos_token_id", rows=2, prompt=p, new=new, vocab=vocab)
        for r, row in enumerate(ended[:, p:]):
            hits = (row == eos).nonzero()
            if len(hits) and bool((row[int(hits[0]) + 1 :] != pad).any()):
                raise _fail(
                    what,
                    f"row {r} goes on after its EOS ({eos}): {row.tolist()}; every position after a row's first "
                    f"EOS must hold pad_token_id ({pad})",
                )


__all__ = [
    "ConformanceError",
    "check_beam_search",
    "check_decoding",
    "check_generation",
    "decoding_target",
    "model_for",
]
