"""Prepared inputs and the KV-cached decoding loop body shared by autoregressive strategies.

:class:`GenerationInputs` is what ``generate`` hands to a strategy: the user's
ids and mask plus, for an encoder-decoder model, the encoder output (run once).
:class:`IncrementalDecoder` runs a causal decoder on a preallocated
:class:`~unimodel.nn.attention.KVCache`: one prefill over the decoder prompt,
then one token per step, returning fp32 logits for the last position only.

Shapes: B rows, S encoder/prompt length, P decoder prompt length, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from unimodel.errors import InputError
from unimodel.interfaces import EncoderOutput
from unimodel.nn.positions import positions_from_mask

if TYPE_CHECKING:
    from unimodel.model import Model


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
    """Runs ``model.decoder`` and its LM head one step at a time on a KV cache.

    Rows are the input rows, each repeated ``expand`` times consecutively
    (beams, or several samples per input), so row ``i * expand + j`` belongs to
    input ``i``.

    Args:
        model: a model whose decoder is causal and whose heads include ``"lm"``.
        inputs: the prepared inputs.
        capacity: decoder positions to allocate (the generation's ``max_length``).
        expand: copies of each input row.
    """

    def __init__(self, model: Model, inputs: GenerationInputs, *, capacity: int, expand: int = 1) -> None:
        if model.decoder is None or "lm" not in model.heads:
            raise InputError(f"model {model.name!r} has no decoder with an LM head; it cannot generate tokens")
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
        self.prompt = prompt  # (N, P), N = B * expand
        self.prompt_mask = mask  # (N, P) or None
        self.memory = memory  # (N, S, D_enc) or None
        self.memory_mask = memory_mask  # (N, S) or None
        n, p = prompt.shape
        self.cache = self.decoder.new_cache(n, capacity, dtype=model.dtype, device=prompt.device)
        # With left padding the decoder needs a key mask over cached + new tokens and
        # per-row positions that skip the pads; without padding it needs neither.
        self._mask: Tensor | None = None
        self._next_pos: Tensor | None = None
        if mask is not None:
            self._mask = torch.ones(n, capacity, dtype=mask.dtype, device=mask.device)
            self._mask[:, :p] = mask
            self._next_pos = mask.sum(dim=1, keepdim=True)  # (N, 1): real tokens so far

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    @property
    def length(self) -> int:
        """Decoder positions processed so far."""
        return self.cache.length

    def _logits(self, hidden: Tensor) -> Tensor:
        """Logits of the last position only, (N, V) fp32: the head never sees the other positions."""
        return self.head(hidden[:, -1]).float()

    def prefill(self) -> Tensor:
        """Run the decoder prompt through the decoder; logits of its last position, (N, V) fp32."""
        mask = self.prompt_mask
        positions = positions_from_mask(mask) if mask is not None else None
        out = self.decoder(
            self.prompt,
            attention_mask=mask,
            position_ids=positions,
            memory=self.memory,
            memory_mask=self.memory_mask,
            cache=self.cache,
        )
        return self._logits(out.last_hidden_state)

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row, (N,); logits of the next position, (N, V) fp32."""
        mask = positions = None
        if self._mask is not None:
            assert self._next_pos is not None
            mask = self._mask[:, : self.cache.length + 1]
            positions = self._next_pos
            self._next_pos = positions + 1
        out = self.decoder(
            tokens[:, None],
            attention_mask=mask,
            position_ids=positions,
            memory=self.memory,
            memory_mask=self.memory_mask,
            cache=self.cache,
        )
        return self._logits(out.last_hidden_state)

    def reorder(self, index: Tensor) -> None:
        """Rows now continue rows ``index`` (N,) (beam search): reorder the cache and masks."""
        self.cache.reorder(index)
        if self._mask is not None:
            assert self._next_pos is not None
            self._mask = self._mask.index_select(0, index)
            self._next_pos = self._next_pos.index_select(0, index)
        if self.memory is not None:
            self.memory = self.memory.index_select(0, index)
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, index)
