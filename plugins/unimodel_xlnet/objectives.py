"""Permutation language modelling (XLNet's pretraining objective).

A share ``plm_probability`` (1/K; K = 6 in the paper) of each row's tokens are
targets, chosen as n-gram spans (n = 1 .. max_span_length, drawn with probability
proportional to 1/n), each span placed in a window of n * K tokens so the context
around it is kept. A random factorization order decides what each position may see:
non-targets see every non-target and no target; a target sees the non-targets and
the targets before it in the order, never itself (its query stream predicts it).
Special tokens (the tokenizer's roles but unk, padding) are never targets. The query
stream runs only at the targets, and the loss is their token cross-entropy, computed
without forming logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from unimodel.errors import DataError
from unimodel.interfaces import Backbone, ObjectiveOutput, TokenLoss
from unimodel.objectives import IGNORE_INDEX, TokenLossObjective, pad_sequences, token_objective_step
from unimodel_xlnet import PLM_REQUIRES
from unimodel_xlnet.config import PLMConfig

if TYPE_CHECKING:
    from unimodel.data.tokenizer import Tokenizer
    from unimodel.model import Model


def sample_targets(
    eligible: Tensor, goal: int, *, ratio: float, max_span: int, generator: torch.Generator | None
) -> Tensor:
    """Which positions of one row are targets: (T,) bool with ``min(goal, eligible.sum())`` True.

    Spans of n consecutive eligible tokens (n with p ∝ 1/n, cut at the goal) are laid left to
    right, each inside a window of ``n * ratio`` tokens at a uniform offset, so about
    1/ratio of the tokens are chosen and each span keeps context on both sides. A row that
    ends before the goal is reached is topped up with single tokens at random.
    """
    T = eligible.shape[0]
    chosen = torch.zeros(T, dtype=torch.bool)
    where = eligible.nonzero().flatten()  # positions that may be targets, ascending
    goal = min(goal, len(where))
    lengths_p = 1.0 / torch.arange(1, max_span + 1, dtype=torch.float64)
    count, cur = 0, 0
    while count < goal and cur < T:
        n = min(int(torch.multinomial(lengths_p, 1, generator=generator)) + 1, goal - count)
        context = round(n * (ratio - 1))
        left = int(torch.randint(0, context + 1, (), generator=generator))
        first = int(torch.searchsorted(where, cur + left))  # the first eligible position in the window
        span = where[first : first + n]
        if len(span) == 0:
            break
        chosen[span] = True
        count += len(span)
        cur = int(span[-1]) + 1 + context - left
    if count < goal:
        free = where[~chosen[where]]
        chosen[free[torch.randperm(len(free), generator=generator)[: goal - count]]] = True
    return chosen


def factorization_mask(is_target: Tensor, order: Tensor) -> Tensor:
    """``perm_mask`` (B, T, T), 1 where position i may not see position j, from ``is_target`` (B, T) bool
    and ``order`` (B, T) float (targets come in increasing order): j is hidden from i when j is a
    target and i is not a target, or i is a target not later than j (so never itself)."""
    later_or_self = order[:, None, :] >= order[:, :, None]  # [b, i, j]: j comes at or after i
    return is_target[:, None, :] & (~is_target[:, :, None] | later_or_self)


class PermutationLM(TokenLossObjective[PLMConfig]):
    """XLNet's permutation language modelling on text blocks ``{"input_ids": [...]}`` (optionally
    ``"token_type_ids"``).

    ``prepare`` returns ``input_ids``, ``attention_mask``, ``perm_mask`` (B, T, T),
    ``target_mapping`` (B, M, T) one-hot, M the largest number of targets of a row (rows
    with fewer are padded with zero rows) and ``labels`` (B, M), -100 on padding rows;
    all drawn from ``generator``.
    """

    config_class = PLMConfig
    config: PLMConfig
    requires = PLM_REQUIRES
    passes_mems = True  # the memory a recurrent text run carries reaches the model

    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        return {}

    def _special_ids(self, tokenizer: Any, pad: int) -> Tensor:
        ids = {pad, *self.config.special_token_ids}
        if tokenizer is not None:
            ids |= {tokenizer.special_id(r) for r in tokenizer.roles if r != "unk"}
        return torch.tensor(sorted(ids), dtype=torch.long)

    def prepare(
        self,
        examples: Sequence[Mapping[str, Sequence[int]]],
        *,
        tokenizer: Tokenizer | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        c = self.config
        pad = c.pad_token_id
        if pad is None:
            pad = tokenizer.pad_id if tokenizer is not None else 0
        ids, attn = pad_sequences([ex["input_ids"] for ex in examples], pad)
        B, T = ids.shape
        eligible = attn.bool() & ~torch.isin(ids, self._special_ids(tokenizer, pad))
        ratio = 1.0 / c.plm_probability
        is_target = torch.zeros(B, T, dtype=torch.bool)
        for b in range(B):
            n = int(eligible[b].sum())
            goal = max(1, round(n * c.plm_probability)) if n else 0
            is_target[b] = sample_targets(
                eligible[b], goal, ratio=ratio, max_span=c.max_span_length, generator=generator
            )
        block = torch.arange(T) // (c.perm_size or T)
        order = block + torch.rand(B, T, generator=generator)  # blocks in turn, a random order inside each
        counts = is_target.sum(1)
        M = max(1, int(counts.max()))
        # the targets of each row in position order, then padding slots
        slot_pos = torch.sort(torch.where(is_target, torch.arange(T), T), dim=1).values[:, :M]  # (B, M), T = padding
        real = slot_pos < T
        target_mapping = torch.zeros(B, M, T + 1).scatter_(2, slot_pos[:, :, None], 1.0)[:, :, :T]
        labels = ids.gather(1, slot_pos.clamp(max=T - 1)).masked_fill(~real, IGNORE_INDEX)
        batch = {
            "input_ids": ids,
            "attention_mask": attn,
            "perm_mask": factorization_mask(is_target, order).float(),
            "target_mapping": target_mapping,
            "labels": labels,
        }
        if any("token_type_ids" in ex for ex in examples):
            batch["token_type_ids"], _ = pad_sequences([ex.get("token_type_ids", ()) for ex in examples], 0, length=T)
        return batch

    def token_loss(self) -> TokenLoss:
        return TokenLoss()

    def forward(self, model: Model, batch: Mapping[str, Tensor]) -> ObjectiveOutput:
        for key in ("perm_mask", "target_mapping", "labels"):
            if key not in batch:
                raise DataError(f"a plm batch needs {key!r}; build it with the objective's prepare()")
        mask = batch.get("attention_mask")
        inputs: dict[str, Tensor | None] = {
            "input_ids": batch["input_ids"],
            "attention_mask": None if mask is None or bool(mask.all()) else mask,
            "perm_mask": batch["perm_mask"],
            "target_mapping": batch["target_mapping"],
        }
        for key in ("token_type_ids", "mems"):  # mems: the memory a recurrent data kind carries from the last step
            if key in batch:
                inputs[key] = batch[key]
        return token_objective_step(self, model, inputs, batch["labels"])


__all__: Sequence[str] = ["PLMConfig", "PermutationLM", "factorization_mask", "sample_targets"]
