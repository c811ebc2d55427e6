"""When reading a tensor's values on the host is free, and when it is not.

Reading a value (``bool(t.all())``, ``t.tolist()``, boolean indexing) from a
CPU tensor is a memory read. From a CUDA or MPS tensor it is a host sync: the
host waits until the device has run everything queued before it, which stalls
the launch pipeline once per read. Under ``torch.compile`` tracing it is a
graph break on any device. Code on the model's hot path reads values only
where :func:`host_reads_free` says so, and otherwise takes a path of tensor
ops whose result is the same.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: device types whose tensors live in host memory: reading their values costs no device sync
HOST_DEVICES: frozenset[str] = frozenset({"cpu"})


def host_reads_free(t: Tensor) -> bool:
    """True when reading ``t``'s values on the host costs no device sync and no graph break: a tensor in
    host memory, outside ``torch.compile`` tracing."""
    return t.device.type in HOST_DEVICES and not torch.compiler.is_compiling()


def mask_is_trivial(mask: Tensor | None) -> bool:
    """True when a padding mask (1 = keep) masks nothing and may be dropped: ``None``, or all ones where
    reading it is free. Where reading would sync it is False and the caller applies the mask, which
    gives the same result as dropping an all-ones mask."""
    return mask is None or (host_reads_free(mask) and bool(mask.all()))


__all__ = ["HOST_DEVICES", "host_reads_free", "mask_is_trivial"]
