"""Non-autoregressive vs autoregressive decoding: speed, and quality on numbers with count = 4.

Speed (``--part speed``): one backbone size for both sides, random weights, fp32,
2 threads, one process. The autoregressive side is a ``seq2seq`` model decoding
greedily on its KV cache, forced to 64 new tokens (``min_new_tokens``); the
non-autoregressive side is the same architecture built for ``cmlm``, decoding with
``mask_predict`` at a forced target length of 64 with T = 1, 4, 10 passes (early
stop off: every pass runs) and, at T = 4 and 10, with three length candidates
(the length head made to propose 63, 64 and 65). Every variant runs once per
round, the order rotating from round to round, so a slow spell of a shared host
falls on all of them alike; each figure is the median over the rounds. Batch 1, 8
and 64.

Quality (``--part quality``): the ``numbers`` corpus with ``count = 4`` (about 54
target tokens). An autoregressive teacher (``seq2seq``, greedy) is trained, its
outputs for every training source are distilled into a pair file, and two
``cmlm`` models of the same size are trained, one on the distilled pairs, one on
the raw targets. Exact match on the validation pairs: AR greedy; NAR
mask-predict at T = 1, 4, 10 with length beam 3. ``--student-steps`` trains the
NAR models longer than the teacher. With ``--work DIR --resume`` an interrupted
comparison continues where it stopped (every run checkpoints each 1,000 steps; the
distillation continues its pair file). ``--quick`` shrinks everything to check
that the pipeline runs (its figures mean nothing).

    python benchmarks/nat.py --part speed
    python benchmarks/nat.py --part speed --device cuda   # the same comparison on a GPU
    python benchmarks/nat.py --part quality --quick
    python benchmarks/nat.py --part quality --quality-size tiny --steps 2000 --student-steps 8000 --work runs/natq
    python benchmarks/nat.py --out docs/benchmarks.md      # both parts, each written as its own section
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402

THREADS = int(os.environ.get("NAT_BENCH_THREADS", "2"))
TARGET = 64
VOCAB = 1000

# 4 + 4 layers, d 256, 4 heads, ffn 1024: the size the speed targets are stated for
BART_SIZE = {
    "d_model": 256,
    "n_layers": 4,
    "n_heads": 4,
    "d_ff": 1024,
    "max_positions": 256,
    "dropout": 0.0,
}
T5_SIZE = {"d_model": 256, "head_dim": 64, "d_ff": 1024, "n_layers": 4, "n_heads": 4, "dropout": 0.0}
#: ``--speed-size tiny``: bart-tiny's dimensions (2 + 2 layers, d 128, ffn 512), the quality comparison's models
TINY_SIZE = {"d_model": 128, "n_layers": 2, "n_heads": 4, "d_ff": 512, "max_positions": 256, "dropout": 0.0}


# ================================================================= speed
def speed_models(family: str, layers: int = 4, size_name: str = "d256") -> tuple[Any, Any, Any]:
    """(AR model, NAR model, tokenizer) of one size (``layers`` blocks on each side at d 256, or bart-tiny's
    dimensions with ``size_name="tiny"``), random weights; the NAR model shares the AR weights."""
    import torch

    import unimodel as um
    from unimodel.testing import synthetic_tokenizer

    tok, _ = synthetic_tokenizer(VOCAB, ["mask"])
    size = TINY_SIZE if size_name == "tiny" else {**(BART_SIZE if family == "bart" else T5_SIZE), "n_layers": layers}
    spec = {"name": family, "vocab_size": VOCAB, **size}
    ids = {"pad_token_id": tok.special_id("pad"), "eos_token_id": tok.special_id("eos")}
    if family == "bart":
        ids.update(bos_token_id=tok.special_id("bos"), decoder_start_token_id=tok.special_id("bos"))
    torch.manual_seed(0)
    ar = um.build_model({**spec, **ids}, objective="seq2seq", tokenizer=tok).eval()
    nar = um.build_model({**spec, **ids}, objective="cmlm", tokenizer=tok).eval()
    nar.load_state_dict({**nar.state_dict(), **ar.state_dict()})
    return ar, nar, tok


def prefer_lengths(model: Any, lengths: Sequence[int]) -> None:
    """Make the length head propose ``lengths``, best first, whatever the input."""
    import torch

    head = model.heads["length"].proj
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
        for rank, length in enumerate(lengths):
            head.bias[length] = 10.0 - rank


def speed_variants(ar: Any, nar: Any, source: Any) -> dict[str, Callable[[], Any]]:
    variants: dict[str, Callable[[], Any]] = {
        "AR greedy": lambda: ar.generate(source, min_new_tokens=TARGET, max_new_tokens=TARGET),
    }
    for t in (1, 4, 10):
        variants[f"NAR T={t}"] = lambda t=t: nar.generate(
            source, strategy="mask_predict", iterations=t, length=TARGET, early_stop=False
        )
    for t in (4, 10):
        variants[f"NAR T={t}, 3 lengths"] = lambda t=t: nar.generate(
            source, strategy="mask_predict", iterations=t, length_beam=3, early_stop=False
        )
    return variants


def measure_speed(
    family: str,
    batches: Sequence[int],
    rounds: int,
    source_length: int,
    device: str = "cpu",
    layers: int = 4,
    size_name: str = "d256",
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per batch size, the median ms of each variant; and at batch 1, :func:`pass_floor`'s figures."""
    import torch

    torch.set_num_threads(THREADS)
    ar, nar, _ = speed_models(family, layers, size_name)
    prefer_lengths(nar, [TARGET, TARGET - 1, TARGET + 1])
    ar, nar = ar.to(device), nar.to(device)
    # a CUDA call returns before the GPU finishes: wait for it, so each timing covers the whole call
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    rows = []
    for batch in batches:
        g = torch.Generator().manual_seed(batch)
        source = torch.randint(0, VOCAB - 16, (batch, source_length), generator=g).to(device)
        variants = speed_variants(ar, nar, source)
        check_shapes(variants, batch)
        rows.append({"batch": batch, "ms": interleaved_ms(variants, rounds, sync)})
        print(json.dumps(rows[-1]), flush=True)
    g = torch.Generator().manual_seed(1)
    floor = pass_floor(nar, torch.randint(0, VOCAB - 16, (1, source_length), generator=g).to(device), rounds, sync)
    print(json.dumps(floor), flush=True)
    return rows, floor


