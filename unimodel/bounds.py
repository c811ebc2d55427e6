"""Memory bounds: what a model, a generation call or a corpus needs, estimated before anything is allocated.

Every size a user or a file supplies (``n_layers``, ``vocab_size``, ``num_beams``,
``corpus_options``) passes through :func:`check_memory` first, which refuses a
request that needs more than the memory available with a :class:`ResourceError`
saying "this needs about N GiB, more than the M GiB available".

- **Models** (:func:`build_within_memory`): a parameter/buffer registration
  hook sums the bytes modules register while the backbone and the objective's
  heads are built, and stops the build once the sum passes a limit. A model
  is first built for real with the limit at :data:`PROBE_BYTES` (64 MiB):
  ``nn.Linear`` and ``nn.Embedding`` register their weight before writing it,
  so nothing large is ever filled. A model that passes it is then built on the
  ``meta`` device (shapes, no storage, initialisers skipped) with the limit at
  the memory available (:func:`estimate_model_bytes`), refused if it does not
  fit, and built again from the same random state. When a ``ModuleList`` is
  filled from a generator over a ``range`` (``nn.ModuleList(Block() for _ in
  range(n))``), the children still to come are projected from the ones built
  so far, so ``n_layers = 10**6`` stops after two layers. Meta estimates are
  cached per config.
- **Generation** (:func:`check_generation_memory`): the decoder's own
  ``new_cache(rows, max_length)`` is created on the ``meta`` device and
  measured, plus per-row logits and sequences, plus cross-attention memory.
- **Corpora** (:func:`declare_size`, :func:`check_corpus_memory`): a corpus
  function may declare an estimate of its size from its options.

Available memory: ``MemAvailable`` of ``/proc/meminfo`` (``psutil`` where
there is no ``/proc``), ``torch.cuda.mem_get_info`` for CUDA devices. The
environment variable ``UNIMODEL_MEMORY_LIMIT`` (``"8GiB"``, ``"500MB"``, bytes)
or :func:`memory_limit` replaces that figure, e.g. to allow swap or to keep a
process small.

This module is the model estimator; the budget, :func:`check_memory` and the
generation and corpus checks are :mod:`unimodel.memory` (re-exported here).
"""

from __future__ import annotations

import contextlib
import json
import operator
import random
import sys
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

# the memory budget and the checks against it live in unimodel.memory; their names stay importable from here
from unimodel.memory import (
    GIB,
    LIMIT_ENV,
    Budget,
    available_memory,
    check_corpus_memory,
    check_generation_memory,
    check_memory,
    declare_size,
    format_size,
    memory_limit,
    parse_size,
    tensor_bytes,
)

if TYPE_CHECKING:
    from torch import nn

    from unimodel.interfaces import ModelFamily, Objective


# ------------------------------------------------------------------ models
_INIT_OPS = frozenset(
    {
        # in-place initialisers and the elementwise in-place ops they are made of: no-ops on meta tensors,
        # but each would otherwise run through torch's Python reference kernels (slow)
        "normal_",
        "uniform_",
        "zero_",
        "fill_",
        "copy_",
        "mul_",
        "add_",
        "sub_",
        "div_",
        "clamp_",
        "clamp_min_",
        "clamp_max_",
        "erfinv_",
        "exponential_",
        "bernoulli_",
        "random_",
        "masked_fill_",
        "trunc_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "xavier_uniform_",
        "xavier_normal_",
        "orthogonal_",
        "constant_",
        "ones_",
        "zeros_",
        "eye_",
    }
)
_ESTIMATES: dict[str, int] = {}
_MAX_CACHED = 256
_local = threading.local()

PROBE_BYTES = 64 << 20
"""A model is first built for real while its registered tensors stay under this many bytes (and under an
eighth of the memory available); one that passes it is measured on ``meta`` before being built."""


class _OverBudget(Exception):
    def __init__(self, nbytes: int, projected: bool) -> None:
        self.nbytes, self.projected = nbytes, projected


