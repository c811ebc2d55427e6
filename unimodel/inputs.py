"""Checks of what a :class:`~unimodel.model.Model` call receives, before torch meets it.

Shapes, dtypes and batch sizes are metadata: checking them costs no host
sync. Value ranges (token ids inside the vocabulary, masks of 0/1, positions
inside the position table, labels that are token ids or -100) need the
values: :class:`RangeChecks` reduces every checked tensor to its minimum and
maximum and brings all of them to the host with one ``tolist()``, so a call
costs one read however many inputs it has. On the CPU that read is free. On a
device (CUDA, MPS) it is a host sync, paid once per call made by a user; the
hot paths whose inputs unimodel has made or checked itself (a training step
on encoded data, a generation step) run inside :func:`inputs_checked`, where
the device read is skipped, as it is under ``torch.compile`` tracing (a read
there would break the graph).

Shapes: B batch, S encoder (or decoder-only) length, T decoder length, P cached positions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unimodel.errors import InputError
from unimodel.interfaces import Cap
from unimodel.nn.losses import IGNORE_INDEX
from unimodel.nn.sync import host_reads_free

if TYPE_CHECKING:
    from unimodel.model import Model

INTEGER_DTYPES = (torch.long, torch.int32, torch.int16, torch.uint8, torch.int8)
MASK_DTYPES = (torch.bool, *INTEGER_DTYPES, torch.float32, torch.float64, torch.float16, torch.bfloat16)
MASK_VALUES = "1 for real tokens and 0 for padding"


#: inside :func:`inputs_checked`: the caller vouches for the values, so no device read checks them again
_CHECKED: ContextVar[bool] = ContextVar("inputs_checked", default=False)


@contextmanager
def inputs_checked() -> Iterator[None]:
    """Within the block, model calls skip the value-range checks that would read device memory.

    For callers that made or checked the values themselves (the trainer on data
    its data kind has checked against the model, generation on ids the model
    produced). Shapes, dtypes and batch sizes are still checked, and so are CPU
    tensors, whose reading costs nothing. The loss of a call whose labels are
    all -100 is then whatever the loss computes (0 for the fused token loss)
    instead of being replaced after a count.
    """
    token = _CHECKED.set(True)
    try:
        yield
    finally:
        _CHECKED.reset(token)


class RangeChecks:
    """Integer tensors with their allowed ranges, and tensors to count, checked with one host read."""

    def __init__(self) -> None:
        self._ranged: list[tuple[Tensor, int, int | None, Callable[[int], str]]] = []
        self._counted: list[tuple[str, Tensor]] = []
        self._zero: dict[str, str] = {}

    def add(self, values: Tensor, lo: int, hi: int | None, message: Callable[[int], str]) -> None:
        """Require ``lo <= values <= hi`` (``hi`` None: no upper bound); ``message(bad)`` explains a failure."""
        if values.numel() == 0 or values.dtype == torch.bool:
            return
        self._ranged.append((values, lo, hi, message))

    def add_mask(self, mask: Tensor, name: str) -> None:
        """Require a padding mask to hold only 0 and 1 (any dtype)."""
        message = f"{name} must hold {MASK_VALUES}"
        if mask.is_floating_point():  # 0.5 would pass a min/max check
            self.count(f"not 0/1 in {name}", (mask != 0) & (mask != 1), must_be_zero=message)
        else:
            self.add(mask, 0, 1, lambda bad: f"{message}, got {bad}")

    def count(self, key: str, flags: Tensor, *, must_be_zero: str | None = None) -> None:
        """Count the True entries of ``flags``; :meth:`run` returns the count under ``key``, or raises
        ``must_be_zero`` when it is not 0."""
        self._counted.append((key, flags))
        if must_be_zero is not None:
            self._zero[key] = must_be_zero

    def skipped(self) -> bool:
        """True when the values are on a device whose reading costs a sync (or under torch.compile
        tracing) and the caller vouched for them (:func:`inputs_checked`) or is being compiled."""
        first = self._ranged[0][0] if self._ranged else self._counted[0][1] if self._counted else None
        if first is None or host_reads_free(first):
            return False
        return _CHECKED.get() or torch.compiler.is_compiling()

    def run(self) -> dict[str, int]:
        """Check every range (one host read for all of them); returns the counts (none when
        :meth:`skipped`)."""
        if (not self._ranged and not self._counted) or self.skipped():
            return {}
        stats: list[Tensor] = []
        for values, _, _, _ in self._ranged:
            low, high = torch.aminmax(values)
            stats += [low.long(), high.long()]
        stats += [flags.sum().long() for _, flags in self._counted]
        device = stats[0].device
        read: list[int] = torch.stack([s.to(device) for s in stats]).tolist()  # the one host read
        for i, (_, lo, hi, message) in enumerate(self._ranged):
            vmin, vmax = read[2 * i], read[2 * i + 1]
            if vmin < lo:
                raise InputError(message(vmin))
            if hi is not None and vmax > hi:
                raise InputError(message(vmax))
        counts = dict(zip([key for key, _ in self._counted], read[2 * len(self._ranged) :], strict=True))
        for key, explanation in self._zero.items():
            if counts[key]:
                raise InputError(explanation)
        return counts


def check_output_positions(positions: Any, batch: int, length: int) -> Tensor:
    """A decoder's ``output_positions``: (B, K) integer positions inside its ``length`` inputs, as long."""
    value = require_tensor(positions, "output_positions", INTEGER_DTYPES, "integer positions")
    if value.dim() != 2 or value.shape[0] != batch:
        raise InputError(
            f"output_positions must be (batch, K) = ({batch}, K): K positions of each row whose hidden states "
            f"are wanted; got shape {shape_of(value)}"
        )
    checks = RangeChecks()
    checks.add(
        value,
        0,
        length - 1,
        lambda bad: (
            f"output_positions must index the decoder's {length} input positions (0 to {length - 1}), got {bad}"
        ),
    )
    checks.run()
    return value.long()


