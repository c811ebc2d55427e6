"""The optimiser and its schedule: AdamW parameter groups, warm-up + cosine, and the seeds of a run.

Everything random in a run is a pure function of the run's seed and where the
run is (step, micro-batch, process), so a resumed run repeats an
uninterrupted one exactly: :func:`derive_seed` names those seeds, and
:func:`epoch_order` is the default order of the training examples.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unimodel.data.kinds import derive_seed, shuffled_order

if TYPE_CHECKING:
    from unimodel.training.config import TrainConfig


def lr_multiplier(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate factor for optimizer step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps``
    steps, then a cosine from 1 down to ``min_lr_ratio``, reached at ``max_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight matrices decay; norms, biases (1-D) and embedding tables do not.

    Embedding tables are the weights of ``nn.Embedding`` modules and of modules
    whose class name says they hold embeddings or positions; a weight tied to
    an embedding (the LM head) follows the embedding.
    """
    no_decay: set[int] = set()
    for module in model.modules():
        kind = type(module).__name__.lower()
        table = isinstance(module, nn.Embedding) or "embedding" in kind or "position" in kind
        for p in module.parameters(recurse=False):
            if table or p.dim() < 2:
                no_decay.add(id(p))
    decay: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    for p in model.parameters():  # de-duplicated: a tied weight appears once
        if p.requires_grad:
            (rest if id(p) in no_decay else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": rest, "weight_decay": 0.0, "name": "no_decay"},
    ]


def make_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the ``[train]`` settings."""
    return torch.optim.AdamW(
        param_groups(model, tc.weight_decay),
        lr=tc.learning_rate,
        betas=(tc.adam_beta1, tc.adam_beta2),
        eps=tc.adam_eps,
    )


def make_scheduler(optimizer: torch.optim.Optimizer, tc: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine (:func:`lr_multiplier`) over ``tc.max_steps`` optimizer steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_multiplier(s, warmup_steps=tc.warmup_steps, max_steps=tc.max_steps, min_lr_ratio=tc.min_lr_ratio),
    )


def epoch_order(n: int, *, seed: int, epoch: int) -> list[int]:
    """The shuffled order of the ``n`` training examples in ``epoch``; a pure function of its arguments."""
    return shuffled_order(n, seed=seed, epoch=epoch)


__all__ = ["derive_seed", "epoch_order", "lr_multiplier", "make_optimizer", "make_scheduler", "param_groups"]
