"""Causal language modelling and fill-in-the-middle for decoder-only models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import Tensor, nn

from unimodel.errors import ConfigError
from unimodel.interfaces import Backbone, ObjectiveOutput, TokenLoss
from unimodel.nn.sync import mask_is_trivial
from unimodel.objectives import IGNORE_INDEX, TokenLossObjective, pad_sequences, token_objective_step
from unimodel_gpt import REQUIRES
from unimodel_gpt.config import CLMConfig, FIMConfig

if TYPE_CHECKING:
    from unimodel.data.tokenizer import Tokenizer
    from unimodel.model import Model


ClmConfigT = TypeVar("ClmConfigT", bound=CLMConfig)


class NextTokenObjective(TokenLossObjective[ClmConfigT]):
    """Next-token prediction: logits[t] predict input_ids[t+1]; padding is not predicted.

    Generic in its config so that ``fim`` (whose config extends ``clm``'s) shares the step.
    """

    requires = REQUIRES

    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        return {}

    def _pad_id(self, tokenizer: Tokenizer | None) -> int:
        if self.config.pad_token_id is not None:
            return self.config.pad_token_id
        if tokenizer is not None:
            return tokenizer.pad_id
        return 0

    def collate(self, seqs: Sequence[Sequence[int]], tokenizer: Tokenizer | None) -> dict[str, Tensor]:
        ids, mask = pad_sequences(seqs, self._pad_id(tokenizer))
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, IGNORE_INDEX)}

    def prepare(
        self,
        examples: Sequence[Mapping[str, Sequence[int]]],
        *,
        tokenizer: Tokenizer | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        return self.collate([ex["input_ids"] for ex in examples], tokenizer)

    def token_loss(self) -> TokenLoss:
        return TokenLoss(shift=True, label_smoothing=self.config.label_smoothing)

    def forward(self, model: Model, batch: Mapping[str, Tensor]) -> ObjectiveOutput:
        mask = batch.get("attention_mask")
        if mask is not None and mask_is_trivial(mask):
            mask = None  # packed blocks: let attention take its causal fast path
        return token_objective_step(
            self, model, {"input_ids": batch["input_ids"], "attention_mask": mask}, batch["labels"]
        )


class CausalLM(NextTokenObjective[CLMConfig]):
    """Causal language modelling (the ``clm`` objective)."""

    config_class = CLMConfig


def fim_transform(
    ids: Sequence[int], cut1: int, cut2: int, *, prefix_id: int, middle_id: int, suffix_id: int, mode: str = "psm"
) -> list[int]:
    """Rearrange ``ids`` split at ``cut1 <= cut2`` into sentinel-marked FIM order.

    PSM: ``<pre> prefix <suf> suffix <mid> middle``;
    SPM: ``<pre> <suf> suffix <mid> prefix middle`` (the variant of Bavarian et al.).
    """
    prefix, middle, suffix = list(ids[:cut1]), list(ids[cut1:cut2]), list(ids[cut2:])
    if mode == "psm":
        return [prefix_id, *prefix, suffix_id, *suffix, middle_id, *middle]
    return [prefix_id, suffix_id, *suffix, middle_id, *prefix, *middle]


class FillInTheMiddle(NextTokenObjective[FIMConfig]):
    """CLM on documents rearranged as prefix-suffix-middle with sentinel tokens.

    A fraction ``rate`` of examples is split at two uniform random points and
    rearranged; the result keeps the example's length (the tail of the middle
    is cut by the three sentinels), so packed blocks stay packed.
    """

    config_class = FIMConfig
    special_tokens = ("fim_prefix", "fim_middle", "fim_suffix")

    def _sentinels(self, tokenizer: Tokenizer | None) -> tuple[int, int, int]:
        c = self.config
        ids = []
        for role, given in (
            ("fim_prefix", c.fim_prefix_id),
            ("fim_middle", c.fim_middle_id),
            ("fim_suffix", c.fim_suffix_id),
        ):
            if given is None:
                if tokenizer is None:
                    raise ConfigError(f"objective 'fim' needs a tokenizer with a {role} token, or {role}_id set")
                given = tokenizer.special_id(role)
            ids.append(given)
        return ids[0], ids[1], ids[2]

    def prepare(
        self,
        examples: Sequence[Mapping[str, Sequence[int]]],
        *,
        tokenizer: Tokenizer | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        pre, mid, suf = self._sentinels(tokenizer)
        out = []
        for ex in examples:
            ids = list(ex["input_ids"])
            n = len(ids)
            if n >= 2 and float(torch.rand((), generator=generator)) < self.config.rate:
                a, b = sorted(int(x) for x in torch.randint(0, n + 1, (2,), generator=generator))
                ids = fim_transform(ids, a, b, prefix_id=pre, middle_id=mid, suffix_id=suf, mode=self.config.mode)[:n]
            out.append(ids)
        return self.collate(out, tokenizer)
