"""Composition of an encoder, a decoder and heads into one :class:`Model` (the build API, ``build_model`` and
friends, lives in :mod:`unimodel.building` and is re-exported here)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

# the build API lives in unimodel.building; its names stay importable from here
from unimodel.building import (
    applicable_options,
    build_model,
    build_objective,
    capabilities_for,
    compatible_objectives,
    model_provides,
    split_spec,
)
from unimodel.config import Config
from unimodel.errors import ConfigError, InputError
from unimodel.generation.config import GenerationConfig
from unimodel.inputs import RangeChecks, check_call, check_ids_range, check_ids_shape
from unimodel.interfaces import (
    Backbone,
    Cap,
    CodebookPart,
    Decoder,
    Encoder,
    EncoderOutput,
    ModelOutput,
    Objective,
)
from unimodel.nn.heads import LMHead
from unimodel.nn.losses import IGNORE_INDEX
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


__all__ = [
    "Cap",
    "Model",
    "accepted_inputs",
    "applicable_options",
    "build_model",
    "build_objective",
    "call_part",
    "capabilities_for",
    "compatible_objectives",
    "model_provides",
    "split_spec",
]
