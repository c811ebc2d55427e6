"""The VQ-VAE: a convolutional encoder, a quantizer and a convolutional image decoder.

Shapes: B batch, C image channels, H x W image size, h x w code grid
(``H / 2**num_downsamples``), D latent width (``latent_dim``), K number of codes.
Pixel values are floats in [0, 1].

The whole autoencoder is one backbone part, :class:`VQVAE` (an ``Encoder``
providing ``continuous_input`` and ``codebook``), so the image decoder belongs
to the model and its checkpoint whatever the objective. Its forward returns
:class:`~unimodel.interfaces.EncoderOutput` with ``last_hidden_state`` the
quantised latents (B, h*w, D) and, in ``extra``:

============================  =========================================================
``reconstruction``            (B, C, H, W) decoded image, [0, 1] scale, not clamped
``codes``                     (B, h*w) long code ids, row-major over the grid
``quantizer_loss``            scalar to add to the reconstruction loss (commitment
                              weight x commitment for VQ; 0 for FSQ)
``commitment_loss``           scalar, unweighted ||z_e - sg(z_q)||^2 (0 for FSQ)
============================  =========================================================

``Model`` passes ``extra`` through to ``ModelOutput.extra`` (also readable as
``out["reconstruction"]``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unimodel.errors import InputError
from unimodel.interfaces import Backbone, Cap, Encoder, EncoderOutput, ModelFamily
from unimodel_vqvae.config import VQVAEConfig
from unimodel_vqvae.quantizers import FiniteScalarQuantizer, Quantizer, VectorQuantizer

PROVIDES = frozenset({Cap.CONTINUOUS_INPUT, Cap.CODEBOOK})

# Pixel values a little outside [0, 1] from float rounding (a resize, a normalisation) are accepted.
RANGE_TOLERANCE = 1e-4


class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))): the residual block of the original VQ-VAE."""

    def __init__(self, channels: int, res_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, res_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(res_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


def _stage_channels(c: VQVAEConfig) -> list[int]:
    """Channels after each stride-2 stage, finest first: hidden / 2**(n-1), ..., hidden."""
    n = c.num_downsamples
    return [c.hidden_channels // 2 ** (n - 1 - i) for i in range(n)]


class ConvEncoder(nn.Module):
    """(B, C, H, W) in [-1, 1] -> (B, D, h, w): strided 4x4 convs, a 3x3 conv, residual blocks, a 1x1 conv."""

    def __init__(self, c: VQVAEConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch_in = c.num_channels
        for ch in _stage_channels(c):
            layers += [nn.Conv2d(ch_in, ch, 4, stride=2, padding=1), nn.ReLU()]
            ch_in = ch
        layers.append(nn.Conv2d(ch_in, c.hidden_channels, 3, padding=1))
        layers += [ResBlock(c.hidden_channels, c.res_channels) for _ in range(c.num_res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(c.hidden_channels, c.latent_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """(B, D, h, w) -> (B, C, H, W) in [-1, 1] scale: a 3x3 conv, residual blocks, transposed 4x4 convs."""

    def __init__(self, c: VQVAEConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(c.latent_dim, c.hidden_channels, 3, padding=1)]
        layers += [ResBlock(c.hidden_channels, c.res_channels) for _ in range(c.num_res_blocks)]
        layers.append(nn.ReLU())
        stages = _stage_channels(c)[::-1]  # coarsest first
        outs = [*stages[1:], c.num_channels]
        for i, (ch_in, ch_out) in enumerate(zip(stages, outs)):
            layers.append(nn.ConvTranspose2d(ch_in, ch_out, 4, stride=2, padding=1))
            if i < len(stages) - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def build_quantizer(c: VQVAEConfig) -> Quantizer:
    if c.quantizer == "fsq":
        return FiniteScalarQuantizer(c.latent_dim, c.fsq_levels)
    return VectorQuantizer(
        c.latent_dim,
        c.codebook_size,
        code_dim=c.code_dim,
        cosine=c.cosine_codes,
        commitment_weight=c.commitment_weight,
        decay=c.ema_decay,
        eps=c.ema_eps,
        kmeans_init=c.kmeans_init,
        kmeans_iters=c.kmeans_iters,
        dead_code_steps=c.dead_code_steps,
    )


class VQVAE(Encoder[VQVAEConfig]):
    """Images (B, C, H, W) in [0, 1] -> code grid (B, h*w) -> reconstructions (B, C, H, W).

    ``vocab_size`` is the number of codes K (the vocabulary of a prior over
    codes), ``max_positions`` the h*w grid positions, ``d_model`` the latent
    width D. :meth:`encode_codes` and :meth:`decode_codes` are the image
    tokenizer a prior uses; they never update the codebook.
    """

    config_class = VQVAEConfig
    provides = PROVIDES

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        c = self.config = config
        self.d_model = c.latent_dim
        self.vocab_size = c.num_codes
        g = c.grid_size
        self.code_shape = (g, g)
        self.max_positions = g * g
        self.image_shape = (c.num_channels, c.image_size, c.image_size)
        self.image_encoder = ConvEncoder(c)
        self.quantizer = build_quantizer(c)
        self.image_decoder = ConvDecoder(c)

    # ------------------------------------------------------------------ interface
    def get_input_embeddings(self) -> nn.Embedding:
        raise InputError("model 'vqvae' reads pixel_values; it has no token embedding")

    def build_lm_head(self) -> nn.Module:
        raise InputError("model 'vqvae' has no LM head; train it with 'vq_reconstruction'")

    def forward(
        self,
        input_ids: Tensor | None = None,
        *,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
    ) -> EncoderOutput:
        if input_ids is not None or pixel_values is None:
            shape = ", ".join(map(str, self.image_shape))
            raise InputError(
                f"model 'vqvae' takes pixel_values, float images of shape (batch, {shape}) in [0, 1], "
                f"not {'input_ids' if input_ids is not None else 'nothing'}"
            )
        z_e = self.image_encoder(self.check_pixels(pixel_values) * 2 - 1)  # (B, D, h, w)
        B, D, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(B * h * w, D)  # row-major over the grid
        q = self.quantizer(flat)
        latents = q.latents.reshape(B, h * w, D)
        reconstruction = self._decode_latents(latents)
        extra: dict[str, Any] = {
            "reconstruction": reconstruction,
            "codes": q.codes.reshape(B, h * w),
            "quantizer_loss": q.loss,
            "commitment_loss": q.commitment,
        }
        return EncoderOutput(last_hidden_state=latents, extra=extra)

    def _decode_latents(self, latents: Tensor) -> Tensor:
        """(B, h*w, D) -> (B, C, H, W) on the [0, 1] scale."""
        B, _, D = latents.shape
        h, w = self.code_shape
        grid = latents.transpose(1, 2).reshape(B, D, h, w)
        return self.image_decoder(grid) * 0.5 + 0.5

    def example_inputs(self, batch: int, *, generator: torch.Generator) -> dict[str, Tensor]:
        """Random images ``{"pixel_values": (batch, C, H, W)}`` in [0, 1] (what the conformance kit feeds)."""
        return {"pixel_values": torch.rand(batch, *self.image_shape, generator=generator)}

    # ------------------------------------------------------------------ codes
    @torch.no_grad()
    def encode_codes(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, h*w) long codes, row-major over the grid."""
        z_e = self.image_encoder(self.check_pixels(pixel_values) * 2 - 1)
        B, D, h, w = z_e.shape
        return self.quantizer(z_e.permute(0, 2, 3, 1).reshape(-1, D), update=False).codes.reshape(B, h * w)

    @torch.no_grad()
    def decode_codes(self, codes: Tensor) -> Tensor:
        """(B, h*w) or (B, h, w) code ids -> (B, C, H, W) images clamped to [0, 1]."""
        flat = self.check_codes(codes)
        latents = self.quantizer.decode(flat.reshape(-1)).reshape(flat.shape[0], flat.shape[1], -1)
        return self._decode_latents(latents).clamp_(0, 1)

    # ------------------------------------------------------------------ validation
    @property
    def first_weight(self) -> Tensor:
        """The first convolution's weight: where and in which dtype inputs must be."""
        conv = self.image_encoder.net[0]
        assert isinstance(conv, nn.Conv2d)
        return conv.weight

    def check_pixels(self, x: Any) -> Tensor:
        """Refuse what the network cannot read; return x in the parameters' dtype."""
        shape = "(batch, " + ", ".join(map(str, self.image_shape)) + ")"
        if not isinstance(x, Tensor):
            raise InputError(f"pixel_values must be a torch tensor of shape {shape}, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            hint = " (one image: add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
            raise InputError(
                f"pixel_values must have shape {shape} (channels first), got {tuple(x.shape)}{hint}; "
                f"resize images to {self.image_shape[1]}x{self.image_shape[2]} or build the model with that image_size"
            )
        if x.shape[0] == 0:
            raise InputError("pixel_values holds no images (batch size 0)")
        if not x.is_floating_point():
            raise InputError(
                f"pixel_values must be floating point in [0, 1], got dtype {x.dtype}"
                + ("; divide uint8 images by 255" if x.dtype == torch.uint8 else "")
            )
        if not bool(torch.isfinite(x).all()):
            raise InputError("pixel_values holds NaN or infinite values")
        lo, hi = torch.aminmax(x)
        if float(lo) < -RANGE_TOLERANCE or float(hi) > 1 + RANGE_TOLERANCE:
            raise InputError(
                f"pixel_values must lie in [0, 1], got values in [{float(lo):.4g}, {float(hi):.4g}]"
                + ("; divide 0-255 images by 255" if float(hi) > 1.5 else "")
            )
        weight = self.first_weight
        return x.to(device=weight.device, dtype=weight.dtype)

    def check_codes(self, codes: Any) -> Tensor:
        """Codes (B, h*w) or (B, h, w) of integer dtype inside [0, K) -> (B, h*w)."""
        h, w = self.code_shape
        if not isinstance(codes, Tensor):
            raise InputError(f"codes must be a torch tensor of shape (batch, {h * w}), got {type(codes).__name__}")
        if codes.is_floating_point() or codes.dtype == torch.bool or codes.is_complex():
            raise InputError(f"codes must hold integer code ids (torch.long), got dtype {codes.dtype}")
        if codes.dim() == 3 and tuple(codes.shape[1:]) == (h, w):
            codes = codes.reshape(codes.shape[0], h * w)
        if codes.dim() != 2 or codes.shape[1] != h * w or codes.shape[0] == 0:
            raise InputError(
                f"codes must have shape (batch, {h * w}) or (batch, {h}, {w}) for this model's {h}x{w} code grid, "
                f"got {tuple(codes.shape)}"
            )
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.vocab_size:
            raise InputError(
                f"codes contain {lo if lo < 0 else hi}, outside this model's {self.vocab_size} codes "
                f"(0..{self.vocab_size - 1})"
            )
        return codes.long().to(self.first_weight.device)


class VQVAEFamily(ModelFamily[VQVAEConfig]):
    """The ``vqvae`` model: one :class:`VQVAE` part; no LM head, no special tokens."""

    config_class = VQVAEConfig

    @classmethod
    def build_backbone(cls, config: VQVAEConfig) -> Backbone:
        return Backbone(encoder=VQVAE(config), decoder=None, lm_head=None, provides=PROVIDES)
