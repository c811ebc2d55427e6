"""Checkpoints are data only: ``config.json`` + ``model.safetensors`` (+ tokenizer files).

Nothing read from disk is executed. Pickle-based files are refused. Writes are
atomic: a checkpoint is written to a temporary sibling folder and renamed into
place, so a crash never leaves a half-written checkpoint where a good one was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from unimodel.config import SCHEMA_VERSION, check_schema_version
from unimodel.errors import CheckpointError, UnimodelError

if TYPE_CHECKING:
    from unimodel.model import Model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
PROVENANCE = "provenance"  # config.json: which plugin, distribution and version provided each component


# ------------------------------------------------------------------ atomic I/O
@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
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
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt", **(metadata or {})})


def load_tensors(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file; corrupt or truncated files raise :class:`CheckpointError`."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"missing {path.name} in {str(path.parent)!r}")
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


def load_state_into(
    model: nn.Module, tensors: Mapping[str, Tensor], where: str, *, fresh: tuple[str, ...] = ()
) -> list[str]:
    """Copy ``tensors`` into ``model``; a mismatch lists every bad key, nothing is half-loaded.

    Keys under a prefix in ``fresh`` may be absent (a task head new to this
    checkpoint) and keep their initial values; those keys are returned.
    """
    expected, aliases = dedup_state_dict(model)
    kept_fresh = sorted(k for k in expected if k not in tensors and k.startswith(fresh)) if fresh else []
    missing = sorted(k for k in expected if k not in tensors and k not in kept_fresh)
    unexpected = sorted(k for k in tensors if k not in expected and k not in aliases)
    wrong = sorted(
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in tensors and tensors[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if wrong:
        problems.append(f"shape mismatches: {'; '.join(wrong)}")
    if problems:
        raise CheckpointError(f"{where} does not fit its config. " + ". ".join(problems))
    with torch.no_grad():
        for k, t in expected.items():
            if k in tensors:
                t.copy_(tensors[k])
    return kept_fresh


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
def save(model: Model, path: str | Path) -> Path:
    """Write a checkpoint folder (atomically). Returns its path."""
    from unimodel import __version__

    path = Path(path)
    tensors, aliases = dedup_state_dict(model)
    with atomic_dir(path) as tmp:
        config: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "unimodel_version": __version__, **model.spec()}
        if model.provenance:
            config[PROVENANCE] = model.provenance
        write_json(tmp / CONFIG_FILE, config)
        save_tensors(tensors, tmp / WEIGHTS_FILE, {"unimodel_tied": json.dumps(aliases)})
        if model.tokenizer is not None:
            model.tokenizer.save(tmp)
    return path


def load(path: str | Path, *, device: str | torch.device = "cpu", objective: Any = None) -> Model:
    """Load a unimodel checkpoint folder (or a Hugging Face folder, via :func:`unimodel.from_hf`).

    ``objective`` (a name or dict) replaces the saved one, e.g. ``"classify"`` to
    fine-tune a pretrained encoder; task heads the checkpoint lacks start fresh.
    """
    from unimodel.model import build_model

    folder = Path(path)
    if not folder.exists():
        raise CheckpointError(f"checkpoint {str(folder)!r} does not exist")
    if folder.is_file():
        raise CheckpointError(
            f"{str(folder)!r} is a file; a checkpoint is a folder with {CONFIG_FILE} and {WEIGHTS_FILE}"
        )
    refuse_pickles(folder)
    config = read_json(folder / CONFIG_FILE)
    if "model" not in config and "model_type" in config:
        from unimodel.hf import from_hf

        return from_hf(folder, device=device, objective=objective)
    if "model" not in config:
        raise CheckpointError(f"{str(folder / CONFIG_FILE)!r} has no 'model' section; is this a unimodel checkpoint?")
    check_schema_version(config, str(folder / CONFIG_FILE))
    tokenizer = None
    if (folder / "tokenizer.json").is_file():
        from unimodel.data.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(folder)
    model_spec, objective_spec = _installed_components(config, folder, keep_objective=objective is None)
    tensors, _ = load_tensors(folder / WEIGHTS_FILE, device)
    try:
        model = build_model(model_spec, objective=objective or objective_spec, tokenizer=tokenizer)
    except UnimodelError as exc:
        raise CheckpointError(f"checkpoint {str(folder)!r} cannot be rebuilt: {exc}") from exc
    if objective is not None:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("heads.") or k.split(".")[1] in model.heads}
    fresh = new_head_prefixes(model, tensors) if objective is not None else ()
    where = f"checkpoint {str(folder)!r}"
    warn_fresh(load_state_into(model, tensors, where, fresh=fresh), where)
    model.to(device).eval()
    notify_loaded(model, folder)
    return model


def _installed_components(
    config: Mapping[str, Any], folder: Path, *, keep_objective: bool
) -> tuple[dict[str, Any], Any]:
    """The model and objective sections with names qualified by the checkpoint's provenance.

    A checkpoint written before provenance was recorded keeps its plain names.
    When the plugin that provided a component is missing, the error names the
    distribution to install and the version the checkpoint was saved with.
    """
    model_spec = dict(config["model"]) if isinstance(config["model"], Mapping) else config["model"]
    objective_spec = config.get("objective")
    provenance = config.get(PROVENANCE)
    if provenance is None or not isinstance(model_spec, dict):
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
