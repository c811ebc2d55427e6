"""A checkpoint's files: their names, atomic and durable writes, JSON and safetensors I/O, a run's pointer.

What :mod:`unimodel.checkpoint` (models saved and loaded), :mod:`unimodel.hf`
and the trainer's run folders write and read with. Nothing here knows a model:
tensors go in and out as name -> tensor mappings. Pickle-based files are
refused, never opened.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unimodel.bounds import check_memory
from unimodel.errors import CheckpointError

CONFIG_FILE = "config.json"


GENERATION_SECTION = "generation"


WEIGHTS_FILE = "model.safetensors"


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


PROVENANCE = "provenance"  # config.json: which plugin, distribution and version provided each component


# Files a unimodel checkpoint (with a training run's state) or a Hugging Face folder consists of.
OWNED_FILES = (
    CONFIG_FILE,
    WEIGHTS_FILE,
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "run.json",
    "trainer_state.json",
    "optimizer.safetensors",
    "rng_state.safetensors",
)


# A training run's folder: complete checkpoints in checkpoints/step-NNNNNN/, the newest named by the
# pointer file (replaced atomically), and a ``checkpoint`` link to it (see unimodel.training.runfolder).
RUN_POINTER_FILE = "checkpoint.json"


RUN_POINTER_FORMAT = "unimodel-checkpoint-pointer"


RUN_CHECKPOINTS_DIR = "checkpoints"


RUN_LATEST = "checkpoint"


_STEP_FOLDER = re.compile(r"step-(\d{6,12})")


def step_of_folder(name: str) -> int | None:
    """The step of a step folder's name (``step-000120`` -> 120), None for any other name."""
    found = _STEP_FOLDER.fullmatch(name)
    return int(found.group(1)) if found else None


