"""Loading weights without a second copy: a model built with its backbone's parameters on the ``meta``
device, filled tensor by tensor from memory-mapped safetensors files.

A plain load would build the model with random weights (one copy), read every tensor of the file (a
second copy) and copy one into the other: a peak of twice the weights. Here:

- :func:`unimodel.bounds.backbone_on_meta` makes :func:`unimodel.build_model` register the backbone's
  parameters on ``meta`` (shapes only, initialisers skipped). Buffers are built for real, so the
  non-persistent ones (position tables, masks) hold their computed values; task heads are built for
  real too, so a head the checkpoint lacks keeps its initialisation.
- :func:`mapped_tensors` opens safetensors files as memory maps (``safetensors.safe_open``): nothing is
  read until a tensor is used. Each file is opened once per chunk of about :data:`CHUNK_BYTES` of
  consecutive tensors, so the pages of one chunk are unmapped as soon as its last tensor has been
  copied out; the file pages resident at any time stay within a chunk or two (a sharded Hugging Face
  folder is read shard by shard, chunk by chunk).
- :func:`load_state_into` checks names, shapes and kinds against the model before reading anything,
  then copies each tensor into memory of its own, in the requested dtype and on the requested device,
  and puts it in the model in place of the ``meta`` parameter: every module holding a tied parameter
  gets the same new one, so tied weights stay tied.

The peak is the size of the weights plus a chunk, plus any tensor a Hugging Face converter builds
(fused projections). Loading executes nothing from the file: the safetensors header is JSON.
"""

from __future__ import annotations

import json
import struct
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from unimodel.bounds import check_memory, format_size
from unimodel.errors import CheckpointError

#: consecutive bytes of a file mapped by one handle: the file pages resident while copying stay about this size
CHUNK_BYTES = 16 << 20
#: a safetensors header larger than this is refused (a corrupt length would otherwise allocate it)
MAX_HEADER_BYTES = 100 << 20


def read_header(path: Path) -> dict[str, tuple[int, int]]:
    """``{name: (start, end)}``: each tensor's byte range in the data section of a safetensors file,
    from its JSON header (no tensor data is read)."""
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > MAX_HEADER_BYTES or size > path.stat().st_size - 8:
                raise ValueError(f"header length {size} does not fit the file")
            header = json.loads(f.read(size))
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        return {k: (int(v["data_offsets"][0]), int(v["data_offsets"][1])) for k, v in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{str(path)!r} cannot be read as safetensors (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None


def _chunks(ranges: Mapping[str, tuple[int, int]], chunk_bytes: int) -> list[list[str]]:
    """Tensor names in file order, grouped into runs of about ``chunk_bytes`` (a larger tensor alone)."""
    groups: list[list[str]] = []
    size = 0
    for name, (start, end) in sorted(ranges.items(), key=lambda item: item[1]):
        if not groups or size + (end - start) > chunk_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += end - start
    return groups


def mapped_tensors(files: Iterable[Path], *, chunk_bytes: int = CHUNK_BYTES) -> dict[str, Tensor]:
    """Every tensor of the safetensors ``files`` as a view of a memory map: reading a view reads the file.

    A chunk's map is released once every view of it is gone, so a caller that copies tensors out in file
    order and drops each view (:func:`load_state_into` does) holds about one chunk of file pages at a time.
    A name present in two files raises :class:`CheckpointError`.
    """
    from safetensors import safe_open

    views: dict[str, Tensor] = {}
    for path in files:
        if not path.is_file():
            raise CheckpointError(f"missing {path.name} in {str(path.parent)!r}")
        for group in _chunks(read_header(path), chunk_bytes):
            twice = [name for name in group if name in views]
            if twice:
                raise CheckpointError(f"{str(path)!r} holds tensor(s) another file holds too: {', '.join(twice)}")
            try:
                with safe_open(str(path), framework="pt", device="cpu") as handle:
                    views.update((name, handle.get_tensor(name)) for name in group)
            except Exception as exc:
                raise CheckpointError(
                    f"{str(path)!r} cannot be read as safetensors (truncated or corrupt?): {type(exc).__name__}: {exc}"
                ) from None
    return views


def _holders(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, bool]]]:
    """For each parameter and buffer (by identity): every ``(module, attribute, is_parameter)`` holding it."""
    holders: dict[int, list[tuple[nn.Module, str, bool]]] = {}
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append((module, name, True))
        for name, b in module._buffers.items():
            if b is not None:
                holders.setdefault(id(b), []).append((module, name, False))
    return holders


