"""VQ-VAE quantizers: unimodel's VectorQuantizer against vector-quantize-pytorch, on ``shapes`` 32x32.

Four VQ-VAEs (``vqvae-tiny``: the same convolutional encoder and decoder, the
same initial weights, codebook 512, EMA decay 0.99, commitment 0.25, k-means
initialisation, straight-through gradients) differ only in the quantizer:

- unimodel with dead-code restart (a code unused for ``dead_code_steps`` steps is re-seeded)
- unimodel without restart
- vector-quantize-pytorch with its dead-code restart (``threshold_ema_dead_code``)
- vector-quantize-pytorch without restart

They train in one process on the same batches, one step of each in turn, with
a small loop inside this script (a measurement, not the product trainer).
Then, on held-out images: PSNR (mean over images), codebook usage (share of
the 512 codes used by the held-out set) and code perplexity. Last, the
quantizer step alone (forward, backward, EMA update and restart, in training
mode) of the two trained restart quantizers on the same encoder outputs,
alternated call by call; median times.

    pip install -e .[bench]          # vector-quantize-pytorch
    python benchmarks/vq.py          # prints a markdown report
    python benchmarks/vq.py --steps 200 --threads 1
    python benchmarks/vq.py --docs   # also writes docs/vq_reconstructions.png and the section in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from unimodel_vqvae.images import save_reconstruction_grid
from unimodel_vqvae.objectives import psnr
from unimodel_vqvae.quantizers import Quantized
from unimodel_vqvae.shapes import shapes

import unimodel as um

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402

CODES = 512
COMMITMENT = 0.25
DECAY = 0.99
REFERENCE_THRESHOLD = 2  # the reference's restart: codes whose EMA count per step falls below this


class ReferenceQuantizer(nn.Module):
    """vector-quantize-pytorch's VectorQuantize behind unimodel's quantizer interface (x (N, D) -> Quantized)."""

    def __init__(self, dim: int, *, dead_code: bool) -> None:
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.num_codes = CODES
        self.vq = VectorQuantize(
            dim=dim,
            codebook_size=CODES,
            decay=DECAY,
            commitment_weight=COMMITMENT,
            kmeans_init=True,
            kmeans_iters=10,
            threshold_ema_dead_code=REFERENCE_THRESHOLD if dead_code else 0,
            rotation_trick=False,  # plain straight-through, as unimodel's
        )

    def forward(self, x: Tensor, *, update: bool = True) -> Quantized:
        quantize, codes, loss = self.vq(x.unsqueeze(0), freeze_codebook=not update)
        loss = loss.sum()
        return Quantized(latents=quantize[0], codes=codes[0], loss=loss, commitment=(loss / COMMITMENT).detach())

    def decode(self, codes: Tensor) -> Tensor:
        return self.vq.get_output_from_indices(codes)


def build_runs(seed: int) -> dict[str, Any]:
    """name -> model; every model starts from the same convolutional weights."""
    runs: dict[str, Any] = {}
    for name, ours, restart in (
        ("unimodel, restart", True, True),
        ("unimodel, no restart", True, False),
        ("vector-quantize-pytorch, restart", False, True),
        ("vector-quantize-pytorch, no restart", False, False),
    ):
        torch.manual_seed(seed)
        model = um.build_model("vqvae-tiny", codebook_size=CODES, **({} if restart else {"dead_code_steps": 0}))
        if not ours:
            model.encoder.quantizer = ReferenceQuantizer(model.config.latent_dim, dead_code=restart)
        runs[name] = model.train()
    return runs


def train(runs: dict[str, Any], data: Any, args: argparse.Namespace) -> dict[str, float]:
    """Train every run on the same batches, one step each in turn; returns the median step time per run (s)."""
    opts = {n: torch.optim.Adam(m.parameters(), lr=args.lr) for n, m in runs.items()}
    g = torch.Generator().manual_seed(args.seed)
    times: dict[str, list[float]] = {n: [] for n in runs}
    names = list(runs)
    for step in range(1, args.steps + 1):
        x = data.pixel_values(torch.randint(0, len(data), (args.batch,), generator=g))
        order = names[step % len(names) :] + names[: step % len(names)]  # who goes first rotates
        for name in order:
            model = runs[name]
            t0 = time.perf_counter()
            out = model.objective(model, {"pixel_values": x})
            opts[name].zero_grad(set_to_none=True)
            out.loss.backward()
            opts[name].step()
            times[name].append(time.perf_counter() - t0)
            if step % args.log_every == 0:
                print(f"step {step:5d}  {name:36s} loss {out.loss.item():.4f}  psnr {out.metrics['psnr']:.2f}",
                      file=sys.stderr, flush=True)  # fmt: skip
    return {n: statistics.median(t[len(t) // 10 :]) for n, t in times.items()}


@torch.no_grad()
def evaluate(model: Any, data: Any, batch: int = 250) -> dict[str, float]:
    """Held-out PSNR (mean over images), codebook usage and code perplexity."""
    model.eval()
    obj = model.objective
    obj.reset_metrics()
    values = []
    for i in range(0, len(data), batch):
        x = data.pixel_values(slice(i, i + batch))
        out = model(pixel_values=x)
        obj.count_codes(out["codes"], CODES)
        values.append(psnr(out["reconstruction"], x))
    stats = obj.code_metrics()
    obj.reset_metrics()
    return {"psnr": float(torch.cat(values).mean()), **stats}


def time_quantizers(runs: dict[str, Any], data: Any, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds of one quantizer step (forward, backward, EMA update, restart) on the same encoder outputs."""
    source = runs["unimodel, restart"]
    with torch.no_grad():
        x = data.pixel_values(slice(0, args.batch))
        z_e = source.encoder.image_encoder(x * 2 - 1)
        z = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]).contiguous()  # (B*h*w, D)
    grad = torch.randn_like(z)
    quantizers = {
        "unimodel": copy.deepcopy(runs["unimodel, restart"].encoder.quantizer).train(),
        "vector-quantize-pytorch": copy.deepcopy(runs["vector-quantize-pytorch, restart"].encoder.quantizer).train(),
    }
    times: dict[str, list[float]] = {n: [] for n in quantizers}
    names = list(quantizers)
    for rep in range(args.timing_reps + 5):
        for name in names if rep % 2 == 0 else names[::-1]:
            inputs = z.clone().requires_grad_(True)
            t0 = time.perf_counter()
            q = quantizers[name](inputs)
            ((q.latents * grad).sum() + q.loss).backward()
            elapsed = time.perf_counter() - t0
            if rep >= 5:  # warm-up
                times[name].append(elapsed)
    return {n: statistics.median(t) for n, t in times.items()}


