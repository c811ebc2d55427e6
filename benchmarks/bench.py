"""Side-by-side speed and memory: unimodel vs transformers on the same architecture and weights.

Speed: both libraries are loaded in one subprocess and timed step by step in
alternation (A B, B A, ...), so a slow spell of a shared host falls on both
sides alike; ``--rounds`` fresh subprocesses of that. Memory: one subprocess per
library (fresh allocator, clean peak-RSS counter). 2 threads, fp32. Weights come
from one randomly initialised transformers model saved to a temporary folder and
loaded by both libraries.

    python benchmarks/bench.py                 # all families, writes docs/benchmarks.md
    python benchmarks/bench.py --only gpt2 --quick

Training: forward + backward + AdamW step on a fixed batch, tokens/s at the
median step (after warm-up). Memory: peak resident set size during two steps
minus the resident size just before them. Generation: greedy decoding, new
tokens/s at the median call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402

THREADS = 2
RESULTS = Path(__file__).resolve().parent / "results" / "bench.json"  # the figures docs/benchmarks.md shows

# family -> (HF builder, train batch shape, generation setup)
SETUPS = {
    "gpt2": dict(
        describe="GPT-2 style, 6 layers, d 384, 6 heads, vocab 8192",
        train=dict(batch=8, seq=256),
        generate=dict(batch=1, prompt=32, new=128),
    ),
    "bert": dict(
        describe="BERT, 6 layers, d 384, 6 heads, ffn 1536, vocab 8192 (MLM head)",
        train=dict(batch=8, seq=256),
    ),
    "bert-mlm": dict(
        describe="BERT as above, masked-LM step: 15% of tokens predicted, the rest labelled -100",
        weights="bert",
        train=dict(batch=8, seq=256, predict=0.15),
    ),
    "t5": dict(
        describe="T5 v1.0, 3+3 layers, d 384, 6 heads, ffn 1536, vocab 8192",
        train=dict(batch=8, source=256, target=64),
        generate=dict(batch=1, prompt=64, new=64),
    ),
    "bart": dict(
        describe="BART, 3+3 layers, d 384, 6 heads, ffn 1536, vocab 8192",
        train=dict(batch=8, source=256, target=64),
        generate=dict(batch=1, prompt=64, new=64),
    ),
    "xlnet": dict(
        describe="XLNet, 6 layers, d 384, 6 heads, ffn 1536, vocab 8192, permutation LM (1/6 of positions predicted)",
        train=dict(batch=8, seq=256, plm=True),
        generate=dict(batch=1, prompt=32, new=128),
    ),
}


def make_hf_model(family: str):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if family == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=8192,
            n_positions=512,
            n_embd=384,
            n_layer=6,
            n_head=6,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
        return tf.GPT2LMHeadModel(cfg)
    family = SETUPS[family].get("weights", family)
    if family == "bert":
        cfg = tf.BertConfig(
            vocab_size=8192,
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=6,
            intermediate_size=1536,
            max_position_embeddings=512,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        return tf.BertForMaskedLM(cfg)
    if family == "t5":
        cfg = tf.T5Config(
            vocab_size=8192,
            d_model=384,
            d_kv=64,
            d_ff=1536,
            num_layers=3,
            num_heads=6,
            dropout_rate=0.0,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
        return tf.T5ForConditionalGeneration(cfg)
    if family == "bart":
        cfg = tf.BartConfig(
            vocab_size=8192,
            d_model=384,
            encoder_layers=3,
            decoder_layers=3,
            encoder_attention_heads=6,
            decoder_attention_heads=6,
            encoder_ffn_dim=1536,
            decoder_ffn_dim=1536,
            max_position_embeddings=512,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            forced_eos_token_id=None,
        )
        return tf.BartForConditionalGeneration(cfg)
    if family == "xlnet":
        cfg = tf.XLNetConfig(vocab_size=8192, d_model=384, n_layer=6, n_head=6, d_inner=1536, dropout=0.0)
        return tf.XLNetLMHeadModel(cfg)
    raise SystemExit(f"unknown family {family}")


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def peak_rss_during(fn, repeats: int) -> int:
    """Highest resident size (KiB) seen while ``fn`` runs ``repeats`` times, sampled every 2 ms.

    Sampled in its own pass so the sampling thread does not disturb the timings.
    """
    import threading

    peak = rss_kib()
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_kib())
            time.sleep(0.002)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    for _ in range(repeats):
        fn()
    done.set()
    th.join()
    return peak


# ----------------------------------------------------------------- workers
def load_model(lib: str, family: str, folder: Path):
    """``lib``: ``hf`` (transformers), ``um`` (unimodel) or ``um-compiled`` (unimodel under torch.compile)."""
    import torch

    if lib == "hf":
        import transformers as tf

        auto = (
            tf.AutoModelForMaskedLM
            if family.startswith("bert")
            else tf.AutoModelForSeq2SeqLM
            if family in ("t5", "bart")
            else tf.AutoModelForCausalLM
        )
        return auto.from_pretrained(folder, dtype=torch.float32)
    import unimodel as um

    model = um.from_hf(folder)
    return torch.compile(model) if lib == "um-compiled" else model


def make_inputs(family: str, task: str) -> dict:
    """The batch (training) or prompt (generation) both libraries get."""
    import torch

    vocab = 8192
    g = torch.Generator().manual_seed(1)
    setup = SETUPS[family]
    if task == "generate":
        t = setup["generate"]
        return {"prompt": torch.randint(4, vocab, (t["batch"], t["prompt"]), generator=g)}
    t = setup["train"]
    if t.get("plm"):
        # a permutation-LM batch from unimodel's plm objective: perm_mask, target_mapping and labels at the
        # targets, the names and layout transformers' XLNetLMHeadModel takes
        from unimodel_xlnet.objectives import PermutationLM, PLMConfig

        ids = torch.randint(10, vocab, (t["batch"], t["seq"]), generator=g)
        plm = PermutationLM(PLMConfig(pad_token_id=0))
        batch = plm.prepare([{"input_ids": row.tolist()} for row in ids], generator=g)
        del batch["attention_mask"]  # nothing is padded
        return {"batch": batch, "n_tokens": ids.numel()}
    if "predict" in t:
        # a masked-LM batch: a fraction of the positions masked and predicted, the rest -100
        ids = torch.randint(4, vocab, (t["batch"], t["seq"]), generator=g)
        picked = torch.rand(ids.shape, generator=g) < t["predict"]
        return {
            "batch": dict(input_ids=ids.masked_fill(picked, 3), labels=ids.masked_fill(~picked, -100)),
            "n_tokens": ids.numel(),
        }
    if "seq" in t:
        ids = torch.randint(4, vocab, (t["batch"], t["seq"]), generator=g)
        return {"batch": dict(input_ids=ids, labels=ids), "n_tokens": ids.numel()}
    src = torch.randint(4, vocab, (t["batch"], t["source"]), generator=g)
    tgt = torch.randint(4, vocab, (t["batch"], t["target"]), generator=g)
    return {"batch": dict(input_ids=src, labels=tgt), "n_tokens": src.numel() + tgt.numel()}


def make_runner(lib: str, model, family: str, task: str, inputs: dict):
    """``(run, n_tokens)``: one training step or one ``generate`` call, and the tokens it processes."""
    import torch

    if task == "train":
        model.train()
        batch = inputs["batch"]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        if lib == "hf":

            def forward():
                return model(**batch)
        else:
            # unimodel's training step is its objective's, the step `unimodel train` runs: the loss is
            # computed without forming the logits, and the MLM head runs at the predicted positions only
            objective = model.objective

            def forward():
                return objective(model, batch)

        def step() -> None:
            out = forward()
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step, inputs["n_tokens"]
    t = SETUPS[family]["generate"]
    model.eval()
    prompt = inputs["prompt"]
    kwargs = dict(max_new_tokens=t["new"], min_new_tokens=t["new"], do_sample=False, num_beams=1)
    if lib == "hf":
        kwargs.update(pad_token_id=0)

    def generate() -> None:
        with torch.inference_mode():
            out = model.generate(prompt, **kwargs)
        new = out.shape[1] - (t["prompt"] if family in ("gpt2", "xlnet") else 1)
        if new != t["new"]:
            raise SystemExit(f"{lib} generated {new} tokens, expected {t['new']}")

    return generate, t["new"] * t["batch"]


def worker(args: argparse.Namespace) -> dict:
    """Time the libraries in ``args.lib`` (comma-separated) in one process, alternating step by step
    (A B, B A, A B ...) so that a slow spell of the machine falls on every side alike; or, with
    ``--memory``, the peak memory of one library's training steps in a process of its own."""
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    libs = args.lib.split(",")
    inputs = make_inputs(args.family, args.task)
    runners = {}
    for lib in libs:
        runners[lib] = make_runner(lib, load_model(lib, args.family, Path(args.folder)), args.family, args.task, inputs)
    if args.memory:
        ((run, _),) = runners.values()
        base = rss_kib()  # weights loaded, before any activation, gradient or optimizer state exists
        for _ in range(args.warmup):
            run()
        return {"peak_mib": (peak_rss_during(run, 2) - base) / 1024}
    for run, _ in runners.values():
        for _ in range(args.warmup):
            run()
    times: dict[str, list[float]] = {lib: [] for lib in libs}
    for i in range(args.steps):
        for lib in libs if i % 2 == 0 else libs[::-1]:
            t0 = time.perf_counter()
            runners[lib][0]()
            times[lib].append(time.perf_counter() - t0)
    return {lib: {"n_tokens": runners[lib][1], "times": times[lib]} for lib in libs}


