"""Composition of an encoder, a decoder and heads into one :class:`Model`, and the build API."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from unimodel.bounds import build_within_memory
from unimodel.config import Config, read_config_file
from unimodel.errors import ConfigError, IncompatibleObjectiveError, InputError, UnimodelError
from unimodel.generation.config import GenerationConfig
from unimodel.inputs import RangeChecks, check_call, check_ids_range, check_ids_shape
from unimodel.interfaces import (
    Backbone,
    Cap,
    CodebookPart,
    Decoder,
    Encoder,
    EncoderOutput,
    ModelFamily,
    ModelOutput,
    Objective,
)
from unimodel.nn.heads import LMHead
from unimodel.nn.losses import IGNORE_INDEX
from unimodel.registry import (
    Component,
    Registry,
    applicable_options,
    get_registry,
    provides_when_built,
    variants_providing,
)
from unimodel.routing import accepted_inputs, call_part

if TYPE_CHECKING:
    from unimodel.data.tokenizer import Tokenizer
    from unimodel.nn.attention import KVCache

# a hint an encoder may declare (``pool: bool``): whether the caller needs its pooled vector
_POOL_HINT = frozenset({"pool"})


class Model(nn.Module):
    """A backbone (encoder, decoder or both) plus the heads its objective needs.

    Build one with :func:`build_model`, :func:`unimodel.load` or
    :func:`unimodel.from_hf`. Call it with Hugging Face argument names; it
    returns a :class:`~unimodel.interfaces.ModelOutput`.
    """

    def __init__(
        self,
        *,
        name: str,
        config: Config,
        backbone: Backbone,
        objective: Objective,
        objective_name: str,
        heads: Mapping[str, nn.Module],
        preset: str | None = None,
        tokenizer: Tokenizer | None = None,
        provenance: Mapping[str, Mapping[str, str | None]] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        # by role ("model", "objective"): the qualified component and the distribution and version that provided it,
        # which a checkpoint records so that loading it can name the package to install
        self.provenance = {role: dict(entry) for role, entry in (provenance or {}).items()}
        self.preset = preset
        self.config = config
        self.encoder = backbone.encoder
        self.decoder = backbone.decoder
        self.provides = backbone.provides
        self.special_tokens = dict(backbone.special_tokens)
        self.decoding = backbone.decoding  # the decoding strategy generate runs by default (None: greedy/sample)
        # generate's defaults: the special tokens, until a checkpoint's "generation" section says more
        self.generation_config = GenerationConfig.from_special_tokens(self.special_tokens)
        self.objective = objective
        self.objective_name = objective_name
        all_heads = dict(heads)
        if backbone.lm_head is not None and objective.uses_lm_head:
            all_heads["lm"] = backbone.lm_head
        self.heads = nn.ModuleDict(all_heads)
        self.primary_head = objective.primary_head
        self.tokenizer = tokenizer
        main = self.decoder if self.decoder is not None else self.encoder
        if main is None:
            raise ConfigError(f"model {name!r}: a backbone needs an encoder, a decoder or both")
        self.vocab_size = main.vocab_size
        self._freeze_unread_pooler()

    def _freeze_unread_pooler(self) -> None:
        """An encoder that declares ``pool`` keeps its pooling layer in ``pooler``; when the objective's loss does
        not read the pooled vector, the model never runs that layer in a loss (``pool=False``) and its
        parameters are frozen: nothing trains them, and a data-parallel wrapper (DDP) waits for a gradient of
        every trainable parameter."""
        if self.encoder is None or "pool" not in accepted_inputs(self.encoder):
            return
        name = self.primary_head
        head = self.heads[name] if name is not None and name in self.heads else None
        if getattr(head, "pooled_input", False):
            return
        owner: Any = self.encoder
        while getattr(type(owner), "forwards_inputs_to", None) is not None:  # a wrapper (a projection) around it
            owner = getattr(owner, type(owner).forwards_inputs_to)
        pooler = getattr(owner, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)

    # ------------------------------------------------------------------ info
    @property
    def is_encoder_decoder(self) -> bool:
        return self.encoder is not None and self.decoder is not None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def spec(self) -> dict[str, Any]:
        """The full, JSON-able description this model is rebuilt from."""
        return {
            "model": {"name": self.name, **self.config.to_dict()},
            "objective": {"name": self.objective_name, **self.objective.config.to_dict()},
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, objective={self.objective_name!r}, parameters={self.num_parameters():,}"

    # ------------------------------------------------------------- training
    def gradient_checkpointing_enable(self) -> None:
        """Recompute each transformer block's activations in the backward pass instead of keeping them.

        Peak training memory drops to about one block's activations plus each block's input (see
        docs/benchmarks.md), for roughly one more forward pass per step; gradients are those of the plain run
        (dropout included). Applies to every module with a ``gradient_checkpointing`` flag (the shared
        :class:`~unimodel.nn.Block`); a model with none raises :class:`ConfigError`. Evaluation, generation
        and calls without gradients are unaffected.
        """
        self._set_gradient_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        """Keep every activation for the backward pass again (the default)."""
        self._set_gradient_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether any block recomputes its activations in the backward pass."""
        return any(getattr(m, "gradient_checkpointing", False) is True for m in self.modules())

    def _set_gradient_checkpointing(self, on: bool) -> None:
        blocks: list[Any] = [m for m in self.modules() if isinstance(getattr(m, "gradient_checkpointing", None), bool)]
        if not blocks and on:
            raise ConfigError(
                f"model {self.name!r} has no layer that supports gradient checkpointing (its family builds its "
                "layers without unimodel.nn.Block); train it without gradient_checkpointing"
            )
        for block in blocks:
            block.gradient_checkpointing = on

    # --------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        decoder_position_ids: Tensor | None = None,
        encoder_outputs: Any = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        labels: Tensor | None = None,
        logits_at: Tensor | None = None,
        return_logits: bool = True,
        **inputs: Any,
    ) -> ModelOutput:
        """Run the backbone and the primary head.

        Args:
            input_ids: (B, S) encoder input, or (B, T) for a decoder-only model.
            attention_mask: (B, S) 1 for real tokens, 0 for padding; for a cached
                decoder-only model it covers cached and new tokens.
            decoder_input_ids: (B, T) decoder input of an encoder-decoder model;
                derived from ``labels`` by a right shift when absent.
            past_key_values: a cache from a previous call (``use_cache=True``).
            labels: targets for the objective's loss (-100 ignored). When no position has a target
                (all -100), ``loss`` is 0 (a zero-gradient part of the graph) and a warning says so.
            logits_at: (B, T) bool; when given, the head runs only at the True
                positions and ``logits`` is (N, V) for those N positions in
                row-major order (``loss`` then pairs them with ``labels[logits_at]``).
                A masked-LM step that predicts 15% of the tokens skips the head's
                work on the other 85%.
            return_logits: with ``False`` and ``labels``, an objective whose loss is a
                token cross-entropy (:meth:`Objective.token_loss`) gets that loss
                computed without forming the logits, in chunks that stay in cache;
                ``logits`` is then ``None`` and ``n_correct`` counts right predictions.
                The training loop's objectives use this.
            **inputs: family-specific inputs (``perm_mask``, ``mems``,
                ``pixel_values`` ...), passed to the encoder or decoder whose
                ``forward`` declares them.

        Raises:
            InputError: an input of the wrong type, dtype, shape or batch size, or values out of range
                (ids outside the vocabulary, masks other than 0/1, positions past the position table);
                the message names the argument and the expected shape (see :mod:`unimodel.inputs`).
        """
        enc_extra, dec_extra = self._route(inputs)
        if input_ids is None and encoder_outputs is None and not enc_extra:
            raise InputError(f"model call needs {self._input_names()}")
        head = (
            self.heads[self.primary_head] if self.primary_head is not None and self.primary_head in self.heads else None
        )
        lm_labels = isinstance(head, LMHead)
        fused = self.objective.token_loss() if lm_labels and labels is not None else None
        targets = check_call(  # shapes, dtypes, batch sizes, and every value range with one host sync
            self,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            decoder_position_ids=decoder_position_ids,
            encoder_outputs=encoder_outputs,
            past_key_values=past_key_values,
            labels=labels,
            logits_at=logits_at,
            lm_labels=lm_labels,
            shifted=fused is not None and fused.shift,
        )
        enc = None
        memory = memory_mask = None
        extra: dict[str, Any] = {}
        if self.encoder is not None:
            if encoder_outputs is None:
                # A loss that does not read the pooled vector leaves the pooler out: a parameter that never
                # reaches the loss stalls data-parallel gradient reduction.
                pool = labels is None or bool(getattr(head, "pooled_input", False))
                enc = call_part(
                    self.encoder,
                    input_ids,
                    {
                        "attention_mask": attention_mask,
                        "token_type_ids": token_type_ids,
                        "position_ids": position_ids,
                        "pool": pool,
                        **enc_extra,
                    },
                    model=self.name,
                    optional=_POOL_HINT,
                )
            else:
                enc = encoder_outputs
            memory, memory_mask = enc.last_hidden_state, attention_mask
            extra.update(enc.extra)
        if self.decoder is None:
            assert enc is not None
            hidden = enc.last_hidden_state
            cache = None
        else:
            dec_ids: Tensor | None
            if self.encoder is not None:
                if decoder_input_ids is None:
                    if labels is None:
                        raise InputError(f"model {self.name!r} is an encoder-decoder: pass decoder_input_ids or labels")
                    decoder_input_ids = self.shift_right(labels)
                dec_ids, dec_mask, dec_pos = decoder_input_ids, decoder_attention_mask, decoder_position_ids
            else:
                dec_ids, dec_mask, dec_pos = input_ids, attention_mask, position_ids
            if dec_ids is None:
                raise InputError(f"model {self.name!r} needs input_ids for its decoder")
            cache = past_key_values
            if (use_cache or cache is not None) and Cap.KV_CACHE not in self.provides:
                why = "its decoder is non-causal" if not self.decoder.is_causal else "it does not provide kv_cache"
                raise InputError(
                    f"model {self.name!r} keeps no cache for incremental decoding ({why}); "
                    "call it without use_cache and past_key_values, on the whole sequence"
                )
            if use_cache and cache is None:
                cache = self.decoder.new_cache(
                    dec_ids.shape[0], dec_ids.shape[1], dtype=self.dtype, device=dec_ids.device
                )
            out = call_part(
                self.decoder,
                dec_ids,
                {
                    "attention_mask": dec_mask,
                    "position_ids": dec_pos,
                    "memory": memory,
                    "memory_mask": memory_mask,
                    "cache": cache,
                    # a decoder-only model's token types are its decoder's (a causal XLNet has them)
                    **(
                        {"token_type_ids": token_type_ids}
                        if token_type_ids is not None and self.encoder is None
                        else {}
                    ),
                    **dec_extra,
                },
                model=self.name,
            )
            hidden = out.last_hidden_state
            extra.update(out.extra)
        pooled = enc.pooler_output if enc is not None else None
        logits, loss, correct = self._head_and_loss(head, hidden, pooled, labels, logits_at, return_logits)
        if targets == 0 and loss is not None:
            loss = _no_target_loss(hidden)
        return ModelOutput(
            logits=logits,
            last_hidden_state=hidden,
            loss=loss,
            past_key_values=cache if use_cache or past_key_values is not None else None,
            encoder_last_hidden_state=memory,
            pooler_output=pooled,
            extra=extra,
            n_correct=correct,
        )

    def _head_and_loss(
        self,
        head: nn.Module | None,
        hidden: Tensor,
        pooled: Tensor | None,
        labels: Tensor | None,
        logits_at: Tensor | None,
        return_logits: bool,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """``(logits, loss, n_correct)`` of the primary head; without logits when the objective's loss is
        a token cross-entropy and the caller does not want them."""
        if head is None:
            return None, None, None
        if getattr(head, "pooled_input", False):  # a sequence head reads the pooled vector
            logits = head(pooled)
            return logits, self.objective.loss(logits, labels) if labels is not None else None, None
        if labels is not None and labels.shape != hidden.shape[:2]:
            raise InputError(
                f"labels must have shape {tuple(hidden.shape[:2])} (batch, positions), one per position of the "
                f"{'decoder' if self.decoder is not None else 'encoder'} input; got {tuple(labels.shape)}"
            )
        if logits_at is not None:
            at = self._check_logits_at(logits_at, hidden)
            hidden, labels = hidden[at], (labels[at] if labels is not None else None)  # (N, D), (N,)
        fused = self.objective.token_loss() if labels is not None and not return_logits else None
        if fused is not None and isinstance(head, LMHead) and labels is not None:
            if fused.shift and logits_at is None:
                hidden, labels = hidden[:, :-1], labels[:, 1:]
            loss, correct = head.token_loss(hidden, labels, label_smoothing=fused.label_smoothing)
            return None, loss, correct
        logits = head(hidden)
        return logits, self.objective.loss(logits, labels) if labels is not None else None, None

    @staticmethod
    def _check_logits_at(logits_at: Tensor, hidden: Tensor) -> Tensor:
        if logits_at.dtype != torch.bool or logits_at.shape != hidden.shape[:2]:
            raise InputError(
                f"logits_at must be a bool tensor of shape {tuple(hidden.shape[:2])} (batch, positions), got "
                f"{logits_at.dtype} {tuple(logits_at.shape)}"
            )
        return logits_at

    def _input_names(self) -> str:
        """What a call must pass: input_ids, or the inputs an encoder of continuous data declares."""
        if self.encoder is not None and Cap.CONTINUOUS_INPUT in type(self.encoder).provides:
            own = sorted(accepted_inputs(self.encoder) - _STANDARD_INPUTS)
            return " or ".join(own) or "input_ids"
        return "input_ids"

    def _route(self, inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split family-specific inputs between encoder and decoder by their ``forward`` signatures."""
        if not inputs:
            return {}, {}
        enc_keys = accepted_inputs(self.encoder) if self.encoder is not None else frozenset()
        dec_keys = accepted_inputs(self.decoder) if self.decoder is not None else frozenset()
        unknown = [k for k in inputs if k not in enc_keys and k not in dec_keys]
        if unknown:
            takes = sorted((enc_keys | dec_keys) - _STANDARD_INPUTS)
            raise InputError(
                f"model {self.name!r} does not take input(s) {', '.join(map(repr, unknown))}; besides input_ids, "
                f"attention_mask, labels and decoder_* inputs it takes: {', '.join(takes) or 'nothing else'}"
            )
        return (
            {k: v for k, v in inputs.items() if k in enc_keys},
            {k: v for k, v in inputs.items() if k in dec_keys and k not in enc_keys},
        )

    def encode(self, input_ids: Tensor | None, attention_mask: Tensor | None = None, **inputs: Any) -> EncoderOutput:
        """Run the encoder alone, passing what its ``forward`` declares; ``inputs`` are encoder extras
        (``token_type_ids``, ``pixel_values`` ...). Generation uses this to encode a source once."""
        if self.encoder is None:
            raise InputError(f"model {self.name!r} has no encoder")
        return call_part(self.encoder, input_ids, {"attention_mask": attention_mask, **inputs}, model=self.name)

    def check_ids(self, ids: Tensor, name: str, part: Encoder | Decoder, past: int = 0) -> None:
        """Reject ids a user could pass by mistake (dtype, shape, vocabulary, position table), before torch
        fails obscurely; one host sync."""
        ids = check_ids_shape(ids, name)
        checks = RangeChecks()
        check_ids_range(checks, ids, name, part.vocab_size)
        max_pos = part.max_positions
        if max_pos is not None and past + ids.shape[1] > max_pos:
            raise InputError(
                f"{name} has {past + ids.shape[1]} positions (including {past} cached) but model {self.name!r} "
                f"has a position table of {max_pos}; truncate the input or build with a larger max_positions"
            )
        checks.run()

    def shift_right(self, labels: Tensor) -> Tensor:
        """Decoder inputs from labels: prepend the decoder start token, drop the last, -100 -> pad."""
        start = self.special_tokens.get("decoder_start")
        pad = self.special_tokens.get("pad")
        if start is None or pad is None:
            raise InputError(f"model {self.name!r} has no decoder_start/pad token; pass decoder_input_ids")
        shifted = labels.new_full(labels.shape, pad)
        shifted[:, 1:] = labels[:, :-1]
        shifted[:, 0] = start
        return shifted.masked_fill_(shifted == -100, pad)

    # ----------------------------------------------------------------- codes
    def encode_codes(self, pixel_values: Tensor) -> Tensor:
        """Images (B, C, H, W) -> codes (B, h*w) long, by the backbone part that provides ``codebook``."""
        return self.codebook_part().encode_codes(pixel_values)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Codes (B, h*w) -> images (B, C, H, W), by the backbone part that provides ``codebook``."""
        return self.codebook_part().decode_codes(codes)

    def codebook_part(self) -> CodebookPart:
        """The encoder or decoder that provides ``codebook`` (see :class:`~unimodel.interfaces.CodebookPart`)."""
        for part in (self.encoder, self.decoder):
            if part is not None and Cap.CODEBOOK in type(part).provides:
                return cast(CodebookPart, part)
        raise InputError(
            f"model {self.name!r} has no codebook (it provides {', '.join(sorted(self.provides))}); "
            "encode_codes and decode_codes need a model whose backbone provides 'codebook' "
            "(`unimodel info MODEL` lists what a model provides)"
        )

    # -------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(self, input_ids: Tensor, **kwargs: Any) -> Any:
        """Generate continuations (a LongTensor); see :func:`unimodel.generation.generate` for the options."""
        from unimodel.generation import generate

        return generate(self, input_ids, **kwargs)

    # ------------------------------------------------------------------- I/O
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``config.json``, ``model.safetensors`` (and ``tokenizer.json``) to a folder.

        The folder may be new, empty, or a checkpoint (replaced). A folder holding other files is refused
        unless ``overwrite``; then only the checkpoint's files are replaced and the other files are kept.
        """
        from unimodel.checkpoint import save

        return save(self, path, overwrite=overwrite)


# Inputs the model hands every encoder or decoder whose forward declares them (see docs/plugins.md).
_STANDARD_INPUTS = frozenset({"attention_mask", "position_ids", "token_type_ids", "memory", "memory_mask", "cache"})


def _no_target_loss(hidden: Tensor) -> Tensor:
    """The loss of a batch whose labels are all -100: zero (a mean over no target would be NaN), still part
    of the graph so that ``backward()`` works and gives zero gradients."""
    warnings.warn(
        f"labels hold no target: every position is {IGNORE_INDEX} (ignored), so the loss is 0 and teaches nothing; "
        "check the objective's masking or the batch",
        stacklevel=5,  # the caller of the model
    )
    return hidden.new_zeros(()) + hidden.sum() * 0.0  # + 0 makes a -0.0 a 0.0


# ---------------------------------------------------------------- build API
def split_spec(spec: Any, overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Normalise a model spec to (model section with ``name``, objective section or None)."""
    objective: Any = None
    if isinstance(spec, (str, Path)) and (str(spec).endswith((".toml", ".json")) or Path(spec).is_file()):
        data = read_config_file(spec)
        spec = data.get("model", data)
        objective = data.get("objective")
    if isinstance(spec, str):
        model: dict[str, Any] = {"name": spec}
    elif isinstance(spec, Mapping):
        model = dict(spec)
        model.pop("schema_version", None)
        objective = model.pop("objective", objective)
    else:
        raise ConfigError(
            f"build_model takes a model name, a dict, or a path to a .toml/.json file; got {type(spec).__name__}"
        )
    extra = dict(overrides)
    if "objective" in extra:
        objective = extra.pop("objective")
    model.update(extra)
    if not isinstance(model.get("name"), str):
        raise ConfigError("model spec needs a 'name', a string (a model or preset; see `unimodel list model`)")
    if isinstance(objective, str):
        objective = {"name": objective}
    elif isinstance(objective, Mapping):
        objective = dict(objective)
    elif objective is not None:
        raise ConfigError(
            f"objective must be a name or a table with a name (e.g. {{name = 'fim', rate = 0.5}}), "
            f"got {type(objective).__name__} {objective!r:.60}"
        )
    return model, objective


def build_model(
    spec: Any, *, registry: Registry | None = None, tokenizer: Tokenizer | None = None, **overrides: Any
) -> Model:
    """Build a model from a preset name, a dict, or a ``.toml``/``.json`` file.

    Keyword overrides set config fields (``d_model=256``) or the objective
    (``objective="fim"`` or ``objective={"name": "fim", "rate": 0.5}``). The
    objective's :attr:`~unimodel.interfaces.Objective.model_options` are applied
    to the model config where it has those fields (``cmlm`` builds the decoder
    without its causal mask), unless the spec sets them itself.
    """
    reg = registry or get_registry()
    model_spec, objective_spec = split_spec(spec, overrides)
    name = model_spec.pop("name")
    named = reg.get("model", name)
    family_comp, preset_values = reg.resolve_model(name)
    family: type[ModelFamily] = family_comp.load()
    section = f"model {name!r}"
    model_spec = family.config_class.canonical(model_spec, section)
    family.config_class.from_layers(preset_values, model_spec, section=section)  # the user's own mistakes first

    objective_spec = objective_spec or {"name": family_comp.default_objective}
    objective_name = objective_spec.get("name")
    if objective_name is None:
        raise ConfigError(f"model {name!r} has no default objective; name one with objective=...")
    objective_comp = reg.get("objective", objective_name)
    objective_cls: type[Objective] = objective_comp.load()
    options = applicable_options(objective_cls, family.config_class)
    try:
        config = family.config_class.from_layers(preset_values, options, model_spec, section=section)
        provides = model_provides(family, family_comp, config)
    except ConfigError as exc:  # the model cannot take the objective's settings
        fits = _fitting_objectives(reg, family, family_comp, preset_values, model_spec)
        raise IncompatibleObjectiveError(
            f"objective {objective_name!r} builds the model with {_assignments(options)}, which model {name!r} "
            f"cannot take: {exc}. Objectives that work with {name!r}: {', '.join(fits) or '(none)'}."
        ) from exc
    missing = set(objective_comp.requires) - provides
    if missing:
        fits = _fitting_objectives(reg, family, family_comp, preset_values, model_spec)
        runners = reg.compatible_models(objective_comp.requires)
        settings = variants_providing(family_comp, objective_comp.requires)
        hint = f" Model {name!r} provides them when built with {' or '.join(settings)}." if settings else ""
        raise IncompatibleObjectiveError(
            f"objective {objective_name!r} needs {Cap.explain(sorted(missing))}, which model {name!r} does not "
            f"provide{_options_note(objective_cls, family.config_class, model_spec)}.{hint} "
            f"Objectives that work with {name!r}: {', '.join(fits) or '(none)'}. "
            f"Models that can run {objective_name!r}: {', '.join(runners) or '(none registered)'}."
        )
    objective, objective_comp = _build_objective(objective_spec, reg, provides=None, model_name=name)

    shown = reg.display_name(named)  # the plain name unless another plugin registers it too
    backbone, heads = build_within_memory(family, config, objective, f"model {shown!r}")  # or a ResourceError
    missing = set(type(objective).requires) - set(backbone.provides)
    if missing:  # the registry metadata promised more than the built backbone has
        raise IncompatibleObjectiveError(
            f"model {name!r} declares {sorted(provides)} but its backbone lacks "
            f"{sorted(missing)}; this is a bug in plugin {family_comp.plugin!r}"
        )
    objective_name = reg.display_name(objective_comp)
    if tokenizer is not None:
        from unimodel.data.tokenizer import check_objective_tokens

        check_objective_tokens(tokenizer, objective, objective_name)
    return Model(
        name=reg.display_name(family_comp),
        preset=reg.display_name(named) if named.base is not None else None,
        config=config,
        backbone=backbone,
        objective=objective,
        objective_name=objective_name,
        heads=heads,
        tokenizer=tokenizer,
        provenance={"model": reg.provenance(family_comp), "objective": reg.provenance(objective_comp)},
    )


def model_provides(family: type[ModelFamily], family_comp: Component, config: Config) -> frozenset[str]:
    """Capabilities of ``family`` built with ``config`` (see :func:`unimodel.registry.provides_when_built`)."""
    return provides_when_built(family_comp, config, family)


def capabilities_for(spec: Any, objective: str | None = None, *, registry: Registry | None = None) -> frozenset[str]:
    """Capabilities of model ``spec`` (a name or a dict, as for :func:`build_model`) built for ``objective``.

    The objective's ``model_options`` are applied first (``cmlm`` makes a T5's
    decoder non-causal); builds configs only, no weights. Raises ConfigError
    when the model cannot take the spec or the options.
    """
    reg = registry or get_registry()
    model_spec, _ = split_spec(spec, {})
    family_comp, preset_values = reg.resolve_model(model_spec.pop("name"))
    family: type[ModelFamily] = family_comp.load()
    options = applicable_options(reg.load("objective", objective), family.config_class) if objective else {}
    config = family.config_class.from_layers(preset_values, options, family.config_class.canonical(model_spec))
    return model_provides(family, family_comp, config)


def compatible_objectives(spec: Any, *, registry: Registry | None = None) -> list[str]:
    """Names of the objectives model ``spec`` (a name or a dict, as for :func:`build_model`) builds with.

    Unlike :meth:`Registry.compatible_objectives`, which compares registered
    capabilities, this applies each objective's ``model_options`` to the model
    config first: a T5 fits ``cmlm``, which builds its decoder non-causally.
    Imports the family and the objectives (not a cheap metadata query). A spec
    whose config cannot be built as given (a pairing without its parts) gets
    the registry's answer.
    """
    reg = registry or get_registry()
    model_spec, _ = split_spec(spec, {})
    name = model_spec.pop("name")
    family_comp, preset_values = reg.resolve_model(name)
    family: type[ModelFamily] = family_comp.load()
    try:
        model_spec = family.config_class.canonical(model_spec)
        family.config_class.from_layers(preset_values, model_spec)
    except ConfigError:  # a spec that needs more (a pairing without its parts): the registered capabilities
        return reg.compatible_objectives(family_comp.provides)
    return _fitting_objectives(reg, family, family_comp, preset_values, model_spec)


def _fitting_objectives(
    reg: Registry,
    family: type[ModelFamily],
    family_comp: Component,
    preset_values: Mapping[str, Any],
    model_spec: Mapping[str, Any],
) -> list[str]:
    base: frozenset[str] | None = None
    out = []
    for comp in reg.components("objective"):
        try:
            options = applicable_options(comp.load(), family.config_class)
            if options or base is None:
                config = family.config_class.from_layers(preset_values, options, model_spec)
                provides = model_provides(family, family_comp, config)
                if not options:
                    base = provides
            else:
                provides = base
        except UnimodelError:  # a model that cannot take the objective's options, or a broken plugin
            continue
        if set(comp.requires) <= provides:
            out.append(reg.display_name(comp))
    return sorted(out)


def _assignments(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def _options_note(objective: type[Objective], config_class: type[Config], model_spec: Mapping[str, Any]) -> str:
    """Why the objective's model options did not give the capabilities it needs, when that is why."""
    wanted = objective.model_options
    overridden = {k: model_spec[k] for k, v in wanted.items() if k in model_spec and model_spec[k] != v}
    if overridden:
        return (
            f" as configured: the objective builds the model with {_assignments({k: wanted[k] for k in overridden})}"
            f", but the model spec sets {_assignments(overridden)}; drop that setting"
        )
    absent = [k for k in wanted if k not in config_class.field_names()]
    if absent:
        return f" (its config has no {', '.join(absent)} option to build it as the objective needs)"
    return ""


def build_objective(
    spec: Any,
    *,
    registry: Registry | None = None,
    provides: Any = None,
    model_name: str | None = None,
    **overrides: Any,
) -> Objective:
    """Build an objective by name (plain or ``plugin:name``) or dict. With ``provides`` (a backbone's
    capabilities), an objective that needs more fails with the list of ones that fit."""
    if not isinstance(spec, (str, Mapping)):
        raise ConfigError(f"build_objective takes an objective name or a dict, got {type(spec).__name__}")
    values = {"name": spec} if isinstance(spec, str) else dict(spec)
    values.update(overrides)
    return _build_objective(values, registry or get_registry(), provides=provides, model_name=model_name)[0]


def _build_objective(
    spec: Mapping[str, Any], reg: Registry, *, provides: Any, model_name: str | None
) -> tuple[Objective, Component]:
    values = dict(spec)
    name = values.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError("objective spec needs a 'name', a string (see `unimodel list objective`)")
    comp = reg.get("objective", name)
    if provides is not None:
        missing = set(comp.requires) - set(provides)
        if missing:
            fits = reg.compatible_objectives(provides)
            runners = reg.compatible_models(comp.requires)
            settings = (
                variants_providing(reg.resolve_model(model_name)[0], comp.requires)
                if model_name and reg.has("model", model_name)
                else []
            )
            hint = f" Model {model_name!r} provides them when built with {' or '.join(settings)}." if settings else ""
            raise IncompatibleObjectiveError(
                f"objective {name!r} needs {', '.join(sorted(missing))}, which model {model_name!r} does not provide."
                f"{hint} Objectives that work with {model_name!r}: {', '.join(fits) or '(none)'}. "
                f"Models that can run {name!r}: {', '.join(runners) or '(none registered)'}."
            )
    cls: type[Objective] = comp.load()
    return cls(cls.config_class.from_dict(values, section=f"objective {name!r}")), comp


__all__ = [
    "Cap",
    "Model",
    "accepted_inputs",
    "build_model",
    "build_objective",
    "call_part",
    "capabilities_for",
    "compatible_objectives",
]