def report(
    args: argparse.Namespace,
    results: dict[str, dict[str, float]],
    steps: dict[str, float],
    quantizer: dict[str, float],
    load: str,
) -> str:
    ours, ref = quantizer["unimodel"], quantizer["vector-quantize-pytorch"]
    vectors = args.batch * 64
    setup = [
        f"`python benchmarks/vq.py --steps {args.steps} --threads {args.threads}`:",
        f"`vqvae-tiny` (32x32 RGB, 8x8 codes), codebook {CODES}, EMA decay {DECAY}, commitment {COMMITMENT},",
        "k-means initialisation, straight-through gradients;",
        f"Adam {args.lr}, batch {args.batch} ({vectors} vectors per step), {args.steps} steps",
        f"on {args.n_train} `shapes` training images; held out: {args.n_validation} validation images.",
        f"unimodel restarts codes unused for {args.dead_code_steps} steps; vector-quantize-pytorch",
        f"those whose EMA count per step falls below {REFERENCE_THRESHOLD} (`threshold_ema_dead_code`).",
        f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s);",
        f"load average at the start: {load}.",
    ]
    lines = [
        " ".join(setup),
        "",
        "| quantizer | held-out PSNR (dB) | codebook usage | code perplexity | training step (ms, median) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['psnr']:.2f} | {100 * r['codebook_usage']:.1f}% ({round(r['codebook_usage'] * CODES)}"
            f"/{CODES}) | {r['code_perplexity']:.1f} | {1000 * steps[name]:.0f} |"
        )
    lines += [
        "",
        f"Quantizer step alone (forward, backward, EMA update, restart; {vectors} vectors of width 64, "
        f"codebook {CODES}), alternated call by call, median of {args.timing_reps}: unimodel {1000 * ours:.2f} ms, "
        f"vector-quantize-pytorch {1000 * ref:.2f} ms ({ref / ours:.2f}x).",
    ]
    return "\n".join(lines)


def write_docs(text: str) -> None:
    section = f"## VQ-VAE quantizer (against vector-quantize-pytorch)\n\n{text}\n\n"
    section += "![held-out images (top) and their reconstructions (bottom)](vq_reconstructions.png)"
    write_section("vq-benchmark", section)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-validation", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timing-reps", type=int, default=50)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--png", type=Path, default=None, help="write the reconstruction grid to this file")
    p.add_argument("--docs", action="store_true", help="write the PNG and the section of docs/benchmarks.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load = " ".join(f"{v:.1f}" for v in __import__("os").getloadavg())
    train_set = shapes("train", n_train=args.n_train, seed=args.seed)
    val_set = shapes("validation", n_validation=args.n_validation, seed=args.seed)
    runs = build_runs(args.seed)
    args.dead_code_steps = runs["unimodel, restart"].config.dead_code_steps
    steps = train(runs, train_set, args)
    results = {name: evaluate(model, val_set) for name, model in runs.items()}
    for model in runs.values():
        model.train()
    quantizer = time_quantizers(runs, val_set, args)
    text = report(args, results, steps, quantizer, load)
    print(text)
    png = ROOT / "docs" / "vq_reconstructions.png" if args.docs else args.png
    if png is not None:
        model = runs["unimodel, restart"].eval()
        x = val_set.pixel_values(slice(0, 16))
        with torch.no_grad():
            save_reconstruction_grid(x, model(pixel_values=x)["reconstruction"].clamp(0, 1), png, nrow=16)
    if args.docs:
        write_docs(text)


if __name__ == "__main__":
    main()
