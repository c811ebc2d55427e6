"""One script that checks unimodel on a GPU: devices, precisions, training, compile, sharding.

    python benchmarks/gpu_check.py            # on a machine with one CUDA GPU: under 10 minutes
    python benchmarks/gpu_check.py --quick    # smaller everything (what the test suite runs on the CPU)

It prints one table row per check: ``ok``, ``FAIL`` (with what differed) or
``skipped (...)`` with the reason. Without CUDA the rows that need it say
``skipped (no CUDA)`` and the others run on the CPU. Exit status 1 when a row fails.

Rows:

- generation on CUDA in fp32 and bf16, batch 1 and 8: greedy tokens equal to the
  CPU run's (fp32; bf16 is compared by the share of equal tokens), tokens/s and
  peak memory, against transformers on the same weights;
- the fused token loss under bf16 and fp16 autocast against fp32: the loss and the
  hidden-state gradient's relative error, next to the plain ``linear`` + ``cross_entropy``
  path's under the same autocast (the fused one must be within 2x);
- ``unimodel train`` with ``device = "auto"`` in fp32, bf16 and fp16: finite losses, and a
  run stopped at the halfway checkpoint and resumed reproduces the second half;
- ``train.compile = true``;
- FSDP2 in one process (``train.fsdp = true``), losses against the unsharded run.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import unimodel as um  # noqa: E402
from unimodel.nn.losses import linear_cross_entropy  # noqa: E402
from unimodel.training import train  # noqa: E402


@dataclass
class Row:
    check: str
    status: str
    detail: str = ""


CUDA = torch.cuda.is_available()
NO_CUDA = "skipped (no CUDA)"


def _gpt2_folder(tmp: Path, quick: bool) -> Path:
    """A randomly initialised GPT-2 saved as a Hugging Face folder (both libraries load it)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    size = dict(n_layer=2, n_embd=64, n_head=4) if quick else dict(n_layer=6, n_embd=384, n_head=6)
    vocab = 512 if quick else 8192
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=vocab, n_positions=256, bos_token_id=vocab - 1, eos_token_id=vocab - 1, **size)
    )
    with torch.no_grad():  # peaked next-token distributions: greedy ties do not decide the comparison
        model.lm_head.weight.mul_(8.0)
    folder = tmp / "gpt2"
    model.save_pretrained(folder)
    return folder


def _greedy(model: Any, ids: torch.Tensor, new: int, hf: bool) -> tuple[torch.Tensor, float]:
    """Greedy tokens and new tokens per second."""
    kwargs: dict[str, Any] = dict(max_new_tokens=new, do_sample=False)
    if hf:
        kwargs.update(min_new_tokens=new, pad_token_id=0, attention_mask=torch.ones_like(ids))
    else:
        kwargs.update(eos_token_id=None)
    if ids.is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, **kwargs)
    if ids.is_cuda:
        torch.cuda.synchronize()
    return out[:, ids.shape[1] :].cpu(), ids.shape[0] * new / (time.perf_counter() - started)


def generation_rows(folder: Path, quick: bool) -> list[Row]:
    from transformers import GPT2LMHeadModel

    rows: list[Row] = []
    new = 4 if quick else 64
    cpu_model = um.from_hf(folder)
    hf_cpu = GPT2LMHeadModel.from_pretrained(folder).eval()
    for batch in (1, 8):
        ids = torch.randint(0, cpu_model.vocab_size, (batch, 16), generator=torch.Generator().manual_seed(batch))
        ours, tok_s = _greedy(cpu_model, ids, new, hf=False)
        theirs, hf_tok_s = _greedy(hf_cpu, ids, new, hf=True)
        same = torch.equal(ours, theirs)
        rows.append(
            Row(
                f"generate cpu fp32 batch {batch}",
                "ok" if same else "FAIL",
                f"tokens {'=' if same else '!='} transformers; {tok_s:,.0f} vs {hf_tok_s:,.0f} tok/s",
            )
        )
        for dtype in (torch.float32, torch.bfloat16):
            name = f"generate cuda {str(dtype)[6:]} batch {batch}"
            if not CUDA:
                rows.append(Row(name, NO_CUDA))
                continue
            rows.append(_cuda_generation(folder, ids, ours, new, dtype, name))
    return rows


