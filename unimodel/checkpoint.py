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

This module saves and loads models; the files themselves (names, atomic writes,
JSON and safetensors I/O, a run's pointer) are :mod:`unimodel.checkpoint_files`.
Both are the checkpoint I/O that Hugging Face conversion (:mod:`unimodel.hf`)
builds on; they import nothing of it. :func:`load` hands a Hugging Face folder to
the ``hf_converter`` component registered for its ``model_type``.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unimodel.bounds import backbone_on_meta

# the files' layout and I/O live in unimodel.checkpoint_files; their names stay importable from here
from unimodel.checkpoint_files import (
    CONFIG_FILE,
    GENERATION_SECTION,
    OWNED_FILES,
    PICKLE_SUFFIXES,
    PROVENANCE,
    RUN_CHECKPOINTS_DIR,
    RUN_LATEST,
    RUN_POINTER_FILE,
    RUN_POINTER_FORMAT,
    WEIGHTS_FILE,
    atomic_dir,
    checkpoint_dir,
    dedup_state_dict,
    fsync_path,
    fsync_tree,
    is_checkpoint,
    load_tensors,
    make_temp_dir,
    owned_by_checkpoints,
    read_json,
    read_run_pointer,
    refuse_pickles,
    resolve_run_folder,
    save_tensors,
    step_of_folder,
    write_file_durably,
    write_json,
)
from unimodel.config import SCHEMA_VERSION, check_schema_version
from unimodel.errors import CheckpointError, InputError, ResourceError, UnimodelError
from unimodel.loading import load_state_into, mapped_tensors, meta_keys

if TYPE_CHECKING:
    from unimodel.hf import HFConverter
    from unimodel.model import Model
    from unimodel.registry import Registry


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


# ------------------------------------------------------------------ tensors


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


__all__ = [
    "CONFIG_FILE",
    "DTYPES",
    "GENERATION_SECTION",
    "OWNED_FILES",
    "PICKLE_SUFFIXES",
    "PROVENANCE",
    "RUN_CHECKPOINTS_DIR",
    "RUN_LATEST",
    "RUN_POINTER_FILE",
    "RUN_POINTER_FORMAT",
    "WEIGHTS_FILE",
    "as_device",
    "as_dtype",
    "as_path",
    "atomic_dir",
    "check_objective_arg",
    "checkpoint_dir",
    "dedup_state_dict",
    "fsync_path",
    "fsync_tree",
    "hf_converter_for",
    "is_checkpoint",
    "load",
    "load_tensors",
    "make_temp_dir",
    "new_head_prefixes",
    "nonfinite_tensors",
    "notify_loaded",
    "owned_by_checkpoints",
    "read_json",
    "read_run_pointer",
    "refuse_pickles",
    "resolve_run_folder",
    "save",
    "save_tensors",
    "step_of_folder",
    "warn_fresh",
    "warn_nonfinite",
    "write_file_durably",
    "write_json",
]
