"""Side-by-side speed and memory: unimodel vs transformers on the same architecture and weights.

Each measurement runs in its own subprocess (fresh allocator, clean peak-RSS
counter), with 2 threads and fp32. Weights come from one randomly initialised
transformers model saved to a temporary folder and loaded by both libraries.

    python benchmarks/bench.py                 # all families, writes docs/benchmarks.md
    python benchmarks/bench.py --only gpt2 --quick

Training: forward + backward + AdamW step on a fixed batch, tokens/s over the
timed steps (after warm-up). Memory: peak resident set size during those steps
minus the resident size just before them. Generation: greedy decoding, new
tokens/s, median of repeats.
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
THREADS = 2

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
}


def make_hf_model(family: str):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=8192, n_positions=512, n_embd=384, n_layer=6, n_head=6,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        return tf.GPT2LMHeadModel(cfg)
    family = SETUPS[family].get("weights", family)
    if family == "bert":
        cfg = tf.BertConfig(vocab_size=8192, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                            intermediate_size=1536, max_position_embeddings=512,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return tf.BertForMaskedLM(cfg)
    if family == "t5":
        cfg = tf.T5Config(vocab_size=8192, d_model=384, d_kv=64, d_ff=1536, num_layers=3, num_heads=6,
                          dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        return tf.T5ForConditionalGeneration(cfg)
    if family == "bart":
        cfg = tf.BartConfig(vocab_size=8192, d_model=384, encoder_layers=3, decoder_layers=3,
                            encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536,
                            decoder_ffn_dim=1536, max_position_embeddings=512, dropout=0.0,
                            attention_dropout=0.0, activation_dropout=0.0, forced_eos_token_id=None)
        return tf.BartForConditionalGeneration(cfg)
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
def worker(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    folder = Path(args.folder)
    setup = SETUPS[args.family]
    if args.lib == "hf":
        import transformers as tf

        model = (tf.AutoModelForMaskedLM if args.family.startswith("bert") else
                 tf.AutoModelForSeq2SeqLM if args.family in ("t5", "bart") else tf.AutoModelForCausalLM)
        model = model.from_pretrained(folder, dtype=torch.float32)
    else:
        import unimodel as um

        model = um.from_hf(folder)
        if args.compile:
            model = torch.compile(model)
    vocab = 8192
    g = torch.Generator().manual_seed(1)
    if args.task == "train":
        t = setup["train"]
        model.train()
        if "predict" in t:
            # a masked-LM batch: a fraction of the positions masked and predicted, the rest -100
            ids = torch.randint(4, vocab, (t["batch"], t["seq"]), generator=g)
            picked = torch.rand(ids.shape, generator=g) < t["predict"]
            batch = dict(input_ids=ids.masked_fill(picked, 3), labels=ids.masked_fill(~picked, -100))
            n_tokens = ids.numel()
        elif "seq" in t:
            ids = torch.randint(4, vocab, (t["batch"], t["seq"]), generator=g)
            batch = dict(input_ids=ids, labels=ids)
            n_tokens = ids.numel()
        else:
            src = torch.randint(4, vocab, (t["batch"], t["source"]), generator=g)
            tgt = torch.randint(4, vocab, (t["batch"], t["target"]), generator=g)
            batch = dict(input_ids=src, labels=tgt)
            n_tokens = src.numel() + tgt.numel()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        if args.lib == "um":
            # unimodel's training step is its objective's, the step `unimodel train` runs: the loss is
            # computed without forming the logits, and the MLM head runs at the predicted positions only
            objective, plain = model.objective, model

            def forward():
                return objective(plain, batch)
        else:
            def forward():
                return model(**batch)

        def step() -> float:
            out = forward()
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(out.loss)

        base = rss_kib()  # weights loaded, before any activation, gradient or optimizer state exists
        for _ in range(args.warmup):
            step()
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        peak = peak_rss_during(step, 2)
        return {"n_tokens": n_tokens, "times": times, "peak_mib": (peak - base) / 1024}
    # generation
    t = setup["generate"]
    model.eval()
    prompt = torch.randint(4, vocab, (t["batch"], t["prompt"]), generator=g)
    kwargs = dict(max_new_tokens=t["new"], do_sample=False, num_beams=1)
    if args.lib == "hf":
        kwargs.update(min_new_tokens=t["new"], pad_token_id=0)
    else:
        kwargs.update(min_new_tokens=t["new"])
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.repeats):
            t0 = time.perf_counter()
            out = model.generate(prompt, **kwargs)
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times.append(dt)
    new = out.shape[1] - (t["prompt"] if args.family == "gpt2" else 1)
    return {"n_tokens": int(new) * t["batch"], "times": times, "new_tokens": int(new)}


def side_by_side(libs: list[tuple[str, bool]], family: str, task: str, folder: str, quick: bool,
                 rounds: int) -> list[dict]:
    """Run each (lib, compiled) worker ``rounds`` times, interleaved (A B A B ...), so that a slow
    spell of the machine falls on both sides; per lib, the median over all timed repeats."""
    results: list[list[dict]] = [[] for _ in libs]
    for _ in range(rounds):
        for i, (lib, compiled) in enumerate(libs):
            results[i].append(run_worker(lib, family, task, folder, quick, compiled))
    merged = []
    for runs in results:
        times = [t for r in runs for t in r["times"]]
        out = {"tokens_per_s": runs[0]["n_tokens"] / statistics.median(times), "seconds": statistics.median(times),
               "repeats": len(times)}
        if "peak_mib" in runs[0]:
            out["peak_mib"] = max(r["peak_mib"] for r in runs)
        merged.append(out)
    return merged


def run_worker(lib: str, family: str, task: str, folder: str, quick: bool, compile_: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--lib", lib, "--family", family, "--task", task, "--folder", folder,
           "--steps", "3" if quick else "8", "--warmup", "1" if quick else "2", "--repeats", "2" if quick else "5"]
    if compile_:
        cmd.append("--compile")
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"worker {lib}/{family}/{task} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=list(SETUPS), help="families to run (default: all)")
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke run, not for the record)")
    ap.add_argument("--tasks", nargs="*", choices=["train", "generate"], default=["train", "generate"],
                    help="what to time (default: both)")
    ap.add_argument("--compile", action="store_true", help="also time unimodel training under torch.compile")
    ap.add_argument("--rounds", type=int, default=2,
                    help="interleaved runs of each side per measurement (default 2; 1 with --quick)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lib", help=argparse.SUPPRESS)
    ap.add_argument("--family", help=argparse.SUPPRESS)
    ap.add_argument("--task", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=8, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    import torch
    import transformers

    import unimodel

    rows = []
    for family in args.only or list(SETUPS):
        setup = SETUPS[family]
        with tempfile.TemporaryDirectory() as tmp:
            make_hf_model(family).save_pretrained(tmp)
            rounds = 1 if args.quick else args.rounds
            row = {"family": family, "describe": setup["describe"], "train": setup["train"]}
            if "train" in args.tasks:
                libs = [("hf", False), ("um", False)] + ([("um", True)] if args.compile else [])
                measured = side_by_side(libs, family, "train", tmp, args.quick, rounds)
                row.update(train_hf=measured[0], train_um=measured[1])
                if args.compile:
                    row["train_um_compiled"] = measured[2]
            if "generate" in setup and "generate" in args.tasks:
                row["generate"] = setup["generate"]
                row["gen_hf"], row["gen_um"] = side_by_side([("hf", False), ("um", False)], family, "generate", tmp,
                                                            args.quick, rounds)
        rows.append(row)
        print(json.dumps(row), flush=True)

    lines = [
        "# Benchmarks",
        "",
        "unimodel and transformers side by side on the same architecture and the same weights "
        f"(one random transformers model, loaded by both). fp32, {THREADS} threads, CPU. Every measurement "
        "runs in its own subprocess; the two libraries' runs alternate (transformers, unimodel, "
        "transformers, unimodel ...) and each figure is the median over all of one side's timed steps. "
        f"Produced by `python benchmarks/bench.py{' --compile' if args.compile else ''}`.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, unimodel {unimodel.__version__}."
        + (" Quick run (few steps): indicative only." if args.quick else ""),
    ]
    train_rows = [r for r in rows if "train_hf" in r]
    if train_rows:
        lines += ["", "## Training (forward + backward + AdamW step)", "",
                  "| model | batch | transformers tok/s | unimodel tok/s | speed-up | transformers peak MiB | "
                  "unimodel peak MiB |",
                  "|---|---|---:|---:|---:|---:|---:|"]
    for r in train_rows:
        t = r["train"]
        shape = f"{t['batch']} x {t['seq']}" if "seq" in t else f"{t['batch']} x ({t['source']} + {t['target']})"
        a, b = r["train_hf"], r["train_um"]
        lines.append(f"| {r['describe']} | {shape} | {a['tokens_per_s']:,.0f} | {b['tokens_per_s']:,.0f} | "
                     f"{b['tokens_per_s'] / a['tokens_per_s']:.2f}x | {a['peak_mib']:,.0f} | {b['peak_mib']:,.0f} |")
        if "train_um_compiled" in r:
            c = r["train_um_compiled"]
            lines.append(f"| {r['describe']} (unimodel under torch.compile) | {shape} | {a['tokens_per_s']:,.0f} | "
                         f"{c['tokens_per_s']:,.0f} | {c['tokens_per_s'] / a['tokens_per_s']:.2f}x | "
                         f"{a['peak_mib']:,.0f} | {c['peak_mib']:,.0f} |")
    gen_rows = [r for r in rows if "gen_hf" in r]
    if gen_rows:
        lines += ["", "## Generation (greedy, KV cache)", "",
                  "| model | batch, prompt, new tokens | transformers `generate` tok/s | unimodel tok/s | speed-up |",
                  "|---|---|---:|---:|---:|"]
        for r in gen_rows:
            g = r["generate"]
            a, b = r["gen_hf"], r["gen_um"]
            lines.append(f"| {r['describe']} | {g['batch']}, {g['prompt']}, {g['new']} | {a['tokens_per_s']:,.0f} | "
                         f"{b['tokens_per_s']:,.0f} | {b['tokens_per_s'] / a['tokens_per_s']:.2f}x |")
    lines += ["", "Peak MiB: the highest resident memory seen (sampled every 2 ms) during two training steps, "
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
              "decodes from copies of the weights split into one chunk per thread, so that both threads read "
              "memory at once. The ratio depends on the machine: on a host with more bandwidth per core "
              "unimodel's side gains most."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
