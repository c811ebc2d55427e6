"""Checkpoints are data only: ``config.json`` + ``model.safetensors`` (+ tokenizer files).

Nothing read from disk is executed. Pickle-based files are refused. Writes are
atomic: a checkpoint is written to a temporary sibling folder and renamed into
place, so a crash never leaves a half-written checkpoint where a good one was.

Saving never empties a folder that is not a checkpoint: a folder holding other
files is refused unless it is a unimodel or Hugging Face checkpoint, or
``overwrite=True`` is passed; either way only the files the checkpoint formats
own (:func:`owned_by_checkpoints`) are replaced or removed, and the others stay.

``config.json`` holds the model and objective sections and the model's
generation defaults (``generation``, a :class:`~unimodel.generation.config.GenerationConfig`).

This module is the checkpoint I/O that Hugging Face conversion (:mod:`unimodel.hf`)
builds on; it imports nothing of it. :func:`load` hands a Hugging Face folder to
the ``hf_converter`` component registered for its ``model_type``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from unimodel.bounds import backbone_on_meta, check_memory
from unimodel.config import SCHEMA_VERSION, check_schema_version
from unimodel.errors import CheckpointError, InputError, ResourceError, UnimodelError
from unimodel.loading import load_state_into, mapped_tensors, meta_keys

if TYPE_CHECKING:
    from unimodel.hf import HFConverter
    from unimodel.model import Model
    from unimodel.registry import Registry

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


def as_path(value: Any, what: str) -> Path:
    """``value`` as a path, or an :class:`InputError` naming ``what`` (e.g. ``"unimodel.load: path"``)."""
    if isinstance(value, Path):
        return value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise InputError(
            f"{what} must be a folder path (str or pathlib.Path), got {type(value).__name__} {value!r:.60}"
        )
    if not value:
        raise InputError(f"{what} is an empty string; give a folder path")
    return Path(value)


def as_device(value: Any, what: str) -> torch.device:
    """``value`` (``"cpu"``, ``"cuda:0"``, ``"auto"``, a torch.device) as a device this machine has."""
    if value == "auto":
        value = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"{what}: device {value!r} is not a device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{what}: device {value!r} asked for, but this torch sees no CUDA device; use 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{what}: device {value!r} asked for, but MPS is not available here; use 'cpu'")
    return device


#: the dtypes a model loads in, by the names (and short names) they are asked for with
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def as_dtype(value: Any, what: str) -> torch.dtype | None:
    """``value`` (``None``: keep the saved dtype; a name in :data:`DTYPES` or one of those torch dtypes)."""
    if value is None or value == "auto":
        return None
    if isinstance(value, torch.dtype) and value in DTYPES.values():
        return value
    if isinstance(value, str) and value.lower() in DTYPES:
        return DTYPES[value.lower()]
    raise InputError(
        f"{what}: dtype {value!r} is not a dtype a model loads in; choose one of {', '.join(DTYPES)} "
        "(or a torch.float32 / torch.bfloat16 / torch.float16), or leave it out to keep the saved one"
    )


def check_objective_arg(objective: Any, what: str) -> None:
    if objective is not None and not isinstance(objective, (str, Mapping)):
        raise InputError(
            f"{what}: objective must be a name or a dict such as {{'name': 'classify', 'num_labels': 3}}, "
            f"got {type(objective).__name__}"
        )


# ------------------------------------------------------------------ atomic I/O
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


# ------------------------------------------------------------------ tensors
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


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    return "floating" if dtype.is_floating_point else "complex" if dtype.is_complex else "integer"


def nonfinite_tensors(tensors: Mapping[str, Tensor]) -> list[str]:
    """Names of the floating tensors holding a NaN or an infinity (one float64 sum per tensor, then a
    confirming check of the few whose sum is not finite)."""
    floating = [(k, t) for k, t in tensors.items() if t.is_floating_point() and t.numel()]
    if not floating:
        return []
    # float64 cannot overflow on a sum of finite float32/16 values; NaN and infinities propagate
    sums = torch.stack([t.sum(dtype=torch.float64).cpu() for _, t in floating])
    suspects = (~torch.isfinite(sums)).nonzero().flatten().tolist()
    return [floating[i][0] for i in suspects if not bool(torch.isfinite(floating[i][1]).all())]


def warn_nonfinite(tensors: Mapping[str, Tensor], where: str) -> None:
    bad = nonfinite_tensors(tensors)
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        warnings.warn(
            f"{where}: {len(bad)} tensor(s) hold NaN or infinite values ({shown}); the model's outputs will not "
            "be finite. The checkpoint was probably saved after training diverged",
            stacklevel=3,
        )


def new_head_prefixes(model: Model, tensors: Mapping[str, Tensor]) -> tuple[str, ...]:
    """Prefixes of the task heads of ``model`` that ``tensors`` has nothing of (heads to initialise)."""
    return tuple(f"heads.{name}." for name in model.heads if not any(k.startswith(f"heads.{name}.") for k in tensors))


def warn_fresh(keys: list[str], where: str) -> None:
    if keys:
        import warnings

        heads = sorted({k.split(".")[1] for k in keys})
        warnings.warn(
            f"{where}: head(s) {', '.join(heads)} are new and randomly initialised ({len(keys)} tensors); "
            "train before use",
            stacklevel=3,
        )


# ------------------------------------------------------------------ public API
def save(model: Model, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a checkpoint folder (atomically). Returns its path.

    ``path`` may be new, empty, or a checkpoint (replaced). A folder holding other files is refused unless
    ``overwrite``; then only checkpoint files are replaced and the other files are kept.
    """
    from unimodel import __version__
    from unimodel.model import Model

    if not isinstance(model, Model):
        raise InputError(f"save: expected a unimodel Model, got {type(model).__name__}")
    path = as_path(path, "save: path")
    tensors, aliases = dedup_state_dict(model)
    with checkpoint_dir(path, overwrite=overwrite, what="save") as tmp:
        config: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "unimodel_version": __version__,
            **model.spec(),
            GENERATION_SECTION: model.generation_config.to_dict(),
        }
        if model.provenance:
            config[PROVENANCE] = model.provenance
        write_json(tmp / CONFIG_FILE, config)
        save_tensors(tensors, tmp / WEIGHTS_FILE, {"unimodel_tied": json.dumps(aliases)})
        if model.tokenizer is not None:
            model.tokenizer.save(tmp)
    return path


