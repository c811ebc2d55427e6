"""Training: one TOML file with ``[model]``, ``[objective]``, ``[data]`` and ``[train]``, run on accelerate.

:func:`train` reads and checks the run config (the ``[model]`` and
``[objective]`` tables resolved into their config classes before any work),
reads the data the objective's data kind names, trains (or loads) a
tokenizer, builds the model and trains it with AdamW under a warm-up + cosine
schedule; :func:`evaluate` scores a model or checkpoint. accelerate does the
device placement, mixed precision, gradient accumulation and multi-process
data parallelism; this package writes no distributed code of its own.

Where things are:

==================  ==========================================================
``config``          :class:`TrainConfig`, :class:`RunConfig`, ``--set`` overrides
``spec``            ``[model]``/``[objective]`` resolved into typed configs; tokenizer values
``schedule``        the learning-rate schedule, AdamW groups, seeds and epoch order
``state``           the trainer-state codec, RNG save/restore, metrics truncation
``runfolder``       step folders, the pointer, the crash-safe save sequence, the run lock
``saving``          the trainer's start-up checks, saves, resume and non-finite stop
``launch``          the Accelerator and the CPU multi-process launch
``steps``           the module accelerate wraps, the dataset view, per-step records
``trainer``         :class:`Trainer` and :func:`train`
``evaluation``      :func:`evaluate`, :class:`EvalResult`, exact match
==================  ==========================================================

The names below are imported on first use: ``config`` and ``spec`` import no
torch, so ``unimodel train`` checks a run file before anything heavy loads.

Resuming restores weights, optimizer, schedule, data position and RNG states,
so on CPU a resumed run computes the same losses as an uninterrupted one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# public name -> the module defining it; imported on first use, so reading and checking a run config
# (``training.config``, ``training.spec``) does not import torch
_LAZY = {
    "DataConfig": "unimodel.data.config",
    **dict.fromkeys(("RunConfig", "TrainConfig", "apply_override", "load_run_config"), "unimodel.training.config"),
    **dict.fromkeys(
        (
            "EvalResult",
            "ExactMatch",
            "count_exact_matches",
            "evaluate",
            "evaluate_blocks",
            "evaluate_examples",
            "exact_match",
            "generate_targets",
            "normalize_whitespace",
        ),
        "unimodel.training.evaluation",
    ),
    "cpu_worker_command": "unimodel.training.launch",
    **dict.fromkeys(("derive_seed", "epoch_order", "lr_multiplier", "param_groups"), "unimodel.training.schedule"),
    **dict.fromkeys(("ModelSpec", "ObjectiveSpec", "model_spec_for", "needed_roles"), "unimodel.training.spec"),
    **dict.fromkeys(("decode_state", "encode_state"), "unimodel.training.state"),
    **dict.fromkeys(("Trainer", "TrainResult", "_ObjectiveStep", "train"), "unimodel.training.trainer"),
}

if TYPE_CHECKING:
    from unimodel.data.config import DataConfig
    from unimodel.training.config import RunConfig, TrainConfig, apply_override, load_run_config
    from unimodel.training.evaluation import (
        EvalResult,
        ExactMatch,
        count_exact_matches,
        evaluate,
        evaluate_blocks,
        evaluate_examples,
        exact_match,
        generate_targets,
        normalize_whitespace,
    )
    from unimodel.training.launch import cpu_worker_command
    from unimodel.training.schedule import derive_seed, epoch_order, lr_multiplier, param_groups
    from unimodel.training.spec import ModelSpec, ObjectiveSpec, model_spec_for, needed_roles
    from unimodel.training.state import decode_state, encode_state
    from unimodel.training.trainer import Trainer, TrainResult, _ObjectiveStep, train


def __getattr__(name: str) -> Any:
    import importlib

    module = _LAZY.get(name)
    if module is None:
        try:  # a submodule: unimodel.training.trainer
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "DataConfig",
    "EvalResult",
    "ExactMatch",
    "ModelSpec",
    "ObjectiveSpec",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "_ObjectiveStep",
    "apply_override",
    "count_exact_matches",
    "cpu_worker_command",
    "decode_state",
    "derive_seed",
    "encode_state",
    "epoch_order",
    "evaluate",
    "evaluate_blocks",
    "evaluate_examples",
    "exact_match",
    "generate_targets",
    "load_run_config",
    "lr_multiplier",
    "model_spec_for",
    "needed_roles",
    "normalize_whitespace",
    "param_groups",
    "train",
]
