"""The conformance checks, as plain functions.

Each ``check_*`` function builds small instances of a registered component
and raises :class:`ConformanceError` (an ``AssertionError``) naming the
component, what was expected and what happened; it returns ``None`` when the
component conforms. A check that does not apply to a component (a KV-cache
check on a model without ``kv_cache``) raises :class:`NotApplicable`.

Models are built from their family's ``tiny`` overrides, with dropout as the
family sets it there. Checks use the process-wide registry unless given one;
a given registry is installed for the duration of the check, because loading
a checkpoint resolves names through the process-wide registry.

:func:`check_model`, :func:`check_component` and :func:`run_conformance`
run many checks and return a :class:`Report`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from unimodel.config import Config, read_config_file, to_toml
from unimodel.errors import ConfigError, IncompatibleObjectiveError, InputError, UnimodelError
from unimodel.interfaces import Cap, Decoder, Encoder, ModelFamily, Objective
from unimodel.registry import Component, Registry, get_registry, set_registry
from unimodel.testing.cases import Selection, compatible_objectives

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


# ------------------------------------------------------------------ models
def check_forward(name: str, *, registry: Registry | None = None) -> None:
    """Output shapes of a forward pass, finiteness, and that padding does not leak into real tokens."""
    what = f"model {name!r}"
    with kit_context(registry) as reg, torch.no_grad():
        model = build_tiny(name, registry=reg).eval()
        _needs_ids(model, what)
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
        tok, n_plain = synthetic_tokenizer(_vocab_of(name, reg), objective_roles([objective], reg))
        model = build_tiny(name, objective, registry=reg, tokenizer=tok).train()
        _needs_ids(model, what)
        obj = model.objective
        batch = obj.prepare(synthetic_examples(n_plain), tokenizer=tok, generator=torch.Generator().manual_seed(0))
        if not isinstance(batch, Mapping) or not batch:
            raise _fail(what, f"prepare() returned {type(batch).__name__}, expected a non-empty dict of tensors")
        not_tensors = [k for k, v in batch.items() if not isinstance(v, Tensor)]
        if not_tensors:
            raise _fail(what, f"prepare() returned non-tensor values for {', '.join(not_tensors)}")
        if obj.primary_head is None:
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
        emb = main.get_input_embeddings().weight
        if emb.grad is None or not bool(emb.grad.abs().sum() > 0):
            raise _fail(what, "no gradient reaches the input embeddings: the loss is disconnected from the backbone")
        if obj.token_loss() is not None:
            # the loss computed without logits must be the loss() the objective states on the logits
            model.eval()
            with torch.no_grad():
                fused, plain = obj(model, batch).loss, obj(_WithLogits(model), batch).loss
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


def _vocab_of(name: str, reg: Registry) -> int:
    family, tiny = family_and_tiny(name, reg)
    cls: type[ModelFamily] = family.load()
    vocab = getattr(cls.config_class.from_dict(tiny), "vocab_size", None)
    if not isinstance(vocab, int):
        raise NotApplicable(f"model {name!r}: its config has no vocab_size, so the kit cannot build token inputs")
    return vocab


def check_roundtrip(name: str, *, registry: Registry | None = None) -> None:
    """``model.save`` then ``unimodel.load`` gives identical config, weights, tokenizer and logits.

    Done once per compatible objective, since objectives add heads that must be saved too.
    """
    from unimodel.checkpoint import load

    with kit_context(registry) as reg, torch.no_grad():
        family, _ = family_and_tiny(name, reg)
        objectives = compatible_objectives(family, reg)
        tok, _n_plain = synthetic_tokenizer(_vocab_of(name, reg), objective_roles(objectives, reg))
        for objective in objectives:
            what = f"model {name!r} with objective {objective!r}"
            model = build_tiny(name, objective, registry=reg, tokenizer=tok).eval()
            _needs_ids(model, what)
            inputs = model_inputs(model)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "ckpt"
                model.save(path)
                try:
                    read_config_file(path / "config.json")  # plain JSON a user can read and edit
                    loaded = load(path)
                except UnimodelError as exc:
                    raise _fail(what, f"saved checkpoint does not load: {exc}") from exc
            if (loaded.name, loaded.objective_name) != (model.name, model.objective_name):
                raise _fail(what, f"loaded as model {loaded.name!r} with objective {loaded.objective_name!r}")
            if loaded.config != model.config or loaded.objective.config != model.objective.config:
                raise _fail(what, f"config changed in the round trip:\n saved  {model.spec()}\n loaded {loaded.spec()}")
            ours, theirs = model.state_dict(), loaded.state_dict()
            if set(ours) != set(theirs):
                raise _fail(
                    what,
                    f"state dict keys differ: only saved {sorted(set(ours) - set(theirs))}, "
                    f"only loaded {sorted(set(theirs) - set(ours))}",
                )
            changed = [k for k in ours if not torch.equal(ours[k], theirs[k])]
            if changed:
                raise _fail(what, f"tensors changed in the round trip: {', '.join(changed[:5])}")
            if not torch.equal(_main_output(model(**inputs)), _main_output(loaded(**inputs))):
                raise _fail(what, "the loaded model's outputs differ from the saved model's")
            if loaded.tokenizer is None or loaded.tokenizer.roles != tok.roles:
                raise _fail(what, "the tokenizer (and its roles) did not travel with the checkpoint")


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


def check_determinism(name: str, *, registry: Registry | None = None) -> None:
    """The same seed gives the same initial weights and outputs (eval and train mode); another seed differs."""
    what = f"model {name!r}"
    with kit_context(registry) as reg, torch.random.fork_rng(devices=[]):
        models = []
        for seed in (1234, 1234, 4321):
            torch.manual_seed(seed)
            models.append(build_tiny(name, registry=reg))
        a, b, c = models
        _needs_ids(a, what)
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


def roundtrip_config(config: Config, what: str) -> None:
    """``config`` equals itself after to_dict/from_dict, JSON and TOML; an unknown key raises ConfigError."""
    import tomllib

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
                dec is not None and bool(getattr(dec, "is_causal", False)),
                "kv_cache needs a causal decoder (Decoder.new_cache)",
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
        if family.default_objective is not None and family.default_objective not in compatible:
            raise _fail(
                what,
                f"default objective {family.default_objective!r} is not among the compatible ones "
                f"({', '.join(compatible)})",
            )
        for comp in reg.components("objective"):
            if comp.name in compatible:
                continue
            try:
                build_tiny(name, comp.name, registry=reg)
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


def check_known_caps(caps: Sequence[str], what: str, field_name: str) -> None:
    known = Cap.all()
    unknown = [c for c in caps if c not in known]
    if unknown:
        from unimodel.errors import did_you_mean

        hints = "".join(did_you_mean(c, known) for c in unknown)
        raise _fail(what, f"{field_name} names unknown capabilities {unknown}.{hints} Known: {', '.join(known)}")


def check_input_errors(name: str, *, registry: Registry | None = None) -> None:
    """Ids outside the vocabulary, float ids, 1-D ids and over-long inputs raise InputError."""
    what = f"model {name!r}"
    with kit_context(registry) as reg, torch.no_grad():
        model = build_tiny(name, registry=reg).eval()
        _needs_ids(model, what)
        good = model_inputs(model)
        bad_cases: list[tuple[str, dict[str, Any]]] = []
        for key in good:
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


def _check_part_basics(kind: str, name: str, comp: Component, part: nn.Module) -> tuple[str, Tensor]:
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
            if causal:
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


def _check_grads(module: nn.Module, what: str) -> None:
    bad = [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        raise _fail(what, f"non-finite gradients in {', '.join(bad[:5])}")
    if not any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters()):
        raise _fail(what, "no parameter received a gradient")


# ------------------------------------------------------------------ every component
def check_declaration(kind: str, name: str, *, registry: Registry | None = None) -> None:
    """The record is well-formed: a summary, known capability names, an importable target, a resolvable base."""
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
            comp.load()
        except UnimodelError as exc:
            raise _fail(what, str(exc)) from exc
        if kind == "hf_converter" and not comp.model_types:
            raise _fail(what, "an hf_converter must list the Hugging Face model_types it reads")
        if kind == "model" and comp.default_objective is not None and not reg.has("objective", comp.default_objective):
            raise _fail(what, f"its default objective {comp.default_objective!r} is not registered")


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


MODEL_CHECKS: dict[str, Callable[..., None]] = {
    "forward": check_forward,
    "roundtrip": check_roundtrip,
    "kv_cache": check_kv_cache,
    "determinism": check_determinism,
    "config": check_config,
    "capabilities": check_capabilities,
    "input_errors": check_input_errors,
}


def check_model(name: str, *, registry: Registry | None = None, raise_on_failure: bool = True) -> Report:
    """Every model check, plus gradients with every compatible objective, for model family (or preset) ``name``."""
    report = Report()
    with kit_context(registry) as reg:
        family, _ = reg.resolve_model(name)
        case = f"model:{name}"
        report.run("declaration", case, lambda: check_declaration("model", name))
        for check, fn in MODEL_CHECKS.items():
            report.run(check, case, lambda fn=fn: fn(name))
        for objective in compatible_objectives(family, reg):
            report.run("gradients", f"{case}/objective:{objective}", lambda o=objective: check_gradients(name, o))
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
        extra: dict[str, Callable[[], None]] = {
            "objective": lambda: check_objective(name),
            "encoder": lambda: check_encoder(name),
            "decoder": lambda: check_decoder(name),
            "model": lambda: check_preset(name),
        }
        if kind in extra:
            report.run(kind if kind != "model" else "preset", case, extra[kind])
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
                report.outcomes += check_component(comp.kind, comp.name, raise_on_failure=False).outcomes
    return report


__all__ = [
    "ConformanceError",
    "NotApplicable",
    "Report",
    "build_tiny",
    "check_capabilities",
    "check_component",
    "check_config",
    "check_declaration",
    "check_decoder",
    "check_determinism",
    "check_encoder",
    "check_forward",
    "check_gradients",
    "check_input_errors",
    "check_kv_cache",
    "check_model",
    "check_objective",
    "check_preset",
    "check_roundtrip",
    "model_inputs",
    "roundtrip_config",
    "run_conformance",
    "synthetic_examples",
    "synthetic_tokenizer",
    "using_registry",
]