def load(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    objective: Any = None,
) -> Model:
    """Load a unimodel checkpoint folder (or a Hugging Face folder, via :func:`unimodel.from_hf`).

    A training run's output folder loads the checkpoint its ``checkpoint.json`` names.

    ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"auto"`` (the first
    available of CUDA, MPS, the CPU) or a ``torch.device``. ``dtype``: the floating-point
    dtype of the loaded weights (``"float32"``, ``"bfloat16"``, ``"float16"`` or their
    short names; ``None`` keeps the saved one). ``objective`` (a name or dict)
    replaces the saved one, e.g. ``"classify"`` to fine-tune a pretrained encoder;
    task heads the checkpoint lacks start fresh.
    """
    from unimodel.model import build_model

    folder = resolve_run_folder(as_path(path, "unimodel.load: path"))
    device = as_device(device, "unimodel.load")
    dtype = as_dtype(dtype, "unimodel.load")
    check_objective_arg(objective, "unimodel.load")
    if not folder.exists():
        raise CheckpointError(f"checkpoint {str(folder)!r} does not exist")
    if folder.is_file():
        raise CheckpointError(
            f"{str(folder)!r} is a file; a checkpoint is a folder with {CONFIG_FILE} and {WEIGHTS_FILE}"
        )
    refuse_pickles(folder)
    config = read_json(folder / CONFIG_FILE)
    if "model" not in config and "model_type" in config:
        return hf_converter_for(str(config["model_type"])).load_folder(
            folder, hf_config=config, device=device, dtype=dtype, objective=objective
        )
    if "model" not in config:
        raise CheckpointError(f"{str(folder / CONFIG_FILE)!r} has no 'model' section; is this a unimodel checkpoint?")
    check_schema_version(config, str(folder / CONFIG_FILE))
    model_section, saved_objective = _sections(config, folder / CONFIG_FILE)
    tokenizer = None
    if (folder / "tokenizer.json").is_file():
        from unimodel.data.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(folder)
    model_spec, objective_spec = _installed_components(
        model_section, saved_objective, config, folder, keep_objective=objective is None
    )

    def build(lazy: bool) -> Model:
        try:  # the size of the model is checked before its weights are read; a lazy backbone holds no weights yet
            with backbone_on_meta() if lazy else contextlib.nullcontext():
                return build_model(model_spec, objective=objective or objective_spec, tokenizer=tokenizer)
        except ResourceError:
            raise
        except UnimodelError as exc:
            raise CheckpointError(f"checkpoint {str(folder)!r} cannot be rebuilt: {exc}") from exc

    model = build(lazy=True)
    tensors = mapped_tensors([folder / WEIGHTS_FILE])  # views of the file: nothing is read yet
    if objective is not None:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("heads.") or k.split(".")[1] in model.heads}
    fresh = new_head_prefixes(model, tensors) if objective is not None else ()
    if meta_keys(model, fresh):  # a backbone head new to this checkpoint needs its initial values
        model = build(lazy=False)
    where = f"checkpoint {str(folder)!r}"
    warn_fresh(load_state_into(model, tensors, device=device, where=where, fresh=fresh), where)
    model.generation_config = _generation_defaults(model, config.get(GENERATION_SECTION), folder)
    model.to(device=device, dtype=dtype).eval()
    notify_loaded(model, folder)
    return model


