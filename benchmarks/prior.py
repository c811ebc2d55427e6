"""Priors over VQ-VAE codes on ``shapes``: likelihood, class-conditional samples judged by a classifier, speed.

Takes checkpoints written by ``unimodel train`` (``examples/vqvae_shapes.toml``,
``examples/prior_shapes.toml`` and, for parallel sampling, a prior trained with
``masked_codes``) and measures:

- the autoregressive prior's held-out negative log-likelihood in bits per code
  (class token excluded) against the unigram entropy of the training codes;
- a small classifier trained on real ``shapes`` images (its held-out accuracy),
  then the share of class-conditional samples it assigns to the class asked for;
- sampling time at batch 1 (one 8x8 grid): the AR prior with ``generate`` (KV
  cache) against the parallel prior's refinement, medians of ``--reps`` runs.

    python benchmarks/prior.py --vqvae runs/vqvae_shapes/checkpoint --ar runs/prior_shapes/checkpoint \
        [--parallel runs/maskgit_shapes/checkpoint] [--png docs/prior_samples.png]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from unimodel_vqvae.classifier import class_accuracy, train_classifier
from unimodel_vqvae.images import save_image_grid
from unimodel_vqvae.prior import image_tokenizer_of, sample_codes, sample_codes_parallel
from unimodel_vqvae.shapes import SHAPE_CLASSES, shapes

import unimodel as um


def unigram_bits(codes: torch.Tensor, num_codes: int) -> float:
    """Entropy (bits) of the code histogram of ``codes``."""
    p = torch.bincount(codes.reshape(-1), minlength=num_codes).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


@torch.no_grad()
def code_nll_bits(prior: Any, sequences: torch.Tensor, n_codes: int, batch: int = 250) -> float:
    """Mean negative log-likelihood (bits) of the last ``n_codes`` ids of each sequence under a causal prior."""
    total, count = 0.0, 0
    for i in range(0, len(sequences), batch):
        ids = sequences[i : i + batch]
        logits = prior(input_ids=ids, return_logits=True).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)[:, -n_codes:]
        total += float(-logp.sum()) / math.log(2)
        count += logp.numel()
    return total / count


def timed(fn: Any, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vqvae", type=Path, required=True)
    p.add_argument("--ar", type=Path, required=True, help="class-conditional causal prior")
    p.add_argument("--parallel", type=Path, default=None, help="class-conditional masked_codes prior")
    p.add_argument("--per-class", type=int, default=25, help="samples per class")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--classifier-steps", type=int, default=400)
    p.add_argument("--png", type=Path, default=None, help="write one row of AR samples per class here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    ar = um.load(args.ar)
    vq = image_tokenizer_of(ar)
    layout = vq.layout
    train_set, val_set = shapes("train", n_train=5000), shapes("validation", n_validation=500)

    # likelihood
    train_codes = vq.encode(train_set.pixel_values(), train_set.labels)[:, -layout.num_positions :]
    val_seq = vq.encode(val_set.pixel_values(), val_set.labels)
    unigram = unigram_bits(train_codes, layout.num_codes)
    nll = code_nll_bits(ar.eval(), val_seq, layout.num_positions)
    print(f"held-out NLL {nll:.3f} bits/code; unigram entropy {unigram:.3f} bits/code; ratio {nll / unigram:.3f}")

    # the judge
    judge = train_classifier(train_set, val_set, steps=args.classifier_steps)
    print(f"classifier: held-out accuracy {judge.accuracy:.1%} on {len(val_set)} real images")
    recon = vq.decode(val_seq)
    print(f"classifier on VQ-VAE reconstructions of them: {class_accuracy(judge.model, recon, val_set.labels):.1%}")

    labels = torch.arange(len(SHAPE_CLASSES)).repeat_interleave(args.per_class)
    priors = {"autoregressive": (ar, sample_codes, {"top_k": args.top_k})}
    if args.parallel is not None:
        priors["parallel"] = (um.load(args.parallel), sample_codes_parallel, {"iterations": args.iterations})
    for name, (prior, sampler, extra) in priors.items():
        codes = sampler(prior, len(labels), class_id=labels.tolist(), temperature=args.temperature, seed=0, **extra)
        images = vq.decode(codes)
        score = class_accuracy(judge.model, images, labels)

        def one_grid(prior: Any = prior, sampler: Any = sampler, extra: dict[str, Any] = extra) -> Any:
            return sampler(prior, 1, class_id=0, temperature=args.temperature, seed=1, **extra)

        one = timed(one_grid, args.reps)
        print(f"{name}: classifier recognises {score:.1%} of {len(labels)} samples; batch 1 sample {one * 1e3:.1f} ms")
        if args.png is not None:
            rows = torch.stack([images[labels == c][:8] for c in range(len(SHAPE_CLASSES))]).flatten(0, 1)
            out = args.png.with_name(f"{args.png.stem}_{name}{args.png.suffix}")
            save_image_grid(rows, out, nrow=8)
            print(f"  samples (one row per class: {', '.join(SHAPE_CLASSES)}) -> {out}")


if __name__ == "__main__":
    main()
