"""Two CPU processes under ``accelerate launch`` train like one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import unimodel as um
from unimodel.training import train

CONFIG = """\
[model]
name = "gpt"
max_positions = 32
d_model = 32
n_layers = 2
n_heads = 4
dropout = 0.0
attn_dropout = 0.0

[objective]
name = "clm"

[data]
corpus = "pydoc"
max_documents = 10
vocab_size = 320
block_size = 32

[train]
max_steps = 4
batch_size = 8
warmup_steps = 2
learning_rate = 3e-3
eval_every = 2
checkpoint_every = 2
log_every = 1
progress = false
sample_prompt = "The "
sample_tokens = 8
"""


def accelerate_launch(*flags: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``accelerate launch FLAGS -m unimodel train ARGS`` with a free rendezvous port."""
    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert exe is not None, "the accelerate command is not installed"
    with socket.socket() as s:  # other test runs on this machine may hold accelerate's default port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        exe,
        "launch",
        *flags,
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        "-m",
        "unimodel",
        "train",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_equal_one_process(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG)
    single = train(cfg, overrides=[f"train.output_dir={tmp_path / 'one'}"])

    # accelerate starts several CPU processes (gloo) through its multi-process launcher;
    # train.device = "cpu" keeps them on the CPU.
    out = tmp_path / "two"
    proc = accelerate_launch(
        "--multi_gpu", "--num_processes", "2", args=[str(cfg), "--set", f"train.output_dir={out}"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 process(es)" in proc.stdout
    # logging on the main process only
    assert proc.stdout.count("validation before training") == 1 and proc.stdout.count("sample (prompt") == 1

    recs = records(out)
    losses = {r["step"]: r["loss"] for r in recs if "loss" in r}
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4]  # one line per step: one writer
    for step in (1, 2, 3, 4):
        assert losses[step] == pytest.approx(single.losses[step], abs=1e-5)
    val = [r["val_loss"] for r in recs if "val_loss" in r]
    ref = [r["val_loss"] for r in records(tmp_path / "one") if "val_loss" in r]
    assert len(val) == len(ref) == 3 and val == pytest.approx(ref, abs=1e-5)

    # one checkpoint, written by the main process, holding every process's RNG state
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint",
        "checkpoint.json",
        "checkpoints",
        "metrics.jsonl",
        "tokenizer",
    ]
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["num_processes"] == 2
    from safetensors import safe_open

    with safe_open(str(out / "checkpoint" / "rng_state.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["torch_cpu.0", "torch_cpu.1"]
    model = um.load(out / "checkpoint")
    for a, b in zip(model.parameters(), single.model.parameters(), strict=True):
        assert (a - b).abs().max() < 1e-4


def test_cpu_flag_starts_the_requested_processes(tmp_path):
    # accelerate's own CPU launcher starts one process without mpirun; unimodel starts the
    # worker group that --num_processes asked for.
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG)
    single = train(
        cfg, overrides=[f"train.output_dir={tmp_path / 'one'}", "train.max_steps=2", "train.sample_prompt=''"]
    )
    out = tmp_path / "out"
    proc = accelerate_launch(
        "--cpu",
        "--num_processes",
        "2",
        args=[
            str(cfg),
            "--set",
            f"train.output_dir={out}",
            "--set",
            "train.max_steps=2",
            "--set",
            "train.sample_prompt=''",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 process(es)" in proc.stdout
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["num_processes"] == 2
    losses = {r["step"]: r["loss"] for r in records(out) if "loss" in r}
    assert losses[1] == pytest.approx(single.losses[1], abs=1e-5)
    assert losses[2] == pytest.approx(single.losses[2], abs=1e-5)
