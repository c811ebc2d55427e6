"""Data kinds for images: ``images`` (what ``vq_reconstruction`` trains on) and ``codes`` (a prior's data).

Both read images the same way, from ``[data]``:

- ``corpus = "shapes"`` (with ``corpus_options``): a registered image corpus,
  a callable ``(split, **options) -> ImageSet`` with its own two splits;
- ``paths``: image folders (PNG/JPEG, recursive) and ``.npy`` arrays, split by
  ``validation_fraction`` (``seed``), or with ``validation_paths`` held out.

``kind_options`` of ``images``: ``image_size`` (resize folder images),
``labels`` (class labels from sub-folder names), ``grid_images`` (images in the
reconstruction grid, 8). At every evaluation the kind's metric measures PSNR,
codebook usage and code perplexity on the validation images, and writes
``reconstructions_step<N>.png`` (originals above, reconstructions below) into
the run folder.

``codes`` (``[data] kind = "codes"``, for any causal decoder trained with
``clm``) turns the images into code sequences with a VQ-VAE checkpoint:
``kind_options = { image_tokenizer = "runs/vqvae/checkpoint",
class_conditional = true }``. Its tokenizer is the code vocabulary of
:mod:`unimodel_vqvae.prior`, which records the VQ-VAE it came from. With
``class_dropout = p`` (0 < p < 1; class-conditional only) a seeded share p of
the training images carries ``<class_none>`` instead of its class, so the prior
also learns the unconditional distribution that classifier-free guidance
samples against (validation images keep their classes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from unimodel.data.kinds import DataKind, Example, RawData, Sample, TaskMetric
from unimodel.errors import ConfigError, DataError
from unimodel_vqvae.images import ImageSet, load_image_folder, load_npy, save_reconstruction_grid
from unimodel_vqvae.objectives import code_statistics, psnr

if TYPE_CHECKING:
    from accelerate import Accelerator

    from unimodel.data.dataset import DataConfig
    from unimodel.data.tokenizer import Tokenizer
    from unimodel.generation.config import GenerationConfig
    from unimodel.model import Model
    from unimodel.registry import Registry
    from unimodel_vqvae.prior import ImageTokenizer

IMAGE_OPTIONS = {"image_size": int, "labels": bool, "grid_images": int}
CODE_OPTIONS = {
    "image_tokenizer": str,
    "class_conditional": bool,
    "class_dropout": float,
    "image_size": int,
    "labels": bool,
}


def kind_options(config: DataConfig, known: Mapping[str, type], kind: str) -> dict[str, Any]:
    """``[data] kind_options``, checked against the ``known`` names and types of data kind ``kind``."""
    from unimodel.errors import did_you_mean

    options = dict(getattr(config, "kind_options", {}) or {})
    for key, value in options.items():
        if key not in known:
            raise ConfigError(
                f"data.kind_options: data kind {kind!r} has no option {key!r}.{did_you_mean(key, list(known))} "
                f"Its options: {', '.join(known)}"
            )
        want = known[key]
        accepted = (int, float) if want is float else want  # TOML writes 0 for 0.0
        if not isinstance(value, accepted) or (want is not bool and isinstance(value, bool)):
            raise ConfigError(f"data.kind_options.{key} must be {want.__name__}, got {value!r}")
    return options


# ------------------------------------------------------------------ reading images
def read_image_splits(config: DataConfig, options: Mapping[str, Any], registry: Registry | None) -> RawData:
    """The training and validation :class:`ImageSet` of ``[data]``: ``RawData(train=[set], validation=[set])``."""
    if config.paths:
        train = _read_paths(config.paths, options)
        if config.validation_paths:
            return RawData("images", [train], [_read_paths(config.validation_paths, options)], fixed_validation=True)
        return _split(train, config.validation_fraction, config.seed)
    from unimodel.registry import get_registry

    reg = registry or get_registry()
    name = config.corpus
    assert name is not None
    comp = reg.get("corpus", name)
    if comp.data_kind != "images":
        raise DataError(
            f"corpus {name!r} holds {comp.data_kind}, not images; choose an image corpus (e.g. 'shapes') or give "
            "data.paths (image folders, .npy arrays)"
        )
    source = comp.load()
    opts = dict(config.corpus_options)
    try:
        train, validation = source("train", **opts), source("validation", **opts)
    except (TypeError, ValueError) as exc:
        raise DataError(f"corpus {name!r}: {exc}; change data.corpus_options") from None
    return RawData("images", [train], [validation], fixed_validation=True)


def _read_paths(paths: Sequence[str], options: Mapping[str, Any]) -> ImageSet:
    sets = []
    for p in paths:
        path = Path(p).expanduser()
        if path.suffix.lower() == ".npy":
            sets.append(load_npy(path))
        elif path.is_dir():
            sets.append(
                load_image_folder(path, image_size=options.get("image_size"), labels=options.get("labels", False))
            )
        else:
            raise DataError(f"data.paths: {str(p)!r} is neither an image folder nor a .npy array")
    if len(sets) == 1:
        return sets[0]
    shapes = {s.image_shape for s in sets}
    if len(shapes) > 1:
        raise DataError(f"data.paths hold images of different sizes {sorted(shapes)}; set kind_options.image_size")
    labelled = all(s.labels is not None for s in sets)
    return ImageSet(
        images=torch.cat([s.images for s in sets]),
        labels=torch.cat([s.labels for s in sets if s.labels is not None]) if labelled else None,
        class_names=sets[0].class_names if labelled else (),
    )


def _split(images: ImageSet, fraction: float, seed: int) -> RawData:
    n_val = round(len(images) * fraction)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=g)
    val, train = order[:n_val], order[n_val:]
    if len(train) == 0:
        raise DataError(f"{len(images)} images leave none for training at validation_fraction {fraction}")
    return RawData("images", [_subset(images, train)], [_subset(images, val)] if n_val else [])


def _subset(images: ImageSet, index: Tensor) -> ImageSet:
    return ImageSet(
        images=images.images[index],
        labels=None if images.labels is None else images.labels[index],
        class_names=images.class_names,
    )


def _one(raw: RawData, split: str) -> ImageSet | None:
    items = raw.split(split)
    return items[0] if items else None


def _digest(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


class _Items(Sequence[Example]):
    """An :class:`ImageSet` as a sequence of examples, built on access (no float copy of the whole set)."""

    def __init__(self, images: ImageSet | None) -> None:
        self.images = images

    def __len__(self) -> int:
        return 0 if self.images is None else len(self.images)

    def __getitem__(self, i: Any) -> Any:
        assert self.images is not None
        if isinstance(i, slice):
            return [self.images[j] for j in range(*i.indices(len(self)))]
        return self.images[i]


# ------------------------------------------------------------------ images
@dataclass
class ReconstructionMetric(TaskMetric):
    """PSNR, codebook usage and code perplexity of a VQ-VAE on validation images; the score is the usage."""

    name: ClassVar[str] = "codebook_usage"
    label: ClassVar[str] = "codebook usage"
    total: int
    psnr_db: float
    usage: float
    perplexity: float
    num_codes: int
    originals: Tensor
    reconstructions: Tensor

    @property
    def score(self) -> float:
        return self.usage

    def summary(self) -> str:
        return (
            f"PSNR {self.psnr_db:.2f} dB, codebook usage {self.usage:.1%} of {self.num_codes}, "
            f"code perplexity {self.perplexity:.1f} ({self.total} images)"
        )

    def report(self) -> str:
        return f"reconstruction: {self.summary()}"

    def values(self) -> dict[str, float]:
        return {"psnr": self.psnr_db, "code_perplexity": self.perplexity}

    def write_files(self, folder: Path, step: int) -> list[Path]:
        path = folder / f"reconstructions_step{step}.png"
        return [save_reconstruction_grid(self.originals, self.reconstructions, path)]


@torch.no_grad()
def measure_reconstruction(
    model: Model, examples: Sequence[Example], *, batch_size: int, grid_images: int = 8
) -> ReconstructionMetric:
    """Reconstruct ``examples`` (``{"pixel_values": (C, H, W)}``) in eval mode: the figures and a grid's images."""
    was = model.training
    model.eval()
    counts = torch.zeros(model.vocab_size, dtype=torch.long)
    total_psnr, n = 0.0, 0
    originals: list[Tensor] = []
    recons: list[Tensor] = []
    try:
        for start in range(0, len(examples), batch_size):
            x = model.objective.prepare(examples[start : start + batch_size])["pixel_values"].to(model.device)
            out = model(pixel_values=x)
            rec = out.extra["reconstruction"].float()
            total_psnr += float(psnr(rec, x.float()).sum())
            n += x.shape[0]
            counts += torch.bincount(out.extra["codes"].reshape(-1).cpu(), minlength=model.vocab_size)
            if sum(len(o) for o in originals) < grid_images:
                originals.append(x.cpu())
                recons.append(rec.clamp(0, 1).cpu())
    finally:
        model.train(was)
    stats = code_statistics(counts)
    return ReconstructionMetric(
        total=n,
        psnr_db=total_psnr / max(n, 1),
        usage=stats["codebook_usage"],
        perplexity=stats["code_perplexity"],
        num_codes=model.vocab_size,
        originals=torch.cat(originals)[:grid_images],
        reconstructions=torch.cat(recons)[:grid_images],
    )