def interleaved_ms(variants: Mapping[str, Callable[[], Any]], rounds: int, sync: Callable[[], Any]) -> dict[str, float]:
    """Median ms of each callable over ``rounds`` rounds, each round calling every one once, the order rotated
    from round to round, so that a load from other jobs falls on all of them alike."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync()
            t0 = time.perf_counter()
            variants[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {n: statistics.median(v) * 1000 for n, v in times.items()}


def pass_floor(nar: Any, source: Any, rounds: int, sync: Callable[[], Any]) -> dict[str, float]:
    """What one mask-predict pass at batch 1 costs, and the part of it no implementation avoids: ms of the
    encoder, of one decoder pass over a 64-token target (the head included, the memory's keys and values
    cached as mask-predict does), and of that pass's matrix products alone, replayed one after another
    with the same weights and shapes (so with every weight hot in the cache)."""
    import torch
    import torch.nn.functional as F

    from unimodel.nn import MemoryCache

    decoder, head = nar.decoder, nar.heads["lm"]
    products: list[tuple[Any, Any, Any]] = []  # (input, weight, bias) of each product of one pass

    def record(module: Any, args: tuple[Any, ...], _out: Any) -> None:
        products.append((args[0].clone(), module.weight, module.bias))

    with torch.inference_mode():
        memory = nar.encoder(source).last_hidden_state
        tokens = torch.randint(0, VOCAB - 16, (1, TARGET), device=source.device)
        cache = MemoryCache(device=source.device)

        def one_pass() -> Any:
            return head(decoder(tokens, memory=memory, cache=cache).last_hidden_state).max(dim=-1)

        one_pass()  # fills the cache: later passes project the memory no more
        hooks = [
            m.register_forward_hook(record)
            for m in [*decoder.modules(), *head.modules()]
            if isinstance(m, torch.nn.Linear)
        ]
        one_pass()
        for h in hooks:
            h.remove()
        # the head's output projection is its own weight (tied to the embeddings or not), not a Linear module
        hidden = decoder(tokens, memory=memory, cache=cache).last_hidden_state
        products.append((hidden.clone(), head.weight, head.bias))

        def replay() -> None:
            for x, w, b in products:
                F.linear(x, w, b)

        parts = {"encoder": lambda: nar.encoder(source), "pass": one_pass, "products": replay}
        replay()  # warm-up: the other two have run above
        return {**interleaved_ms(parts, max(rounds, 5) * 4, sync), "n_products": float(len(products))}


def check_shapes(variants: Mapping[str, Callable[[], Any]], batch: int) -> None:
    """Warm-up, and proof that each side produces 64 tokens per input."""
    for name, run in variants.items():
        out = run()
        assert out.shape[0] == batch, (name, out.shape)
        produced = out.shape[1] - 1  # after the decoder start token
        assert produced in (TARGET, TARGET + 1, TARGET + 2), (name, out.shape)


def speed_size_text(layers: int, size_name: str) -> str:
    if size_name == "tiny":
        return "bart-tiny's size (2 + 2 layers, d 128, ffn 512)"
    return f"{layers} + {layers} layers, d 256"


def speed_table(
    family: str, rows: list[dict[str, Any]], rounds: int, layers: int = 4, size_name: str = "d256"
) -> list[str]:
    names = list(rows[0]["ms"])
    nar = [n for n in names if n != "AR greedy"]
    lines = [
        f"### Speed: {family}, {speed_size_text(layers, size_name)}, vocab {VOCAB}, random weights, "
        f"{TARGET}-token targets",
        "",
        f"Median of {rounds} rounds, ms per `generate` call (speed-up over AR greedy in brackets).",
        "",
        "| batch | AR greedy (cached) | " + " | ".join(nar) + " |",
        "|---:|---:|" + "---:|" * len(nar),
    ]
    for r in rows:
        base = r["ms"]["AR greedy"]
        cells = [f"{r['ms'][n]:,.1f} ({base / r['ms'][n]:.1f}x)" for n in nar]
        lines.append(f"| {r['batch']} | {base:,.1f} | " + " | ".join(cells) + " |")
    return lines


def floor_lines(rows: list[dict[str, Any]], floor: Mapping[str, float]) -> list[str]:
    """The batch-1 pass costs and the speed-ups they bound: a pass can cost no less than its products."""
    ar = next((r["ms"]["AR greedy"] for r in rows if r["batch"] == 1), None)
    lines = [
        "",
        f"One pass at batch 1: the encoder {floor['encoder']:.1f} ms; one decoder pass over a {TARGET}-token "
        f"target, head included, {floor['pass']:.1f} ms; its {int(floor['n_products'])} matrix products alone, "
        f"replayed back to back with hot weights, {floor['products']:.1f} ms.",
    ]
    if ar is not None:
        bound = {t: ar / (floor["encoder"] + t * floor["products"]) for t in (4, 10)}
        lines[-1] += (
            f" So T passes that each cost no more than these products would be at most {bound[4]:.1f}x faster "
            f"than AR greedy at T=4 and {bound[10]:.1f}x at T=10 here (a pass after the first runs the last layer "
            "at the re-masked positions only, so it may cost somewhat less)."
        )
    return lines


# ================================================================= quality
#: the quality comparison's backbone sizes: the speed part's, or the README examples' bart-tiny (2 + 2, d 128)
QUALITY_SIZES = {"speed": "4 + 4 layers, d 256", "tiny": "bart-tiny: 2 + 2 layers, d 128"}


def quality_runs(
    out: Path,
    quick: bool,
    family: str,
    steps: int,
    size_name: str = "speed",
    *,
    student_steps: int | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train the AR teacher, distill, train NAR on distilled and raw targets; exact match of each.

    ``student_steps``: the NAR models' steps (default ``steps``, the teacher's). ``resume``: continue each run
    from its last checkpoint in ``out`` (a finished run is kept as it is) and the distillation from its last
    written pair; without it, ``out``'s previous runs and pair file are replaced.
    """
    import torch

    from unimodel.checkpoint import load
    from unimodel.generation.distill import distill, load_pairs
    from unimodel.training import train

    torch.set_num_threads(THREADS)
    n_train, n_val = (256, 32) if quick else (20000, 500)
    steps = 20 if quick else steps
    student_steps = steps if quick or student_steps is None else student_steps
    corpus = {"corpus": "numbers", "corpus_options": {"n_train": n_train, "n_validation": n_val, "count": 4}}
    data = {**corpus, "vocab_size": VOCAB, "split_digits": True}
    if size_name == "tiny":
        if family != "bart":
            raise SystemExit("--quality-size tiny is bart-tiny: use it with --family bart")
        size: dict[str, Any] = {"name": "bart-tiny", "dropout": 0.0}
    else:
        size = {"name": family, **(BART_SIZE if family == "bart" else T5_SIZE)}
    schedule = {
        "max_steps": steps,
        "checkpoint_every": 0 if quick else 1000,  # a long run can be resumed (--resume)
        "batch_size": 16 if quick else 64,
        "learning_rate": 1e-3,
        "warmup_steps": 5 if quick else 300,
        "weight_decay": 0.01,
        "eval_every": 0,
        "log_every": 10 if quick else 500,
        "progress": False,
        "exact_match_examples": 0,  # scored below, with every decoding setting
        "overwrite": True,
    }
    validation = out / "validation.jsonl"
    write_pairs(validation, load_pairs(corpus, split="validation"))
    results: dict[str, Any] = {
        "n_train": n_train,
        "n_validation": n_val,
        "steps": steps,
        "student_steps": student_steps,
        "size": f"{family}, {QUALITY_SIZES[size_name]}" if size_name == "speed" else QUALITY_SIZES[size_name],
    }
    clock = WorkClock(out / "minutes.json", resume)
    pair_file = out / "distilled.jsonl"
    if not resume:
        pair_file.unlink(missing_ok=True)  # else distill() would continue a former teacher's file

    with clock.part("ar") as lap:
        lap["worked"] = train_run(train, size, "seq2seq", data, schedule, out / "ar", resume=resume)
    print(json.dumps({"trained": "ar", **results}), flush=True)
    teacher = load(out / "ar" / "checkpoint")
    with clock.part("distill") as lap:
        distilled = distill(teacher, corpus, pair_file, batch_size=64)
        lap["worked"] = distilled.written > 0
    results["distilled_pairs"] = distilled.total
    nar_data = {"paths": [str(pair_file)], "validation_paths": [str(validation)]}
    student = {**schedule, "max_steps": student_steps}
    for name, nar in (("nar_kd", {**data, **nar_data, "corpus": None, "corpus_options": {}}), ("nar_raw", data)):
        with clock.part(name) as lap:
            lap["worked"] = train_run(train, size, "cmlm", nar, student, out / name, resume=resume)
    results.update({f"{name}_minutes": minutes for name, minutes in clock.minutes.items()})

    pairs = load_pairs(validation)
    scores = {"AR greedy": exact_match(teacher, pairs, {})}
    for name in ("nar_kd", "nar_raw"):
        model = load(out / name / "checkpoint")
        for t in (1, 4, 10):
            options = {"strategy": "mask_predict", "iterations": t, "length_beam": 3}
            scores[f"{name} T={t}"] = exact_match(model, pairs, options)
    results["exact_match"] = scores
    print(json.dumps(results), flush=True)
    return results


