"""Exact match: the task metric of source -> target pairs.

Validation sources are decoded greedily and a prediction counts when its text
equals the target's after whitespace normalisation. The reference is the
target as the tokenizer writes it back (``decode(encode(target))``), so a lossy
tokenizer (a lowercasing WordPiece) does not count every prediction wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from unimodel.data.kinds import TaskMetric, process_share, reduce_sum

if TYPE_CHECKING:
    from accelerate import Accelerator

    from unimodel.data.tokenizer import Tokenizer
    from unimodel.model import Model

#: tokens a prediction may run past its target's length (the target's framing, and one more)
SLACK = 3


def normalize_whitespace(text: str) -> str:
    """``text`` with surrounding whitespace dropped and every inner run of whitespace one space."""
    return " ".join(text.split())


def count_exact_matches(predictions: Sequence[str], references: Sequence[str]) -> int:
    """How many predictions equal their reference after :func:`normalize_whitespace`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return sum(normalize_whitespace(p) == normalize_whitespace(r) for p, r in zip(predictions, references))


@dataclass
class ExactMatch(TaskMetric):
    """Greedy decodings of validation sources compared with their targets."""

    name: ClassVar[str] = "exact_match"
    label: ClassVar[str] = "exact match"

    matches: int
    total: int
    examples: list[tuple[str, str, str, bool]] = field(default_factory=list)  # (source, prediction, reference, hit)
    decoding: str = "greedy"  # the strategy, and the options given to it

    @property
    def score(self) -> float:
        return self.matches / self.total if self.total else float("nan")

    def summary(self) -> str:
        return f"exact match {self.score:.2%} ({self.matches}/{self.total} pairs, {self.decoding})"

    def report(self) -> str:
        return f"exact match: {self.score:.2%} ({self.matches:,} of {self.total:,} pairs, {self.decoding} decoding)"

    def shown(self) -> str | None:
        if not self.examples:
            return None
        return "\n".join(
            f"  {src!r} -> {pred!r}" + ("" if ok else f"   (target {ref!r})") for src, pred, ref, ok in self.examples
        )


@torch.no_grad()
def generate_targets(
    model: Model,
    examples: Sequence[Mapping[str, Any]],
    *,
    tokenizer: Tokenizer,
    batch_size: int = 64,
    generate_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Greedy decodings (text) of the sources of pair ``examples``, in order; ``generate_options`` choose
    another decoding (``{"strategy": "mask_predict", "iterations": 4}``), never sampling.

    Sources are framed and padded by the objective's ``prepare`` exactly as in
    training. A prediction is cut at its first eos, and at ``len(target) + 3``
    tokens (the target with its framing, and one more): a prediction longer
    than its reference is seen as such, and the text does not depend on the
    batch it was decoded in.
    """
    from unimodel.generation.text import generate_texts

    texts: list[str] = []
    for start in range(0, len(examples), batch_size):
        part = list(examples[start : start + batch_size])
        caps = [len(ex["target"]) + SLACK for ex in part]
        sources = [list(ex["source"]) for ex in part]
        options = {**(generate_options or {}), "do_sample": False}
        texts += generate_texts(model, sources, tokenizer=tokenizer, max_new_tokens=caps, **options)
    return texts


def exact_match(
    model: Model,
    examples: Sequence[Mapping[str, Any]],
    *,
    tokenizer: Tokenizer,
    batch_size: int = 64,
    accelerator: Accelerator | None = None,
    keep: int = 3,
    generate_options: Mapping[str, Any] | None = None,
) -> ExactMatch:
    """Share of pair ``examples`` whose greedy decoding equals the target text (whitespace normalised).

    With several processes each decodes a share and the counts are summed.
    ``keep`` first examples are returned for display.
    """
    indices, chunk = process_share(len(examples), batch_size, accelerator)
    mine = [examples[i] for i in indices]
    predictions = generate_targets(
        model, mine, tokenizer=tokenizer, batch_size=chunk, generate_options=generate_options
    )
    references = [tokenizer.decode(ex["target"]) for ex in mine]
    matches = count_exact_matches(predictions, references)
    total = reduce_sum(torch.tensor([matches, len(mine)], dtype=torch.float64), accelerator)
    shown = [
        (tokenizer.decode(ex["source"]), p, r, normalize_whitespace(p) == normalize_whitespace(r))
        for ex, p, r in zip(mine[:keep], predictions, references)
    ]
    return ExactMatch(
        matches=int(total[0]), total=int(total[1]), examples=shown, decoding=decoding_label(model, generate_options)
    )


def decoding_label(model: Model, options: Mapping[str, Any] | None) -> str:
    """``"greedy"``, or the strategy that runs with the options given to it (``"mask_predict, iterations=4"``)."""
    from unimodel.generation.settings import call_config, chosen_strategy, default_config

    given = dict(options or {})
    if not given:  # the model's own decoding
        return getattr(getattr(model, "objective", None), "default_strategy", None) or "greedy"
    name = chosen_strategy(model, call_config(default_config(model), given))
    shown = [f"{k}={v}" for k, v in given.items() if k not in ("strategy", "do_sample")]
    return ", ".join([name, *shown])


__all__ = [
    "ExactMatch",
    "count_exact_matches",
    "decoding_label",
    "exact_match",
    "generate_targets",
    "normalize_whitespace",
]
