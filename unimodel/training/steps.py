"""The pieces a training step is made of: the module accelerate wraps, the dataset view, the running records."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from unimodel.data.kinds import DataKind, Example, derive_seed
from unimodel.errors import TrainingError
from unimodel.inputs import inputs_checked
from unimodel.nn.shared_random import shared_randomness

if TYPE_CHECKING:
    from accelerate import Accelerator

    from unimodel.data.tokenizer import Tokenizer
    from unimodel.interfaces import ObjectiveOutput
    from unimodel.model import Model
    from unimodel.training.config import TrainConfig
    from unimodel.training.state import DataPosition


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


class TrainingSteps:
    """The optimizer step of :class:`~unimodel.training.trainer.Trainer`: global batches, each process's rows,
    micro-steps weighted by predictions, clipping. The trainer provides the attributes declared here."""

    tc: TrainConfig
    data: DataKind
    model: Model
    tokenizer: Tokenizer | None
    accelerator: Accelerator
    world: int
    step: int
    position: DataPosition
    micro_batch: int
    epoch_indices: list[int]
    carried: dict[int, Any]
    current: StepRecord
    step_module: nn.Module
    objective_step: _ObjectiveStep
    optimizer: torch.optim.Optimizer
    prepared_optimizer: Any
    prepared_scheduler: Any
    skipped_steps: int
    nonfinite_in_a_row: int

    if TYPE_CHECKING:  # the trainer's

        def log(self, message: str) -> None: ...

        def write_metrics(self, record: Mapping[str, Any]) -> None: ...

        def fail_not_finite(self) -> None: ...

    def global_batches(self) -> Iterator[list[list[Example]]]:
        """The current epoch's remaining global batches (up to ``max_steps``), each as its
        ``gradient_accumulation_steps`` micro-batches of examples over all processes.

        Every process iterates the same global order and prepares whole micro-batches; each then
        trains on its own rows (:meth:`micro_batch_inputs`).
        """
        tc, pos = self.tc, self.position
        steps = min(tc.max_steps - self.step, (self.data.n_train - pos.examples_in_epoch) // tc.batch_size)
        if steps <= 0:
            return
        order = self.data.epoch_order(pos.epoch, seed=tc.seed)
        self.epoch_indices = order
        mb = self.micro_batch
        for s in range(steps):
            first = pos.examples_in_epoch + s * tc.batch_size
            chosen = order[first : first + tc.batch_size]
            yield [[self.data.example(i) for i in chosen[m : m + mb]] for m in range(0, tc.batch_size, mb)]

    def train_step(self, step_examples: list[list[Example]]) -> None:
        """One optimizer step: every micro-batch's forward and backward, weighted by predictions, then
        the update.

        The loss of a global batch is the sum of the per-prediction losses over all its predictions
        divided by their count over all processes and micro-batches (:func:`~unimodel.training.steps.
        prediction_weight`); the count of every micro-batch is known before the first forward
        (:meth:`~unimodel.interfaces.Objective.count_targets`), so one all-reduce per step gives it.
        """
        batches = [self.micro_batch_inputs(examples, m) for m, examples in enumerate(step_examples)]
        counts = [self.model.objective.count_targets(b) for b in batches]
        total = global_count(sum(counts), self.accelerator)
        for micro, (batch, count) in enumerate(zip(batches, counts)):
            self.micro_step(batch, micro, count, total)

    def micro_step(self, batch: dict[str, Tensor], micro: int, count: int, total: int) -> None:
        """Forward and backward of one micro-batch (``count`` of the step's ``total`` predictions); the last
        one of a step also updates the weights."""
        acc, step, tc = self.accelerator, self.current, self.tc
        with acc.accumulate(self.step_module):
            # structural randomness (LayerDrop) agrees across processes: a function of (seed, step, micro-batch)
            autocast = acc.autocast() if tc.fsdp else nullcontext()  # a prepared module autocasts itself
            with shared_randomness(derive_seed(tc.seed, "shared", self.step, micro)), autocast:
                loss = self.step_module(batch)
            weight = prediction_weight(count, total, self.world, tc.gradient_accumulation_steps)
            acc.backward(loss * weight)
            if self.data.carries_state:
                output, self.objective_step.output = self.objective_step.output, None
                assert output is not None
                self.carried[micro] = self.data.carry_out(output)
            step.loss_sum += loss.detach().double().cpu() * count
            for name, value in self.objective_step.metrics.items():
                step.metric_sums[name] = step.metric_sums.get(name, 0.0) + float(value)
            step.micro += 1
            if acc.sync_gradients:
                self.optimizer_step(total)
            # accelerate's wrappers act on the last micro-batch of a step only
            self.prepared_optimizer.step()
            self.prepared_scheduler.step()
            self.prepared_optimizer.zero_grad(set_to_none=True)

    def micro_batch_inputs(self, examples: list[Example], micro: int) -> dict[str, Tensor]:
        """This process's rows of the objective's batch of ``examples`` (the micro-batch over all processes),
        on the device, with what the data kind carries in.

        Objective noise (masking ...) is drawn for the whole micro-batch from a seed of (seed, step,
        micro-batch): a resumed run draws it again, and each row's noise does not depend on the process
        count.
        """
        acc = self.accelerator
        g = torch.Generator().manual_seed(derive_seed(self.tc.seed, "noise", self.step, micro))
        batch = self.model.objective.prepare(examples, tokenizer=self.tokenizer, generator=g)
        batch = process_rows(batch, acc.process_index, self.world)
        if self.data.carries_state:
            batch = self.data.carry_in(batch, self.carried.get(micro))
        return {k: v.to(acc.device) for k, v in batch.items()}

    def optimizer_step(self, total: int) -> None:
        """The step's loss (mean over its ``total`` predictions), metrics and gradient norm over all processes,
        then clipping, or a skip when the loss or norm is not finite (the update follows)."""
        acc, tc, step = self.accelerator, self.tc, self.current
        loss_sum = (
            float(acc.reduce(step.loss_sum.to(acc.device), reduction="sum")) if self.world > 1 else float(step.loss_sum)
        )
        step.loss = loss_sum / total if total else 0.0
        self.reduce_metrics()
        max_norm = tc.max_grad_norm if tc.max_grad_norm > 0 else float("inf")
        # the norm of the gradients as the update would use them (unscaled, all processes' summed)
        step.grad_norm = clip_gradients(acc, self.step_module, max_norm)
        step.lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        # every process holds the same loss and norm, so all of them skip or none does
        if math.isfinite(step.loss) and (step.grad_norm is None or math.isfinite(step.grad_norm)):
            self.nonfinite_in_a_row = 0
        else:
            self.skip_step()

    def reduce_metrics(self) -> None:
        """The objective's metrics of this step: means over its micro-batches and processes."""
        step, acc = self.current, self.accelerator
        names = sorted(step.metric_sums)
        if not names:
            return
        values = torch.tensor([step.metric_sums[n] / step.micro for n in names], dtype=torch.float64)
        if self.world > 1:
            values = acc.reduce(values.to(acc.device), reduction="mean").cpu()
        step.metrics = dict(zip(names, values.tolist(), strict=True))

    def skip_step(self) -> None:
        """The step's loss or gradient is not finite: no update (its gradients are dropped, so AdamW and its
        moments leave every weight as it was), counted and logged; the run stops after
        ``max_nonfinite_steps`` such steps in a row. (DeepSpeed updates inside ``backward``, before this
        check: there the step is counted and logged but its update has happened.)"""
        step = self.current
        step.skipped = True
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.nonfinite_in_a_row += 1
        number = self.step + 1
        self.write_metrics(
            {"step": number, "event": "skipped_non_finite", "loss": repr(step.loss), "grad_norm": repr(step.grad_norm)}
        )
        self.log(
            f"step {number}: skipped, the {self.what_is_not_finite()} is not finite "
            f"({self.nonfinite_in_a_row} in a row, {self.skipped_steps} skipped in all)"
        )
        if self.nonfinite_in_a_row >= self.tc.max_nonfinite_steps:
            self.fail_not_finite()

    def what_is_not_finite(self) -> str:
        step = self.current
        if not math.isfinite(step.loss):
            return f"training loss ({step.loss})"
        return f"gradient norm ({step.grad_norm}; the loss is {step.loss:.4f})"


__all__ = [
    "LogWindow",
    "StepRecord",
    "TrainingSteps",
    "_ObjectiveStep",
    "clip_gradients",
    "global_count",
    "prediction_weight",
    "process_rows",
]
