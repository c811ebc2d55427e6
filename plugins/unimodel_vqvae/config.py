"""The VQ-VAE plugin's config classes: the model's and its objectives'.

This module imports neither torch nor the model code, so a run file is checked
against these classes (the registry records name them) before anything heavy
is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unimodel.config import Config, param


@dataclass(frozen=True)
class VQVAEConfig(Config):
    section = "model 'vqvae'"

    image_size: int = param(32, "height and width of the square input images, in pixels")
    num_channels: int = param(3, "image channels (3 for RGB, 1 for grey)")
    num_downsamples: int = param(2, "stride-2 stages: the code grid is image_size / 2**num_downsamples per side")
    hidden_channels: int = param(64, "channels at the code-grid resolution (halved at each finer stage)")
    res_channels: int = param(32, "bottleneck channels of a residual block")
    num_res_blocks: int = param(2, "residual blocks at the code-grid resolution, in the encoder and the decoder")
    latent_dim: int = param(64, "width D of the latents the quantizer sees (the encoder output channels)")
    quantizer: Literal["vq", "fsq"] = param("vq", "vq: a learned codebook (EMA); fsq: finite scalar quantization")
    codebook_size: int = param(512, "number of codes K of the vq quantizer")
    code_dim: int | None = param(None, "vq: width of a low-dimensional code space (projections in and out)")
    cosine_codes: bool = param(False, "vq: compare L2-normalised vectors by cosine similarity")
    commitment_weight: float = param(0.25, "vq: beta, the weight of the commitment loss")
    ema_decay: float = param(0.99, "vq: decay of the EMA codebook updates")
    ema_eps: float = param(1e-5, "vq: Laplace smoothing of the EMA code counts")
    kmeans_init: bool = param(True, "vq: initialise the codebook by k-means on the first training batch")
    kmeans_iters: int = param(10, "vq: iterations of that k-means")
    dead_code_steps: int = param(
        20, "vq: re-seed a code unused for this many training steps from the batch's encoder outputs; 0: never"
    )
    fsq_levels: tuple[int, ...] = param((8, 5, 5, 5), "fsq: values per dimension; prod(levels) codes")

    def check(self) -> None:
        self.require_positive(
            "image_size", "num_channels", "hidden_channels", "res_channels", "num_res_blocks", "latent_dim"
        )
        self.require_positive("codebook_size", "code_dim", "kmeans_iters", "ema_eps")
        if self.num_downsamples < 1:
            self.fail("num_downsamples", "must be at least 1")
        factor = 2**self.num_downsamples
        if self.image_size % factor:
            self.fail(("image_size", "num_downsamples"), f"image_size must be divisible by 2**num_downsamples={factor}")
        if self.hidden_channels % 2 ** (self.num_downsamples - 1):
            self.fail(
                ("hidden_channels", "num_downsamples"),
                f"hidden_channels is halved at each finer stage, so it must be divisible by "
                f"{2 ** (self.num_downsamples - 1)}",
            )
        if not 0.0 < self.ema_decay < 1.0:
            self.fail("ema_decay", "must be in (0, 1)")
        if self.commitment_weight < 0:
            self.fail("commitment_weight", "must be >= 0")
        if self.dead_code_steps < 0:
            self.fail("dead_code_steps", "must be >= 0 (0 disables dead-code restart)")
        if not self.fsq_levels or any(n < 2 for n in self.fsq_levels):
            self.fail("fsq_levels", "give at least one level count, each >= 2")
        if self.num_codes > 2**20:
            self.fail(("quantizer", "codebook_size", "fsq_levels"), "more than 2**20 codes")

    @property
    def num_codes(self) -> int:
        """K: the codebook size, or the product of the FSQ levels."""
        if self.quantizer == "fsq":
            n = 1
            for level in self.fsq_levels:
                n *= level
            return n
        return self.codebook_size

    @property
    def grid_size(self) -> int:
        """Side h = w of the code grid."""
        return self.image_size // 2**self.num_downsamples


@dataclass(frozen=True)
class VQReconstructionConfig(Config):
    section = "objective 'vq_reconstruction'"

    reconstruction: Literal["mse", "l1"] = param("mse", "reconstruction loss: mean squared or mean absolute error")


@dataclass(frozen=True)
class MaskedCodesConfig(Config):
    section = "objective 'masked_codes'"

    num_codes: int | None = param(
        None, "ids below this are codes, the positions that may be masked (the tokenizer's image_tokenizer when null)"
    )
    mask_token_id: int | None = param(None, "id of the mask token (the tokenizer's mask role when null)")
    min_masked: int = param(1, "at least this many codes masked per image")

    def check(self) -> None:
        self.require_positive("num_codes")
        if self.min_masked < 1:
            self.fail("min_masked", "must be at least 1")


__all__ = ["MaskedCodesConfig", "VQReconstructionConfig", "VQVAEConfig"]
