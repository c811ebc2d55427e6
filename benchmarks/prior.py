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

``--guidance 1 3`` scores the samples at each classifier-free guidance scale
(priors trained with ``class_dropout``) and times both samplers without guidance
and at the largest scale; each parallel step count that is timed is scored too.

    python benchmarks/prior.py --ar runs/prior_shapes/checkpoint \
        [--parallel runs/maskgit_shapes/checkpoint] [--png docs/prior_samples.png]

The VQ-VAE is the one the AR prior's checkpoint records (the parallel prior must
share it). The classifier is trained on real images only; the one that judges
samples sees them blurred and noised at random (standard augmentation), and the
figures of one trained without augmentation are printed beside it.
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


def alternated(fns: dict[str, Any], reps: int) -> dict[str, float]:
    """Median seconds of each callable, called in turn once per round (warm-up round first), so that a load
    from other jobs falls on all of them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ar", type=Path, required=True, help="class-conditional causal prior")
    p.add_argument("--parallel", type=Path, default=None, help="class-conditional masked_codes prior")
    p.add_argument("--per-class", type=int, default=25, help="samples per class")
    p.add_argument("--top-k", type=int, default=None, help="autoregressive sampling: the k likeliest codes")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=[1.0],
        help="classifier-free guidance scales to score both samplers at (1: none; others need class_dropout)",
    )
    p.add_argument("--iterations", type=int, default=8, help="parallel sampling: refinement steps")
    p.add_argument(
        "--time-iterations", type=int, nargs="*", default=[4], help="parallel sampling: more step counts to time"
    )
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--classifier-steps", type=int, default=1500, help="the judge's training steps")
    p.add_argument(
        "--classifier-images", type=int, default=20000, help="real shapes images the judge trains on (batch 64)"
    )
    p.add_argument("--png", type=Path, default=None, help="one row per class: 8 AR samples, then 8 parallel ones")
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

    # the judge: trained on real images only, with and without blur/noise augmentation
    recon = vq.decode(val_seq)
    mse = (recon - val_set.pixel_values()).pow(2).flatten(1).mean(1)
    psnr = float((-10 * mse.log10()).mean())
    print(f"VQ-VAE reconstructions of the {len(val_set)} held-out images: PSNR {psnr:.2f} dB")
    judges = {}
    judge_set = shapes("train", n_train=args.classifier_images)
    print(f"classifiers: {args.classifier_steps} steps on {len(judge_set):,} real training images")
    for augmented in (False, True):
        judge = train_classifier(judge_set, val_set, steps=args.classifier_steps, augmented=augmented)
        on_recon = class_accuracy(judge.model, recon, val_set.labels)
        what = "augmented (blur, noise)" if augmented else "plain"
        print(f"classifier, {what}: held-out accuracy {judge.accuracy:.1%} on real images, {on_recon:.1%} on their "
              "reconstructions")  # fmt: skip
        judges[augmented] = judge.model
    judge_model = judges[True]

    labels = torch.arange(len(SHAPE_CLASSES)).repeat_interleave(args.per_class)
    samplers: dict[str, Any] = {"autoregressive": lambda n, c, seed, **o: sample_codes(
        ar, n, class_id=c, top_k=args.top_k, seed=seed, temperature=args.temperature, **o)}  # fmt: skip
    if args.parallel is not None:
        masked = um.load(args.parallel)
        if image_tokenizer_of(masked).digest != vq.digest:
            raise SystemExit(f"{args.parallel} models the codes of another VQ-VAE than {args.ar}")
        samplers["parallel"] = lambda n, c, seed, **o: sample_codes_parallel(
            masked, n, class_id=c, iterations=args.iterations, seed=seed, temperature=args.temperature, **o
        )
        for t in args.time_iterations:  # the step counts that are timed are scored too
            samplers[f"parallel, {t} iterations"] = lambda n, c, seed, t=t, **o: sample_codes_parallel(
                masked, n, class_id=c, iterations=t, seed=seed, temperature=args.temperature, **o
            )
    grids = []
    for name, sampler in samplers.items():
        for scale in args.guidance:
            images = vq.decode(sampler(len(labels), labels.tolist(), 0, guidance_scale=scale))
            score = class_accuracy(judge_model, images, labels)
            print(
                f"{name}, guidance {scale:g}: the classifier recognises {score:.1%} of {len(labels)} samples as the "
                "class asked for"
            )
            hits = (judge_model.predict(images) == labels).double()
            print(
                "  by class: "
                + ", ".join(f"{c} {float(hits[labels == i].mean()):.0%}" for i, c in enumerate(SHAPE_CLASSES))
            )
        if name in ("autoregressive", "parallel"):  # the grid shows their last scale's samples: (classes, 8, ...)
            grids.append(torch.stack([images[labels == c][:8] for c in range(len(SHAPE_CLASSES))]))

    strongest = max(args.guidance)
    timed: dict[str, Any] = {}
    for scale in sorted({1.0, strongest}):
        tag = "" if scale == 1.0 else f", guidance {scale:g}"
        timed[f"autoregressive{tag}"] = lambda scale=scale: samplers["autoregressive"](1, 0, 1, guidance_scale=scale)
        if args.parallel is not None:
            for t in (args.iterations, *args.time_iterations):
                timed[f"parallel, {t} iterations{tag}"] = lambda t=t, scale=scale: sample_codes_parallel(
                    masked, 1, class_id=0, iterations=t, seed=1, temperature=args.temperature, guidance_scale=scale
                )
    medians = alternated(timed, args.reps)
    for name, seconds in medians.items():
        tag = name.split(", guidance")[1] if ", guidance" in name else ""
        ratio = medians["autoregressive" + (f", guidance{tag}" if tag else "")] / seconds
        print(f"{name}: one 8x8 grid at batch 1, median of {args.reps}: {seconds * 1e3:.1f} ms ({ratio:.1f}x)")
    if args.png is not None:
        rows = torch.cat(grids, dim=1).flatten(0, 1)
        save_image_grid(rows, args.png, nrow=8 * len(grids))
        shown = " then ".join(n for n in samplers if n in ("autoregressive", "parallel"))
        print(f"samples (one row per class: {', '.join(SHAPE_CLASSES)}; {shown}) -> {args.png}")


if __name__ == "__main__":
    main()
