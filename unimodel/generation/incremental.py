"""Prepared inputs and the KV-cached decoding loop body shared by autoregressive strategies.

:class:`GenerationInputs` is what ``generate`` hands to a strategy: the user's
ids and mask plus, for an encoder-decoder model, the encoder output (run once).
:class:`IncrementalDecoder` runs a causal decoder on its cache (a preallocated
:class:`~unimodel.nn.attention.KVCache` for the built-in families): one prefill
over the decoder prompt, then one token per step, returning fp32 logits for the
last position only. A decoder without ``kv_cache`` is re-run over the whole
prefix at every step instead.

Shapes: B rows, S encoder/prompt length, P decoder prompt length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from unimodel.errors import InputError
from unimodel.interfaces import Cap, EncoderOutput
from unimodel.nn.positions import positions_from_mask
from unimodel.routing import accepted_inputs, call_part

if TYPE_CHECKING:
    from unimodel.model import Model
    from unimodel.nn.attention import KVCache


@dataclass
class GenerationInputs:
    """A generation call's inputs, prepared once.

    Attributes:
        input_ids: (B, S) as given: the prompt of a decoder-only model, or the
            encoder input of an encoder-decoder model.
        attention_mask: (B, S) 1 for real tokens, 0 for padding; ``None`` when
            nothing is padded (so the decoder can take its unmasked fast path).
        decoder_input_ids: (B, P) where the decoder starts: the prompt itself,
            or a (B, 1) column of decoder start tokens.
        encoder_output: the encoder's output for ``input_ids`` (encoder-decoder
            models), else ``None``.
    """

    input_ids: Tensor
    attention_mask: Tensor | None
    decoder_input_ids: Tensor
    encoder_output: EncoderOutput | None = None

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def is_encoder_decoder(self) -> bool:
        return self.encoder_output is not None

    @property
    def decoder_attention_mask(self) -> Tensor | None:
        """(B, P) padding mask of the decoder prompt (only a decoder-only prompt is padded)."""
        return None if self.is_encoder_decoder else self.attention_mask


_DECODING_INPUTS = frozenset({"attention_mask", "position_ids", "memory", "memory_mask", "cache"})
_HINTS = frozenset({"position_ids"})  # a decoder that declares no position ids places tokens itself
_RECOMPUTE: ContextVar[bool] = ContextVar("unimodel_recompute_prefix", default=False)


@contextmanager
def recompute_prefix() -> Iterator[None]:
    """Within the block, :class:`IncrementalDecoder` ignores any KV cache and re-runs the prefix at every step.

    This is the path of a decoder without ``kv_cache``; the conformance kit runs
    a strategy both ways and compares (a cache that answers wrongly after
    ``reorder`` shows up as different tokens).
    """
    token = _RECOMPUTE.set(True)
    try:
        yield
    finally:
        _RECOMPUTE.reset(token)


class Stepper(Protocol):
    """What a left-to-right strategy drives (:func:`~unimodel.generation.strategies.left_to_right`):
    rows ``prompt`` (N, P) with ``prompt_mask`` (N, P) or ``None``, and next-token logits (N, V) fp32
    from :meth:`prefill` (after the prompt) and :meth:`step` (after one more token per row)."""

    prompt: Tensor
    prompt_mask: Tensor | None

    @property
    def vocab_size(self) -> int: ...

    def prefill(self) -> Tensor: ...

    def step(self, tokens: Tensor) -> Tensor: ...


class IncrementalDecoder:
    """Runs ``model.decoder`` and its LM head one step at a time.

    A decoder that provides ``kv_cache`` runs on its cache: one prefill over the
    decoder prompt, then one token per step. Any other decoder re-runs the
    whole sequence at every step (slower, same tokens).

    Rows are the input rows, each repeated ``expand`` times consecutively
    (beams, or several samples per input), so row ``i * expand + j`` belongs to
    input ``i``.

    What the decoder receives (the decoding half of the call contract in docs/plugins.md):
    ``attention_mask`` (N, cached + new) over every position so far and
    ``position_ids`` (N, new) counting real tokens only, both only when the
    prompt is left-padded (else ``None``); ``memory`` (N, S, D_enc) and
    ``memory_mask`` (N, S) at every call; ``cache`` on the cached path.

    Args:
        model: a model whose decoder is causal and whose heads include ``"lm"``.
        inputs: the prepared inputs.
        capacity: decoder positions to allocate (the generation's ``max_length``).
        expand: copies of each input row.
    """

    def __init__(self, model: Model, inputs: GenerationInputs, *, capacity: int, expand: int = 1) -> None:
        if model.decoder is None or "lm" not in model.heads:
            raise InputError(f"model {model.name!r} has no decoder with an LM head; it cannot generate tokens")
        self.model_name = model.name
        self.decoder = model.decoder
        self.head = model.heads["lm"]
        prompt = inputs.decoder_input_ids
        if prompt.shape[1] == 0:
            raise InputError(
                f"model {model.name!r} has no decoder start token, so left-to-right decoding has nothing to start "
                "from; pass decoder_start_token_id"
            )
        mask = inputs.decoder_attention_mask
        memory = memory_mask = None
        if inputs.encoder_output is not None:
            memory, memory_mask = inputs.encoder_output.last_hidden_state, inputs.attention_mask
        if expand > 1:
            prompt = prompt.repeat_interleave(expand, dim=0)
            mask = None if mask is None else mask.repeat_interleave(expand, dim=0)
            memory = None if memory is None else memory.repeat_interleave(expand, dim=0)
            memory_mask = None if memory_mask is None else memory_mask.repeat_interleave(expand, dim=0)
        self.expand = expand
        self.prompt = prompt  # (N, P), N = B * expand
        self.prompt_mask = mask  # (N, P) or None
        self.memory = memory  # (N, S, D_enc) or None
        self.memory_mask = memory_mask  # (N, S) or None
        n, p = prompt.shape
        # The built-in decoders take every decoding input; calling them directly keeps the step lean.
        self._direct = accepted_inputs(self.decoder) >= _DECODING_INPUTS
        self.cache: KVCache | None = None
        self._tokens: Tensor | None = None  # (N, capacity): every token so far, when there is no cache
        self._length = 0
        if Cap.KV_CACHE in model.provides and not _RECOMPUTE.get():
            self.cache = self.decoder.new_cache(n, capacity, dtype=model.dtype, device=prompt.device)
        else:
            self._tokens = prompt.new_zeros(n, max(capacity, p))
            self._tokens[:, :p] = prompt
        # With left padding the decoder needs a key mask over cached + new tokens and
        # per-row positions that skip the pads; without padding it needs neither.
        self._mask: Tensor | None = None
        self._next_pos: Tensor | None = None
        if mask is not None:
            self._mask = torch.ones(n, max(capacity, p), dtype=mask.dtype, device=mask.device)
            self._mask[:, :p] = mask
            self._next_pos = mask.sum(dim=1, keepdim=True)  # (N, 1): real tokens so far

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    @property
    def length(self) -> int:
        """Decoder positions processed so far."""
        return self.cache.length if self.cache is not None else self._length

    def _logits(self, hidden: Tensor) -> Tensor:
        """Logits of the last position only, (N, V) fp32: the head never sees the other positions."""
        return self.head(hidden[:, -1]).float()

    def _run(self, ids: Tensor, mask: Tensor | None, positions: Tensor | None) -> Tensor:
        if self._direct:
            out = self.decoder(
                ids,
                attention_mask=mask,
                position_ids=positions,
                memory=self.memory,
                memory_mask=self.memory_mask,
                cache=self.cache,
            )
        else:
            inputs: dict[str, Any] = {"attention_mask": mask, "position_ids": positions}
            inputs.update(memory=self.memory, memory_mask=self.memory_mask)
            if self.cache is not None:
                inputs["cache"] = self.cache
            out = call_part(self.decoder, ids, inputs, model=self.model_name, optional=_HINTS)
        return self._logits(out.last_hidden_state)

    def prefill(self) -> Tensor:
        """Run the decoder prompt through the decoder; logits of its last position, (N, V) fp32."""
        mask = self.prompt_mask
        positions = positions_from_mask(mask) if mask is not None else None
        self._length = self.prompt.shape[1]
        return self._run(self.prompt, mask, positions)

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row, (N,); logits of the next position, (N, V) fp32."""
        if self._tokens is not None:
            return self._recompute(tokens)
        mask = positions = None
        if self._mask is not None:
            assert self._next_pos is not None
            mask = self._mask[:, : self.length + 1]
            positions = self._next_pos
            self._next_pos = positions + 1
        return self._run(tokens[:, None], mask, positions)

    def _recompute(self, tokens: Tensor) -> Tensor:
        """Without a cache: append ``tokens`` and run the decoder over everything so far."""
        assert self._tokens is not None
        length = self._length + 1
        if length > self._tokens.shape[1]:  # past the capacity a strategy asked for: grow, as a cache would
            self._tokens = torch.cat((self._tokens, torch.zeros_like(self._tokens)), dim=1)
            if self._mask is not None:
                self._mask = torch.cat((self._mask, torch.ones_like(self._mask)), dim=1)
        self._tokens[:, length - 1] = tokens
        self._length = length
        mask = positions = None
        if self._mask is not None:
            mask = self._mask[:, :length]
            positions = positions_from_mask(mask)
        return self._run(self._tokens[:, :length], mask, positions)

    def reorder(self, index: Tensor) -> None:
        """Rows now continue rows ``index`` (N,) (beam search): reorder the cache, tokens and masks."""
        if self.cache is not None:
            self.cache.reorder(index)
        if self._tokens is not None:
            self._tokens = self._tokens.index_select(0, index)
        if self._mask is not None:
            self._mask = self._mask.index_select(0, index)
        if self._next_pos is not None:
            self._next_pos = self._next_pos.index_select(0, index)
        if self.memory is None and self.memory_mask is None:
            return
        rows = torch.arange(index.shape[0], device=index.device)
        if bool((index // self.expand == rows // self.expand).all()):
            return  # every row continues a row of its own input: the encoder rows are copies of one another
        if self.memory is not None:
            self.memory = self.memory.index_select(0, index)
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, index)
