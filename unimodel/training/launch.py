"""accelerate set-up: the device and the Accelerator a run uses, and the CPU multi-process launch.

``[train] device`` picks the device (:func:`resolve_device`: CUDA, then MPS, then
the CPU for ``"auto"``); accelerate places the model and batches there.

accelerate does device placement, mixed precision, gradient accumulation and
multi-process data parallelism; unimodel writes no distributed code of its own.
Two workarounds live here, and only here:

- accelerate keeps process-wide state, so a second run in one process (a
  notebook, a test) starts from a clean slate (:func:`make_accelerator`);
- ``accelerate launch --cpu --num_processes N`` without mpirun starts a single
  process; :func:`cpu_worker_command` is the command that starts the N workers
  asked for (the CLI runs it), reading N from the launcher's command line, the
  one place it is still written.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from unimodel.errors import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from unimodel.training.config import TrainConfig


#: the devices [train] device names, in the order ``"auto"`` tries them
DEVICES = ("cuda", "mps", "cpu")


def available_devices() -> tuple[str, ...]:
    """The device types this process can train on, in :data:`DEVICES` order."""
    import torch

    found = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    return tuple(d for d in DEVICES if found[d])


def resolve_device(requested: str) -> str:
    """The device type a run asking for ``requested`` trains on: ``"auto"`` takes the first available of
    CUDA, MPS and the CPU; a named device must be available (:class:`ConfigError` otherwise)."""
    available = available_devices()
    if requested == "auto":
        return available[0]
    if requested not in DEVICES:
        raise ConfigError(f"train.device: {requested!r} is not a device; choose auto, {', '.join(DEVICES)}")
    if requested not in available:
        raise ConfigError(
            f'train.device = "{requested}" but this machine (this torch build) has no {requested.upper()} device; '
            f'available here: {", ".join(available)}. Use device = "auto" to take the best one present'
        )
    return requested


def make_accelerator(tc: TrainConfig) -> Accelerator:
    """The run's Accelerator: device, precision, accumulation, and the distributed engine the launch chose
    (DDP, or DeepSpeed ZeRO from an accelerate config); ``train.fsdp`` shards on top of it
    (:mod:`unimodel.training.sharding`)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    check_engine_installed()
    if not PartialState._shared_state or PartialState().num_processes == 1:
        # accelerate keeps process-wide state; a second run in one process (a notebook, a test)
        # may use another precision or accumulation, so start from a clean slate.
        AcceleratorState._reset_state()
        GradientState._reset_state()
    device = resolve_device(tc.requested_device)
    handlers = []
    if tc.find_unused_parameters:  # a last resort: DDP then walks the autograd graph every step
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    try:
        acc = Accelerator(
            cpu=device == "cpu",
            mixed_precision=tc.mixed_precision,
            gradient_accumulation_steps=tc.gradient_accumulation_steps,
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            rng_types=[],  # data order and noise are pure functions of (seed, step); nothing to synchronise
            kwargs_handlers=handlers,
        )
    except ValueError as exc:
        raise ConfigError(f"train: accelerate cannot run this configuration: {exc}") from None
    if acc.device.type != device:
        raise ConfigError(
            f'train.device = "{device}" but accelerate placed the run on {acc.device}; check the accelerate '
            "config (accelerate config / --cpu) against [train] device"
        )
    if tc.mixed_precision == "fp16" and acc.device.type == "cpu":
        raise ConfigError(
            'train: mixed_precision = "fp16" needs a GPU: on the CPU accelerate neither autocasts nor scales '
            'fp16, so the run would silently train in fp32. Use "bf16" on the CPU, or device = "auto" (or '
            '"cuda") on a machine with a GPU'
        )
    check_engine(acc, tc)
    return acc


def check_engine_installed() -> None:
    """A DeepSpeed launch (``accelerate launch`` with a DeepSpeed config) needs the deepspeed package."""
    import importlib.util

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true", "yes") and (
        importlib.util.find_spec("deepspeed") is None
    ):
        raise ConfigError(
            "train: the accelerate launch asks for DeepSpeed, which is not installed; run `pip install deepspeed` "
            "(it needs a CUDA toolkit), or launch with a DDP or FSDP2 config (examples/accelerate/)"
        )


