"""A run's folder and the trainer state in it: data only, restored exactly on resume.

The output folder holds::

    metrics.jsonl          one JSON object per logged step / evaluation
    tokenizer/             the tokenizer trained for the run
    checkpoint/            config.json, model.safetensors, tokenizer files (a normal
                           unimodel checkpoint), plus run.json, trainer_state.json,
                           optimizer.safetensors and rng_state.safetensors

Trainer state is data only: tensors in safetensors, their structure in JSON
(:func:`encode_state`). Resuming restores weights, optimizer, schedule, data
position and every process's RNG states.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unimodel.data.kinds import derive_seed
from unimodel.errors import CheckpointError, TrainingError

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"
TOKENIZER_DIR = "tokenizer"
RUN_FILE = "run.json"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng_state.safetensors"
STATE_FORMAT = "unimodel-trainer-state"
STATE_VERSION = 1


@dataclass
class DataPosition:
    """Where training is in the data: the epoch, and the examples of it already used."""

    epoch: int = 0
    examples_in_epoch: int = 0


# ------------------------------------------------------------ the codec
def encode_state(obj: Any, tensors: dict[str, Tensor], key: str) -> Any:
    """A nested state (dicts, lists, tuples, scalars, tensors) as JSON; tensors go to ``tensors``.

    Dicts become ``{"dict": [[key, value], ...]}`` (keys keep their int/str
    type), tuples ``{"tuple": [...]}``, tensors ``{"tensor": name}``.
    """
    if isinstance(obj, Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"tensor": key}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"tuple": [encode_state(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TrainingError(f"cannot save trainer state: key {k!r} under {key!r} is not a string or integer")
        return {"dict": [[k, encode_state(v, tensors, f"{key}.{k}")] for k, v in obj.items()]}
    raise TrainingError(f"cannot save trainer state: {key!r} holds a {type(obj).__name__}, which is not plain data")


def decode_state(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`encode_state`."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"tensor"}:
            if obj["tensor"] not in tensors:
                raise CheckpointError(f"trainer state names tensor {obj['tensor']!r}, which {OPTIMIZER_FILE} lacks")
            return tensors[obj["tensor"]]
        if set(obj) == {"tuple"}:
            return tuple(decode_state(v, tensors) for v in obj["tuple"])
        if set(obj) == {"dict"}:
            return {k: decode_state(v, tensors) for k, v in obj["dict"]}
        raise CheckpointError(f"trainer state holds an unexpected object with keys {sorted(obj)}")
    return obj


# ------------------------------------------------------- the state files
def state_record(
    *,
    step: int,
    position: DataPosition,
    tokens_seen: int,
    num_processes: int,
    fingerprint: str,
    skipped_steps: int = 0,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    tensors: dict[str, Tensor],
    optimizer_state: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``trainer_state.json`` object; the optimizer's tensors go to ``tensors``.

    ``optimizer_state``: the state to save instead of ``optimizer.state_dict()``: a sharded run's state
    gathered whole, keyed by parameter name (recorded as ``"optimizer_layout": "by_name"``).
    """
    state = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "step": step,
        "epoch": position.epoch,
        "examples_in_epoch": position.examples_in_epoch,
        "tokens_seen": tokens_seen,
        "num_processes": num_processes,
        "data_fingerprint": fingerprint,
        "skipped_steps": skipped_steps,
        "optimizer": encode_state(
            dict(optimizer_state) if optimizer_state is not None else optimizer.state_dict(), tensors, "optimizer"
        ),
        "optimizer_layout": "by_name" if optimizer_state is not None else "by_index",
        "scheduler": encode_state(scheduler.state_dict(), {}, "scheduler"),
        "python_rng": encode_state(random.getstate(), {}, "python_rng"),
    }
    if scaler is not None:  # fp16 loss scale: a resumed run continues with the same scale
        state["grad_scaler"] = encode_state(scaler.state_dict(), {}, "grad_scaler")
    return state


def read_json_state(path: Path) -> dict[str, Any]:
    """A ``trainer_state.json``, checked to be one this unimodel reads."""
    from unimodel.checkpoint import read_json

    state = read_json(path)
    if state.get("format") != STATE_FORMAT or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{str(path)!r} is not a unimodel trainer state")
    if state.get("version", 0) > STATE_VERSION:
        raise CheckpointError(
            f"{str(path)!r} was written by a newer unimodel (trainer state v{state['version']}); upgrade unimodel"
        )
    return state


