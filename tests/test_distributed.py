"""Several CPU processes (gloo) train like one process with the same global batch.

Two launches cover everything: one ``accelerate launch --multi_gpu`` of this file as a worker script
trains every family with every objective it supports under DDP, T5 on ragged pairs with gradient
accumulation, and an FSDP2 run (whole, and once more killed after its step-2 checkpoint); one
``accelerate launch --cpu -m unimodel train --resume`` (the CLI, through unimodel's CPU worker start)
continues the killed run. The test compares everything against in-process single-process runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import unimodel as um
import unimodel.builtin
from unimodel.data.dataset import DataConfig, load_data
from unimodel.data.kinds import DataKind, RawData
from unimodel.data.tokenizer import Tokenizer
from unimodel.nn import shared_randomness
from unimodel.registry import Component, Registry, get_registry, set_registry

# every family with every objective it trains with (the registry's compatible objectives but 'features')
MATRIX = {
    "gpt": ["clm", "fim"],
    "bert": ["mlm", "classify", "tag"],
    "t5": ["span_corruption", "text_infilling", "seq2seq"],
    "bart": ["span_corruption", "text_infilling", "seq2seq"],
}
# BART runs with LayerDrop: every process must skip the same blocks
LAYERDROP = {"layerdrop": 0.5, "decoder_layerdrop": 0.5}
TOL = 1e-5
# AdamW divides each gradient by its own running size: with the default epsilon a gradient that is float
# rounding noise (1e-9) would become a full learning-rate step. A larger epsilon keeps the comparison
# about the gradients themselves.
ADAM_EPS = 1e-3


# ------------------------------------------------------------------ the data
class MixedData(DataKind):
    """Ragged examples cut from the pydoc corpus carrying what every objective reads: ``input_ids``,
    ``source``/``target`` (its two halves), ``label`` (a class) and ``labels`` (a tag per token)."""

    unit: ClassVar[str] = "examples"

    def __init__(self, train: list[dict[str, Any]]) -> None:
        self.train = train

    @classmethod
    def read(cls, config, *, objective=None, registry=None) -> RawData:
        docs = load_data(config, kind="text", objective=objective, registry=registry)
        return RawData("mixed", docs.train, [])

    @classmethod
    def encode(cls, config, tokenizer, raw) -> MixedData:
        ids = [t for doc in tokenizer.encode_batch(raw.train) for t in doc]
        examples, at = [], 0
        for i in range(48):
            n = 6 + (i * 7) % 15  # lengths 6..20: padded batches
            block = ids[at : at + n]
            at += n
            half = n // 2
            examples.append(
                {
                    "input_ids": block,
                    "source": block[:half],
                    "target": block[half:],
                    "label": sum(block) % 2,
                    "labels": [t % 2 for t in block],
                }
            )
        return MixedData(examples)

    @classmethod
    def evaluation_examples(cls, config, tokenizer, items, model) -> list[dict[str, Any]]:
        return []

    @property
    def n_train(self) -> int:
        return len(self.train)

    def example(self, i: int) -> dict[str, Any]:
        return self.train[i]

    @property
    def validation_examples(self) -> list[dict[str, Any]]:
        return []

    def n_tokens(self, indices: Sequence[int]) -> int:
        return sum(len(self.train[i]["input_ids"]) for i in indices)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.train).encode()).hexdigest()

    def describe(self) -> str:
        return f"{self.n_train} mixed examples"


class MixedPlugin:
    @unimodel.hookimpl
    def unimodel_components(self) -> list[Component]:
        return [Component(kind="data", name="mixed", target="um_test_mixed:MixedData", summary="ragged mixed")]


def use_mixed_data() -> tuple[Registry | None, dict[type, str]]:
    """Register the ``mixed`` data kind and point every matrix objective at it; returns what to restore."""
    module = types.ModuleType("um_test_mixed")
    module.MixedData = MixedData  # type: ignore[attr-defined]
    sys.modules["um_test_mixed"] = module
    reg = Registry(discover=True)
    reg.add_plugin(MixedPlugin(), "mixed")
    old = set_registry(reg)
    kinds = {}
    for objectives in MATRIX.values():
        for name in objectives:
            cls = reg.load("objective", name)
            kinds.setdefault(cls, cls.__dict__.get("data_kind"))
            cls.data_kind = "mixed"
    return old, kinds


def restore_data(old: Registry | None, kinds: dict[type, str | None]) -> None:
    for cls, kind in kinds.items():
        if kind is None:
            del cls.data_kind
        else:
            cls.data_kind = kind
    set_registry(old)


# ------------------------------------------------------------------ the runs
def matrix_run(family: str, objective: str, tokenizer: Path, out: Path, **train: Any) -> dict[str, Any]:
    tiny = {k: v for k, v in get_registry().get("model", family).tiny.items() if k != "vocab_size"}
    if family == "bart":
        tiny.update(LAYERDROP)
    return {
        "model": {"name": family, **tiny},
        # the task heads' dropout draws differently on each process
        "objective": {"name": objective, **({"dropout": 0.0} if objective in ("classify", "tag") else {})},
        "data": {"corpus": "pydoc", "max_documents": 4, "tokenizer": str(tokenizer), "validation_fraction": 0.0},
        "train": {
            "output_dir": str(out),
            "max_steps": 3,
            "batch_size": 4,
            "warmup_steps": 1,
            "learning_rate": 1e-2,
            "adam_eps": ADAM_EPS,
            "eval_every": 0,
            "checkpoint_every": 0,
            "log_every": 1,
            "progress": False,
            "sample_prompt": "",
            **train,
        },
    }


def pairs_run(out: Path, **train: Any) -> dict[str, Any]:
    """T5 on the numbers pair corpus (exact match, sampled pairs) with evaluation and checkpoints."""
    tiny = {k: v for k, v in get_registry().get("model", "t5").tiny.items() if k != "vocab_size"}
    return {
        "model": {"name": "t5", **tiny},
        "objective": {"name": "seq2seq"},
        "data": {
            "corpus": "numbers",
            "corpus_options": {"n_train": 40, "n_validation": 6, "max_value": 999},
            # one tokenizer for every run (a Unigram trainer's result may vary from run to run)
            "tokenizer": str(out.parent.parent / "tok-t5"),
        },
        "train": {
            "output_dir": str(out),
            "max_steps": 4,
            "batch_size": 4,
            "warmup_steps": 1,
            "learning_rate": 1e-2,
            "adam_eps": ADAM_EPS,
            "eval_every": 2,
            "checkpoint_every": 2,
            "log_every": 1,
            "progress": False,
            "exact_match_examples": 4,
            "sample_tokens": 6,
            **train,
        },
    }


def worker_runs(root: Path) -> list[tuple[str, dict[str, Any]]]:
    """What the two-process launch trains, by name."""
    runs = [
        (f"{f}-{o}", matrix_run(f, o, root / f"tok-{f}", root / "two" / f"{f}-{o}"))
        for f, objectives in MATRIX.items()
        for o in objectives
    ]
    runs.append(
        (
            "t5-ragged-accum2",
            matrix_run(
                "t5", "seq2seq", root / "tok-t5", root / "two" / "accum2", batch_size=8, gradient_accumulation_steps=2
            ),
        )
    )
    runs.append(("fsdp", pairs_run(root / "two" / "fsdp", fsdp=True)))
    return runs


def save_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value))


def worker(root: Path) -> None:
    """The two-process side: every run of :func:`worker_runs`, then the FSDP run killed after step 3."""
    from unimodel.training import train
    from unimodel.training.trainer import Trainer, load_run_config

    old, kinds = use_mixed_data()
    results = {}
    for name, cfg in worker_runs(root):
        if name == "fsdp":  # the numbers pair corpus, read as pairs
            restore_data(old, kinds)
        res = train(cfg)
        results[name] = {"losses": {str(k): v for k, v in res.losses.items()}}
    if int(os.environ.get("RANK", "0")) == 0:
        save_json(root / "two" / "results.json", results)

    class Killed(Trainer):
        def after_step(self) -> None:
            super().after_step()
            if self.step == 3:  # past the step-2 checkpoint: the process dies without saving
                sys.stdout.flush()
                os._exit(0)

    Killed(load_run_config(pairs_run(root / "two" / "killed", fsdp=True))).run_training()


# ------------------------------------------------------------------ launching
def accelerate_launch(*flags: str, args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    """``accelerate launch FLAGS -m unimodel train ARGS``."""
    return launch(*flags, args=["-m", "unimodel", "train", *args], cwd=cwd)


def launch(*flags: str, args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    """``accelerate launch FLAGS ARGS`` with a free rendezvous port, one thread per process."""
    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert exe is not None, "the accelerate command is not installed"
    with socket.socket() as s:  # other test runs on this machine may hold accelerate's default port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [exe, "launch", *flags, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--main_process_port", str(port), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def one_process(cfg: dict[str, Any], root: Path) -> dict[str, Any]:
    """``cfg`` writing under ``root/one`` instead of ``root/two``."""
    return json.loads(json.dumps(cfg).replace(str(root / "two"), str(root / "one")))


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def family_tokenizers(root: Path) -> None:
    texts = load_data(DataConfig(corpus="pydoc", max_documents=4), kind="text").train
    for family in MATRIX:
        recipe = get_registry().get("model", family).tokenizer
        (root / f"tok-{family}").mkdir()
        Tokenizer.train(recipe.kind, texts, 400, recipe.roles).save(root / f"tok-{family}")


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> dict[str, Any]:
    """Both launches and the single-process references."""
    from unimodel.training import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dist")
    family_tokenizers(root)
    (root / "two").mkdir()
    first = launch("--multi_gpu", "--num_processes", "2", args=[__file__, str(root)], cwd=root)
    results: dict[str, Any] = {"first": first, "root": root}
    runs = dict(worker_runs(root))
    fsdp = runs.pop("fsdp")
    del runs["t5-ragged-accum2"]  # compared with one batch of 8 in one process
    runs["t5-ragged-accum4"] = matrix_run(
        "t5", "seq2seq", root / "tok-t5", root / "two" / "accum4", batch_size=8, gradient_accumulation_steps=4
    )
    runs["t5-ragged-batch8"] = matrix_run("t5", "seq2seq", root / "tok-t5", root / "two" / "batch8", batch_size=8)
    old, kinds = use_mixed_data()
    try:
        for name, cfg in runs.items():
            results[name] = train(one_process(cfg, root))
    finally:
        restore_data(old, kinds)
    fsdp["train"].pop("fsdp")  # the reference: one process, unsharded
    results["fsdp"] = train(one_process(fsdp, root))
    cfg_file = root / "killed.json"
    cfg_file.write_text(json.dumps(pairs_run(root / "two" / "killed", fsdp=True)))
    results["resume"] = accelerate_launch("--cpu", "--num_processes", "2", args=[str(cfg_file), "--resume"], cwd=root)
    return results


# ------------------------------------------------------------------ the tests
pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_objective_counts_its_targets_before_the_forward():
    # the trainer weights micro-batches by Objective.count_targets: it must be what forward reports
    texts = load_data(DataConfig(corpus="pydoc", max_documents=2), kind="text").train
    for family, objectives in MATRIX.items():
        recipe = get_registry().get("model", family).tokenizer
        tok = Tokenizer.train(recipe.kind, texts, 400, recipe.roles)
        data = MixedData.encode(None, tok, RawData("mixed", texts, []))
        tiny = {k: v for k, v in get_registry().get("model", family).tiny.items() if k != "vocab_size"}
        for objective in objectives:
            model = um.build_model(family, objective=objective, tokenizer=tok, vocab_size=tok.vocab_size, **tiny)
            batch = model.objective.prepare(data.train[:5], tokenizer=tok, generator=torch.Generator().manual_seed(0))
            out = model.objective(model, batch)
            assert model.objective.count_targets(batch) == out.n_predictions > 0, (family, objective)


def test_bert_pooler_runs_only_when_the_loss_reads_it():
    tiny = dict(get_registry().get("model", "bert").tiny)
    ids = torch.randint(3, 90, (2, 7))
    labels = {"mlm": torch.randint(3, 90, (2, 7)), "tag": torch.randint(0, 2, (2, 7)), "classify": torch.tensor([0, 1])}
    for objective, used in (("mlm", False), ("tag", False), ("classify", True)):
        model = um.build_model("bert", objective=objective, **tiny)
        calls = []
        model.encoder.pooler.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        model(input_ids=ids, labels=labels[objective]).loss.backward()
        # a pooler that runs without reaching the loss stalls DDP ("Expected to have finished reduction")
        assert bool(calls) == used == (model.encoder.pooler.weight.grad is not None), objective
        assert all(p.requires_grad == used for p in model.encoder.pooler.parameters())  # DDP skips frozen ones
        assert model(input_ids=ids).pooler_output is not None  # a call without a loss still pools


def test_bart_layerdrop_skips_alike_everywhere_and_leaves_no_parameter_without_gradient():
    tiny = {**get_registry().get("model", "bart").tiny, **LAYERDROP}
    model = um.build_model("bart", objective="seq2seq", **tiny)
    batch = model.objective.prepare([{"source": [5, 6, 7], "target": [8, 9]}, {"source": [5, 6], "target": [8, 9, 4]}])
    losses = {}
    for seed in range(8):
        for process in range(2):  # a process's own dropout stream must not change which blocks run
            torch.manual_seed(100 + process)
            model.zero_grad()
            with shared_randomness(seed):
                loss = model.objective(model, batch).loss
            loss.backward()
            losses.setdefault(seed, set()).add(round(loss.item(), 6))
            # a skipped block (even every decoder block, which cuts the encoder off) still has a gradient
            assert all(p.grad is not None for p in model.parameters() if p.requires_grad), seed
    assert all(len(v) == 1 for v in losses.values())
    assert len({v.pop() for v in losses.values()}) > 1  # the seeds do skip different blocks


def test_ddp_every_family_and_objective_equals_one_process(launched):
    first = launched["first"]
    assert "results.json" in os.listdir(launched["root"] / "two"), first.stdout[-3000:] + first.stderr[-6000:]
    two = json.loads((launched["root"] / "two" / "results.json").read_text())
    worst = 0.0
    for family, objectives in MATRIX.items():
        for objective in objectives:
            name = f"{family}-{objective}"
            one = launched[name]
            losses = {int(k): v for k, v in two[name]["losses"].items()}
            assert sorted(losses) == [1, 2, 3], name
            for step, loss in losses.items():
                assert loss == pytest.approx(one.losses[step], abs=TOL), (name, step)
                worst = max(worst, abs(loss - one.losses[step]))
            model = um.load(launched["root"] / "two" / name / "checkpoint")
            diff = max_param_diff(model, one.model)
            assert diff < TOL, (name, diff)
    print(f"DDP vs one process: max loss difference {worst:.2e}")


def test_ragged_pairs_token_weighted_over_processes_and_accumulation(launched):
    root = launched["root"]
    full = launched["t5-ragged-batch8"]  # one process, one batch of 8 ragged pairs
    acc4 = launched["t5-ragged-accum4"]  # one process, 4 micro-batches of 2
    two = json.loads((root / "two" / "results.json").read_text())["t5-ragged-accum2"]  # 2 processes x 2 micro
    two_model = um.load(root / "two" / "accum2" / "checkpoint")
    for step in (1, 2, 3):
        assert acc4.losses[step] == pytest.approx(full.losses[step], abs=TOL)
        assert two["losses"][str(step)] == pytest.approx(full.losses[step], abs=TOL)
    assert max_param_diff(acc4.model, full.model) < TOL
    assert max_param_diff(two_model, full.model) < TOL


def test_fsdp_equals_one_process_and_resumes_exactly(launched):
    root = launched["root"]
    one = launched["fsdp"]
    two = json.loads((root / "two" / "results.json").read_text())["fsdp"]
    for step in (1, 2, 3, 4):
        assert two["losses"][str(step)] == pytest.approx(one.losses[step], abs=TOL)
    # evaluation and exact match ran on the gathered parameters, as in one process
    sharded = [r for r in records(root / "two" / "fsdp") if "val_loss" in r]
    single = [r for r in records(root / "one" / "fsdp") if "val_loss" in r]
    assert [r["step"] for r in sharded] == [0, 2, 4]
    assert [r["val_loss"] for r in sharded] == pytest.approx([r["val_loss"] for r in single], abs=TOL)
    assert [r["val_exact_match"] for r in sharded[1:]] == [r["val_exact_match"] for r in single[1:]]
    full = um.load(root / "two" / "fsdp" / "checkpoint")
    assert max_param_diff(full, one.model) < TOL
    state = json.loads((root / "two" / "fsdp" / "checkpoint" / "trainer_state.json").read_text())
    assert state["optimizer_layout"] == "by_name" and state["num_processes"] == 2
    # one checkpoint, written by the main process: the run folder's pointer and link name the newest step folder
    out = root / "two" / "fsdp"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "checkpoint.json", "checkpoints", "metrics.jsonl"]
    assert (out / "checkpoint").is_symlink()
    assert (out / "checkpoint").resolve() == (out / "checkpoints" / "step-000004").resolve()
    assert json.loads((out / "checkpoint.json").read_text())["checkpoint"] == "checkpoints/step-000004"
    assert state["step"] == 4
    from safetensors import safe_open

    with safe_open(str(root / "two" / "fsdp" / "checkpoint" / "rng_state.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"torch_cpu.0", "torch_cpu.1", "python.0", "python.1"} <= keys

    # killed after step 3 with the step-2 checkpoint in place; `--resume` through the CLI continues it
    resumed = launched["resume"]
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-6000:]
    assert "2 process(es)" in resumed.stdout and resumed.stdout.count("resuming from") == 1  # main process logs
    killed = {r["step"]: r["loss"] for r in records(root / "two" / "killed") if "loss" in r}
    assert sorted(killed) == [1, 2, 3, 4]  # step 3 of the killed run was dropped and trained again
    for step in (1, 2, 3, 4):
        assert killed[step] == pytest.approx(two["losses"][str(step)], abs=TOL)
    assert max_param_diff(um.load(root / "two" / "killed" / "checkpoint"), full) < TOL


if __name__ == "__main__":  # the two-process side, started by the launched fixture
    worker(Path(sys.argv[1]))
