"""Images as data: image folders, ``.npy`` arrays, and PNG grids.

An :class:`ImageSet` holds images as one uint8 tensor (N, C, H, W) with
optional class labels; its items are the examples ``vq_reconstruction``
batches: ``{"pixel_values": (C, H, W) float in [0, 1], "label": int}``.

Files are read with Pillow or numpy, never unpickled. A file that cannot be
read raises :class:`~unimodel.errors.DataError` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unimodel.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MAX_SOURCE_PIXELS = 4096 * 4096
"""Largest image (width x height) a folder may hold: a bound on what one file makes us allocate."""


@dataclass
class ImageSet:
    """Images (N, C, H, W) uint8, optional labels (N,) long, the class names, and where each image came from."""

    images: Tensor
    labels: Tensor | None = None
    class_names: tuple[str, ...] = ()
    sources: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"ImageSet needs uint8 images (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if self.labels is not None and self.labels.shape != (len(self.images),):
            raise DataError(f"ImageSet has {len(self.images)} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"pixel_values": self.images[i].float() / 255}
        if self.labels is not None:
            item["label"] = int(self.labels[i])
        return item

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        c, h, w = self.images.shape[1:]
        return (c, h, w)

    def pixel_values(self, index: Tensor | Sequence[int] | slice | None = None) -> Tensor:
        """The images at ``index`` (all by default) as a float batch (B, C, H, W) in [0, 1]."""
        chosen = self.images if index is None else self.images[index]
        return chosen.float() / 255


# ------------------------------------------------------------------ folders of PNG/JPEG files
def load_image_folder(
    path: str | Path,
    *,
    image_size: int | None = None,
    labels: bool = False,
    channels: int = 3,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
) -> ImageSet:
    """Every image file under ``path`` (recursive, sorted by path) as an :class:`ImageSet`.

    Args:
        image_size: resize each image to this square size (centre crop to a
            square, then a bicubic resize); without it every image must have the
            size of the first.
        labels: class labels from the first-level sub-folder names (sorted;
            class i is the i-th name); every image must then lie in a sub-folder.
        channels: 3 (RGB) or 1 (grey); images are converted.
        extensions: file endings read (case-insensitive).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist or is not a folder")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    endings = tuple(e.lower() for e in extensions)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in endings and p.is_file())
    if not files:
        raise DataError(f"no image files ({', '.join(endings)}) under {str(root)!r}")
    class_names: tuple[str, ...] = ()
    label_list: list[int] = []
    if labels:
        loose = [p for p in files if p.parent == root]
        if loose:
            raise DataError(
                f"labels from sub-folder names were asked for, but {str(loose[0])!r} lies directly in "
                f"{str(root)!r}; put each image in a folder named after its class"
            )
        class_names = tuple(sorted({p.relative_to(root).parts[0] for p in files}))
        index = {name: i for i, name in enumerate(class_names)}
        label_list = [index[p.relative_to(root).parts[0]] for p in files]
    arrays = []
    size: tuple[int, ...] | None = None
    for p in files:
        image = read_image(p, channels=channels, image_size=image_size)
        if size is None:
            size = tuple(image.shape[1:])
        elif tuple(image.shape[1:]) != size:
            raise DataError(
                f"image {str(p)!r} is {image.shape[2]}x{image.shape[1]} but the first image is {size[1]}x{size[0]}; "
                "pass image_size to resize every image to one size"
            )
        arrays.append(image)
    return ImageSet(
        images=torch.stack(arrays),
        labels=torch.tensor(label_list, dtype=torch.long) if labels else None,
        class_names=class_names,
        sources=tuple(str(p) for p in files),
    )