class WorkClock:
    """Wall minutes of each part of the quality runs, kept in a JSON file so that a resumed run adds to them
    (a part that finds its work done adds nothing)."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.minutes: dict[str, float] = {}
        if resume and path.is_file():
            self.minutes = {str(k): float(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[dict[str, bool]]:
        lap = {"worked": True}
        started = time.perf_counter()
        try:
            yield lap
        finally:  # an interrupted part keeps the minutes it ran, for its resumption to add to
            if lap["worked"]:
                self.minutes[name] = self.minutes.get(name, 0.0) + (time.perf_counter() - started) / 60
                self.path.write_text(json.dumps(self.minutes, indent=1) + "\n", encoding="utf-8")


def train_run(
    train: Callable[..., Any], model: dict, objective: str, data: dict, schedule: dict, out: Path, resume: bool = False
) -> bool:
    """Train one model into ``out``; with ``resume``, continue the run there if it has a checkpoint. False
    when that run had already finished (nothing trained)."""
    from unimodel.training.runfolder import find_resume_checkpoint

    config = {
        "model": model,
        "objective": {"name": objective},
        "data": data,
        "train": {**schedule, "output_dir": str(out)},
    }
    last = find_resume_checkpoint(out, lambda *_: None) if resume and out.is_dir() else None
    if last is not None and last.step >= schedule["max_steps"]:
        print(f"{out}: finished at step {last.step}, kept", flush=True)
        return False
    train(config, resume=last is not None)
    return True


def write_pairs(path: Path, pairs: Sequence[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in pairs), encoding="utf-8")


def exact_match(model: Any, pairs: Sequence[tuple[str, str]], options: Mapping[str, Any], batch: int = 64) -> float:
    """Share of ``pairs`` whose decoded output equals the target as the model's tokenizer writes it back."""
    from unimodel.generation.distill import decode_sources
    from unimodel.training import normalize_whitespace

    tok = model.tokenizer
    hits = 0
    for start in range(0, len(pairs), batch):
        part = pairs[start : start + batch]
        cap = max(len(ids) for ids in tok.encode_batch([t for _, t in part])) + 3
        if model.decoder.max_positions is not None:
            cap = min(cap, model.decoder.max_positions - 1)
        outputs = decode_sources(model, part, max_new_tokens=cap, **options)
        references = [tok.decode(tok.encode(t)) for _, t in part]
        hits += sum(normalize_whitespace(o) == normalize_whitespace(r) for o, r in zip(outputs, references))
    return hits / len(pairs)


