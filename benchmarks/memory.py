"""Memory figures for docs/benchmarks.md: loading a checkpoint, training with and without gradient checkpointing,
and the bytes beam search copies per step to reorder its cache.

Each memory figure is taken in a child process of its own: the peak resident size (``VmHWM``, what
``ru_maxrss`` reports, reset through ``/proc/self/clear_refs`` once imports and set-up are done) minus the
resident size at that point. CPU only. Run: ``python benchmarks/memory.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

MEDIUM = {"name": "gpt", "vocab_size": 50257, "max_positions": 1024, "d_model": 1024, "n_layers": 24, "n_heads": 16}
SMALL = {"name": "gpt", "vocab_size": 8192, "max_positions": 256, "d_model": 384, "n_layers": 6, "n_heads": 6}

_PRELUDE = r"""
import json, resource, sys, torch
import unimodel as um
from unimodel.bounds import backbone_on_meta

def peak_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

def current_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024

def reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return current_kib()
"""

_LOAD = r"""
folder, mode = sys.argv[1], sys.argv[2]
config = json.load(open(folder + "/config.json"))
with backbone_on_meta():  # imports and the size estimate, which both ways run
    um.build_model(dict(config["model"]), objective=config["objective"])
before = reset()
if mode == "before":  # the former path: a model with random weights, the whole file read, then copied in
    from unimodel.checkpoint import load_tensors
    model = um.build_model(dict(config["model"]), objective=config["objective"])
    tensors, _ = load_tensors(__import__("pathlib").Path(folder) / "model.safetensors")
    model.load_state_dict(tensors, strict=False)
    del tensors
else:
    model = um.load(folder)
print(json.dumps({"increase_mib": (peak_kib() - before) / 1024}))
"""

_TRAIN = r"""
spec, checkpointing = json.loads(sys.argv[1]), sys.argv[2] == "1"
torch.manual_seed(0)
model = um.build_model(dict(spec)).train()
if checkpointing:
    model.gradient_checkpointing_enable()
ids = torch.randint(0, spec["vocab_size"], (8, 256))
model(input_ids=ids[:1, :16], labels=ids[:1, :16], return_logits=False).loss.backward()  # warm-up
model.zero_grad(set_to_none=True)
before = reset()
for _ in range(2):
    model(input_ids=ids, labels=ids, return_logits=False).loss.backward()
print(json.dumps({"increase_mib": (peak_kib() - before) / 1024}))
"""


def child(script: str, *args: str) -> dict[str, float]:
    run = subprocess.run([sys.executable, "-c", _PRELUDE + script, *args], capture_output=True, text=True, check=False)
    if run.returncode:
        raise SystemExit(run.stderr[-3000:])
    result: dict[str, float] = json.loads(run.stdout.splitlines()[-1])
    return result


def beam_bytes() -> tuple[float, float]:
    """Bytes copied per reorder by the row-moving reorder, and by a copy of the whole cache (MiB)."""
    import torch

    import unimodel as um
    from unimodel.nn.attention import KVCache

    torch.manual_seed(0)
    model = um.build_model(dict(SMALL)).eval()
    ids = torch.randint(0, SMALL["vocab_size"], (1, 32))
    seen: list[KVCache] = []
    whole: list[int] = []
    original = KVCache.reorder

    def counting(self: KVCache, index: torch.Tensor) -> None:
        seen.append(self)
        whole.append(2 * self.k.numel() * self.k.element_size())
        original(self, index)

    KVCache.reorder = counting  # type: ignore[method-assign]
    try:
        model.generate(ids, num_beams=4, max_new_tokens=64, min_new_tokens=64, do_sample=False)
    finally:
        KVCache.reorder = original  # type: ignore[method-assign]
    steps = len(whole)
    return seen[0].copied_bytes / steps / 2**20, sum(whole) / steps / 2**20


def main() -> None:
    import torch

    import unimodel as um

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "medium"
        torch.manual_seed(0)
        model = um.build_model(dict(MEDIUM))
        weights = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
        model.save(folder)
        del model
        before = child(_LOAD, str(folder), "before")["increase_mib"]
        after = child(_LOAD, str(folder), "after")["increase_mib"]
    mib = weights / 2**20
    print(f"load gpt2-medium shape, weights {mib:,.0f} MiB: before {before:,.0f} MiB, after {after:,.0f} MiB")
    plain = child(_TRAIN, json.dumps(SMALL), "0")["increase_mib"]
    ckpt = child(_TRAIN, json.dumps(SMALL), "1")["increase_mib"]
    print(f"train {SMALL}: plain {plain:,.0f} MiB, checkpointed {ckpt:,.0f} MiB")
    copied, whole = beam_bytes()
    print(f"beam reorder per step: {copied:.2f} MiB copied, whole cache {whole:.2f} MiB")


if __name__ == "__main__":
    main()
