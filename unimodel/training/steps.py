"""The pieces a training step is made of: the module accelerate wraps, the dataset view, the running records."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from unimodel.errors import TrainingError

if TYPE_CHECKING:
    from accelerate import Accelerator

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

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """batch: the objective's tensors, (B, T) each -> the scalar mean loss (nats)."""
        out = self.model.objective(self._runner, batch)
        if self.keep_output:
            self.output = out
        return out.loss


def process_rows(batch: Mapping[str, Tensor], rank: int, world: int) -> dict[str, Tensor]:
    """Process ``rank``'s share of a micro-batch prepared over all ``world`` processes: the ``rank``-th of
    ``world`` equal runs of rows of every tensor (B, ...). Padding columns stay, so each process computes
    on the shapes one process would."""
    if world == 1:
        return dict(batch)
    out = {}
    for key, value in batch.items():
        rows = value.shape[0] if value.dim() else 0
        if rows % world:
            raise TrainingError(
                f"the objective's batch tensor {key!r} has {rows} rows, which {world} processes cannot share; "
                "every tensor an objective's prepare returns must have one row per example"
            )
        share = rows // world
        out[key] = value[rank * share : (rank + 1) * share]
    return out


def global_count(local: int, accelerator: Accelerator) -> int:
    """``local`` summed over the processes (one all-reduce; no communication with one process)."""
    if accelerator.num_processes == 1:
        return local
    total = torch.tensor([local], dtype=torch.long, device=accelerator.device)
    return int(accelerator.reduce(total, reduction="sum").item())


def prediction_weight(count: int, total: int, world: int, accumulation: int) -> float:
    """The factor on a micro-batch's mean loss over its ``count`` predictions that makes the gradient of a
    step the gradient of (sum of per-prediction losses) / ``total``, the step's predictions over all
    processes and micro-batches.

    The mean times ``count`` is the micro-batch's summed loss; data-parallel gradient reduction averages
    over ``world`` processes and accelerate's ``backward`` divides by the ``accumulation`` steps, so both
    are multiplied back. A step without predictions (``total`` 0) has weight 0.
    """
    if total <= 0:
        return 0.0
    return count * world * accumulation / total


def clip_gradients(accelerator: Accelerator, module: nn.Module, max_norm: float) -> float | None:
    """Clip the gradient norm of ``module``'s parameters to ``max_norm`` (``inf``: measure only); returns the norm
    before clipping, or ``None`` when the engine clips inside its own step and does not report it (DeepSpeed).

    Parameters sharded over processes (FSDP2's distributed tensors) count with their full size: their
    gradients' norms are reduced over the shards before the global norm is formed.
    """
    if not any(_is_dtensor(p) for p in module.parameters()):
        reported = accelerator.clip_grad_norm_(module.parameters(), max_norm)
        return None if reported is None else float(reported)
    from torch.nn.utils import clip_grads_with_norm_, get_total_norm

    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    norm: Any = get_total_norm(grads, 2.0)  # a DTensor, partial over the shards
    full = norm.full_tensor() if _is_dtensor(norm) else norm
    if max_norm != float("inf"):
        clip_grads_with_norm_([p for p in module.parameters() if p.grad is not None], max_norm, full)
    return float(full)


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed support
        return False
    return isinstance(t, DTensor)


@dataclass
class StepRecord:
    """One optimizer step in the making: its micro-batches so far and, once done, its loss and rates."""

    micro: int = 0  # micro-batches of this step done
    loss_sum: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    started: float = field(default_factory=time.perf_counter)
    loss: float = math.nan
    grad_norm: float | None = None
    lr: float = math.nan


@dataclass
class LogWindow:
    """Steps since metrics.jsonl was last written: their losses and tokens, and when the window opened."""

    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    started: float = field(default_factory=time.perf_counter)


__all__ = [
    "LogWindow",
    "StepRecord",
    "_ObjectiveStep",
    "clip_gradients",
    "global_count",
    "prediction_weight",
    "process_rows",
]
