"""``unimodel sample``: images from a prior over VQ-VAE codes, written as one PNG grid."""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from unimodel.errors import InputError


def cmd_sample(args: argparse.Namespace) -> int:
    """Load the prior (its VQ-VAE comes with it), sample ``--num`` code grids, decode, write ``--out``.

    A causal prior (trained with ``clm``) is sampled with ``generate``, code by
    code; an encoder (trained with ``masked_codes``) by parallel refinement. Any
    other model is refused with the reason.
    """
    from unimodel.checkpoint import load
    from unimodel_vqvae.images import save_image_grid
    from unimodel_vqvae.prior import image_tokenizer_of, is_autoregressive, sample_codes, sample_codes_parallel

    if args.num < 1:
        raise InputError(f"--num must be at least 1, got {args.num}")
    prior = load(args.prior)
    vq = image_tokenizer_of(prior)
    parallel = not is_autoregressive(prior)
    if not parallel and args.iterations is not None:
        raise InputError(
            f"--iterations sets the refinement steps of a parallel (masked_codes) prior; {args.prior!r} is "
            "autoregressive (sampled code by code): leave --iterations out"
        )
    iterations = 8 if args.iterations is None else args.iterations
    options: dict[str, Any] = {
        "class_id": args.class_id,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "guidance_scale": args.guidance,
        "seed": args.seed,
    }
    started = time.perf_counter()
    if parallel:
        codes = sample_codes_parallel(prior, args.num, iterations=iterations, **options)
    else:
        codes = sample_codes(prior, args.num, **options)
    images = vq.decode(codes)
    seconds = time.perf_counter() - started
    path = save_image_grid(images, args.out, nrow=args.nrow or math.ceil(math.sqrt(args.num)))
    how = f"parallel decoding, {iterations} iterations" if parallel else "autoregressive sampling"
    if args.guidance != 1.0:
        how += f", guidance {args.guidance:g}"
    print(f"{args.num} samples ({how}, {seconds:.2f}s) -> {path}")
    return 0