def read_image(path: str | Path, *, channels: int = 3, image_size: int | None = None) -> Tensor:
    """One image file -> (C, H, W) uint8; a file Pillow cannot decode raises :class:`DataError` naming it."""
    import numpy as np
    from PIL import Image

    p = Path(path)
    try:
        with Image.open(p) as im:
            width, height = im.size
            if width * height > MAX_SOURCE_PIXELS:
                raise DataError(
                    f"image {str(p)!r} is {width}x{height}, more than the {MAX_SOURCE_PIXELS:,} pixels unimodel reads "
                    "from one file; shrink it first"
                )
            im.load()
            converted = im.convert("RGB" if channels == 3 else "L")
            if image_size is not None:
                converted = _square(converted, image_size)
            array = np.asarray(converted, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ... for bad files
        raise DataError(f"image {str(p)!r} cannot be read: {type(exc).__name__}: {exc}") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _square(im: Any, size: int) -> Any:
    """Centre-crop a Pillow image to a square, then resize it to ``size`` x ``size`` (bicubic)."""
    from PIL import Image

    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


# ------------------------------------------------------------------ numpy arrays
def load_npy(path: str | Path, *, labels_path: str | Path | None = None) -> ImageSet:
    """Images from a ``.npy`` array, read with ``allow_pickle=False`` (pickled arrays are refused).

    Layouts: (N, H, W, C) or (N, C, H, W) with C 1 or 3, or (N, H, W) grey.
    Values: uint8 0..255, other integers in 0..255, or floats in [0, 1].
    ``labels_path``: a ``.npy`` of N integer class labels.
    """
    import numpy as np

    array = _load_array(path)
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4 or array.shape[1] not in (1, 3) or min(array.shape) == 0:
        raise DataError(
            f"{str(path)!r} holds an array of shape {array.shape}; expected images (N, H, W, C) or (N, C, H, W) with "
            "C 1 or 3, or (N, H, W)"
        )
    if array.dtype == np.uint8:
        pixels = np.ascontiguousarray(array)
    elif np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating):
        lo, hi = float(array.min()), float(array.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise DataError(f"{str(path)!r} holds NaN or infinite values")
        floating = np.issubdtype(array.dtype, np.floating)
        top = 1.0 if floating else 255.0
        if lo < 0 or hi > top:
            raise DataError(
                f"{str(path)!r} holds values in [{lo:g}, {hi:g}]; expected "
                + ("floats in [0, 1]" if floating else "integers in 0..255")
            )
        scaled = np.rint(array * 255.0) if floating else array
        pixels = np.ascontiguousarray(scaled.astype(np.uint8))
    else:
        raise DataError(f"{str(path)!r} holds {array.dtype} values; expected uint8, integers or floats")
    images = torch.from_numpy(pixels)
    labels = None
    if labels_path is not None:
        raw = _load_array(labels_path)
        if raw.ndim != 1 or len(raw) != len(images) or not np.issubdtype(raw.dtype, np.integer):
            raise DataError(
                f"labels {str(labels_path)!r} must be {len(images)} integers (one per image), "
                f"got {raw.dtype} of shape {raw.shape}"
            )
        labels = torch.from_numpy(raw.astype(np.int64))
    return ImageSet(images=images, labels=labels, sources=(str(path),))


def _load_array(path: str | Path) -> Any:
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise DataError(f"array file {str(p)!r} does not exist")
    with p.open("rb") as f:
        head = f.read(6)
    pickled = DataError(
        f"{str(p)!r} holds pickled Python objects; unimodel reads .npy files with allow_pickle=False "
        "because unpickling can execute code. Save a plain numeric array (np.save(path, uint8_images))"
    )
    if head != b"\x93NUMPY":
        if head[:1] == b"\x80":  # the opcode that starts a pickle (protocol 2 and later)
            raise pickled
        raise DataError(f"{str(p)!r} cannot be read as a .npy array: it does not start with the .npy header")
    try:
        array = np.load(p, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():  # an object array
            raise pickled from None
        raise DataError(f"{str(p)!r} cannot be read as a .npy array: {exc}") from None
    except Exception as exc:
        raise DataError(f"{str(p)!r} cannot be read as a .npy array: {type(exc).__name__}: {exc}") from None
    return array


# ------------------------------------------------------------------ PNG grids
def save_image_grid(
    images: Tensor | Sequence[Tensor], path: str | Path, *, nrow: int = 8, padding: int = 2, pad_value: float = 1.0
) -> Path:
    """Write images (N, C, H, W) as one PNG grid of ``nrow`` images per row; returns the path.

    Float images are read on the [0, 1] scale (clamped), uint8 images as they are;
    C is 1 or 3. ``pad_value`` is the [0, 1] grey level between images.
    """
    from PIL import Image

    batch = torch.stack(list(images)) if not isinstance(images, Tensor) else images
    if batch.dim() != 4 or batch.shape[1] not in (1, 3) or batch.shape[0] == 0:
        raise DataError(f"save_image_grid needs images (N, C, H, W) with C 1 or 3, got shape {tuple(batch.shape)}")
    if nrow < 1 or padding < 0:
        raise DataError(f"save_image_grid needs nrow >= 1 and padding >= 0, got nrow={nrow}, padding={padding}")
    batch = batch.detach().cpu()
    pixels = batch if batch.dtype == torch.uint8 else (batch.float().clamp(0, 1) * 255).round().to(torch.uint8)
    n, c, h, w = pixels.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    fill = round(min(max(pad_value, 0.0), 1.0) * 255)
    grid = torch.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), fill, dtype=torch.uint8)
    for i in range(n):
        top, left = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        grid[:, top : top + h, left : left + w] = pixels[i]
    array = grid.permute(1, 2, 0).numpy()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[:, :, 0] if c == 1 else array, mode="L" if c == 1 else "RGB").save(out, format="PNG")
    return out


def save_reconstruction_grid(
    originals: Tensor, reconstructions: Tensor, path: str | Path, *, nrow: int | None = None, padding: int = 2
) -> Path:
    """Originals above, their reconstructions below, in one PNG (``nrow`` images per row; all in one row by default)."""
    if originals.shape != reconstructions.shape:
        raise DataError(
            f"originals {tuple(originals.shape)} and reconstructions {tuple(reconstructions.shape)} differ in shape"
        )
    n = originals.shape[0]
    cols = min(nrow or n, n)
    blank = math.ceil(n / cols) * cols - n  # fill the last row of originals so reconstructions start a new row
    white = 255 if originals.dtype == torch.uint8 else 1.0
    fill = torch.full((blank, *originals.shape[1:]), white, dtype=originals.dtype)
    rec = reconstructions.to(originals.dtype)
    both = torch.cat([originals.detach().cpu(), fill, rec.detach().cpu(), fill])
    return save_image_grid(both, path, nrow=cols, padding=padding)