def restore_optimizer(
    state: Mapping[str, Any],
    folder: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    load_by_name: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Load the optimizer, schedule (and fp16 loss scale) that ``state`` and ``folder``'s tensors describe.

    A state saved by parameter name (a sharded run's, gathered) is loaded with ``load_by_name``, which
    hands every process its shard; without it such a state is refused.
    """
    from unimodel.checkpoint import load_tensors

    tensors, _ = load_tensors(folder / OPTIMIZER_FILE)
    by_name = state.get("optimizer_layout") == "by_name"
    if by_name and load_by_name is None:
        raise CheckpointError(
            f"the optimizer state in {str(folder)!r} was saved by a sharded run (train.fsdp = true); resume it "
            "with train.fsdp = true"
        )
    try:
        saved = decode_state(state["optimizer"], tensors)
        if by_name:
            assert load_by_name is not None
            load_by_name(saved)
        else:
            optimizer.load_state_dict(saved)
        scheduler.load_state_dict(decode_state(state["scheduler"], {}))
        if scaler is not None and "grad_scaler" in state:
            scaler.load_state_dict(decode_state(state["grad_scaler"], {}))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"optimizer state in {str(folder)!r} does not fit this model: {exc}") from None


# ------------------------------------------------------------------ RNG
def process_rng_state() -> dict[str, Tensor]:
    """This process's RNG states as tensors: torch's CPU generator, every CUDA device's, Python's ``random``."""
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda.{i}"] = st
    version, words, gauss = random.getstate()
    out["python"] = torch.tensor([version, *words], dtype=torch.int64)
    if gauss is not None:
        out["python_gauss"] = torch.tensor(gauss, dtype=torch.float64)
    return out


def gather_rng_states(world: int) -> list[dict[str, Tensor]]:
    """Every process's :func:`process_rng_state`, in rank order (all processes must call)."""
    mine = process_rng_state()
    if world == 1:
        return [mine]
    import torch.distributed as dist

    states: list[Any] = [None] * world
    dist.all_gather_object(states, mine)
    return states


def rng_tensors(per_process: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """What ``rng_state.safetensors`` holds: each process's states (:func:`gather_rng_states`), keyed by
    ``torch_cpu.<rank>``, ``cuda.<rank>.<device>``, ``python.<rank>``."""
    out: dict[str, Tensor] = {}
    for rank, states in enumerate(per_process):
        for name, value in states.items():
            head, _, device = name.partition(".")
            out[f"{head}.{rank}.{device}" if device else f"{name}.{rank}"] = value
    return out


def set_rng_states(rng: Mapping[str, Tensor], state: Mapping[str, Any], rank: int) -> None:
    """Restore process ``rank``'s RNG states from a checkpoint (``rng``: ``rng_state.safetensors``)."""
    key = f"torch_cpu.{rank}"
    if key in rng:
        torch.set_rng_state(rng[key])
    else:  # resumed on more processes than the run had: new ranks get a fresh, derived stream
        torch.manual_seed(derive_seed("resume", state.get("step"), rank))
    cuda = sorted((k for k in rng if k.startswith(f"cuda.{rank}.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[k] for k in cuda])
    words = rng.get(f"python.{rank}")
    if words is not None:
        gauss = rng.get(f"python_gauss.{rank}")
        values = [int(v) for v in words.tolist()]
        random.setstate((values[0], tuple(values[1:]), None if gauss is None else float(gauss)))
    else:  # a checkpoint that kept the main process's Python state only
        random.setstate(decode_state(state["python_rng"], {}))


# -------------------------------------------------------------- metrics
def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the checkpoint's step: a resumed run logs those steps again."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


__all__ = [
    "CHECKPOINT_DIR",
    "METRICS_FILE",
    "OPTIMIZER_FILE",
    "RNG_FILE",
    "RUN_FILE",
    "STATE_FILE",
    "TOKENIZER_DIR",
    "DataPosition",
    "decode_state",
    "encode_state",
    "gather_rng_states",
    "process_rng_state",
    "read_json_state",
    "restore_optimizer",
    "rng_tensors",
    "set_rng_states",
    "state_record",
    "truncate_metrics",
]
