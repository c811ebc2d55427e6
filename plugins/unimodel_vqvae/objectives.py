"""The ``vq_reconstruction`` objective: reconstruct images through a quantised bottleneck.

Loss: the mean squared (or absolute) error between the model's reconstruction
and the input, both on the [0, 1] scale, plus the model's ``quantizer_loss``.

Metrics (``ObjectiveOutput.metrics``):

======================  ===================================================================
``psnr``                dB, mean over the batch's images of 10 log10(1 / MSE) on the
                        reconstruction clamped to [0, 1]
``reconstruction_loss`` the reconstruction term of the loss (MSE or L1)
``quantizer_loss``      the quantizer term of the loss
``codebook_usage``      share of the K codes used at least once over the data seen since
                        :meth:`VQReconstruction.reset_metrics` (the batches so far)
``code_perplexity``     exp of the entropy of the code histogram over the same data
                        (K when every code is equally frequent, 1 when one code is used)
======================  ===================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimodel.errors import DataError
from unimodel.interfaces import Backbone, Cap, Objective, ObjectiveOutput, TokenLoss
from unimodel.objectives import IGNORE_INDEX, TokenLossObjective, pad_sequences, token_objective_step
from unimodel_vqvae.config import MaskedCodesConfig, VQReconstructionConfig

if TYPE_CHECKING:
    from unimodel.data.tokenizer import Tokenizer
    from unimodel.model import Model


def psnr(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB (B,) of images (B, C, H, W) on the [0, 1] scale (reconstruction clamped)."""
    mse = (reconstruction.detach().clamp(0, 1) - target).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def code_statistics(counts: Tensor) -> dict[str, float]:
    """``codebook_usage`` (share of codes with a count) and ``code_perplexity`` of a histogram (K,)."""
    total = float(counts.sum())
    if total == 0:
        return {"codebook_usage": 0.0, "code_perplexity": 0.0}
    p = counts.double() / total
    entropy = -float((p[p > 0] * p[p > 0].log()).sum())
    return {"codebook_usage": float((counts > 0).double().mean()), "code_perplexity": math.exp(entropy)}


def image_batch(examples: Sequence[Any], what: str) -> Tensor:
    """Examples (``{"pixel_values": (C, H, W)}`` mappings or bare tensors) -> (B, C, H, W) float in [0, 1].

    uint8 images are divided by 255; float images are taken as they are (the model checks their range).
    """
    if not examples:
        raise DataError(f"{what}: cannot build a batch from zero examples")
    images: list[Tensor] = []
    for i, ex in enumerate(examples):
        image = ex.get("pixel_values") if isinstance(ex, Mapping) else ex
        if not isinstance(image, Tensor):
            got = f"keys {sorted(ex)}" if isinstance(ex, Mapping) else type(ex).__name__
            raise DataError(
                f"{what} trains on images: each example must be a (channels, height, width) tensor or a mapping "
                f"with one under 'pixel_values'; example {i} has {got}. Use an image corpus (e.g. 'shapes')"
            )
        if image.dim() != 3:
            raise DataError(f"{what}: example {i} has shape {tuple(image.shape)}, expected (channels, height, width)")
        if images and image.shape != images[0].shape:
            raise DataError(
                f"{what}: example {i} has shape {tuple(image.shape)} but example 0 has {tuple(images[0].shape)}; "
                "images of one batch must have one size"
            )
        images.append(image)
    batch = torch.stack(images)
    return batch.float() / 255 if batch.dtype == torch.uint8 else batch.float()


