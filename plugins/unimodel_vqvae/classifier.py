"""A small convolutional classifier of images, the judge of class-conditional samples.

Trained on real images (``shapes``), it scores generated ones: the share of
samples it recognises as the class they were asked for. Shapes: images
(B, C, H, W) floats in [0, 1]; logits (B, num_classes).

Decoded images are softer than the sharp, anti-aliased originals, and a
classifier that has only seen sharp edges reads soft ones poorly (on shapes, one
trained without augmentation recognised about a fifth of a VQ-VAE's
reconstructions while reading real images perfectly). So by default the real
training images are augmented the standard way: a Gaussian blur of random width
and a little Gaussian noise (:func:`augment`). Nothing generated is trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimodel.errors import InputError
from unimodel_vqvae.images import ImageSet


class ImageClassifier(nn.Module):
    """Three conv stages (3x3 conv, ReLU, 2x2 max-pool; 32, 64, 64 channels), global average pool, a linear layer."""

    def __init__(self, num_classes: int, channels: int = 3, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for c_out in (width, 2 * width, 2 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)
        self.num_classes = num_classes

    def forward(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> logits (B, num_classes)."""
        return self.head(self.features(pixel_values * 2 - 1).mean(dim=(2, 3)))

    @torch.no_grad()
    def predict(self, pixel_values: Tensor, batch_size: int = 500) -> Tensor:
        """(B, C, H, W) -> predicted classes (B,) long, in eval mode."""
        was = self.training
        self.eval()
        out = torch.cat(
            [self(pixel_values[i : i + batch_size]).argmax(-1) for i in range(0, len(pixel_values), batch_size)]
        )
        self.train(was)
        return out


def gaussian_blur(images: Tensor, sigma: Tensor, radius: int = 2) -> Tensor:
    """Blur each image (B, C, H, W) with a separable Gaussian of its own width ``sigma`` (B,) in pixels
    (0: unchanged), borders replicated."""
    B, C, H, W = images.shape
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    s = sigma.to(images.dtype).clamp_min(1e-3)[:, None]
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * s**2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B*C, 2r+1)
    x = F.pad(images.reshape(1, B * C, H, W), (radius,) * 4, mode="replicate")
    x = F.conv2d(x, kernel[:, None, None, :], groups=B * C)  # along rows
    x = F.conv2d(x, kernel[:, None, :, None], groups=B * C)  # along columns
    return x.reshape(B, C, H, W)


def augment(images: Tensor, generator: torch.Generator, *, max_sigma: float = 1.5, max_noise: float = 0.05) -> Tensor:
    """Images (B, C, H, W) in [0, 1], each blurred by a Gaussian of width U(0, ``max_sigma``) pixels, then given
    Gaussian noise of standard deviation U(0, ``max_noise``), clamped to [0, 1]."""
    B = images.shape[0]
    x = gaussian_blur(images, torch.rand(B, generator=generator) * max_sigma)
    noise = torch.randn(x.shape, generator=generator) * torch.rand(B, 1, 1, 1, generator=generator) * max_noise
    return (x + noise).clamp_(0, 1)


@dataclass
class ClassifierResult:
    model: ImageClassifier
    accuracy: float  # held-out accuracy, in [0, 1]
    steps: int


def train_classifier(
    train: ImageSet,
    validation: ImageSet,
    *,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 3e-3,
    augmented: bool = True,
    seed: int = 0,
) -> ClassifierResult:
    """Train an :class:`ImageClassifier` on labelled ``train`` images (AdamW, cosine decay; with ``augmented``,
    each batch through :func:`augment`); report its accuracy on the unaugmented ``validation`` images."""
    if train.labels is None or validation.labels is None:
        raise InputError("training a classifier needs labelled images (an image set with labels)")
    torch.manual_seed(seed)
    num_classes = int(max(train.labels.max(), validation.labels.max())) + 1
    model = ImageClassifier(num_classes, channels=train.image_shape[0])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    x_all, y_all = train.pixel_values(), train.labels
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(train), (batch_size,), generator=g)
        x = augment(x_all[idx], g) if augmented else x_all[idx]
        loss = F.cross_entropy(model(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    accuracy = class_accuracy(model, validation.pixel_values(), validation.labels)
    return ClassifierResult(model.eval(), accuracy, steps)


def class_accuracy(model: ImageClassifier, pixel_values: Tensor, labels: Tensor) -> float:
    """Share of images (B, C, H, W) the classifier assigns to ``labels`` (B,)."""
    if len(pixel_values) != len(labels) or len(labels) == 0:
        raise InputError(f"{len(pixel_values)} images for {len(labels)} labels")
    return float((model.predict(pixel_values) == labels.to(torch.long)).double().mean())


__all__ = ["ClassifierResult", "ImageClassifier", "augment", "class_accuracy", "gaussian_blur", "train_classifier"]