class ImageData(DataKind):
    """Images as examples ``{"pixel_values": (C, H, W) float in [0, 1], "label": int}``."""

    unit: ClassVar[str] = "images"
    uses_tokenizer: ClassVar[bool] = False

    def __init__(self, train: ImageSet, validation: ImageSet | None, grid_images: int = 8) -> None:
        self.train, self.validation = train, validation
        self.grid_images = grid_images

    @classmethod
    def read(cls, config: DataConfig, *, objective: str | None = None, registry: Registry | None = None) -> RawData:
        return read_image_splits(config, kind_options(config, IMAGE_OPTIONS, "images"), registry)

    @classmethod
    def encode(cls, config: DataConfig, tokenizer: Tokenizer | None, raw: RawData) -> ImageData:
        train = _one(raw, "train")
        assert train is not None
        grid = kind_options(config, IMAGE_OPTIONS, "images").get("grid_images", 8)
        return cls(train, _one(raw, "validation"), grid)

    @classmethod
    def evaluation_examples(
        cls, config: DataConfig, tokenizer: Tokenizer | None, items: Sequence[Any], model: Model
    ) -> list[Example]:
        return [ex for images in items for ex in _Items(images)]

    @classmethod
    def has_own_validation(cls, config: DataConfig) -> bool:
        return bool(config.validation_paths) or not config.paths

    @property
    def n_train(self) -> int:
        return len(self.train)

    def example(self, i: int) -> Example:
        return self.train[i]

    @property
    def validation_examples(self) -> Sequence[Example]:
        return _Items(self.validation)

    def n_tokens(self, indices: Sequence[int]) -> int:
        return len(indices)

    def fingerprint(self) -> str:
        return _digest(self.train.images)

    def describe(self) -> str:
        c, h, w = self.train.image_shape
        n_val = 0 if self.validation is None else len(self.validation)
        return f"{len(self.train):,} training / {n_val:,} validation images ({c}x{h}x{w})"

    def check_fits(self, model: Model, tokenizer: Tokenizer | None) -> None:
        want = getattr(model.encoder, "image_shape", None)
        if want is not None and tuple(want) != self.train.image_shape:
            raise ConfigError(
                f"the images are {'x'.join(map(str, self.train.image_shape))} (channels x height x width) but model "
                f"{model.name!r} takes {'x'.join(map(str, want))}; set [model] image_size (and num_channels) to "
                "match, or resize the images (data.kind_options.image_size)"
            )

    @classmethod
    def task_metric(
        cls,
        model: Model,
        examples: Sequence[Example],
        *,
        tokenizer: Tokenizer | None,
        batch_size: int,
        accelerator: Accelerator | None = None,
        generate_options: Mapping[str, Any] | None = None,
    ) -> TaskMetric | None:
        return measure_reconstruction(model, examples, batch_size=batch_size)

    def sample(
        self,
        model: Model,
        tokenizer: Tokenizer | None,
        *,
        prompt: str,
        generation: GenerationConfig,
        seed: int,
        metric: TaskMetric | None,
    ) -> Sample | None:
        if metric is None:
            return None
        return Sample("reconstructions of validation images", metric.summary())