def check_engine(acc: Accelerator, tc: TrainConfig) -> None:
    """Refuse engine set-ups the trainer cannot run, and fill in what DeepSpeed needs from ``[train]``."""
    from accelerate.utils import DistributedType

    kind = acc.distributed_type
    if kind == DistributedType.FSDP:
        # one sharding code path on CPUs and GPUs alike: accelerate's FSDP plugin does not run on the CPU
        raise ConfigError(
            "train: the accelerate config asks for FSDP; unimodel shards the model itself with FSDP2. Launch "
            "with a multi-GPU (DDP) accelerate config and set train.fsdp = true (examples/accelerate/fsdp2.yaml)"
        )
    if kind == DistributedType.DEEPSPEED:
        if tc.fsdp:
            raise ConfigError("train: train.fsdp = true and a DeepSpeed launch both shard the model; choose one")
        ds = acc.state.deepspeed_plugin.deepspeed_config
        steps = ds.get("gradient_accumulation_steps", "auto")
        if steps not in ("auto", tc.gradient_accumulation_steps):
            raise ConfigError(
                f"train: the DeepSpeed config accumulates {steps} micro-batches but train.gradient_accumulation_steps "
                f"is {tc.gradient_accumulation_steps}; set the DeepSpeed value to 'auto' or make them equal"
            )
        stage = int(ds.get("zero_optimization", {}).get("stage", 0))
        if stage >= 3:
            raise ConfigError(
                "train: DeepSpeed ZeRO stage 3 partitions the parameters, which evaluation, samples and checkpoints "
                "read whole; use ZeRO stage 1 or 2, or train.fsdp = true for sharded parameters"
            )
        # DeepSpeed sizes its buffers from the micro-batch; the trainer feeds its own batches, not a prepared
        # dataloader, so the sizes come from [train].
        world, accum = acc.num_processes, tc.gradient_accumulation_steps
        ds["train_micro_batch_size_per_gpu"] = tc.batch_size // (accum * world)
        ds["train_batch_size"] = tc.batch_size
        ds["gradient_accumulation_steps"] = accum
        if ds.get("gradient_clipping", "auto") == "auto":
            ds["gradient_clipping"] = tc.max_grad_norm


def _single_process_cpu_launch() -> bool:
    """True in a process that ``accelerate launch --cpu --num_processes N>1`` started alone (no mpirun):
    the launcher then sets MASTER_PORT for a process group it does not start itself."""
    env = os.environ
    launched_cpu = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    ranked = any(k in env for k in ("WORLD_SIZE", "RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"))
    return launched_cpu and "MASTER_PORT" in env and not ranked


def _requested_cpu_processes() -> int | None:
    """The ``--num_processes`` that the parent ``accelerate launch`` was given, or None when unknown.

    accelerate's CPU launcher starts one process and passes the count to nobody; the parent's
    command line is the one place it is still written.
    """
    try:
        import psutil

        cmdline = psutil.Process().parent().cmdline()
    except Exception:
        return None
    if "launch" not in cmdline:
        return None
    for i, arg in enumerate(cmdline):
        value = None
        if arg == "--num_processes" and i + 1 < len(cmdline):
            value = cmdline[i + 1]
        elif arg.startswith("--num_processes="):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def cpu_worker_command(train_args: Sequence[str]) -> list[str] | None:
    """The command that starts the CPU worker group ``accelerate launch --cpu --num_processes N`` asked for.

    Without mpirun, accelerate starts a single process for ``--cpu`` whatever ``--num_processes``
    says. In that process this returns a ``torch.distributed.run`` command that starts N ranked
    workers on the launcher's rendezvous address (each then joins a gloo group through
    accelerate), or None when no relaunch is needed: not under that launcher, already ranked, or
    a single process asked for.
    """
    if not _single_process_cpu_launch():
        return None
    n = _requested_cpu_processes()
    if n is None or n < 2:
        if n is None:
            import warnings

            warnings.warn(
                "accelerate launch --cpu started ONE process and the requested number of processes could not be "
                "read; training in one process. `accelerate launch --multi_gpu --num_processes N -m unimodel train "
                'CONFIG` starts N CPU processes (train.device = "cpu" keeps them on the CPU).',
                stacklevel=2,
            )
        return None
    env = os.environ
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(n),
        "--master_addr",
        env.get("MASTER_ADDR", "127.0.0.1"),
        "--master_port",
        env["MASTER_PORT"],
        "-m",
        "unimodel",
        *train_args,
    ]


__all__ = [
    "DEVICES",
    "available_devices",
    "check_engine",
    "check_engine_installed",
    "cpu_worker_command",
    "make_accelerator",
    "resolve_device",
]