def shape_of(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def require_tensor(value: Any, name: str, dtypes: tuple[torch.dtype, ...], what: str) -> Tensor:
    """``value`` as a tensor of one of ``dtypes`` (``what`` names them in the message)."""
    if not isinstance(value, Tensor):
        raise InputError(f"{name} must be a torch tensor of {what}, got {type(value).__name__}")
    if value.dtype not in dtypes:
        raise InputError(f"{name} must hold {what}, got dtype {value.dtype}")
    return value


def require_shape(
    value: Tensor, name: str, expected: tuple[int, ...], meaning: str, *, positions: bool = False
) -> None:
    """Exact shape, or for ``positions`` also (T,) or (1, T) (broadcast over the batch)."""
    if tuple(value.shape) == expected:
        return
    if positions and tuple(value.shape) in (expected[1:], (1, *expected[1:])):
        return
    also = f", ({expected[1]},) or (1, {expected[1]})" if positions else ""
    raise InputError(f"{name} must have shape {expected} {meaning}{also}, got {tuple(value.shape)}")


def check_ids_range(checks: RangeChecks, ids: Tensor, name: str, vocab: int) -> None:
    checks.add(
        ids,
        0,
        vocab - 1,
        lambda bad: (
            f"{name} contains token id {bad}, outside this model's vocabulary of {vocab} (ids 0..{vocab - 1}); "
            "was the text encoded with another tokenizer?"
        ),
    )


def check_ids_shape(ids: Any, name: str) -> Tensor:
    ids = require_tensor(ids, name, INTEGER_DTYPES, "integer token ids (torch.long)")
    if ids.dim() != 2:
        raise InputError(f"{name} must have shape (batch, length), got {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise InputError(f"{name} is empty (shape {tuple(ids.shape)})")
    return ids


@dataclass
class _Stream:
    """One side's inputs: the ids, their mask and positions, and what they must fit."""

    ids: Tensor | None
    ids_name: str
    mask: Any
    mask_name: str
    positions: Any
    positions_name: str
    vocab: int
    max_positions: int | None
    past: int = 0


def _check_stream(checks: RangeChecks, s: _Stream, batch: int | None) -> int | None:
    """Shapes and dtypes of one side (no sync); ranges go to ``checks``. Returns the batch size."""
    if s.ids is None:
        return batch
    ids = check_ids_shape(s.ids, s.ids_name)
    rows, T = ids.shape
    if batch is not None and rows != batch:
        raise InputError(f"{s.ids_name} has batch size {rows} but the encoder input has {batch}; they must match")
    check_ids_range(checks, ids, s.ids_name, s.vocab)
    if s.max_positions is not None and s.past + T > s.max_positions:
        raise InputError(
            f"{s.ids_name} has {s.past + T} positions (including {s.past} cached) but the model has a position "
            f"table of {s.max_positions}; truncate the input or build with a larger max_positions"
        )
    if s.mask is not None:
        mask = require_tensor(s.mask, s.mask_name, MASK_DTYPES, MASK_VALUES)
        cached = f"(batch, {s.past} cached + {T} new positions)" if s.past else f"(batch, length) like {s.ids_name}"
        require_shape(mask, s.mask_name, (rows, s.past + T), cached)
        checks.add_mask(mask, s.mask_name)
    if s.positions is not None:
        pos = require_tensor(s.positions, s.positions_name, INTEGER_DTYPES, "integer positions (torch.long)")
        require_shape(pos, s.positions_name, (rows, T), f"(batch, length) like {s.ids_name}", positions=True)
        top = None if s.max_positions is None else s.max_positions - 1
        table = "" if top is None else f" (positions 0..{top} of the position table)"
        checks.add(pos, 0, top, lambda bad: f"{s.positions_name} contains {bad}, outside the allowed positions{table}")
    return rows


def check_call(
    model: Model,
    *,
    input_ids: Any,
    attention_mask: Any,
    token_type_ids: Any,
    position_ids: Any,
    decoder_input_ids: Any,
    decoder_attention_mask: Any,
    decoder_position_ids: Any,
    encoder_outputs: Any,
    past_key_values: Any,
    labels: Any,
    logits_at: Any,
    lm_labels: bool,
    shifted: bool,
) -> int | None:
    """Check a forward call's inputs: shapes, dtypes and batch sizes, then every range with one host sync.

    ``lm_labels``: the labels are token ids of the LM head (checked against the
    vocabulary, -100 allowed); ``shifted``: position t predicts label t + 1, so
    the first label is never a target. Returns the number of positions that
    have a target (``None`` without such labels).
    """
    checks = RangeChecks()
    enc, dec = model.encoder, model.decoder
    batch: int | None = None
    if enc is not None and encoder_outputs is None and Cap.CONTINUOUS_INPUT in type(enc).provides:
        pass  # an encoder of continuous inputs (pixel_values ...) validates its own inputs
    elif enc is not None and encoder_outputs is None:
        encoder_side = _Stream(
            ids=input_ids,
            ids_name="input_ids",
            mask=attention_mask,
            mask_name="attention_mask",
            positions=position_ids,
            positions_name="position_ids",
            vocab=enc.vocab_size,
            max_positions=enc.max_positions,
        )
        batch = _check_stream(checks, encoder_side, None)
    elif enc is not None:
        batch = _check_memory(checks, encoder_outputs, attention_mask)
    if token_type_ids is not None:
        _check_token_types(model, token_type_ids, input_ids)
    if dec is not None:
        past = int(getattr(past_key_values, "length", 0) or 0)
        prefix = "decoder_" if enc is not None else ""
        decoder_side = _Stream(
            ids=decoder_input_ids if enc is not None else input_ids,
            ids_name=f"{prefix}input_ids",
            mask=decoder_attention_mask if enc is not None else attention_mask,
            mask_name=f"{prefix}attention_mask",
            positions=decoder_position_ids if enc is not None else position_ids,
            positions_name=f"{prefix}position_ids",
            vocab=dec.vocab_size,
            max_positions=dec.max_positions,
            past=past,
        )
        batch = _check_stream(checks, decoder_side, batch)
        cached_batch = getattr(past_key_values, "batch_size", None)
        if isinstance(cached_batch, int) and batch is not None and cached_batch != batch:
            raise InputError(f"past_key_values holds a batch of {cached_batch} rows but the input has {batch}")
    elif decoder_input_ids is not None:
        raise InputError(f"model {model.name!r} has no decoder; do not pass decoder_input_ids")
    if labels is not None:
        _check_labels(checks, model, labels, batch, logits_at, lm_labels=lm_labels, shifted=shifted)
    return checks.run().get("targets")


def _check_memory(checks: RangeChecks, encoder_outputs: Any, attention_mask: Any) -> int:
    """``encoder_outputs`` given instead of ``input_ids``: its states (B, S, D), and the mask (B, S) over them."""
    memory = getattr(encoder_outputs, "last_hidden_state", None)
    if not isinstance(memory, Tensor) or memory.dim() != 3:
        raise InputError(
            "encoder_outputs must be the encoder's output, whose last_hidden_state is (batch, length, width); "
            f"got {type(encoder_outputs).__name__}"
        )
    if attention_mask is not None:
        mask = require_tensor(attention_mask, "attention_mask", MASK_DTYPES, MASK_VALUES)
        require_shape(mask, "attention_mask", tuple(memory.shape[:2]), "(batch, length) like the encoder output")
        checks.add_mask(mask, "attention_mask")
    return int(memory.shape[0])


def _check_token_types(model: Model, token_type_ids: Any, input_ids: Any) -> None:
    encoder_types = model.encoder is not None and Cap.TOKEN_TYPES in getattr(model.encoder, "provides", ())
    if Cap.TOKEN_TYPES not in model.provides and not encoder_types:  # a paired BERT encoder has them
        raise InputError(
            f"model {model.name!r} has no token types (segment embeddings), so token_type_ids would be ignored; "
            "do not pass them"
        )
    types = require_tensor(token_type_ids, "token_type_ids", INTEGER_DTYPES, "integer token types (torch.long)")
    if isinstance(input_ids, Tensor) and types.shape != input_ids.shape:
        raise InputError(
            f"token_type_ids must have shape {tuple(input_ids.shape)} like input_ids, got {tuple(types.shape)}"
        )


def _check_labels(
    checks: RangeChecks,
    model: Model,
    labels: Any,
    batch: int | None,
    logits_at: Any,
    *,
    lm_labels: bool,
    shifted: bool,
) -> None:
    if not isinstance(labels, Tensor):
        raise InputError(f"labels must be a torch tensor, got {type(labels).__name__}")
    if batch is not None and (labels.dim() == 0 or labels.shape[0] != batch):
        raise InputError(f"labels must have one row per input (batch {batch}), got shape {shape_of(labels)}")
    if not lm_labels:
        return
    require_tensor(labels, "labels", INTEGER_DTYPES, "integer token ids (torch.long)")
    vocab = model.vocab_size
    ignored = labels == IGNORE_INDEX
    checks.add(
        labels.masked_fill(ignored, 0),
        0,
        vocab - 1,
        lambda bad: (
            f"labels contain {bad}, which is neither a token id of this model's vocabulary (0..{vocab - 1}) "
            f"nor {IGNORE_INDEX} (ignored)"
        ),
    )
    targets = ~ignored
    if isinstance(logits_at, Tensor) and logits_at.dtype == torch.bool and logits_at.shape == labels.shape:
        targets = targets & logits_at
    elif shifted and labels.dim() == 2:
        targets = targets[:, 1:]
    checks.count("targets", targets)


__all__ = [
    "RangeChecks",
    "check_call",
    "check_ids_range",
    "check_ids_shape",
    "inputs_checked",
    "require_shape",
    "require_tensor",
]