# ------------------------------------------------------------------ codes
@dataclass
class CodeRaw(RawData):
    """Image splits plus the image tokenizer that turns them into code sequences."""

    image_tokenizer: ImageTokenizer | None = None


def _class_dropout(options: Mapping[str, Any]) -> float:
    """``class_dropout``, checked: a share in [0, 1) of a class-conditional corpus."""
    p = float(options.get("class_dropout", 0.0))
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"data.kind_options.class_dropout must be in [0, 1), got {p:g} (0.1 is usual)")
    if p > 0 and not options.get("class_conditional", False):
        raise ConfigError("data.kind_options.class_dropout drops class tokens, so it needs class_conditional = true")
    return p


def _image_tokenizer_path(options: Mapping[str, Any]) -> str:
    path = options.get("image_tokenizer")
    if path is None:
        raise ConfigError(
            "data kind 'codes' needs a VQ-VAE: set data.kind_options.image_tokenizer to its checkpoint folder "
            "(e.g. runs/vqvae_shapes/checkpoint)"
        )
    return str(path)


class CodeData(DataKind):
    """Images as code sequences ``{"input_ids": [<image>, (<class_c>,) code_0, ..., code_{h*w-1}]}``."""

    unit: ClassVar[str] = "images"
    uses_tokenizer: ClassVar[bool] = True

    def __init__(self, train: list[list[int]], validation: list[list[int]], describe: str) -> None:
        self.train_ids, self.validation_ids, self._describe = train, validation, describe

    @classmethod
    def _tokenizer(cls, config: DataConfig, train: ImageSet) -> ImageTokenizer:
        from unimodel_vqvae.prior import ImageTokenizer

        options = kind_options(config, CODE_OPTIONS, "codes")
        path = _image_tokenizer_path(options)
        num_classes = 0
        if options.get("class_conditional", False):
            if train.labels is None:
                raise DataError("class_conditional = true needs labelled images (an image corpus, or labels = true)")
            num_classes = max(len(train.class_names), int(train.labels.max()) + 1)
        dropout = _class_dropout(options)
        return ImageTokenizer.from_checkpoint(path, num_classes=num_classes, null_class=dropout > 0)

    @classmethod
    def read(cls, config: DataConfig, *, objective: str | None = None, registry: Registry | None = None) -> RawData:
        options = kind_options(config, CODE_OPTIONS, "codes")
        _image_tokenizer_path(options)  # before any image is read
        raw = read_image_splits(config, {k: v for k, v in options.items() if k in IMAGE_OPTIONS}, registry)
        train = _one(raw, "train")
        assert train is not None
        return CodeRaw("codes", raw.train, raw.validation, raw.fixed_validation, cls._tokenizer(config, train))

    @classmethod
    def own_tokenizer(cls, config: DataConfig, raw: RawData) -> Tokenizer | None:
        assert isinstance(raw, CodeRaw) and raw.image_tokenizer is not None
        return raw.image_tokenizer.tokenizer()

    @classmethod
    def _sequences(cls, it: ImageTokenizer, images: ImageSet | None, batch: int = 500) -> list[list[int]]:
        if images is None:
            return []
        labels = images.labels if it.layout.num_classes else None
        out: list[list[int]] = []
        for start in range(0, len(images), batch):
            part = slice(start, start + batch)
            out += it.encode(images.pixel_values(part), None if labels is None else labels[part]).tolist()
        return out

    @classmethod
    def encode(cls, config: DataConfig, tokenizer: Tokenizer | None, raw: RawData) -> CodeData:
        assert isinstance(raw, CodeRaw) and raw.image_tokenizer is not None
        it = raw.image_tokenizer
        train, validation = _one(raw, "train"), _one(raw, "validation")
        layout = it.layout
        cond = f", {layout.num_classes} classes" if layout.num_classes else ""
        describe = (
            f"{0 if train is None else len(train):,} training / {0 if validation is None else len(validation):,} "
            f"validation images as {layout.code_shape[0]}x{layout.code_shape[1]} grids of {layout.num_codes} codes"
            f"{cond} (VQ-VAE {it.path})"
        )
        sequences = cls._sequences(it, train)
        dropout = _class_dropout(kind_options(config, CODE_OPTIONS, "codes"))
        if dropout > 0 and sequences:
            # a fixed, seeded share of the training images stands for "any class"
            g = torch.Generator().manual_seed(config.seed + 1)
            chosen = torch.randperm(len(sequences), generator=g)[: round(dropout * len(sequences))]
            for i in chosen.tolist():
                sequences[i][1] = layout.null_class_id
            describe += f"; {len(chosen):,} training images with <class_none> (class_dropout {dropout:g})"
        return cls(sequences, cls._sequences(it, validation), describe)

    @classmethod
    def evaluation_examples(
        cls, config: DataConfig, tokenizer: Tokenizer | None, items: Sequence[Any], model: Model
    ) -> list[Example]:
        from unimodel_vqvae.prior import image_tokenizer_of

        it = image_tokenizer_of(model)
        return [{"input_ids": ids} for images in items for ids in cls._sequences(it, images)]

    @classmethod
    def has_own_validation(cls, config: DataConfig) -> bool:
        return ImageData.has_own_validation(config)

    @property
    def n_train(self) -> int:
        return len(self.train_ids)

    def example(self, i: int) -> Example:
        return {"input_ids": self.train_ids[i]}

    @property
    def validation_examples(self) -> Sequence[Example]:
        return [{"input_ids": ids} for ids in self.validation_ids]

    def n_tokens(self, indices: Sequence[int]) -> int:
        return sum(len(self.train_ids[i]) for i in indices)

    def fingerprint(self) -> str:
        return _digest(torch.tensor(self.train_ids, dtype=torch.long))

    def describe(self) -> str:
        return self._describe

    def check_fits(self, model: Model, tokenizer: Tokenizer | None) -> None:
        length = len(self.train_ids[0])
        limit = model.decoder.max_positions if model.decoder is not None else None
        if limit is not None and length > limit:
            raise ConfigError(
                f"code sequences have {length} tokens but model {model.name!r} takes {limit} positions; "
                "set [model] max_positions to at least that"
            )


__all__ = ["CodeData", "ImageData", "ReconstructionMetric", "kind_options", "measure_reconstruction"]
