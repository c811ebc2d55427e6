"""Hugging Face interop: read and write local ``transformers`` checkpoint folders.

The core knows no family. A folder's ``config.json`` names its ``model_type``;
the plugin whose ``hf_converter`` component lists that type translates config
and weights. Only ``config.json``, ``*.safetensors`` and tokenizer JSON files are
read: pickle checkpoints (``pytorch_model.bin``) are refused.

Generation defaults travel with the weights: :func:`from_hf` reads
``generation_config.json`` (else the generation keys of ``config.json``, as
``transformers`` does) into ``model.generation_config``, translating Hugging
Face's defaults where they differ from unimodel's (``top_k`` is 50 unless the
file says otherwise); :func:`to_hf` writes them back in Hugging Face's format.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from unimodel.bounds import backbone_on_meta
from unimodel.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    as_device,
    as_dtype,
    as_path,
    check_objective_arg,
    checkpoint_dir,
    hf_converter_for,
    load_state_into,
    mapped_tensors,
    new_head_prefixes,
    notify_loaded,
    read_json,
    refuse_pickles,
    save_tensors,
    warn_fresh,
    write_json,
)
from unimodel.errors import CheckpointError, ComponentNotFoundError, InputError, ResourceError, UnimodelError
from unimodel.hf_generation import GENERATION_FILE, generation_from_hf, generation_to_hf
from unimodel.loading import meta_keys
from unimodel.registry import Registry, get_registry

if TYPE_CHECKING:
    from unimodel.model import Model

INDEX_FILE = "model.safetensors.index.json"


class HFConverter(ABC):
    """Translates one family between unimodel and ``transformers`` layouts.

    ``spec_from_hf`` maps an HF ``config.json`` to a unimodel model spec
    (``{"name": ..., fields..., "objective": ...}``); ``weights_from_hf`` maps HF
    tensor names to the keys of the model that spec builds, dropping buffers HF
    keeps (masks) and aliases of tied weights. The ``*_to_hf`` pair goes back.
    """

    model_types: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def spec_from_hf(self, hf_config: Mapping[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    def weights_from_hf(self, tensors: Mapping[str, Tensor], hf_config: Mapping[str, Any]) -> dict[str, Tensor]: ...

    @abstractmethod
    def config_to_hf(self, model: Model) -> dict[str, Any]: ...

    @abstractmethod
    def weights_to_hf(self, model: Model) -> dict[str, Tensor]: ...

    def generation_config(self, model: Model) -> dict[str, Any] | None:
        """``generation_config.json`` contents: the model's generation defaults in Hugging Face's format
        (see :func:`unimodel.hf_generation.generation_to_hf`); ``None`` writes no file."""
        return generation_to_hf(model.generation_config) or None

    def load_folder(
        self,
        folder: Path,
        *,
        hf_config: Mapping[str, Any],
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        objective: Any = None,
        registry: Registry | None = None,
    ) -> Model:
        """Build the model of the Hugging Face folder ``folder`` (whose ``config.json`` is ``hf_config``)
        and load its weights; see :func:`from_hf`."""
        from unimodel.model import build_model

        reg = registry or get_registry()
        model_type = hf_config.get("model_type")
        try:
            spec = self.spec_from_hf(hf_config)
        except UnimodelError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a field of the wrong type or missing
            raise CheckpointError(
                f"{str(folder / CONFIG_FILE)!r} ({model_type}) is malformed: {type(exc).__name__}: {exc}"
            ) from None
        if objective is not None:
            spec["objective"] = objective
        tokenizer = None
        if (folder / "tokenizer.json").is_file():
            from unimodel.data.tokenizer import Tokenizer

            tokenizer = Tokenizer.load(folder)

        def build(lazy: bool) -> Model:
            try:  # the size of the model is checked before its weights are read; a lazy backbone holds no weights
                with backbone_on_meta() if lazy else contextlib.nullcontext():
                    return build_model(spec, registry=reg, tokenizer=tokenizer)
            except ResourceError:
                raise
            except UnimodelError as exc:
                raise CheckpointError(f"{str(folder)!r} ({model_type}) cannot be built: {exc}") from exc

        model = build(lazy=True)
        # views of the files, renamed and fused by the converter: only fused tensors are read here
        tensors = self.weights_from_hf(read_hf_weights(folder, device), hf_config)
        if objective is not None:  # a head of the folder's own task that the new objective does not use
            tensors = {k: v for k, v in tensors.items() if not k.startswith("heads.") or k.split(".")[1] in model.heads}
        fresh = new_head_prefixes(model, tensors) if objective is not None else ()
        if meta_keys(model, fresh):  # a backbone head new to this checkpoint needs its initial values
            model = build(lazy=False)
        where = f"Hugging Face folder {str(folder)!r}"
        warn_fresh(load_state_into(model, tensors, device=device, where=where, fresh=fresh), where)
        if model.decoder is not None:  # an encoder alone does not generate
            model.generation_config = generation_from_hf(folder, hf_config, model.decoder.vocab_size)
        model.to(device=device, dtype=dtype).eval()
        notify_loaded(model, folder)
        return model


def _converter_for_model(model: Model, registry: Registry) -> HFConverter:
    comps = registry.components("hf_converter")
    for comp in comps:
        if model.name in comp.exports:
            return comp.load()()
    exported = sorted({m for c in comps for m in c.exports})
    raise ComponentNotFoundError(
        f"no plugin exports model {model.name!r} to Hugging Face format; "
        f"exportable models: {', '.join(exported) or '(none)'}"
    )


def read_hf_weights(folder: Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """All tensors of a single-file or sharded safetensors checkpoint, as views of memory maps: nothing is
    read until a tensor is used, and each shard (each chunk of one) is unmapped once its tensors are gone
    (see :func:`unimodel.loading.mapped_tensors`). ``device`` is accepted for compatibility; the views are
    on the CPU and :func:`~unimodel.loading.load_state_into` moves what it copies."""
    refuse_pickles(folder)
    index = folder / INDEX_FILE
    if (folder / WEIGHTS_FILE).is_file():
        return mapped_tensors([folder / WEIGHTS_FILE])
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{str(index)!r}: weight_map must map tensor names to shard file names")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if "/" in shard or "\\" in shard or shard.startswith("."):
                raise CheckpointError(f"{str(index)!r} names shard {shard!r} outside the folder")
        return mapped_tensors([folder / shard for shard in shards])
    raise CheckpointError(f"no {WEIGHTS_FILE} (or {INDEX_FILE}) in {str(folder)!r}")


def from_hf(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    objective: Any = None,
    registry: Registry | None = None,
) -> Model:
    """Build a unimodel model from a local Hugging Face folder (config.json + safetensors).

    The tokenizer (``tokenizer.json``) is attached when present. ``objective``
    overrides the one the converter picks (e.g. ``"fim"`` for a GPT-2 folder).
    ``device`` and ``dtype`` as in :func:`unimodel.load`.
    """
    reg = registry or get_registry()
    folder = as_path(path, "unimodel.from_hf: path")
    device = as_device(device, "unimodel.from_hf")
    torch_dtype = as_dtype(dtype, "unimodel.from_hf")
    check_objective_arg(objective, "unimodel.from_hf")
    if not folder.is_dir():
        raise CheckpointError(f"Hugging Face folder {str(folder)!r} does not exist")
    refuse_pickles(folder)
    hf_config = read_json(folder / CONFIG_FILE)
    model_type = hf_config.get("model_type")
    if not isinstance(model_type, str):
        raise CheckpointError(f"{str(folder / CONFIG_FILE)!r} has no 'model_type'; is this a Hugging Face folder?")
    converter = hf_converter_for(model_type, reg)
    return converter.load_folder(
        folder, hf_config=hf_config, device=device, dtype=torch_dtype, objective=objective, registry=reg
    )


def to_hf(model: Model, path: str | Path, *, overwrite: bool = False, registry: Registry | None = None) -> Path:
    """Write ``model`` as a Hugging Face folder that ``transformers`` loads.

    ``path`` may be new, empty, or a checkpoint (replaced). A folder holding other files is refused unless
    ``overwrite``; then only checkpoint files are replaced and the other files are kept.
    """
    from unimodel.model import Model

    if not isinstance(model, Model):
        raise InputError(
            f"unimodel.to_hf(model, path): model must be a unimodel Model, got {type(model).__name__} "
            f"{model!r:.60}; load one first (unimodel.load or unimodel.from_hf)"
        )
    folder = as_path(path, "unimodel.to_hf: path")
    reg = registry or get_registry()
    converter = _converter_for_model(model, reg)
    config = converter.config_to_hf(model)
    tensors = converter.weights_to_hf(model)
    with checkpoint_dir(folder, overwrite=overwrite, what="to_hf") as tmp:
        write_json(tmp / CONFIG_FILE, config)
        save_tensors(tensors, tmp / WEIGHTS_FILE)
        gen = converter.generation_config(model)
        if gen is not None:
            write_json(tmp / GENERATION_FILE, gen)
        if model.tokenizer is not None:
            model.tokenizer.save(tmp)
    return folder


def strip_prefix(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove ``prefix`` from every key that has it (hub files vary on such prefixes)."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in tensors.items()}


def pop_known(tensors: dict[str, Tensor], suffixes: tuple[str, ...]) -> None:
    """Drop buffers HF files carry but no model needs (e.g. causal-mask buffers)."""
    for key in [k for k in tensors if k.endswith(suffixes)]:
        del tensors[key]


def hf_architecture(
    hf_config: Mapping[str, Any], table: Mapping[str, tuple[str, bool]], *, family: str, default: str
) -> tuple[str, str, bool]:
    """The first of the folder's ``architectures`` that ``table`` knows, with its (objective, flag) entry;
    ``default`` when the config names none. An unknown architecture is a :class:`CheckpointError`."""
    archs = hf_config.get("architectures") or [default]
    for arch in archs:
        if arch in table:
            return (arch, *table[arch])
    raise CheckpointError(f"{family} architecture {archs[0]!r} is not supported; supported: {', '.join(table)}")


def hf_num_labels(hf_config: Mapping[str, Any]) -> int:
    """The label count of a classification head: the size of ``id2label``, else ``num_labels`` (2)."""
    id2label = hf_config.get("id2label")
    if isinstance(id2label, Mapping) and id2label:
        return len(id2label)
    return int(hf_config.get("num_labels", 2))
