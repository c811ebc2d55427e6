"""Sharded data parallelism (FSDP2): parameters, gradients and optimizer state split over the processes.

``[train] fsdp = true`` shards the model with :func:`torch.distributed.fsdp.fully_shard`: every block
of every layer list (an ``nn.ModuleList`` child) is one shard unit, and the model itself holds the rest
(embeddings, heads, final norms). accelerate's own FSDP plugin does not run on the CPU (gloo), so
unimodel applies ``fully_shard`` itself, on the CPU and on GPUs alike; a run that accelerate already
shards with FSDP2 (an accelerate config with ``fsdp_version: 2``) is handled the same way.

Everything outside the training step works on gathered full parameters: :func:`full_model` builds a
plain replica of the model from the full state dict (every process takes part in the gather), which
evaluation, sampling, exact match and the checkpoint use. The optimizer state is saved gathered
(:func:`full_optimizer_state`, keyed by parameter name) and re-sharded on resume
(:func:`load_full_optimizer_state`), so a resumed run continues exactly, on any process count.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from accelerate import Accelerator

    from unimodel.model import Model


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded with FSDP2 (it is then an ``FSDPModule``)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without distributed support
        return False
    return isinstance(model, FSDPModule)


def shard_model(model: Model, accelerator: Accelerator) -> None:
    """Shard ``model`` in place over the accelerator's processes: each block of each layer list, then the root.

    The optimizer must be created afterwards: it steps the sharded parameters.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    _single_process_group(accelerator)
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                if not is_sharded(block):
                    fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _single_process_group(accelerator: Accelerator) -> None:
    """A run started without a launcher (one process, no ``RANK`` in the environment) gets a process group
    of its own, so FSDP2 runs there too (one shard: the whole model)."""
    import torch.distributed as dist

    if accelerator.num_processes == 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if accelerator.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def full_state_dict(model: nn.Module, *, to_main_only: bool = False) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of a sharded ``model``, gathered on every process (all must call), or
    on the main process only (the others get ``{}``) with ``to_main_only``; tensors on the CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=to_main_only)
    state = get_model_state_dict(model, options=options)
    return {k: v.detach().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)}


def gathered_model(model: Model) -> Model:
    """``model`` itself when it is not sharded; else a plain replica with the full parameters (every process
    must call: the parameters are gathered), in eval-ready form on the model's device.

    The replica is built from the model's spec without touching the global random state (a resumed run
    draws the same dropout as an uninterrupted one).
    """
    if not is_sharded(model):
        return model
    from unimodel.model import build_model

    state = full_state_dict(model)
    spec = model.spec()
    with torch.random.fork_rng(devices=[]):
        replica = build_model(spec["model"], objective=spec["objective"], tokenizer=model.tokenizer)
    replica.load_state_dict(state)
    replica.generation_config = model.generation_config
    replica.provenance = model.provenance
    replica.to(_device_of(model))
    replica.train(model.training)
    return replica


@contextmanager
def full_model(model: Model) -> Iterator[Model]:
    """:func:`gathered_model` for the length of a ``with`` block; a replica is dropped on exit."""
    replica = gathered_model(model)
    try:
        yield replica
    finally:
        del replica


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters())
    return p.device


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state of a sharded ``model``, gathered on the main process (``{}`` on the others; all must
    call), keyed by parameter name, tensors on the CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dict(get_optimizer_state_dict(model, optimizer, options=options))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load a state :func:`full_optimizer_state` gathered into the optimizer of sharded ``model``: every process
    takes its shard of it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=dict(state), options=options)


__all__ = [
    "full_model",
    "full_optimizer_state",
    "full_state_dict",
    "gathered_model",
    "is_sharded",
    "load_full_optimizer_state",
    "shard_model",
]