def read_run_pointer(run_folder: Path) -> tuple[int, Path] | None:
    """(step, folder) that a run folder's pointer file names; None when there is no usable pointer.

    The pointer can only name ``checkpoints/step-NNNNNN`` inside ``run_folder``: a pointer
    naming anything else (another path, ``..``) is ignored, never followed.
    """
    try:
        data = json.loads((run_folder / RUN_POINTER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != RUN_POINTER_FORMAT:
        return None
    rel = data.get("checkpoint")
    if not isinstance(rel, str):
        return None
    parent, _, name = rel.partition("/")
    step = step_of_folder(name)
    if parent != RUN_CHECKPOINTS_DIR or step is None or data.get("step") != step:
        return None
    return step, run_folder / RUN_CHECKPOINTS_DIR / name


def resolve_run_folder(folder: Path) -> Path:
    """``folder`` itself when it holds a checkpoint; for a training run's output folder, the checkpoint its
    pointer names (else its ``checkpoint`` folder); else ``folder`` unchanged."""
    if (folder / CONFIG_FILE).is_file():
        return folder
    pointed = read_run_pointer(folder)
    if pointed is not None and (pointed[1] / CONFIG_FILE).is_file():
        return pointed[1]
    if (folder / RUN_LATEST / CONFIG_FILE).is_file():
        return folder / RUN_LATEST
    return folder


def owned_by_checkpoints(name: str) -> bool:
    """Whether a file called ``name`` belongs to a checkpoint format (replaced or removed on save)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in OWNED_FILES)


def make_temp_dir(path: Path) -> Path:
    """A new empty sibling of ``path`` (``.NAME.tmp-XXXX``), with the permissions the umask gives new folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
        try:
            tmp.mkdir(mode=0o777)  # the umask applies, unlike mkdtemp's 0700
        except FileExistsError:
            continue
        return tmp


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` when the block succeeds."""
    path = Path(path)
    tmp = make_temp_dir(path)
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to stable storage; folders cannot be opened for this
    on every platform, so there it is skipped."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except (IsADirectoryError, PermissionError):  # Windows: folders are not opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then every folder bottom-up (``folder`` itself last)."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_path(Path(root) / name)
        for name in dirs:
            fsync_path(Path(root) / name)
    fsync_path(folder)


def write_file_durably(path: Path, data: bytes, *, before_replace: Callable[[], None] | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably: a temporary sibling is written and fsync'd,
    renamed over ``path`` (``os.replace``), and the parent folder fsync'd. A reader sees the old or
    the new file, whole, at every instant; after return the new one survives a power cut."""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def is_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a unimodel checkpoint or a Hugging Face model folder (by its config.json)."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and ("model" in config or "model_type" in config)


@contextmanager
def checkpoint_dir(path: Path, *, overwrite: bool, what: str) -> Iterator[Path]:
    """Yield an empty folder to write a checkpoint into; when the block succeeds it becomes ``path``.

    ``path`` absent, empty, or holding only checkpoint files: replaced whole, atomically (a rename).
    ``path`` holding other files too: refused unless it is a checkpoint or ``overwrite``; then the
    checkpoint's files are moved in one by one (each atomically), checkpoint files the new one does not
    have are removed, and every other file is left as it was.
    """
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{what}: {str(path)!r} is a file; give a folder path (new, empty or a checkpoint)")
    entries = sorted(e.name for e in path.iterdir()) if path.is_dir() else []
    if entries and not overwrite and not is_checkpoint(path):
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise CheckpointError(
            f"{what}: {str(path)!r} is not a unimodel or Hugging Face checkpoint and is not empty ({shown}); "
            "nothing was written. Save to a new or empty folder, or pass overwrite=True to write the checkpoint's "
            "files there (files that are not part of a checkpoint are kept)"
        )
    others = [name for name in entries if not ((path / name).is_file() and owned_by_checkpoints(name))]
    if not others:
        with atomic_dir(path) as tmp:
            yield tmp
        return
    tmp = make_temp_dir(path)
    try:
        yield tmp
        written = {e.name for e in tmp.iterdir()}
        for name in sorted(written):
            os.replace(tmp / name, path / name)
        for entry in path.iterdir():  # files of the previous checkpoint the new one does not have
            if entry.name not in written and entry.is_file() and owned_by_checkpoints(entry.name):
                entry.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"missing {path.name} in {str(path.parent)!r}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{str(path)!r} is not valid JSON (truncated or corrupt?): {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object")
    return data


def dedup_state_dict(module: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """State dict without tied duplicates: (tensors, {dropped_key: kept_key})."""
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[int, str] = {}
    for key, t in module.state_dict(keep_vars=True).items():
        ident = id(t)
        if ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t.detach().contiguous()
    return tensors, aliases


def save_tensors(tensors: Mapping[str, Tensor], path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file; a failed write (disk full, file-size limit) raises :class:`OSError`."""
    from safetensors.torch import save_file

    try:
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt", **(metadata or {})}
        )
    except OSError:
        raise
    except Exception as exc:  # safetensors reports I/O failures as its own error type, with the OS error inside
        if type(exc).__name__ != "SafetensorError":
            raise
        raise _as_os_error(exc, path) from None


def _as_os_error(exc: Exception, path: Path) -> OSError:
    """The :class:`OSError` a safetensors write error wraps (``Os { code: 28, ... }``)."""
    import errno
    import re

    found = re.search(r"(?:code: |os error )(\d+)", str(exc))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code), str(path))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file; corrupt or truncated files raise :class:`CheckpointError`."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"missing {path.name} in {str(path.parent)!r}")
    check_memory(
        path.stat().st_size, f"reading {str(path)!r}", device=device, fix="Free memory, or load on another device."
    )
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except Exception as exc:
        raise CheckpointError(
            f"{str(path)!r} cannot be read as safetensors (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None
    return tensors, meta


def refuse_pickles(folder: Path) -> None:
    """Refuse folders whose weights are only in pickle form (loading them could execute code)."""
    if (folder / WEIGHTS_FILE).is_file():
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{str(folder)!r} holds weights only as pickle file(s) ({', '.join(pickles)}); "
            "unimodel never loads pickles "
            f"because unpickling can execute code. Convert them to {WEIGHTS_FILE} with a tool you trust, in a sandbox."
        )


__all__ = [
    "CONFIG_FILE",
    "GENERATION_SECTION",
    "OWNED_FILES",
    "PICKLE_SUFFIXES",
    "PROVENANCE",
    "RUN_CHECKPOINTS_DIR",
    "RUN_LATEST",
    "RUN_POINTER_FILE",
    "RUN_POINTER_FORMAT",
    "WEIGHTS_FILE",
    "atomic_dir",
    "checkpoint_dir",
    "dedup_state_dict",
    "fsync_path",
    "fsync_tree",
    "is_checkpoint",
    "load_tensors",
    "make_temp_dir",
    "owned_by_checkpoints",
    "read_json",
    "read_run_pointer",
    "refuse_pickles",
    "resolve_run_folder",
    "save_tensors",
    "step_of_folder",
    "write_file_durably",
    "write_json",
]
