"""The memory a process may use, and the checks of a request against it.

:func:`available_memory` is ``MemAvailable`` of ``/proc/meminfo`` (``psutil``
where there is no ``/proc``), ``torch.cuda.mem_get_info`` for a CUDA device,
or the limit ``UNIMODEL_MEMORY_LIMIT`` / :func:`memory_limit` sets.
:func:`check_memory` refuses a request that needs more with a
:class:`ResourceError`; the checks of a generation call
(:func:`check_generation_memory`) and of a corpus's options
(:func:`declare_size`, :func:`check_corpus_memory`) build on it. The model
estimator is :mod:`unimodel.bounds`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from unimodel.errors import ConfigError, ResourceError

if TYPE_CHECKING:
    import torch


GIB = 1 << 30


LIMIT_ENV = "UNIMODEL_MEMORY_LIMIT"


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 1 << 10, "m": 10**6, "mb": 10**6, "mib": 1 << 20}
_UNITS.update({"g": 10**9, "gb": 10**9, "gib": GIB, "t": 10**12, "tb": 10**12, "tib": 1 << 40})


_limit: ContextVar[int | None] = ContextVar("unimodel_memory_limit", default=None)


F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Budget:
    """Bytes that may be allocated, and where that figure comes from (for messages)."""

    nbytes: int
    source: str


def parse_size(text: str) -> int:
    """``"8GiB"``, ``"1.5 GB"``, ``"500MiB"``, ``"123456"`` -> bytes (1 GB = 10**9, 1 GiB = 2**30)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if match is None or match.group(2) not in _UNITS:
        raise ConfigError(f"{LIMIT_ENV}={text!r} is not a size; write e.g. 8GiB, 500MB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


@contextlib.contextmanager
def memory_limit(nbytes: int) -> Iterator[None]:
    """Within the block, treat ``nbytes`` as the memory available (this thread and its tasks)."""
    token = _limit.set(int(nbytes))
    try:
        yield
    finally:
        _limit.reset(token)


def available_memory(device: torch.device | str | None = None) -> Budget | None:
    """The memory a new allocation on ``device`` may use, or ``None`` when it cannot be told."""
    limit = _limit.get()
    if limit is not None:
        return Budget(limit, "allowed (unimodel.bounds.memory_limit)")
    env = os.environ.get(LIMIT_ENV)
    if env:
        return Budget(parse_size(env), f"allowed ({LIMIT_ENV}={env})")
    kind = getattr(device, "type", str(device).split(":")[0]) if device is not None else "cpu"
    if kind == "meta":
        return None
    if kind == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return Budget(int(free), f"free on {device}")
    system = _system_available()
    return None if system is None else Budget(system, "available")


def _system_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def format_size(nbytes: float) -> str:
    """``"51.2 GiB"``, ``"1.5 MiB"``, ``"10.0 KiB"``: sizes as messages show them."""
    if nbytes >= 100 * GIB:
        return f"{nbytes / GIB:,.0f} GiB"
    if nbytes >= GIB / 10:
        return f"{nbytes / GIB:.1f} GiB"
    if nbytes >= (1 << 20) / 10:
        return f"{nbytes / (1 << 20):.1f} MiB"
    return f"{nbytes / (1 << 10):.1f} KiB"


def check_memory(
    nbytes: float,
    what: str,
    *,
    device: torch.device | str | None = None,
    budget: Budget | None = None,
    at_least: bool = False,
    fix: str = "",
) -> None:
    """Raise :class:`ResourceError` when ``nbytes`` exceed the memory available on ``device``
    (or ``budget``, when given).

    ``what`` opens the message ("model 'gpt'"); ``at_least`` says ``nbytes`` is a
    lower bound; ``fix`` ends it.
    """
    budget = budget or available_memory(device)
    if budget is None or nbytes <= budget.nbytes:
        return
    about = "at least" if at_least else "about"
    raise ResourceError(
        f"{what}: this needs {about} {format_size(nbytes)}, more than the {format_size(budget.nbytes)} "
        f"{budget.source}. {fix or 'Use smaller sizes.'} (Set {LIMIT_ENV} to change the limit.)"
    )


def tensor_bytes(obj: Any, depth: int = 3) -> int:
    """Bytes of the tensors inside ``obj`` (attributes, lists, tuples, dicts; ``depth`` levels down)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if depth <= 0:
        return 0
    if isinstance(obj, dict):
        items: Any = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    elif hasattr(obj, "__dict__"):
        items = vars(obj).values()
    else:
        return 0
    return sum(tensor_bytes(v, depth - 1) for v in items)


def check_generation_memory(model: Any, input_ids: torch.Tensor, settings: Any) -> None:
    """Refuse a generation call whose cache, logits and sequences need more memory than is available.

    Rows are ``batch x max(num_beams, num_return_sequences)``; the decoder's own
    ``new_cache(rows, max_length)`` is measured on the ``meta`` device; an
    encoder-decoder adds the cross-attention keys/values (as much per source
    position as the cache per decoder position) and the repeated encoder states.
    """
    import torch

    # the generating part: the decoder, or the encoder of an encoder-only model with a strategy of its own
    decoder = model.decoder if model.decoder is not None else model.encoder
    batch, source = int(input_ids.shape[0]), int(input_ids.shape[1])
    expand = max(int(getattr(settings, "num_beams", 1) or 1), int(getattr(settings, "num_return_sequences", 1) or 1))
    rows, length = batch * expand, int(settings.max_length)
    dtype = model.dtype
    itemsize = torch.empty((), dtype=dtype, device="meta").element_size()
    try:
        cache = decoder.new_cache(rows, length, dtype=dtype, device=torch.device("meta"))
        per_position = tensor_bytes(cache) / max(length, 1)
    except Exception:  # no KV cache: one layer's states per position at least
        per_position = rows * decoder.d_model * itemsize
    nbytes = per_position * length
    nbytes += rows * decoder.vocab_size * 4 * 3  # fp32 logits, their log-softmax and the processed scores
    nbytes += rows * length * 8 * 2  # sequences and their reordered copy (int64)
    if model.is_encoder_decoder:
        nbytes += per_position * source + rows * source * model.encoder.d_model * itemsize
    beams = f" x {expand} beams or samples" if expand > 1 else ""
    check_memory(
        nbytes,
        f"generate (batch {batch}{beams}, {length} positions)",
        device=model.device,
        fix="Lower num_beams, num_return_sequences, max_new_tokens or the batch size.",
    )


def declare_size(estimate: Callable[..., float]) -> Callable[[F], F]:
    """Mark a corpus function with an estimate of the bytes it holds in memory.

    ``estimate`` is called with the corpus's own keyword arguments (``split`` and
    the ``corpus_options``) before the corpus runs::

        @declare_size(lambda split="train", n=1000, **_: n * 200)
        def my_corpus(split="train", *, n=1000): ...
    """

    def mark(function: F) -> F:
        function.size_estimate = estimate  # type: ignore[attr-defined]
        return function

    return mark


def check_corpus_memory(name: str, function: Any, kwargs: dict[str, Any]) -> None:
    """Refuse corpus options whose declared size exceeds the memory available (no-op without a declaration)."""
    estimate = getattr(function, "size_estimate", None)
    if estimate is None:
        return
    nbytes = estimate(**kwargs)
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "split")
    check_memory(
        nbytes,
        f"corpus {name!r}" + (f" ({shown})" if shown else ""),
        fix="Lower the sizes in data.corpus_options.",
    )


__all__ = [
    "GIB",
    "LIMIT_ENV",
    "Budget",
    "available_memory",
    "check_corpus_memory",
    "check_generation_memory",
    "check_memory",
    "declare_size",
    "format_size",
    "memory_limit",
    "parse_size",
    "tensor_bytes",
]