def quality_table(results: dict[str, Any], quick: bool) -> list[str]:
    em = results["exact_match"]
    lines = [
        "### Quality: numbers, count = 4",
        "",
        f"{results.get('size', 'bart, 4 + 4 layers, d 256')}; {results['n_train']:,} training pairs, "
        f"{results['n_validation']} validation pairs; {steps_text(results)}; wall time: AR teacher "
        f"{results['ar_minutes']:.1f} min, distillation {results['distill_minutes']:.1f} min, NAR students "
        f"{results['nar_kd_minutes']:.1f} and {results['nar_raw_minutes']:.1f} min."
        + (" Quick run: the figures mean nothing." if quick else ""),
        "",
        "| model | T=1 | T=4 | T=10 |",
        "|---|---:|---:|---:|",
        f"| AR `seq2seq`, greedy | {em['AR greedy']:.1%} | | |",
    ]
    for name, label in (("nar_kd", "NAR `cmlm`, distilled"), ("nar_raw", "NAR `cmlm`, raw targets")):
        lines.append(
            f"| {label}, length beam 3 | " + " | ".join(f"{em[f'{name} T={t}']:.1%}" for t in (1, 4, 10)) + " |"
        )
    return lines


def steps_text(results: Mapping[str, Any]) -> str:
    steps, student = results["steps"], results.get("student_steps", results["steps"])
    if student == steps:
        return f"{steps:,} steps per model"
    return f"{steps:,} steps for the AR teacher, {student:,} for each NAR student"