def _state(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The state dict's tensors (parameters as the objects modules hold), without tied duplicates:
    ``(tensors, {dropped_key: kept_key})``."""
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[int, str] = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            aliases[key] = seen[id(t)]
        else:
            seen[id(t)] = key
            tensors[key] = t
    return tensors, aliases


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    return "floating" if dtype.is_floating_point else "complex" if dtype.is_complex else "integer"


def _check_fit(
    expected: Mapping[str, Tensor],
    aliases: Mapping[str, str],
    tensors: Mapping[str, Tensor],
    fresh: Sequence[str],
    where: str,
) -> None:
    missing = sorted(k for k in expected if k not in tensors and k not in fresh)
    unexpected = sorted(k for k in tensors if k not in expected and k not in aliases)
    wrong = sorted(
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in tensors and tensors[k].shape != expected[k].shape
    )
    kinds = sorted(
        f"{k}: checkpoint {tensors[k].dtype} vs model {expected[k].dtype}"
        for k in expected
        if k in tensors and _kind(tensors[k].dtype) != _kind(expected[k].dtype)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if wrong:
        problems.append(f"shape mismatches: {'; '.join(wrong)}")
    if kinds:  # an integer tensor copied into float weights would load as other numbers, silently
        problems.append(f"dtype mismatches (integer, floating and bool values do not convert): {'; '.join(kinds)}")
    if problems:
        raise CheckpointError(f"{where} does not fit its config. " + ". ".join(problems))


def _nonfinite(t: Tensor) -> bool:
    # float64 cannot overflow on a sum of finite float32/16 values; NaN and infinities propagate
    return t.is_floating_point() and t.numel() > 0 and not bool(torch.isfinite(t.sum(dtype=torch.float64)))


def _put(holders: list[tuple[nn.Module, str, bool]], value: Tensor, requires_grad: bool) -> None:
    """Make every holder of one (possibly tied) tensor hold ``value`` instead."""
    new: Tensor = nn.Parameter(value, requires_grad=requires_grad) if holders[0][2] else value
    for module, name, is_param in holders:
        if is_param:
            module._parameters[name] = new  # type: ignore[assignment]
        else:
            module._buffers[name] = new


def load_state_into(
    model: nn.Module,
    files: Path | Sequence[Path] | Mapping[str, Tensor],
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    *,
    where: str | None = None,
    fresh: tuple[str, ...] = (),
) -> list[str]:
    """Fill ``model`` from safetensors ``files`` (a path or several, e.g. the shards of a folder) or from a
    mapping of tensors (such as memory-mapped views a converter renamed); returns the keys kept fresh.

    Every tensor of the model's state dict is replaced, parameters on ``meta`` included: the file's tensor
    is copied into memory of its own on ``device``, floating tensors in ``dtype`` (``None``: the dtype the
    model was built with), and every module holding it (tied weights) gets the same new tensor. Floating
    tensors the file does not fill (non-persistent buffers, fresh heads) are cast to ``dtype`` too.

    A ``dict`` passed as ``files`` is emptied as its tensors are copied, so that the caller holds no view
    that would keep a file's pages resident. Keys under a prefix in ``fresh`` may be absent (a task head new
    to this checkpoint) and keep their initial values. A mismatch (missing or unexpected keys, shapes,
    integer vs floating) raises
    :class:`CheckpointError` listing every bad key before anything is copied; the memory the loaded tensors
    need is checked first too (:class:`~unimodel.errors.ResourceError`). Tensors holding NaN or infinities
    are named in one warning.
    """
    where = where or "checkpoint"
    device = torch.device(device)
    if isinstance(files, dict):
        tensors = files  # emptied as it is copied: a chunk's map is released with its last view
    elif isinstance(files, Mapping):
        tensors = dict(files)
    else:
        tensors = mapped_tensors([files] if isinstance(files, Path) else files)
    expected, aliases = _state(model)
    kept_fresh = sorted(k for k in expected if k not in tensors and k.startswith(fresh)) if fresh else []
    _check_fit(expected, aliases, tensors, kept_fresh, where)
    for key in [k for k in tensors if k not in expected]:  # tied aliases a file may carry: the kept key loads
        del tensors[key]

    def target(key: str) -> torch.dtype:
        slot = expected[key].dtype
        return dtype if dtype is not None and slot.is_floating_point else slot

    nbytes = sum(t.numel() * torch.empty((), dtype=target(k), device="meta").element_size() for k, t in tensors.items())
    check_memory(
        nbytes,
        f"loading {where} ({format_size(nbytes)} of weights)",
        device=device,
        fix="Free memory, load in a smaller dtype, or load on another device.",
    )
    holders = _holders(model)
    bad: list[str] = []
    # file order (views of one map together), so each chunk's map is released once its tensors are copied
    order = sorted(tensors, key=lambda k: (tensors[k].untyped_storage().data_ptr(), tensors[k].data_ptr()))
    with torch.no_grad():
        for key in order:
            source = tensors.pop(key)
            old = expected[key]
            value = torch.empty(source.shape, dtype=target(key), device=device)
            value.copy_(source)
            del source
            if _nonfinite(value):
                bad.append(key)
            _put(holders[id(old)], value, old.requires_grad)
        _cast_rest(model, dtype, device)
    leftover = [k for k, t in _state(model)[0].items() if t.is_meta]
    if leftover:
        raise CheckpointError(f"{where} holds no values for {', '.join(leftover)}; nothing else can fill them")
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        warnings.warn(
            f"{where}: {len(bad)} tensor(s) hold NaN or infinite values ({shown}); the model's outputs will not "
            "be finite. The checkpoint was probably saved after training diverged",
            stacklevel=3,
        )
    return kept_fresh


def meta_keys(model: nn.Module, prefixes: tuple[str, ...]) -> list[str]:
    """State-dict keys under ``prefixes`` whose tensors are on ``meta`` (a fresh part that has no values: the
    model must be built for real to initialise it)."""
    if not prefixes:
        return []
    return [k for k, t in model.state_dict(keep_vars=True).items() if k.startswith(prefixes) and t.is_meta]


def _cast_rest(model: nn.Module, dtype: torch.dtype | None, device: torch.device) -> None:
    """Move what the file did not fill (buffers, fresh heads) to ``device`` and floating ones to ``dtype``."""
    holders = _holders(model)
    done: set[int] = set()
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for t in list(table.values()):
                if t is None or id(t) in done or t.is_meta:
                    continue
                done.add(id(t))
                want = dtype if dtype is not None and t.is_floating_point() else t.dtype
                if t.device != device or t.dtype != want:
                    _put(holders[id(t)], t.detach().to(device=device, dtype=want), t.requires_grad)


__all__ = ["CHUNK_BYTES", "load_state_into", "mapped_tensors", "meta_keys", "read_header"]
