"""The conformance checks of model families, as plain functions.

Each ``check_*`` function builds small instances of a registered component
and raises :class:`ConformanceError` (an ``AssertionError``) naming the
component, what was expected and what happened; it returns ``None`` when the
component conforms. A check that does not apply to a component (a KV-cache
check on a model without ``kv_cache``) raises :class:`NotApplicable`.

The checks of other components are in :mod:`unimodel.testing.components`
(objectives, encoders, decoders, declarations), :mod:`unimodel.testing.generation`
(generation, beam search, decoding strategies), :mod:`unimodel.testing.parts`
(pairings), :mod:`unimodel.testing.objectives` (prepare, padding) and
:mod:`unimodel.testing.declarations` (a family's config, capabilities, input
errors and presets); the shared helpers in :mod:`unimodel.testing.base`.
:mod:`unimodel.testing.runner` runs many at once. This module re-exports the
helpers, the declaration checks and the component checks.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from unimodel.config import read_config_file
from unimodel.errors import UnimodelError
from unimodel.interfaces import Cap
from unimodel.registry import Registry
from unimodel.testing.base import (
    ATOL,
    RTOL,
    STANDARD_ROLES,
    ConformanceError,
    NotApplicable,
    _close,
    _decoder_key,
    _fail,
    _finite,
    _main_output,
    _needs_ids,
    _vocab_of,
    build_tiny,
    family_and_tiny,
    kit_context,
    model_inputs,
    objective_roles,
    roundtrip_config,
    synthetic_examples,
    synthetic_tokenizer,
    using_registry,
)
from unimodel.testing.cases import compatible_objectives
from unimodel.testing.components import (
    check_declaration,
    check_decoder,
    check_encoder,
    check_objective,
)
from unimodel.testing.declarations import check_capabilities, check_config, check_input_errors, check_preset

if TYPE_CHECKING:
    from unimodel.model import Model


# ------------------------------------------------------------------ models
def check_forward(name: str, *, registry: Registry | None = None) -> None:
    """Output shapes of a forward pass, finiteness, and that padding does not leak into real tokens."""
    what = f"model {name!r}"
    with kit_context(registry) as reg, torch.no_grad():
        model = build_tiny(name, registry=reg).eval()
        if Cap.CONTINUOUS_INPUT in model.provides:
            _check_continuous_forward(model, what)
            return
        inputs = model_inputs(model)
        out = model(**inputs)
        main = model.decoder if model.decoder is not None else model.encoder
        assert main is not None
        B = inputs["input_ids"].shape[0]
        T = inputs[_decoder_key(model)].shape[1] if model.decoder is not None else inputs["input_ids"].shape[1]
        if tuple(out.last_hidden_state.shape) != (B, T, main.d_model):
            raise _fail(
                what,
                f"last_hidden_state has shape {tuple(out.last_hidden_state.shape)}, "
                f"expected (batch, length, d_model) = {(B, T, main.d_model)}",
            )
        _finite(out.last_hidden_state, what, "last_hidden_state")
        if model.primary_head == "lm" and (out.logits is None or tuple(out.logits.shape) != (B, T, model.vocab_size)):
            got = None if out.logits is None else tuple(out.logits.shape)
            raise _fail(
                what, f"LM logits have shape {got}, expected (batch, length, vocab) = {(B, T, model.vocab_size)}"
            )
        if out.logits is not None:
            if out.logits.shape[0] != B:
                raise _fail(what, f"logits have batch size {out.logits.shape[0]}, expected {B}")
            _finite(out.logits, what, "logits")
        if model.is_encoder_decoder:
            S = inputs["input_ids"].shape[1]
            enc = out.encoder_last_hidden_state
            if enc is None or tuple(enc.shape[:2]) != (B, S):
                raise _fail(
                    what,
                    f"encoder_last_hidden_state should have shape (batch, source length, ...) = {(B, S)}, "
                    f"got {None if enc is None else tuple(enc.shape)}",
                )
        _check_padding(model, inputs, what)


def _check_continuous_forward(model: Model, what: str) -> None:
    """A model of continuous inputs: hidden states (B, positions, d_model), finite, each row independent of
    the others (row 1 run alone gives what it gave in the batch).

    One training-mode pass comes first: a quantised bottleneck initialised from its first batch
    (k-means) then tells inputs apart, where a random codebook may map every row to one code.
    """
    inputs = model_inputs(model)
    model.train()(**inputs)
    model.eval()
    out = model(**inputs)
    hidden = out.last_hidden_state
    B = next(iter(inputs.values())).shape[0]
    main = model.encoder
    assert main is not None
    if hidden.dim() != 3 or hidden.shape[0] != B or hidden.shape[2] != main.d_model:
        raise _fail(
            what,
            f"last_hidden_state has shape {tuple(hidden.shape)}, expected (batch, positions, d_model) with "
            f"batch {B} and d_model {main.d_model}",
        )
    _finite(hidden, what, "last_hidden_state")
    alone = model(**{k: v[1:2] for k, v in inputs.items()}).last_hidden_state[0]
    _close(hidden[1], alone, what, "a row's hidden states depend on the other rows of its batch (in eval mode)")


def _check_padding(model: Model, inputs: dict[str, Tensor], what: str) -> None:
    """Row 1 right-padded by 3 (mask 0) must equal that row run alone on its real tokens."""
    ids = inputs["input_ids"]
    n_pad = 3
    mask = torch.ones_like(ids)
    mask[1, -n_pad:] = 0
    padded = model(**inputs, attention_mask=mask).last_hidden_state[1]
    alone_inputs = {k: v[1:2] for k, v in inputs.items()}
    alone_inputs["input_ids"] = ids[1:2, :-n_pad]
    alone = model(**alone_inputs).last_hidden_state[0]
    if not model.is_encoder_decoder:
        padded = padded[: ids.shape[1] - n_pad]  # only real positions are defined
    _close(
        padded,
        alone,
        what,
        "hidden states of a right-padded row (attention_mask 0 on the padding) differ from "
        "the same row without padding: padding leaks into real tokens",
    )


def check_gradients(name: str, objective: str, *, registry: Registry | None = None) -> None:
    """A batch from ``objective.prepare`` gives a finite loss whose gradients are finite and reach the embeddings."""
    what = f"model {name!r} with objective {objective!r}"
    with kit_context(registry) as reg, torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        family, _ = family_and_tiny(name, reg)
        continuous = Cap.CONTINUOUS_INPUT in family.provides
        tok, n_plain = (
            (None, 0) if continuous else synthetic_tokenizer(_vocab_of(name, reg), objective_roles([objective], reg))
        )
        model = build_tiny(name, objective, registry=reg, tokenizer=tok).train()
        obj = model.objective
        if continuous and Cap.CONTINUOUS_INPUT not in obj.requires:
            raise NotApplicable(f"{what}: the model takes continuous inputs; the objective reads token ids")
        if continuous:  # one example per row of the encoder's example inputs
            rows = model_inputs(model, batch=4)
            examples: list[dict[str, Any]] = [{k: v[i] for k, v in rows.items()} for i in range(4)]
        else:
            examples = synthetic_examples(n_plain)
        batch = obj.prepare(examples, tokenizer=tok, generator=torch.Generator().manual_seed(0))
        if not isinstance(batch, Mapping) or not batch:
            raise _fail(what, f"prepare() returned {type(batch).__name__}, expected a non-empty dict of tensors")
        not_tensors = [k for k, v in batch.items() if not isinstance(v, Tensor)]
        if not_tensors:
            raise _fail(what, f"prepare() returned non-tensor values for {', '.join(not_tensors)}")
        if obj.primary_head is None and not continuous:
            raise NotApplicable(
                f"objective {objective!r} declares no head (primary_head=None), so it has no loss to train"
            )
        out = obj(model, batch)
        loss = out.loss
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise _fail(what, f"the objective's loss must be a scalar tensor, got {getattr(loss, 'shape', loss)!r}")
        if not loss.requires_grad:
            raise _fail(what, "the loss does not depend on any parameter (requires_grad is False)")
        _finite(loss, what, "the loss")
        if out.n_predictions <= 0:
            raise _fail(
                what,
                f"n_predictions is {out.n_predictions} for a batch of {len(batch)} tensors; "
                "prepare() produced no positions to predict",
            )
        loss.backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            raise _fail(what, f"non-finite gradients in {', '.join(bad[:5])}")
        main = model.decoder if model.decoder is not None else model.encoder
        assert main is not None
        if continuous:  # no embedding table: the gradient must reach the part's first parameters
            first = next((p for p in main.parameters() if p.requires_grad), None)
            if first is None or first.grad is None or not bool(first.grad.abs().sum() > 0):
                raise _fail(what, "no gradient reaches the encoder's first parameters: the loss is disconnected")
            return
        emb = main.get_input_embeddings().weight
        if emb.grad is None or not bool(emb.grad.abs().sum() > 0):
            raise _fail(what, "no gradient reaches the input embeddings: the loss is disconnected from the backbone")
        if obj.token_loss() is not None:
            # the loss computed without logits must be the loss() the objective states on the logits
            model.eval()
            with torch.no_grad():
                fused, plain = obj(model, batch).loss, obj(cast("Model", _WithLogits(model)), batch).loss
            _close(
                fused,
                plain,
                what,
                "the loss computed from token_loss() (without logits) differs from the "
                "objective's loss() on the logits; token_loss() must describe loss()",
            )


class _WithLogits:
    """A model whose every call forms the logits, so its loss comes from ``objective.loss``."""

    def __init__(self, model: Model) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._model(*args, **{**kwargs, "return_logits": True})


def check_roundtrip(name: str, *, registry: Registry | None = None) -> None:
    """``model.save`` then ``unimodel.load`` gives identical config, parameters, buffers, tokenizer and outputs.

    Every buffer counts, those registered with ``persistent=False`` too: before
    saving, a training-mode forward lets running statistics move (an EMA
    codebook, say) and every saved tensor is nudged, and the checkpoint is
    loaded under another seed, so a value that is not saved cannot come back
    by chance. Done once per compatible objective, since objectives add heads
    that must be saved too.
    """
    from unimodel.checkpoint import load

    with kit_context(registry) as reg, torch.no_grad(), torch.random.fork_rng(devices=[]):
        family, _ = family_and_tiny(name, reg)
        objectives = compatible_objectives(family, reg)
        reads_ids = Cap.CONTINUOUS_INPUT not in family.provides
        tok = None
        if reads_ids:
            tok, _n_plain = synthetic_tokenizer(_vocab_of(name, reg), objective_roles(objectives, reg))
        for objective in objectives:
            what = f"model {name!r} with objective {objective!r}"
            torch.manual_seed(1234)
            model = build_tiny(name, objective, registry=reg, tokenizer=tok)
            inputs = model_inputs(model) if reads_ids else _continuous_inputs(model)
            if inputs is not None:
                model.train()(**inputs)  # running statistics move
            model.eval()
            _nudge(model)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "ckpt"
                model.save(path)
                torch.manual_seed(4321)  # whatever is not saved comes back different
                try:
                    read_config_file(path / "config.json")  # plain JSON a user can read and edit
                    loaded = load(path)
                except UnimodelError as exc:
                    raise _fail(what, f"saved checkpoint does not load: {exc}") from exc
            if (loaded.name, loaded.objective_name) != (model.name, model.objective_name):
                raise _fail(what, f"loaded as model {loaded.name!r} with objective {loaded.objective_name!r}")
            if loaded.config != model.config or loaded.objective.config != model.objective.config:
                raise _fail(what, f"config changed in the round trip:\n saved  {model.spec()}\n loaded {loaded.spec()}")
            _same_tensors(model, loaded, what)
            if inputs is not None and not torch.equal(_main_output(model(**inputs)), _main_output(loaded(**inputs))):
                raise _fail(what, "the loaded model's outputs differ from the saved model's")
            if tok is not None and (loaded.tokenizer is None or loaded.tokenizer.roles != tok.roles):
                raise _fail(what, "the tokenizer (and its roles) did not travel with the checkpoint")


def _continuous_inputs(model: Model) -> dict[str, Tensor] | None:
    """Example inputs of a continuous-input model, or ``None`` when its encoder offers none."""
    try:
        return model_inputs(model)
    except NotApplicable:
        return None


def _nudge(model: nn.Module) -> None:
    """Add small noise to every saved floating tensor (parameters and persistent buffers), each once."""
    seen: set[int] = set()
    for t in model.state_dict(keep_vars=True).values():
        if id(t) in seen or not t.is_floating_point():
            continue
        seen.add(id(t))
        t.data.add_(torch.randn_like(t) * 1e-3)


def _same_tensors(model: nn.Module, loaded: nn.Module, what: str) -> None:
    """Every parameter and every buffer, persistent or not, equal in ``model`` and ``loaded``."""
    persistent = set(model.state_dict())
    for kind, ours, theirs in (
        ("parameter", dict(model.named_parameters()), dict(loaded.named_parameters())),
        ("buffer", dict(model.named_buffers()), dict(loaded.named_buffers())),
    ):
        if set(ours) != set(theirs):
            raise _fail(
                what,
                f"{kind} names differ: only saved {sorted(set(ours) - set(theirs))}, "
                f"only loaded {sorted(set(theirs) - set(ours))}",
            )
        changed = [k for k in ours if ours[k].shape != theirs[k].shape or not torch.equal(ours[k], theirs[k])]
        lost = [k for k in changed if k not in persistent]
        if lost:
            raise _fail(
                what,
                f"buffer(s) {', '.join(lost[:5])} differ after loading: registered with persistent=False they are "
                "not saved, so a value that is not a function of the config (a running statistic, a random "
                "table) is lost; register them persistent",
            )
        if changed:
            raise _fail(what, f"{kind}s changed in the round trip: {', '.join(changed[:5])}")


def check_kv_cache(name: str, *, registry: Registry | None = None) -> None:
    """Decoding with the KV cache (a 3-token prefill, a 2-token chunk, then one token at a time) equals the full
    forward pass."""
    what = f"model {name!r}"
    with kit_context(registry) as reg, torch.no_grad():
        if Cap.KV_CACHE not in reg.resolve_model(name)[0].provides:
            raise NotApplicable(f"{what} does not provide kv_cache")
        model = build_tiny(name, registry=reg).eval()
        _needs_ids(model, what)
        inputs = model_inputs(model, tgt_len=8)
        key = _decoder_key(model)
        ids = inputs[key]
        full = _main_output(model(**inputs))
        cache = None
        pieces = []
        bounds = [(0, 3), (3, 5), *((t, t + 1) for t in range(5, ids.shape[1]))]
        for a, b in bounds:
            out = model(**{**inputs, key: ids[:, a:b]}, past_key_values=cache, use_cache=True)
            if out.past_key_values is None:
                raise _fail(what, "use_cache=True returned no past_key_values")
            cache = out.past_key_values
            pieces.append(_main_output(out))
        _close(
            torch.cat(pieces, dim=1),
            full,
            what,
            "outputs decoded incrementally with the KV cache differ from the full forward pass",
        )
        if not model.is_encoder_decoder:
            _check_padded_cache(model, ids, bounds, what)


def _check_padded_cache(model: Model, ids: Tensor, bounds: list[tuple[int, int]], what: str) -> None:
    """Row 0 left-padded by 3, as generation pads a batch: cached decoding with the mask over cached + new
    positions and position ids that skip the pads equals the full forward at every real position."""
    from unimodel.nn.positions import positions_from_mask
    from unimodel.routing import accepted_inputs

    assert model.decoder is not None
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    # a decoder that declares no position ids places tokens itself
    positions = positions_from_mask(mask) if "position_ids" in accepted_inputs(model.decoder) else None
    full = _main_output(model(input_ids=ids, attention_mask=mask, position_ids=positions))
    cache, pieces = None, []
    for a, b in bounds:
        out = model(
            input_ids=ids[:, a:b],
            attention_mask=mask[:, :b],
            position_ids=None if positions is None else positions[:, a:b],
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
        pieces.append(_main_output(out))
    real = mask.bool()
    _close(
        torch.cat(pieces, dim=1)[real],
        full[real],
        what,
        "with a left-padded row, outputs decoded incrementally with the KV cache (attention_mask over cached + new "
        "positions) differ from the full forward pass at real positions: the decoder must apply attention_mask "
        "to the cached keys too",
    )


def check_determinism(name: str, *, registry: Registry | None = None) -> None:
    """The same seed gives the same initial weights and outputs (eval and train mode); another seed differs."""
    what = f"model {name!r}"
    with kit_context(registry) as reg, torch.random.fork_rng(devices=[]):
        models = []
        for seed in (1234, 1234, 4321):
            torch.manual_seed(seed)
            models.append(build_tiny(name, registry=reg))
        a, b, c = models
        sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
        differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
        if differ:
            raise _fail(
                what,
                f"two builds under the same seed differ in {', '.join(differ[:5])}; "
                "initialise only from torch's global RNG",
            )
        if all(torch.equal(sa[k], sc[k]) for k in sa):
            raise _fail(what, "builds under different seeds have identical weights: initialisation ignores the seed")
        inputs = model_inputs(a)
        with torch.no_grad():
            a.eval(), b.eval()
            if not torch.equal(_main_output(a(**inputs)), _main_output(b(**inputs))):
                raise _fail(what, "equal models give different outputs in eval mode")
            if not torch.equal(_main_output(a(**inputs)), _main_output(a(**inputs))):
                raise _fail(what, "the same model gives different outputs on the same input in eval mode")
            a.train(), b.train()
            torch.manual_seed(7)
            ya = _main_output(a(**inputs))
            torch.manual_seed(7)
            yb = _main_output(b(**inputs))
            if not torch.equal(ya, yb):
                raise _fail(what, "in train mode, the same seed gives different outputs (unseeded randomness?)")


MODEL_CHECKS: dict[str, Callable[..., None]] = {
    "forward": check_forward,
    "roundtrip": check_roundtrip,
    "kv_cache": check_kv_cache,
    "determinism": check_determinism,
    "config": check_config,
    "capabilities": check_capabilities,
    "input_errors": check_input_errors,
}


__all__ = [
    "ATOL",
    "MODEL_CHECKS",
    "RTOL",
    "STANDARD_ROLES",
    "ConformanceError",
    "NotApplicable",
    "build_tiny",
    "check_capabilities",
    "check_config",
    "check_declaration",
    "check_decoder",
    "check_determinism",
    "check_encoder",
    "check_forward",
    "check_gradients",
    "check_input_errors",
    "check_kv_cache",
    "check_objective",
    "check_preset",
    "check_roundtrip",
    "family_and_tiny",
    "kit_context",
    "model_inputs",
    "objective_roles",
    "roundtrip_config",
    "synthetic_examples",
    "synthetic_tokenizer",
    "using_registry",
]