class _Tally:
    """Bytes of the parameters and buffers modules hold while a build runs; past ``budget`` it stops the build.

    A tensor held by several modules (tied weights) counts once; one that a module stops holding (a weight
    replaced by a tied one) stops counting when no module holds it any more. A ``ModuleList`` filled from a
    generator over a ``range`` has its children still to come projected from the ones built so far.
    """

    def __init__(self, budget: int | None) -> None:
        self.budget = budget
        self.total = 0
        self.slots: dict[tuple[int, str], int] = {}  # (module id, attribute) -> tensor id
        self.held: dict[int, list[Any]] = {}  # tensor id -> [holders, bytes, the tensor (keeps its id unique)]
        self.smallest_child: dict[int, int] = {}  # ModuleList id -> bytes of its smallest child so far

    def add(self, module: Any, name: str, tensor: Any) -> None:
        key = (id(module), name)
        previous = self.slots.pop(key, None)
        if previous is not None:
            entry = self.held[previous]
            entry[0] -= 1
            if entry[0] == 0:
                self.total -= entry[1]
                del self.held[previous]
        if tensor is None:
            return
        self.slots[key] = id(tensor)
        holding = self.held.get(id(tensor))
        if holding is not None:
            holding[0] += 1
            return
        nbytes = tensor.numel() * tensor.element_size()
        self.held[id(tensor)] = [1, nbytes, tensor]
        self.total += nbytes
        if self.budget is not None and self.total > self.budget:
            raise _OverBudget(self.total, projected=False)

    def add_child(self, container: Any, child: Any) -> None:
        if self.budget is None:
            return
        size = sum(t.numel() * t.element_size() for t in _unique_tensors(child))
        smallest = min(size, self.smallest_child.get(id(container), size))
        self.smallest_child[id(container)] = smallest
        projected = self.total + (_children_to_come() or 0) * smallest
        if projected > self.budget:
            raise _OverBudget(projected, projected=True)


def _unique_tensors(*modules: nn.Module) -> list[Any]:
    """Parameters and buffers of ``modules``, each tied tensor once."""
    return list({id(t): t for m in modules for t in [*m.parameters(), *m.buffers()]}.values())


def _children_to_come() -> int | None:
    """Items still to come from the generator a ``ModuleList.extend`` is consuming, when it is a
    generator expression over a sized iterator (a ``range``); ``None`` when that cannot be told."""
    from torch import nn

    extend_code = nn.ModuleList.extend.__code__
    frame: FrameType | None = sys._getframe(1)
    for _ in range(10):  # ... <- the registration hook <- add_module <- extend, with room for wrappers
        if frame is None:
            return None
        if frame.f_code is extend_code:
            inner = getattr(frame.f_locals.get("modules"), "gi_frame", None)
            source = inner.f_locals.get(".0") if inner is not None else None  # a genexpr's iterator argument
            hint = operator.length_hint(source, -1) if source is not None else -1
            return hint if hint > 0 else None
        frame = frame.f_back
    return None


def _on_tensor(module: nn.Module, name: str, tensor: Any) -> None:
    tally = getattr(_local, "tally", None)
    if tally is not None:
        tally.add(module, name, tensor)


def _on_module(module: nn.Module, name: str, child: Any) -> None:
    tally = getattr(_local, "tally", None)
    if tally is not None and child is not None and type(module).__name__ == "ModuleList":
        tally.add_child(module, child)


@contextlib.contextmanager
def _tallying(tally: _Tally) -> Iterator[None]:
    """Count, in ``tally``, what modules built in this thread register."""
    from torch.nn.modules import module as torch_module

    hooks = [
        torch_module.register_module_parameter_registration_hook(_on_tensor),
        torch_module.register_module_buffer_registration_hook(_on_tensor),
        torch_module.register_module_module_registration_hook(_on_module),
    ]
    _local.tally = tally
    try:
        yield
    finally:
        _local.tally = None
        for hook in hooks:
            hook.remove()


