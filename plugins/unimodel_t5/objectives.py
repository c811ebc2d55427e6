"""T5's span corruption, the recipe of ``google-research/t5`` (``span_corruption``).

A fraction ``noise_density`` of each example's tokens is chosen as noise, in
spans of mean length ``mean_noise_span_length``; spans alternate kept/noise,
starting with kept tokens, with lengths from a uniform random segmentation.
The encoder input is the example with every noise span replaced by one unique
sentinel; the target is the noise spans, each behind the sentinel that replaced
it; both end with EOS::

    tokens   a b c d e f g h
    noise        ^ ^     ^
    inputs   a b <s0> e f <s1> h </s>
    targets  <s0> c d <s1> g </s>

The objective uses only token roles (``eos``, ``pad``, ``sentinel_i``) or ids
from its config, so it trains any encoder-decoder with an LM head.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from unimodel.errors import ConfigError, DataError
from unimodel.interfaces import Backbone, ObjectiveOutput, TokenLoss
from unimodel.objectives import IGNORE_INDEX, TokenLossObjective, pad_sequences, token_objective_step
from unimodel_t5 import SPAN_CORRUPTION_REQUIRES
from unimodel_t5.config import SpanCorruptionConfig

if TYPE_CHECKING:
    from unimodel.data.tokenizer import Tokenizer
    from unimodel.model import Model


# ------------------------------------------------------------------ the recipe
def random_segmentation(num_items: int, num_segments: int, generator: torch.Generator | None = None) -> list[int]:
    """Split ``num_items`` into ``num_segments`` positive lengths, every split equally likely."""
    if num_segments <= 1:
        return [num_items]
    cuts = (torch.randperm(num_items - 1, generator=generator)[: num_segments - 1] + 1).sort().values.tolist()
    bounds = [0, *cuts, num_items]
    return [b - a for a, b in itertools.pairwise(bounds)]


def random_spans_noise_mask(
    length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    *,
    generator: torch.Generator | None = None,
) -> list[bool]:
    """Which of ``length`` tokens are noise: alternating kept/noise spans, kept first.

    ``num_noise = round(length * noise_density)`` (at least 1, at most length - 1)
    and ``num_spans = max(1, round(num_noise / mean_noise_span_length))``, as in
    ``google-research/t5``; a sequence shorter than 2 is treated as length 2 and
    truncated, so a 1-token example has no noise. ``round`` halves to even, like
    TensorFlow's. The span count is also capped by the kept tokens, which only
    matters for noise densities above one half.
    """
    orig_length = length
    length = max(length, 2)
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(1, round(num_noise / mean_noise_span_length))
    num_nonnoise = length - num_noise
    num_spans = min(num_spans, num_noise, num_nonnoise)
    noise_lengths = random_segmentation(num_noise, num_spans, generator)
    nonnoise_lengths = random_segmentation(num_nonnoise, num_spans, generator)
    mask: list[bool] = []
    for keep, noise in zip(nonnoise_lengths, noise_lengths):
        mask += [False] * keep + [True] * noise
    return mask[:orig_length]


def count_spans(mask: Sequence[bool]) -> int:
    """Number of maximal runs of True in ``mask``."""
    return sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))


def replace_spans(tokens: Sequence[int], mask: Sequence[bool], sentinels: Sequence[int]) -> list[int]:
    """``tokens`` with the i-th run of masked tokens replaced by ``sentinels[i]`` (T5's
    ``noise_span_to_unique_sentinel``)."""
    out: list[int] = []
    span = 0
    for i, (tok, masked) in enumerate(zip(tokens, mask)):
        if not masked:
            out.append(tok)
        elif i == 0 or not mask[i - 1]:
            out.append(sentinels[span])
            span += 1
    return out


def corrupt_spans(tokens: Sequence[int], mask: Sequence[bool], sentinels: Sequence[int]) -> tuple[list[int], list[int]]:
    """(inputs, targets) without EOS: noise spans -> sentinels in the inputs, kept spans -> sentinels in the targets."""
    return replace_spans(tokens, mask, sentinels), replace_spans(tokens, [not m for m in mask], sentinels)


# ------------------------------------------------------------------ objective
class SpanCorruption(TokenLossObjective[SpanCorruptionConfig]):
    """T5 span corruption: the decoder restores the spans the encoder input lost.

    ``prepare`` takes examples ``{"input_ids": [...]}`` (packed blocks) and returns
    ``input_ids``/``attention_mask`` (B, S) and ``labels`` (B, T), -100 on
    padding; the model derives the decoder input by shifting ``labels`` right.
    The loss is the unshifted cross-entropy on the labels.
    """

    config_class = SpanCorruptionConfig
    requires = SPAN_CORRUPTION_REQUIRES
    special_tokens = ("eos", "sentinel_0")

    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        return {}

    # ----------------------------------------------------------- token ids
    def sentinel_ids(self, tokenizer: Tokenizer | None = None) -> list[int]:
        """Sentinel ids in order: from ``first_sentinel_id`` downward, else the tokenizer's
        ``sentinel_0``, ``sentinel_1`` ... roles."""
        c = self.config
        if c.first_sentinel_id is not None:
            return list(range(c.first_sentinel_id, c.first_sentinel_id - c.n_sentinels, -1))
        if tokenizer is None:
            raise ConfigError(
                "objective 'span_corruption' needs a tokenizer with sentinel_0, sentinel_1 ... tokens, "
                "or first_sentinel_id set (sentinel i = first_sentinel_id - i)"
            )
        ids = [tokenizer.special_id("sentinel_0")]  # a clear error when the tokenizer has none
        while tokenizer.has_role(f"sentinel_{len(ids)}"):
            ids.append(tokenizer.special_id(f"sentinel_{len(ids)}"))
        return ids

    def _eos(self, tokenizer: Tokenizer | None) -> int:
        if self.config.eos_token_id is not None:
            return self.config.eos_token_id
        if tokenizer is None:
            raise ConfigError("objective 'span_corruption' needs a tokenizer with an eos token, or eos_token_id set")
        return tokenizer.special_id("eos")

    def _pad(self, tokenizer: Tokenizer | None) -> int:
        if self.config.pad_token_id is not None:
            return self.config.pad_token_id
        return tokenizer.pad_id if tokenizer is not None else 0

    # ------------------------------------------------------------ data side
    def corrupt(
        self,
        ids: Sequence[int],
        sentinels: Sequence[int],
        eos: int,
        *,
        generator: torch.Generator | None = None,
        index: int = 0,
    ) -> tuple[list[int], list[int]]:
        """One example -> (inputs, targets), each ending with ``eos``."""
        c = self.config
        mask = random_spans_noise_mask(len(ids), c.noise_density, c.mean_noise_span_length, generator=generator)
        needed = max(count_spans(mask), count_spans([not m for m in mask]))
        if needed > len(sentinels):
            raise DataError(
                f"span_corruption: example {index} ({len(ids)} tokens) needs {needed} sentinels but only "
                f"{len(sentinels)} exist; use shorter examples (a smaller block size), a lower noise_density or a "
                "longer mean_noise_span_length, or a tokenizer with more sentinel tokens"
            )
        inputs, targets = corrupt_spans(ids, mask, sentinels)
        return [*inputs, eos], [*targets, eos]

    def prepare(
        self,
        examples: Sequence[Mapping[str, Any]],
        *,
        tokenizer: Tokenizer | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        if not examples:
            raise DataError("cannot build a span_corruption batch from zero examples")
        sentinels = self.sentinel_ids(tokenizer)
        eos, pad = self._eos(tokenizer), self._pad(tokenizer)
        inputs, targets = [], []
        for i, ex in enumerate(examples):
            if "input_ids" not in ex:
                raise DataError(f"span_corruption example {i} has no 'input_ids' (keys: {', '.join(ex) or 'none'})")
            inp, tgt = self.corrupt(list(ex["input_ids"]), sentinels, eos, generator=generator, index=i)
            inputs.append(inp)
            targets.append(tgt)
        ids, mask = pad_sequences(inputs, pad)
        labels, lmask = pad_sequences(targets, pad)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels.masked_fill(lmask == 0, IGNORE_INDEX)}

    # --------------------------------------------------------------- loss
    def token_loss(self) -> TokenLoss:
        return TokenLoss(label_smoothing=self.config.label_smoothing)

    def forward(self, model: Model, batch: Mapping[str, Tensor]) -> ObjectiveOutput:
        if "labels" not in batch:
            raise DataError("a span_corruption batch needs 'labels'; build it with objective.prepare")
        # without decoder_input_ids the model shifts the labels right behind its own start token
        inputs = {
            k: batch.get(k) for k in ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
        }
        return token_objective_step(self, model, inputs, batch["labels"])
