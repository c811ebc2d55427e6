"""``unimodel sample``: images from a prior over VQ-VAE codes, written as one PNG grid."""

from __future__ import annotations

import argparse
import math
import time

from unimodel.errors import InputError


def cmd_sample(args: argparse.Namespace) -> int:
    """Load the prior (its VQ-VAE comes with it), sample ``--num`` code grids, decode, write ``--out``.

    An encoder-only prior (trained with ``masked_codes``) is sampled by parallel
    refinement; a causal one with ``generate``, code by code.
    """
    from unimodel.checkpoint import load
    from unimodel_vqvae.images import save_image_grid
    from unimodel_vqvae.prior import image_tokenizer_of, sample_codes, sample_codes_parallel

    if args.num < 1:
        raise InputError(f"--num must be at least 1, got {args.num}")
    prior = load(args.prior)
    vq = image_tokenizer_of(prior)
    started = time.perf_counter()
    parallel = prior.decoder is None
    if parallel:
        codes = sample_codes_parallel(
            prior, args.num, class_id=args.class_id, iterations=args.iterations, temperature=args.temperature,
            seed=args.seed,
        )  # fmt: skip
    else:
        codes = sample_codes(
            prior, args.num, class_id=args.class_id, temperature=args.temperature, top_k=args.top_k, seed=args.seed
        )
    images = vq.decode(codes)
    seconds = time.perf_counter() - started
    path = save_image_grid(images, args.out, nrow=args.nrow or math.ceil(math.sqrt(args.num)))
    how = f"parallel decoding, {args.iterations} iterations" if parallel else "autoregressive sampling"
    print(f"{args.num} samples ({how}, {seconds:.2f}s) -> {path}")
    return 0
