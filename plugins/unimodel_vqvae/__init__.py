"""The VQ-VAE family for unimodel: images to a grid of discrete codes and back.

Registers the model ``vqvae`` (presets ``vqvae-tiny`` for 32x32 and
``vqvae-small`` for 64x64 images), the objective ``vq_reconstruction`` and the
procedural image corpus ``shapes``. Only metadata lives here; torch and the
model code load when a component is built.
"""

from __future__ import annotations

import argparse

from unimodel import hookimpl
from unimodel.hookspecs import PLUGIN_API_VERSION, CliCommand
from unimodel.registry import Component

_PROVIDES = ("continuous_input", "codebook")
_TINY = {
    "image_size": 16,
    "num_downsamples": 2,
    "hidden_channels": 16,
    "res_channels": 8,
    "num_res_blocks": 1,
    "latent_dim": 8,
    "codebook_size": 32,
    "kmeans_iters": 2,
}

# name: (config values, summary)
_PRESETS = {
    "vqvae-tiny": (
        {"image_size": 32, "num_downsamples": 2, "hidden_channels": 64, "res_channels": 32, "latent_dim": 64},
        "32x32 RGB images, 8x8 code grid, 512 codes",
    ),
    "vqvae-small": (
        {"image_size": 64, "num_downsamples": 3, "hidden_channels": 128, "res_channels": 64, "latent_dim": 64},
        "64x64 RGB images, 8x8 code grid, 512 codes",
    ),
}


@hookimpl
def unimodel_api_version() -> int:
    return PLUGIN_API_VERSION


@hookimpl
def unimodel_checkpoint_loaded(model: object, path: str) -> None:
    """A prior over codes gets the VQ-VAE its tokenizer records (or an error saying it is missing or changed)."""
    tok = getattr(model, "tokenizer", None)
    if tok is not None and "image_tokenizer" in getattr(tok, "metadata", {}):
        from unimodel_vqvae.prior import attach_image_tokenizer

        attach_image_tokenizer(model, path)


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prior", metavar="PRIOR_CKPT", help="a prior over VQ-VAE codes (trained with data kind 'codes')")
    p.add_argument("--num", type=int, default=16, metavar="N", help="images to sample (default 16)")
    p.add_argument("--class", dest="class_id", type=int, default=None, metavar="C", help="class of a conditional prior")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None, help="draw each code among the k likeliest")
    p.add_argument(
        "--guidance",
        type=float,
        default=1.0,
        metavar="S",
        help="classifier-free guidance scale (default 1: none; needs a prior trained with class_dropout)",
    )
    p.add_argument(
        "--iterations", type=int, default=None, help="parallel (masked-code) prior only: refinement steps (default 8)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nrow", type=int, default=None, metavar="N", help="images per grid row (default: square)")
    p.add_argument("--out", default="samples.png", metavar="PNG", help="where to write the grid (default samples.png)")


@hookimpl
def unimodel_cli_commands() -> list[CliCommand]:
    return [
        CliCommand(
            "sample",
            "sample images from a prior over VQ-VAE codes (autoregressive or masked) into a PNG grid",
            _sample_arguments,
            "unimodel_vqvae.cli:cmd_sample",
        )
    ]


@hookimpl
def unimodel_components() -> list[Component]:
    comps = [
        Component(
            kind="model",
            name="vqvae",
            target="unimodel_vqvae.model:VQVAEFamily",
            config="unimodel_vqvae.config:VQVAEConfig",
            summary="VQ-VAE: convolutional encoder and decoder around a VQ (EMA codebook) or FSQ bottleneck",
            provides=_PROVIDES,
            default_objective="vq_reconstruction",
            tiny=_TINY,
        ),
        Component(
            kind="objective",
            name="vq_reconstruction",
            target="unimodel_vqvae.objectives:VQReconstruction",
            config="unimodel_vqvae.config:VQReconstructionConfig",
            summary="image reconstruction (MSE or L1) through a quantised bottleneck, plus the quantizer loss",
            requires=_PROVIDES,
        ),
        Component(
            kind="objective",
            name="masked_codes",
            target="unimodel_vqvae.objectives:MaskedCodes",
            config="unimodel_vqvae.config:MaskedCodesConfig",
            summary="MaskGIT: predict a cosine-scheduled share of masked codes of a code grid (bidirectional prior)",
            requires=("encoder_only", "lm_head"),
        ),
        Component(
            kind="data",
            name="images",
            target="unimodel_vqvae.data:ImageData",
            summary="images {pixel_values, label}: an image corpus (shapes) or image folders and .npy arrays",
        ),
        Component(
            kind="data",
            name="codes",
            target="unimodel_vqvae.data:CodeData",
            summary="images as code sequences of a VQ-VAE (kind_options.image_tokenizer), for a prior over codes",
        ),
        Component(
            kind="corpus",
            name="shapes",
            target="unimodel_vqvae.shapes:shapes",
            summary="images: 8 classes of coloured shapes, 32x32 or 64x64 RGB (generated; 10,000 train / 1,000 val.)",
            data_kind="images",
            extra={"corpus_options": "n_train = 10000, n_validation = 1000, image_size = 32, seed = 0"},
        ),
    ]
    for name, (values, summary) in _PRESETS.items():
        comps.append(
            Component(
                kind="model",
                name=name,
                target="",
                base="vqvae",
                summary=summary,
                defaults=values,
                provides=_PROVIDES,
                default_objective="vq_reconstruction",
            )
        )
    return comps