def _cuda_generation(folder: Path, ids: torch.Tensor, cpu_tokens: torch.Tensor, new: int, dtype: Any, name: str) -> Row:
    from transformers import GPT2LMHeadModel

    torch.cuda.reset_peak_memory_stats()
    model = um.from_hf(folder, device="cuda", dtype=dtype)
    ours, tok_s = _greedy(model, ids.cuda(), new, hf=False)
    ours, tok_s = _greedy(model, ids.cuda(), new, hf=False)  # the second call: warmed up
    peak = torch.cuda.max_memory_allocated() / 2**20
    del model
    torch.cuda.reset_peak_memory_stats()
    hf = GPT2LMHeadModel.from_pretrained(folder, dtype=dtype).cuda().eval()
    _greedy(hf, ids.cuda(), new, hf=True)
    theirs, hf_tok_s = _greedy(hf, ids.cuda(), new, hf=True)
    hf_peak = torch.cuda.max_memory_allocated() / 2**20
    agree = float((ours == cpu_tokens).float().mean())
    ok = agree == 1.0 if dtype == torch.float32 else agree >= 0.9
    return Row(
        name,
        "ok" if ok else "FAIL",
        f"{agree:.0%} of tokens = CPU fp32, {'=' if torch.equal(ours, theirs) else '!='} transformers; "
        f"{tok_s:,.0f} vs {hf_tok_s:,.0f} tok/s; peak {peak:,.0f} vs {hf_peak:,.0f} MiB",
    )


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).norm() / ref.double().norm())


