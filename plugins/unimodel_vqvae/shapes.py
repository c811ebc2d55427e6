"""``shapes``: a procedural image dataset that needs no download.

Each image shows one shape of eight classes (circle, square, triangle,
diamond, star, cross, ring, semicircle) in a random colour, size and
position on a background of another random colour. Shapes are drawn at four
times the size and downsampled, so their edges are anti-aliased. Everything
is drawn from a numpy generator seeded by ``(seed, split)``: the same
arguments give the same images on every machine.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from unimodel_vqvae.images import ImageSet

SHAPE_CLASSES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "semicircle")
SPLITS = ("train", "validation")
SUPERSAMPLE = 4
MIN_CONTRAST = 120.0  # Euclidean RGB distance (0..255 units) between a shape and its background
MAX_IMAGES = 1_000_000


def shapes(
    split: str = "train",
    *,
    n_train: int = 10000,
    n_validation: int = 1000,
    image_size: int = 32,
    seed: int = 0,
) -> ImageSet:
    """The ``split`` (``"train"`` or ``"validation"``) of the shapes dataset: an :class:`ImageSet` of
    RGB uint8 images (N, 3, image_size, image_size) with labels indexing :data:`SHAPE_CLASSES`.

    The two splits are drawn from different random streams of the same ``seed``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    n = n_train if split == "train" else n_validation
    return render_shapes(n, image_size=image_size, seed=seed, stream=SPLITS.index(split))


def render_shapes(n: int, *, image_size: int = 32, seed: int = 0, stream: int = 0) -> ImageSet:
    """``n`` shape images of ``image_size`` pixels square, from the random stream ``(seed, stream)``."""
    import numpy as np

    if not 1 <= n <= MAX_IMAGES:
        raise ValueError(f"the number of images must be in 1..{MAX_IMAGES:,}, got {n}")
    if not 8 <= image_size <= 256:
        raise ValueError(f"image_size must be in 8..256, got {image_size}")
    rng = np.random.default_rng([seed, stream])
    pixels = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        labels[i] = rng.integers(len(SHAPE_CLASSES))
        pixels[i] = _draw(int(labels[i]), image_size, rng)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images=images, labels=torch.from_numpy(labels), class_names=SHAPE_CLASSES)


def _colours(rng: Any) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(shape colour, background colour) at least MIN_CONTRAST apart."""
    r, g, b = (int(v) for v in rng.integers(0, 256, size=3))
    background = (r, g, b)
    for _ in range(100):
        r, g, b = (int(v) for v in rng.integers(0, 256, size=3))
        if math.dist((r, g, b), background) >= MIN_CONTRAST:
            return (r, g, b), background
    # a background that few colours are far from: take its opposite
    return (255 - background[0], 255 - background[1], 255 - background[2]), background


def _draw(label: int, image_size: int, rng: Any) -> Any:
    """One (H, W, 3) uint8 array."""
    import numpy as np
    from PIL import Image, ImageDraw

    size = image_size * SUPERSAMPLE
    colour, background = _colours(rng)
    r = float(rng.uniform(0.2, 0.42)) * size  # radius of the shape's bounding circle
    cx, cy = (float(v) for v in rng.uniform(r, size - r, size=2))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    name = SHAPE_CLASSES[label]
    if name == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif name == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        inner = 0.55 * r
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=background)
    elif name == "semicircle":  # flat side down, centred in its bounding circle
        draw.pieslice((cx - r, cy - r / 2, cx + r, cy + 3 * r / 2), 180, 360, fill=colour)
    else:
        draw.polygon(_polygon(name, cx, cy, r), fill=colour)
    small = image.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def _polygon(name: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of the polygonal classes (image coordinates: y grows downwards)."""

    def ring(radii: list[float], start: float) -> list[tuple[float, float]]:
        n = len(radii)
        return [
            (cx + rad * math.cos(start + 2 * math.pi * k / n), cy + rad * math.sin(start + 2 * math.pi * k / n))
            for k, rad in enumerate(radii)
        ]

    up = -math.pi / 2
    if name == "square":
        a = 0.8 * r
        return [(cx - a, cy - a), (cx + a, cy - a), (cx + a, cy + a), (cx - a, cy + a)]
    if name == "triangle":
        return ring([r] * 3, up)
    if name == "diamond":  # a rhombus taller than wide, so it is no rotated square
        return [(cx, cy - r), (cx + 0.65 * r, cy), (cx, cy + r), (cx - 0.65 * r, cy)]
    if name == "star":
        return ring([r, 0.42 * r] * 5, up)
    if name == "cross":
        a, b = r, 0.33 * r
        return [
            (cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b),
            (cx + a, cy + b), (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a),
            (cx - b, cy + b), (cx - a, cy + b), (cx - a, cy - b), (cx - b, cy - b),
        ]  # fmt: skip
    raise ValueError(f"no polygon for shape {name!r}")