# ================================================================= main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["speed", "quality", "both"], default="both")
    ap.add_argument("--family", choices=["bart", "t5"], default="bart")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 8, 64])
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds per batch size (speed)")
    ap.add_argument("--source-length", type=int, default=32, help="source tokens per input (speed)")
    ap.add_argument("--device", default="cpu", help="where the speed part runs, e.g. cuda (default cpu)")
    ap.add_argument(
        "--layers",
        type=int,
        default=4,
        help="blocks on each side of the speed part's model (default 4); another size writes its own section",
    )
    ap.add_argument(
        "--speed-size",
        choices=["d256", "tiny"],
        default="d256",
        help="the speed part's model: d 256 with --layers blocks a side (default), or bart-tiny's size, the "
        "quality part's --quality-size tiny models; tiny writes its own section",
    )
    ap.add_argument("--steps", type=int, default=6000, help="training steps of each model (quality)")
    ap.add_argument(
        "--quality-size",
        choices=list(QUALITY_SIZES),
        default="speed",
        help="backbone of the quality part: the speed part's (default) or bart-tiny, the examples' size",
    )
    ap.add_argument("--student-steps", type=int, help="training steps of each NAR model (quality; default: --steps)")
    ap.add_argument("--quick", action="store_true", help="a small run that checks the pipeline (quality)")
    ap.add_argument("--work", help="folder for the quality runs' checkpoints (default: a temporary one)")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue the quality runs in --work from their last checkpoints (finished ones are kept)",
    )
    ap.add_argument(
        "--out",
        help="write each part as a section of this file (e.g. docs/benchmarks.md): speed `nat`, quality `nat-quality`",
    )
    args = ap.parse_args()
    if args.resume and not args.work:
        ap.error("--resume continues the runs in a --work folder: name it")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    import unimodel

    machine = (
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"torch {torch.__version__}, unimodel {unimodel.__version__}; fp32, {THREADS} threads"
    )
    if args.part in ("speed", "both"):
        if args.speed_size == "tiny" and (args.layers != 4 or args.family != "bart"):
            ap.error("--speed-size tiny is bart-tiny's size: it takes neither --layers nor --family t5")
        rows, floor = measure_speed(
            args.family, args.batches, args.rounds, args.source_length, args.device, args.layers, args.speed_size
        )
        where = "." if args.device == "cpu" else f"; speed measured on {args.device}."
        command = "python benchmarks/nat.py --part speed"
        command += f" --speed-size {args.speed_size}" if args.speed_size != "d256" else ""
        command += f" --layers {args.layers}" if args.layers != 4 else ""
        table = speed_table(args.family, rows, args.rounds, args.layers, args.speed_size)
        speed = [f"Produced by `{command}`. {machine}{where}", "", *table, *floor_lines(rows, floor)]
        if args.speed_size == "tiny":
            emit("nat-tiny", speed, args.out)
        elif args.layers == 4:
            emit("nat", ["## Non-autoregressive decoding", "", *speed], args.out)
        else:
            emit(f"nat-{args.layers}-layers", speed, args.out)
    if args.part in ("quality", "both"):
        options = {"student_steps": args.student_steps, "resume": args.resume}
        if args.work:
            results = quality_runs(Path(args.work), args.quick, args.family, args.steps, args.quality_size, **options)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                results = quality_runs(Path(tmp), args.quick, args.family, args.steps, args.quality_size, **options)
        command = f"python benchmarks/nat.py --part quality --steps {results['steps']}"
        if results["student_steps"] != results["steps"]:
            command += f" --student-steps {results['student_steps']}"
        if args.quality_size != "speed":
            command += f" --quality-size {args.quality_size}"
        if args.quick:
            command += " --quick"
        quality = [f"Produced by `{command}`. {machine}.", "", *quality_table(results, args.quick)]
        emit("nat-quality", quality, args.out)


def emit(section: str, lines: list[str], out: str | None) -> None:
    """Print a part's markdown and, with ``--out``, write it as that file's section ``section``."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        write_section(section, text, Path(out))


if __name__ == "__main__":
    main()