class VQReconstruction(Objective[VQReconstructionConfig]):
    """Reconstruction through the model's quantised bottleneck (a VQ-VAE's own objective).

    ``prepare`` stacks image examples into ``{"pixel_values": (B, C, H, W)}``;
    ``forward`` runs ``model(pixel_values=...)`` and adds the quantizer loss.
    The code histogram behind ``codebook_usage`` and ``code_perplexity``
    accumulates over calls until :meth:`reset_metrics`.
    """

    config_class = VQReconstructionConfig
    requires = frozenset({Cap.CONTINUOUS_INPUT, Cap.CODEBOOK})
    primary_head = None
    uses_lm_head = False
    data_kind = "images"  # examples {"pixel_values": (C, H, W), "label": int}

    config: VQReconstructionConfig

    def __init__(self, config: VQReconstructionConfig) -> None:
        super().__init__(config)
        self.code_counts: Tensor | None = None

    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        return {}  # the image decoder is part of the backbone

    def prepare(
        self,
        examples: Sequence[Any],
        *,
        tokenizer: Tokenizer | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        return {"pixel_values": image_batch(examples, "objective 'vq_reconstruction'")}

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The reconstruction term: ``logits`` the reconstruction, ``labels`` the images (B, C, H, W)."""
        if self.config.reconstruction == "l1":
            return F.l1_loss(logits, labels)
        return F.mse_loss(logits, labels)

    def count_targets(self, batch: Mapping[str, Tensor]) -> int:
        """The images of ``batch`` (B): the loss is a mean over equally sized images, one prediction each."""
        return int(batch["pixel_values"].shape[0])

    def forward(self, model: Model, batch: Mapping[str, Tensor]) -> ObjectiveOutput:
        target = batch["pixel_values"]
        out = model(pixel_values=target)
        reconstruction = out.extra["reconstruction"]
        rec_loss = self.loss(reconstruction, target.to(reconstruction.dtype))
        q_loss = out.extra["quantizer_loss"]
        self.count_codes(out.extra["codes"], model.vocab_size)
        metrics = {
            "psnr": float(psnr(reconstruction, target).mean()),
            "reconstruction_loss": float(rec_loss.detach()),
            "quantizer_loss": float(q_loss.detach()),
            **self.code_metrics(),
        }
        return ObjectiveOutput(loss=rec_loss + q_loss, n_predictions=target.shape[0], metrics=metrics)

    # ------------------------------------------------------------------ code histogram
    @torch.no_grad()
    def count_codes(self, codes: Tensor, num_codes: int) -> None:
        counts = torch.bincount(codes.reshape(-1), minlength=num_codes)
        if self.code_counts is None or self.code_counts.shape != counts.shape:
            self.code_counts = counts
        else:
            self.code_counts = self.code_counts.to(counts.device) + counts

    def code_metrics(self) -> dict[str, float]:
        """``codebook_usage`` and ``code_perplexity`` over the codes seen since :meth:`reset_metrics`."""
        if self.code_counts is None:
            return {"codebook_usage": 0.0, "code_perplexity": 0.0}
        return code_statistics(self.code_counts)

    def reset_metrics(self) -> None:
        """Forget the code histogram (call before an evaluation pass)."""
        self.code_counts = None


# ------------------------------------------------------------------ masked codes (MaskGIT)


class MaskedCodes(TokenLossObjective[MaskedCodesConfig]):
    """MaskGIT's training task for a bidirectional prior over code grids.

    Each example is a code sequence ``{"input_ids": [<image>, (<class_c>,) codes...]}``.
    Per image a ratio ``cos(pi/2 * r)`` with ``r ~ U(0, 1)`` of its codes
    (at least ``min_masked``) is replaced by the mask token; the loss is the
    cross-entropy at those positions. The start and class tokens are never
    masked: they are the condition. Sampled with iterative parallel decoding
    (:func:`unimodel_vqvae.prior.sample_codes_parallel`).
    """

    config_class = MaskedCodesConfig
    requires = frozenset({Cap.ENCODER_ONLY, Cap.LM_HEAD})
    special_tokens = ("mask",)
    data_kind = "codes"

    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        return {}

    def _maskable(self, ids: Tensor, tokenizer: Tokenizer | None) -> tuple[Tensor, int]:
        """(which of ``ids`` (B, T) are codes, the mask id), from the config or the tokenizer.

        Codes are the ids below ``num_codes`` (the config's, else the one the tokenizer's
        image_tokenizer record gives); without either, every id that is not a role token.
        """
        c = self.config
        mask_id = c.mask_token_id
        if mask_id is None and tokenizer is not None and tokenizer.has_role("mask"):
            mask_id = tokenizer.special_id("mask")
        if mask_id is None:
            raise DataError(
                "objective 'masked_codes' needs a mask token: train it on data kind 'codes' (whose tokenizer has "
                "one) or set mask_token_id"
            )
        link = getattr(tokenizer, "metadata", {}).get("image_tokenizer", {}) if tokenizer is not None else {}
        num_codes = c.num_codes if c.num_codes is not None else link.get("num_codes")
        if isinstance(num_codes, int):
            return ids < num_codes, mask_id
        special = torch.tensor(sorted(tokenizer.special_ids if tokenizer is not None else {mask_id}))
        return ~torch.isin(ids, special), mask_id

    def prepare(
        self,
        examples: Sequence[Any],
        *,
        tokenizer: Tokenizer | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        pad = tokenizer.pad_id if tokenizer is not None else 0
        ids, attn = pad_sequences([ex["input_ids"] for ex in examples], pad)
        maskable, mask_id = self._maskable(ids, tokenizer)
        is_code = maskable & attn.bool()
        B, T = ids.shape
        ratio = torch.cos(math.pi / 2 * torch.rand(B, generator=generator))  # (B,)
        n_codes = is_code.sum(1)
        n_mask = torch.maximum((ratio * n_codes).ceil().long(), torch.full_like(n_codes, self.config.min_masked))
        n_mask = torch.minimum(n_mask, n_codes)
        # the n_mask codes of lowest random score in each row
        score = torch.rand(B, T, generator=generator).masked_fill(~is_code, 2.0)
        rank = score.argsort(dim=1).argsort(dim=1)
        masked = rank < n_mask[:, None]
        return {
            "input_ids": ids.masked_fill(masked, mask_id),
            "attention_mask": attn,
            "labels": ids.masked_fill(~masked, IGNORE_INDEX),
        }

    def token_loss(self) -> TokenLoss:
        return TokenLoss()

    def forward(self, model: Model, batch: Mapping[str, Tensor]) -> ObjectiveOutput:
        labels = batch["labels"]
        mask = batch.get("attention_mask")
        inputs = {"input_ids": batch["input_ids"], "attention_mask": None if mask is None or bool(mask.all()) else mask}
        return token_objective_step(self, model, inputs, labels, logits_at=labels != IGNORE_INDEX)