def side_by_side(libs: list[str], family: str, task: str, folder: str, quick: bool, rounds: int) -> list[dict]:
    """Time ``libs`` in ``rounds`` fresh processes, alternating within each; per lib, the median
    over all timed steps. Training also measures each lib's peak memory in a process of its own."""
    times: dict[str, list[float]] = {lib: [] for lib in libs}
    n_tokens = {}
    for _ in range(rounds):
        for lib, r in run_worker(",".join(libs), family, task, folder, quick).items():
            times[lib] += r["times"]
            n_tokens[lib] = r["n_tokens"]
    merged = []
    for lib in libs:
        median = statistics.median(times[lib])
        out = {"tokens_per_s": n_tokens[lib] / median, "seconds": median, "repeats": len(times[lib])}
        if task == "train":
            out["peak_mib"] = run_worker(lib, family, task, folder, quick, memory=True)["peak_mib"]
        merged.append(out)
    return merged


def run_worker(lib: str, family: str, task: str, folder: str, quick: bool, memory: bool = False) -> dict:
    steps = ("4" if quick else "10") if task == "train" else ("2" if quick else "6")
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--lib",
        lib,
        "--family",
        family,
        "--task",
        task,
        "--folder",
        folder,
        "--steps",
        steps,
        "--warmup",
        "1" if quick or memory else "2",
    ]
    if memory:
        cmd.append("--memory")
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"worker {lib}/{family}/{task} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def merge_results(rows: list[dict], path: Path) -> list[dict]:
    """``rows`` and, for the families not measured this time, their rows from the last run (``path``, JSON);
    all of them are saved back, so ``--only xlnet`` updates XLNet's rows and keeps the others' figures."""
    kept = json.loads(path.read_text()) if path.exists() else []
    measured = {r["family"] for r in rows}
    merged = rows + [r for r in kept if r["family"] not in measured and r["family"] in SETUPS]
    path.write_text(json.dumps(merged, indent=1) + "\n")
    return merged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=list(SETUPS), help="families to run (default: all)")
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke run, not for the record)")
    ap.add_argument(
        "--tasks",
        nargs="*",
        choices=["train", "generate"],
        default=["train", "generate"],
        help="what to time (default: both)",
    )
    ap.add_argument("--compile", action="store_true", help="also time unimodel training under torch.compile")
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="fresh processes per measurement, each alternating the libraries (default 2; 1 with --quick)",
    )
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="its section of this file is rewritten")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lib", help=argparse.SUPPRESS)
    ap.add_argument("--family", help=argparse.SUPPRESS)
    ap.add_argument("--task", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    import torch
    import transformers

    import unimodel

    rows = []
    rounds_done = 1 if args.quick else args.rounds
    for family in args.only or list(SETUPS):
        setup = SETUPS[family]
        with tempfile.TemporaryDirectory() as tmp:
            make_hf_model(family).save_pretrained(tmp)
            rounds = 1 if args.quick else args.rounds
            row = {"family": family, "describe": setup["describe"], "train": setup["train"]}
            if "train" in args.tasks:
                libs = ["hf", "um"] + (["um-compiled"] if args.compile else [])
                measured = side_by_side(libs, family, "train", tmp, args.quick, rounds)
                row.update(train_hf=measured[0], train_um=measured[1])
                if args.compile:
                    row["train_um_compiled"] = measured[2]
            if "generate" in setup and "generate" in args.tasks:
                row["generate"] = setup["generate"]
                row["gen_hf"], row["gen_um"] = side_by_side(["hf", "um"], family, "generate", tmp, args.quick, rounds)
        rows.append(row)
        print(json.dumps(row), flush=True)

    if not args.quick:
        rows = merge_results(rows, RESULTS)
    rows.sort(key=lambda r: list(SETUPS).index(r["family"]))  # the tables list families in SETUPS order
    lines = [
        "unimodel and transformers side by side on the same architecture and the same weights "
        f"(one random transformers model, loaded by both). fp32, {THREADS} threads, CPU. Speed: both libraries "
        f"run in one process, timed step by step in alternation (transformers, unimodel, then unimodel, "
        f"transformers, ...), so that a slow spell of the shared host falls on both alike; {rounds_done} such "
        f"process{'es' if rounds_done > 1 else ''}, and each figure is the median over all of one side's timed steps. "
        "Memory: each library in "
        "a process of its own. "
        f"Produced by `python benchmarks/bench.py{' --compile' if args.compile else ''}`.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, unimodel {unimodel.__version__}."
        + (" Quick run (few steps): indicative only." if args.quick else ""),
    ]
    train_rows = [r for r in rows if "train_hf" in r]
    if train_rows:
        lines += [
            "",
            "## Training (forward + backward + AdamW step)",
            "",
            "| model | batch | transformers tok/s | unimodel tok/s | speed-up | transformers peak MiB | "
            "unimodel peak MiB |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
    for r in train_rows:
        t = r["train"]
        shape = f"{t['batch']} x {t['seq']}" if "seq" in t else f"{t['batch']} x ({t['source']} + {t['target']})"
        a, b = r["train_hf"], r["train_um"]
        lines.append(
            f"| {r['describe']} | {shape} | {a['tokens_per_s']:,.0f} | {b['tokens_per_s']:,.0f} | "
            f"{b['tokens_per_s'] / a['tokens_per_s']:.2f}x | {a['peak_mib']:,.0f} | {b['peak_mib']:,.0f} |"
        )
        if "train_um_compiled" in r:
            c = r["train_um_compiled"]
            lines.append(
                f"| {r['describe']} (unimodel under torch.compile) | {shape} | {a['tokens_per_s']:,.0f} | "
                f"{c['tokens_per_s']:,.0f} | {c['tokens_per_s'] / a['tokens_per_s']:.2f}x | "
                f"{a['peak_mib']:,.0f} | {c['peak_mib']:,.0f} |"
            )
    gen_rows = [r for r in rows if "gen_hf" in r]
    if gen_rows:
        lines += [
            "",
            "## Generation (greedy, KV cache)",
            "",
            "| model | batch, prompt, new tokens | transformers `generate` tok/s | unimodel tok/s | speed-up |",
            "|---|---|---:|---:|---:|",
        ]
        for r in gen_rows:
            g = r["generate"]
            a, b = r["gen_hf"], r["gen_um"]
            lines.append(
                f"| {r['describe']} | {g['batch']}, {g['prompt']}, {g['new']} | {a['tokens_per_s']:,.0f} | "
                f"{b['tokens_per_s']:,.0f} | {b['tokens_per_s'] / a['tokens_per_s']:.2f}x |"
            )
    lines += [
        "",
        "Peak MiB: the highest resident memory seen (sampled every 2 ms) during two training steps, "
        "minus the resident memory after the model was loaded: activations, gradients and optimizer "
        "state, not the weights or the library's import.",
        "",
        "Training rows time each library's own training step on the same batch: transformers' "
        "`model(**batch)` (logits for every position, then the loss) and unimodel's objective step, the "
        "one `unimodel train` runs (the same loss and gradients, computed in cache-sized chunks without "
        "forming the logits; the masked-LM objective also runs its head at the predicted positions only).",
        "",
        "Generation at batch 1 reads every weight once per new token, so its speed follows the machine's "
        "memory bandwidth, while transformers' `generate` spends much of each step in Python. unimodel "
        "decodes in one chunk of every weight per thread (a copy for widening layers, the parameter in "
        "place for narrowing ones), so that both threads read memory at once. The ratio depends on the machine: "
        "on a host with more bandwidth per core "
        "unimodel's side gains most.",
    ]
    write_section("bench", "\n".join(lines), Path(args.out))
    print(f"wrote its section of {args.out}")


if __name__ == "__main__":
    main()
