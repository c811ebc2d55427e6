"""The conditional masked LM (CMLM, Ghazvininejad et al. 2019) and its length head.

A CMLM is an encoder-decoder whose decoder sees its whole input. Training masks
a uniformly drawn number of the target's tokens, between one and all of them, and
predicts the masked ones from the source and the rest of the target; a length
head on the pooled encoder output learns the target length, which decoding
(:mod:`unimodel_nat.decoding`) needs before it can place any token.

Shapes: B batch, S source length, T target length, D encoder width, C length classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimodel.errors import ConfigError, DataError
from unimodel.interfaces import Backbone, Cap, ObjectiveOutput, TokenLoss
from unimodel.objectives import IGNORE_INDEX, TokenLossObjective, frame, pad_sequences, token_objective_step
from unimodel_nat.config import CMLMConfig, LengthMode


# ------------------------------------------------------------------ masking and the length head
def mask_targets(target_mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Which target positions to mask: (B, T) bool from ``target_mask`` (B, T) bool (True = a real token).

    Each row masks ``n`` of its ``L`` real tokens, ``n`` uniform in ``[1, L]``, the
    positions drawn uniformly without replacement; padding is never masked (a row
    without real tokens masks nothing).
    """
    B, T = target_mask.shape
    lengths = target_mask.sum(dim=1)  # (B,)
    counts = (torch.rand(B, generator=generator) * lengths).floor().long() + 1  # uniform in 1..L
    # Random scores, padding after every real token: the n lowest-ranked positions are n random real ones.
    scores = torch.rand(B, T, generator=generator).masked_fill(~target_mask, 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return (ranks < counts[:, None]) & target_mask


def masked_mean(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``hidden`` (B, S, D) over the positions where ``mask`` (B, S) is 1 (all when ``None``): (B, D)."""
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.to(hidden.dtype)[:, :, None]  # (B, S, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def length_classes(lengths: Tensor, source_lengths: Tensor, *, max_length: int, mode: LengthMode) -> Tensor:
    """The length-head class of each target length (B,) given the source lengths (B,), clamped into range."""
    if mode == "target":
        return lengths.clamp(0, max_length)
    return (lengths - source_lengths).clamp(-max_length, max_length) + max_length


def class_lengths(classes: Tensor, source_lengths: Tensor, *, max_length: int, mode: LengthMode) -> Tensor:
    """The target length each class stands for: classes (B, ...) with source lengths (B,) -> (B, ...)."""
    if mode == "target":
        return classes
    return classes - max_length + source_lengths.view(-1, *([1] * (classes.dim() - 1)))


class LengthHead(nn.Module):
    """Encoder states (B, S, D) -> length logits (B, C), from their mean over real positions.

    ``mode = "target"``: class ``c`` is target length ``c`` (C = max_length + 1; class
    0 is never a target). ``mode = "offset"``: class ``c`` is the offset ``c -
    max_length`` of the target length from the source length (C = 2 * max_length + 1).
    """

    def __init__(self, d_model: int, *, max_length: int, mode: LengthMode = "target") -> None:
        super().__init__()
        self.max_length, self.mode = max_length, mode
        n_classes = max_length + 1 if mode == "target" else 2 * max_length + 1
        self.proj = nn.Linear(d_model, n_classes)

    @property
    def n_classes(self) -> int:
        return self.proj.out_features

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, max_length={self.max_length}"

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.proj(masked_mean(hidden, attention_mask))

    def classes(self, lengths: Tensor, source_lengths: Tensor) -> Tensor:
        """See :func:`length_classes`."""
        return length_classes(lengths, source_lengths, max_length=self.max_length, mode=self.mode)

    def lengths(self, classes: Tensor, source_lengths: Tensor) -> Tensor:
        """See :func:`class_lengths`."""
        return class_lengths(classes, source_lengths, max_length=self.max_length, mode=self.mode)


def length_head_of(model: Any) -> LengthHead | None:
    """The model's length head (``model.heads["length"]``), or ``None``."""
    heads = model.heads
    head = heads["length"] if "length" in heads else None  # noqa: SIM401 - nn.ModuleDict has no get()
    return head if isinstance(head, LengthHead) else None


# ------------------------------------------------------------------ the objective
class CMLM(TokenLossObjective):
    """Conditional masked LM on source -> target pairs, with target-length prediction.

    ``prepare`` takes examples ``{"source": ids, "target": ids}`` (an empty target,
    as when framing a source to decode, gives nothing to predict). Sources are
    framed like ``seq2seq``'s (eos, optional bos); targets are not framed (the
    length head, not an eos, ends them). It returns the encoder inputs, the
    masked target as ``decoder_input_ids`` with its ``decoder_attention_mask``,
    ``labels`` (the target at masked positions, -100 elsewhere) and
    ``length_labels`` (B,) (the length head's classes).

    The loss is the label-smoothed cross-entropy at the masked positions, through
    the LM head only there, plus ``length_weight`` times the length head's
    cross-entropy. Both parts are in the metrics.
    """

    config_class = CMLMConfig
    requires = frozenset({Cap.ENCODER_DECODER, Cap.NONCAUSAL_DECODER, Cap.LM_HEAD})
    model_options = MappingProxyType({"causal_decoder": False})  # the decoder sees the whole target
    special_tokens = ("mask",)
    data_kind = "pairs"
    default_strategy = "mask_predict"  # the decoder cannot run left to right

    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        assert backbone.encoder is not None
        c = self.config
        return {"length": LengthHead(backbone.encoder.d_model, max_length=c.max_target_length, mode=c.length_mode)}

    def token_loss(self) -> TokenLoss:
        return TokenLoss(label_smoothing=self.config.label_smoothing)

    def mask_id(self, tokenizer: Any) -> int:
        """The mask token's id: ``mask_token_id``, else the tokenizer's ``mask`` role."""
        if self.config.mask_token_id is not None:
            return int(self.config.mask_token_id)
        if tokenizer is None or not tokenizer.has_role("mask"):
            roles = ", ".join(sorted(tokenizer.roles)) if tokenizer is not None else "no tokenizer given"
            raise ConfigError(
                "objective 'cmlm' replaces target tokens with the tokenizer's 'mask' token, which this tokenizer "
                f"lacks (roles: {roles}); train a tokenizer with the mask role reserved (a cmlm training run does "
                "that), or set objective.mask_token_id"
            )
        return int(tokenizer.special_id("mask"))

    def prepare(
        self,
        examples: Sequence[Mapping[str, Sequence[int]]],
        *,
        tokenizer: Any = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        for i, ex in enumerate(examples):
            for side in ("source", "target"):
                if ex.get(side) is None:
                    raise DataError(
                        f"cmlm example {i} has no {side!r} (keys: {', '.join(ex) or 'none'}); cmlm trains on "
                        "source/target pairs (a pair corpus such as numbers, JSONL with source and target fields, "
                        "or TSV)"
                    )
        c = self.config
        mask_id = self.mask_id(tokenizer)
        pad = tokenizer.pad_id if tokenizer is not None else 0
        sources = [
            frame(ex["source"], tokenizer, add_bos=c.add_bos, add_eos=c.add_eos, limit=c.max_source_length)
            for ex in examples
        ]
        ids, mask = pad_sequences(sources, pad)
        target, target_mask = pad_sequences([list(ex["target"])[: c.max_target_length] for ex in examples], pad)
        masked = mask_targets(target_mask.bool(), generator)
        lengths, source_lengths = target_mask.sum(dim=1), mask.sum(dim=1)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "decoder_input_ids": target.masked_fill(masked, mask_id),
            "decoder_attention_mask": target_mask,
            "labels": target.masked_fill(~masked, IGNORE_INDEX),
            "length_labels": length_classes(
                lengths, source_lengths, max_length=c.max_target_length, mode=c.length_mode
            ),
        }

    def forward(self, model: Any, batch: Mapping[str, Tensor]) -> ObjectiveOutput:
        missing = [k for k in ("input_ids", "decoder_input_ids", "labels", "length_labels") if k not in batch]
        if missing:
            raise DataError(f"a cmlm batch needs {', '.join(missing)}; build it with objective.prepare")
        head = length_head_of(model)
        if head is None:
            raise ConfigError("objective 'cmlm' needs the model's length head (heads['length']); build with cmlm")
        input_ids, attention_mask, labels = batch["input_ids"], batch.get("attention_mask"), batch["labels"]
        model.check_ids(input_ids, "input_ids", model.encoder)
        # One encoder pass serves the length head and the decoder.
        encoded = model.encoder(input_ids, attention_mask=attention_mask)
        inputs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "decoder_input_ids": batch["decoder_input_ids"],
            "decoder_attention_mask": batch.get("decoder_attention_mask"),
            "encoder_outputs": encoded,
        }
        tokens = token_objective_step(self, model, inputs, labels, logits_at=labels != IGNORE_INDEX)
        length_logits = head(encoded.last_hidden_state, attention_mask).float()  # (B, C)
        length_labels = batch["length_labels"]
        length_loss = F.cross_entropy(length_logits, length_labels)
        length_hits = (length_logits.argmax(dim=-1) == length_labels).float().mean()
        loss = tokens.loss + self.config.length_weight * length_loss
        metrics = {
            **tokens.metrics,
            "token_loss": float(tokens.loss.detach()),
            "length_loss": float(length_loss.detach()),
            "length_accuracy": float(length_hits),
        }
        return ObjectiveOutput(loss=loss, n_predictions=tokens.n_predictions, logits=tokens.logits, metrics=metrics)