def loss_rows(quick: bool) -> list[Row]:
    device = "cuda" if CUDA else "cpu"
    n, vocab, width = (1024, 512, 16) if quick else (16384, 50257, 768)
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(n, width, generator=g).to(device)
    w0 = (torch.randn(vocab, width, generator=g) * width**-0.5).to(device)
    y = torch.randint(0, vocab, (n,), generator=g).to(device)

    def plain(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(F.linear(h, w), y)

    def fused(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(h, w, None, y)[0]

    def run(fn: Callable[..., torch.Tensor], dtype: Any) -> tuple[float, torch.Tensor]:
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        scale = 2.0**16 if dtype == torch.float16 else 1.0
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = fn(h, w)
        (loss.float() * scale).backward()
        assert h.grad is not None
        return float(loss.detach()), h.grad / scale

    ref_loss, ref_grad = run(plain, None)
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        name = f"loss {device} {str(dtype)[6:]} vs fp32"
        loss, grad = run(fused, dtype)
        _, plain_grad = run(plain, dtype)
        err, plain_err = _rel(grad, ref_grad), _rel(plain_grad, ref_grad)
        ok = math.isfinite(loss) and err <= 2 * plain_err
        rows.append(
            Row(
                name,
                "ok" if ok else "FAIL",
                f"loss {loss:.5f} vs {ref_loss:.5f}; hidden grad error {err:.1e} (plain path {plain_err:.1e})",
            )
        )
    return rows


def _run_config(out: Path, steps: int, quick: bool, **train: Any) -> dict[str, Any]:
    width = dict(n_layers=2, d_model=32, n_heads=2) if quick else dict(n_layers=4, d_model=256, n_heads=4)
    return {
        "model": {"name": "gpt", "max_positions": 64, **width},
        "data": {"corpus": "pydoc", "max_documents": 3 if quick else 200, "vocab_size": 320, "block_size": 32},
        "train": {
            "output_dir": str(out),
            "max_steps": steps,
            "batch_size": 4 if quick else 16,
            "warmup_steps": 2,
            "eval_every": 0,
            "max_eval_batches": 1 if quick else 8,
            "checkpoint_every": steps // 2,
            "log_every": 1,
            "progress": False,
            "sample_prompt": "",
            "exact_match_examples": 0,
            "device": "auto",
            **train,
        },
    }


def training_rows(tmp: Path, quick: bool) -> list[Row]:
    steps = 6 if quick else 100
    rows = []
    for precision in ("no", "bf16", "fp16"):
        name = f"train {steps} steps, device auto, {'fp32' if precision == 'no' else precision}"
        if precision == "fp16" and not CUDA:
            rows.append(Row(name, NO_CUDA))
            continue
        if precision == "bf16" and quick:
            rows.append(Row(name, "skipped", "--quick"))
            continue
        whole = train(_run_config(tmp / f"whole-{precision}", steps, quick, mixed_precision=precision))
        stopped = _run_config(tmp / f"stopped-{precision}", steps, quick, mixed_precision=precision)
        _train_until(stopped, steps // 2)
        resumed = train(stopped, resume=True)
        second = range(steps // 2 + 1, steps + 1)
        finite = all(math.isfinite(v) for v in whole.losses.values())
        same = all(resumed.losses[s] == whole.losses[s] for s in second)
        device = whole.model.device.type
        rows.append(
            Row(
                name,
                "ok" if finite and same else "FAIL",
                f"on {device}; last loss {whole.losses[steps]:.4f}; resume at {steps // 2} "
                f"{'reproduces' if same else 'DIFFERS in'} steps {second.start}-{second.stop - 1}",
            )
        )
    return rows


class _Stopped(Exception):
    """Ends a run right after a checkpoint, as a killed process would."""


def _train_until(config: dict[str, Any], step: int) -> None:
    """Run ``config`` and stop it right after the checkpoint at ``step`` is written."""
    from unittest import mock

    from unimodel.training import Trainer

    save = Trainer.save_checkpoint

    def save_then_stop(self: Trainer) -> None:
        save(self)
        if self.step == step:
            raise _Stopped

    with mock.patch.object(Trainer, "save_checkpoint", save_then_stop):
        try:
            train(config)
        except _Stopped:
            return
    raise RuntimeError(f"the run never wrote a checkpoint at step {step}")


def compile_row(tmp: Path, quick: bool) -> Row:
    name = "train.compile = true"
    if quick:
        return Row(name, "skipped", "--quick")
    result = train(_run_config(tmp / "compiled", 20, quick, compile=True))
    finite = all(math.isfinite(v) for v in result.losses.values())
    return Row(name, "ok" if finite else "FAIL", f"20 steps on {result.model.device.type}, finite losses: {finite}")


def fsdp_row(tmp: Path, quick: bool) -> Row:
    """``train.fsdp = true`` in one process: every block sharded with FSDP2 over a one-process group."""
    name = "FSDP2 single-process smoke run"
    steps = 4 if quick else 20
    import torch.distributed as dist

    try:
        sharded = train(_run_config(tmp / "fsdp", steps, quick, fsdp=True))
    finally:  # the one-process group the run started (the runs below are not sharded)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() == 1:
            dist.destroy_process_group()
    plain = train(_run_config(tmp / "plain", steps, quick))
    worst = max(abs(sharded.losses[s] - plain.losses[s]) for s in plain.losses)
    ok = worst < 1e-5
    return Row(
        name,
        "ok" if ok else "FAIL",
        f"{steps} steps on {sharded.model.device.type}; largest loss difference to the unsharded run {worst:.1e}",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few steps (a CPU smoke run)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows += generation_rows(_gpt2_folder(tmp, args.quick), args.quick)
        rows += loss_rows(args.quick)
        rows += training_rows(tmp, args.quick)
        rows.append(compile_row(tmp, args.quick))
        rows.append(fsdp_row(tmp, args.quick))
    where = torch.cuda.get_device_name() if CUDA else "CPU only"
    print(f"unimodel gpu_check on {where}, torch {torch.__version__}{' (--quick)' if args.quick else ''}")
    width = max(len(r.check) for r in rows)
    status_width = max(len(r.status) for r in rows)
    for r in rows:
        print(f"{r.check:<{width}}  {r.status:<{status_width}}  {r.detail}".rstrip())
    print(f"({time.perf_counter() - started:.0f}s)")
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
