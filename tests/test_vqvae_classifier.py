"""The judge of class-conditional samples: its augmentation of real training images (blur and noise)."""

from __future__ import annotations

import math

import torch
from unimodel_vqvae.classifier import augment, gaussian_blur


def test_gaussian_blur_spreads_a_point_by_each_images_own_width():
    images = torch.zeros(3, 2, 9, 9)
    images[:, :, 4, 4] = 1.0
    out = gaussian_blur(images, torch.tensor([0.0, 1.0, 0.5]))
    assert torch.allclose(out[0], images[0], atol=1e-6)  # width 0: unchanged
    w = [math.exp(-(d**2) / 2) for d in (-2, -1, 0, 1, 2)]
    one_d = torch.tensor(w) / sum(w)
    assert torch.allclose(out[1, 0, 2:7, 2:7], one_d[:, None] * one_d[None, :], atol=1e-6)
    assert torch.allclose(out[1, 1], out[1, 0]) and out[2, 0, 4, 4] > out[1, 0, 4, 4]  # narrower: sharper
    assert torch.allclose(out.sum((2, 3)), torch.ones(3, 2), atol=1e-5)  # the mass stays
    flat = torch.full((1, 3, 6, 6), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([1.5])), flat, atol=1e-6)  # borders replicated


def test_augment_stays_in_range_and_follows_its_generator():
    images = torch.rand(8, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    a = augment(images, torch.Generator().manual_seed(1))
    assert a.shape == images.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, augment(images, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, augment(images, torch.Generator().manual_seed(2)))
    clean = augment(images, torch.Generator().manual_seed(1), max_sigma=0.0, max_noise=0.0)
    assert torch.allclose(clean, images, atol=1e-6)