def _sections(config: Mapping[str, Any], where: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The ``model`` and ``objective`` tables of a checkpoint's config.json, checked."""
    model, objective = config["model"], config.get("objective")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise CheckpointError(
            f"{str(where)!r}: 'model' must be a JSON object with a 'name' (a model or preset), "
            f"got {json.dumps(model)[:80]}"
        )
    if objective is not None and (not isinstance(objective, dict) or not isinstance(objective.get("name"), str)):
        raise CheckpointError(
            f"{str(where)!r}: 'objective' must be a JSON object with a 'name' (an objective), "
            f"got {json.dumps(objective)[:80]}"
        )
    return model, objective


def _generation_defaults(model: Model, section: Any, folder: Path) -> Any:
    """The checkpoint's generation defaults; the model's own (from its special tokens) when it stores none."""
    if section is None:
        return model.generation_config
    from unimodel.generation.config import GenerationConfig

    where = f"{str(folder / CONFIG_FILE)!r} section {GENERATION_SECTION!r}"
    if not isinstance(section, dict):
        raise CheckpointError(f"{where} must be a JSON object, got {type(section).__name__}")
    try:
        return GenerationConfig.from_dict(section, section=where)
    except UnimodelError as exc:
        raise CheckpointError(f"checkpoint {str(folder)!r} has unusable generation defaults: {exc}") from None


def hf_converter_for(model_type: str, registry: Registry | None = None) -> HFConverter:
    """A converter for Hugging Face folders of ``model_type``: the registered ``hf_converter`` listing it."""
    from unimodel.errors import ComponentNotFoundError
    from unimodel.registry import get_registry

    reg = registry or get_registry()
    comps = reg.components("hf_converter")
    for comp in comps:
        if model_type in comp.model_types:
            converter: HFConverter = comp.load()()
            return converter
    known = sorted({t for c in comps for t in c.model_types})
    msg = f"no plugin converts Hugging Face model_type {model_type!r}; supported: {', '.join(known) or '(none)'}"
    failed = reg.failed_plugins
    if failed:
        msg += ". Note: plugin(s) " + ", ".join(repr(p.name) for p in failed) + " failed to load; run `unimodel doctor`"
    raise ComponentNotFoundError(msg)


def _installed_components(
    model_section: dict[str, Any],
    objective_section: dict[str, Any] | None,
    config: Mapping[str, Any],
    folder: Path,
    *,
    keep_objective: bool,
) -> tuple[dict[str, Any], Any]:
    """The model and objective sections with names qualified by the checkpoint's provenance.

    A checkpoint written before provenance was recorded keeps its plain names.
    When the plugin that provided a component is missing, the error names the
    distribution to install and the version the checkpoint was saved with.
    """
    model_spec = dict(model_section)
    objective_spec: Any = objective_section
    provenance = config.get(PROVENANCE)
    if provenance is None:
        return model_spec, objective_spec
    if not isinstance(provenance, Mapping):
        raise CheckpointError(f"{str(folder / CONFIG_FILE)!r}: {PROVENANCE!r} must be a JSON object")
    model_spec["name"] = _installed("model", provenance.get("model"), model_spec.get("name"), folder)
    if keep_objective and isinstance(objective_spec, Mapping) and provenance.get("objective") is not None:
        objective_spec = dict(objective_spec)
        objective_spec["name"] = _installed("objective", provenance["objective"], objective_spec.get("name"), folder)
    return model_spec, objective_spec


def _installed(kind: str, entry: Any, saved_name: Any, folder: Path) -> Any:
    """The qualified name in provenance ``entry`` if that component is installed, else a CheckpointError
    saying what to install."""
    from unimodel.registry import QUALIFIER, get_registry

    if entry is None:
        return saved_name
    qualified = entry.get("component") if isinstance(entry, Mapping) else None
    if not isinstance(qualified, str) or QUALIFIER not in qualified:
        raise CheckpointError(
            f"{str(folder / CONFIG_FILE)!r}: {PROVENANCE}.{kind} must be an object with a 'component' "
            f"of the form 'plugin{QUALIFIER}name', got {entry!r}"
        )
    reg = get_registry()
    if reg.has(kind, qualified):
        return qualified
    plugin, _, plain = qualified.rpartition(QUALIFIER)
    dist, version = entry.get("distribution"), entry.get("version")
    saved = f"{dist} {version}" if dist and version else str(dist or "an unknown distribution")
    where = f"checkpoint {str(folder)!r} needs {kind} {plain!r} from plugin {plugin!r} ({saved})"
    rec = reg.plugins.get(plugin)
    if rec is not None and not rec.ok:
        raise CheckpointError(f"{where}, which failed to load: {rec.error}; run `unimodel doctor -v`")
    if rec is not None:
        now = f"{rec.source} {rec.version}" if rec.version else rec.source
        raise CheckpointError(
            f"{where}, but the installed plugin {plugin!r} ({now}) registers no {kind} {plain!r}"
            + (
                f"; install the version the checkpoint was saved with: pip install '{dist}=={version}'"
                if version
                else ""
            )
        )
    if dist in (None, "?", "<programmatic>"):
        raise CheckpointError(
            f"{where}, which is not installed; the plugin was registered without a distribution when the "
            "checkpoint was saved, so register it again (Registry.add_plugin) before loading"
        )
    pin = f"=={version}" if version else ""
    raise CheckpointError(
        f"{where}, which is not installed: pip install '{dist}{pin}'"
        + (" (the version the checkpoint was saved with)" if version else "")
    )


def notify_loaded(model: Model, folder: Path) -> None:
    from unimodel.registry import get_registry

    get_registry().pm.hook.unimodel_checkpoint_loaded(model=model, path=str(folder))
