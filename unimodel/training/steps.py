"""The pieces a training step is made of: the module accelerate wraps, the dataset view, the running records."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from unimodel.data.kinds import DataKind, Example
from unimodel.inputs import inputs_checked

if TYPE_CHECKING:
    from unimodel.interfaces import ObjectiveOutput
    from unimodel.model import Model


class _ObjectiveStep(nn.Module):
    """What accelerate wraps (DDP, autocast): one objective forward, returning the loss.

    The objective receives the model itself, attributes intact (a DDP wrapper
    hides them), or its ``torch.compile`` wrapper, which forwards attributes.
    With ``keep_output`` the whole :class:`~unimodel.interfaces.ObjectiveOutput`
    of the last call is kept in :attr:`output` (for a data kind that carries
    state from step to step); otherwise nothing outlives the call.
    """

    def __init__(self, model: Model, compiled: nn.Module | None = None, *, keep_output: bool = False) -> None:
        super().__init__()
        self.model = model
        self._runner: Any
        object.__setattr__(self, "_runner", compiled if compiled is not None else model)  # not a submodule
        self.keep_output = keep_output
        self.output: ObjectiveOutput | None = None
        self.metrics: Mapping[str, float] = {}

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """batch: the objective's tensors, (B, T) each -> the scalar mean loss (nats)."""
        with inputs_checked():  # the data kind checked the data against the model: no device read per step
            out = self.model.objective(self._runner, batch)
        self.metrics = out.metrics  # the loss parts and scores the objective reports (floats)
        if self.keep_output:
            self.output = out
        return out.loss


class _ExampleDataset(torch.utils.data.Dataset[Example]):
    """The training split as a map-style dataset: item i is training example i, what the objective's
    ``prepare`` takes."""

    def __init__(self, data: DataKind) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.n_train

    def __getitem__(self, i: int) -> Example:
        return self.data.example(i)


def _as_list(examples: list[Example]) -> list[Example]:
    """A DataLoader collate function keeping a micro-batch as the list of its examples."""
    return examples


@dataclass
class StepRecord:
    """One optimizer step in the making: its micro-batches so far and, once done, its loss and rates."""

    micro: int = 0  # micro-batches of this step done
    loss_sum: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    started: float = field(default_factory=time.perf_counter)
    loss: float = math.nan
    grad_norm: float | None = None
    lr: float = math.nan
    skipped: bool = False  # the loss or gradient norm was not finite: no update
    metric_sums: dict[str, float] = field(default_factory=dict)  # the objective's metrics, summed over micro-batches
    metrics: dict[str, float] = field(default_factory=dict)  # their means over micro-batches and processes


@dataclass
class LogWindow:
    """Steps since metrics.jsonl was last written: their losses and tokens, and when the window opened."""

    losses: list[float] = field(default_factory=list)
    metrics: list[Mapping[str, float]] = field(default_factory=list)
    tokens: int = 0
    started: float = field(default_factory=time.perf_counter)


__all__ = ["LogWindow", "StepRecord", "_ExampleDataset", "_ObjectiveStep", "_as_list"]