def _meta_mode() -> Any:
    """A mode in which tensors are created on ``meta`` (whatever device is asked for) and initialisers do nothing."""
    import torch
    from torch.overrides import TorchFunctionMode

    try:
        from torch.utils._device import _device_constructors

        constructors = _device_constructors()
    except ImportError:  # pragma: no cover - a torch without the list: the common factories
        names = ("empty", "zeros", "ones", "full", "rand", "randn", "randint", "arange", "tensor", "eye")
        constructors = {getattr(torch, n) for n in names}
    meta = torch.device("meta")

    class MetaBuild(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if func in constructors:
                kwargs["device"] = meta
            elif getattr(func, "__name__", "") in _INIT_OPS:
                target = args[0] if args else kwargs.get("tensor")
                if isinstance(target, torch.Tensor) and target.is_meta:
                    return target
            return func(*args, **kwargs)

    return MetaBuild()


def build_within_memory(family: type[ModelFamily], config: Any, objective: Objective, what: str) -> tuple[Any, Any]:
    """``(backbone, heads)``: ``family.build_backbone(config)`` and ``objective.build_heads(backbone)``, built
    only when their parameters and buffers fit in the memory available, else a :class:`ResourceError`.

    The build first runs for real under a registration hook that stops it as soon as the registered tensors
    pass :data:`PROBE_BYTES` (an ``nn.Linear`` or ``nn.Embedding`` registers its weight before initialising
    it, so a large weight is never written). A small model is then simply built. One that passes the
    probe, or whose allocation fails, is measured on the ``meta`` device (:func:`estimate_model_bytes`),
    refused if it does not fit, and built again from the caller's random state, so seeded builds give the
    same weights either way.
    """
    import torch

    budget = available_memory()
    if _cache_key(family, config, objective) not in _ESTIMATES and budget is not None:
        rng, py_rng = torch.random.get_rng_state(), random.getstate()
        try:
            with _tallying(_Tally(min(PROBE_BYTES, budget.nbytes // 8))):
                return _build_parts(family, config, objective)
        except _OverBudget:
            pass
        except RuntimeError as exc:  # the allocator refusing a tensor larger than the machine
            if "alloc" not in str(exc).lower():
                raise
        torch.random.set_rng_state(rng)
        random.setstate(py_rng)
    check_model_memory(family, config, objective, what, budget=budget)
    return _build_parts(family, config, objective)


def _build_parts(family: type[ModelFamily], config: Any, objective: Objective) -> tuple[Any, Any]:
    if _META_BACKBONE.get():
        with _parameters_on_meta():
            backbone = family.build_backbone(config)
    else:
        backbone = family.build_backbone(config)
    return backbone, objective.build_heads(backbone)


_META_BACKBONE: ContextVar[bool] = ContextVar("unimodel_backbone_on_meta", default=False)


@contextlib.contextmanager
def backbone_on_meta() -> Iterator[None]:
    """Within the block (this thread or task), :func:`build_within_memory` registers the backbone's parameters
    on the ``meta`` device, skipping their initialisers: a model to be filled from a checkpoint
    (:func:`unimodel.loading.load_state_into`) never holds random weights. Buffers and the objective's heads
    are built as usual (buffers keep their computed values; a head the checkpoint lacks keeps its
    initialisation). The sizes are tallied as before, so a model too large for memory is still refused."""
    token = _META_BACKBONE.set(True)
    try:
        yield
    finally:
        _META_BACKBONE.reset(token)


def _to_meta(module: nn.Module, name: str, param: Any) -> Any:
    if getattr(_local, "meta_params", False) and param is not None and not param.is_meta:
        from torch import nn

        return nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
    return None


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Parameters registered by modules built in this thread go to ``meta`` as they are registered (an
    ``nn.Linear``'s weight before it is initialised, so its memory is never written), and initialisers
    on ``meta`` tensors do nothing."""
    from torch.nn.modules import module as torch_module

    hook = torch_module.register_module_parameter_registration_hook(_to_meta)
    _local.meta_params = True
    try:
        with _skip_meta_inits():
            yield
    finally:
        _local.meta_params = False
        hook.remove()


def _skip_meta_inits() -> Any:
    """A mode in which in-place initialisers applied to ``meta`` tensors return at once."""
    import torch
    from torch.overrides import TorchFunctionMode

    class SkipMetaInits(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if getattr(func, "__name__", "") in _INIT_OPS:
                target = args[0] if args else kwargs.get("tensor")
                if isinstance(target, torch.Tensor) and target.is_meta:
                    return target
            return func(*args, **kwargs)

    return SkipMetaInits()


def _cache_key(family: type, config: Any, objective: Objective | None) -> str:
    parts = [f"{family.__module__}.{family.__qualname__}", json.dumps(config.to_dict(), sort_keys=True, default=repr)]
    if objective is not None:
        cls = type(objective)
        parts += [f"{cls.__module__}.{cls.__qualname__}", json.dumps(objective.config.to_dict(), default=repr)]
    return "|".join(parts)


@dataclass(frozen=True)
class ModelEstimate:
    """Bytes of a model's parameters and buffers. ``complete``: the whole model was measured;
    otherwise the build stopped past the budget and ``nbytes`` is a projection, or a lower bound
    (``lower_bound``)."""

    nbytes: int
    complete: bool = True
    lower_bound: bool = False


def estimate_model_bytes(
    family: type[ModelFamily], config: Any, objective: Objective | None = None, *, budget: int | None = None
) -> ModelEstimate | None:
    """What ``family.build_backbone(config)`` (and the objective's heads) would allocate for parameters
    and buffers, from a build on the ``meta`` device that stops once it passes ``budget`` bytes.

    ``None`` when the family cannot be built on ``meta`` (no estimate; the real build goes ahead).
    Torch's and Python's random states are left as they were. Complete estimates are cached per config.
    """
    import torch

    key = _cache_key(family, config, objective)
    cached = _ESTIMATES.get(key)
    if cached is not None:
        return ModelEstimate(cached)
    rng, py_rng = torch.random.get_rng_state(), random.getstate()
    try:
        with _tallying(_Tally(budget)), _meta_mode():
            backbone = family.build_backbone(config)
            heads = objective.build_heads(backbone) if objective is not None else {}
        # What the model keeps: a module replaced by a shared one while building (T5's decoder embedding) drops out.
        parts = [backbone.encoder, backbone.decoder, backbone.lm_head, *heads.values()]
        total = sum(t.numel() * t.element_size() for t in _unique_tensors(*(p for p in parts if p is not None)))
    except _OverBudget as over:
        return ModelEstimate(over.nbytes, complete=False, lower_bound=not over.projected)
    except Exception:  # a family that cannot be built on meta is built without a prior estimate
        return None
    finally:
        torch.random.set_rng_state(rng)
        random.setstate(py_rng)
    if len(_ESTIMATES) >= _MAX_CACHED:
        _ESTIMATES.clear()
    _ESTIMATES[key] = total
    return ModelEstimate(total)


def check_model_memory(
    family: type[ModelFamily], config: Any, objective: Objective | None, what: str, *, budget: Budget | None = None
) -> ModelEstimate | None:
    """Refuse a model whose parameters and buffers need more memory than is available, before building it."""
    budget = budget or available_memory()
    estimate = estimate_model_bytes(family, config, objective, budget=budget.nbytes if budget else None)
    if estimate is not None:
        check_memory(estimate.nbytes, what, budget=budget, at_least=estimate.lower_bound, fix=_FIX)
    return estimate


_FIX = "Use fewer or narrower layers, or a smaller vocabulary."


__all__ = [
    "GIB",
    "LIMIT_ENV",
    "Budget",
    "ModelEstimate",
    "available_memory",
    "backbone_on_meta",
    "build_within_memory",
    "check_corpus_memory",
    "check_generation_memory",
    "check_memory",
    "check_model_memory",
    "declare_size",
    "estimate_model_bytes",
    "format_size",
    "memory_limit",
    "parse_size",
    "tensor_bytes",
]
