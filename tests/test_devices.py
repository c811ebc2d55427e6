"""Devices: the trainer's device choice, loading on a device in a dtype, and a model path that never
reads device values on its hot path.

There is no GPU here: device decisions are tested with ``torch.cuda.is_available`` (and MPS) mocked,
and host reads are counted with a torch-function mode while CPU tensors are treated as device
tensors (:data:`unimodel.nn.sync.HOST_DEVICES` emptied), which sends every read-guarded branch down
its device path.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from helpers import build_tiny
from torch import Tensor
from torch.overrides import TorchFunctionMode

import unimodel as um
from unimodel import cli
from unimodel.errors import ConfigError, InputError
from unimodel.inputs import inputs_checked
from unimodel.nn import sync
from unimodel.nn.linear import Linear, decoding_layout
from unimodel.training import train
from unimodel.training.config import TrainConfig
from unimodel.training.launch import make_accelerator, resolve_device


# ------------------------------------------------------------------ the trainer's device
@contextlib.contextmanager
def machine(*, cuda: bool, mps: bool) -> Iterator[None]:
    with (
        mock.patch.object(torch.cuda, "is_available", return_value=cuda),
        mock.patch.object(torch.backends.mps, "is_available", return_value=mps),
    ):
        yield


def test_auto_takes_cuda_then_mps_then_cpu() -> None:
    assert TrainConfig().device == "auto"
    with machine(cuda=True, mps=True):
        assert resolve_device("auto") == "cuda"
    with machine(cuda=False, mps=True):
        assert resolve_device("auto") == "mps"
        assert resolve_device("mps") == "mps"
    with machine(cuda=False, mps=False):
        assert resolve_device("auto") == "cpu"
    with machine(cuda=True, mps=False):
        assert resolve_device("cpu") == "cpu"  # forcing the CPU on a GPU machine


def test_a_forced_missing_device_is_a_config_error() -> None:
    with machine(cuda=False, mps=False):
        with pytest.raises(ConfigError, match=r'train.device = "cuda" but .* no CUDA device; available here: cpu'):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match="no MPS device"):
            make_accelerator(TrainConfig(device="mps"))
    with pytest.raises(ConfigError, match="device"):
        TrainConfig.from_dict({"device": "gpu"})


def test_cpu_key_is_a_deprecated_alias() -> None:
    with pytest.warns(DeprecationWarning, match='write device = "cpu"'):
        tc = TrainConfig.from_dict({"cpu": True})
    assert tc.requested_device == "cpu"
    with pytest.warns(DeprecationWarning, match='write device = "auto"'):
        assert TrainConfig.from_dict({"cpu": False}).requested_device == "auto"
    with pytest.raises(ConfigError, match="contradicts"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        TrainConfig.from_dict({"cpu": True, "device": "cuda"})
    with machine(cuda=True, mps=False), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert make_accelerator(TrainConfig.from_dict({"cpu": True})).device.type == "cpu"


def test_run_prints_and_records_its_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_training import tiny_run

    out = tmp_path / "run"
    train(tiny_run(out, max_steps=2, batch_size=4, log_every=1, max_eval_batches=1, data={"max_documents": 2}))
    assert "1 process(es) on cpu (fp32)" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps and all(r["device"] == "cpu" and r["mixed_precision"] == "no" for r in steps)


# ------------------------------------------------------------------ loading on a device, in a dtype
@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("devices") / "ckpt"
    build_tiny("gpt").save(path)
    return path


@pytest.mark.parametrize(("dtype", "expected"), [("bf16", torch.bfloat16), (torch.float16, torch.float16)])
def test_load_and_from_hf_in_a_dtype(saved: Path, tmp_path: Path, dtype: Any, expected: torch.dtype) -> None:
    model = um.load(saved, device="auto", dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}
    assert model.device.type == "cpu"
    hf = um.to_hf(um.load(saved), tmp_path / "hf")
    assert {p.dtype for p in um.from_hf(hf, dtype=dtype).parameters()} == {expected}
    assert {p.dtype for p in um.load(saved).parameters()} == {torch.float32}  # the saved dtype by default


def test_bad_device_or_dtype_names_the_choices(saved: Path) -> None:
    with pytest.raises(InputError, match=r"dtype 'int8' .* choose one of float32, fp32, bfloat16, bf16, float16"):
        um.load(saved, dtype="int8")
    with pytest.raises(InputError, match=r"dtype .* choose one of"):
        um.from_hf(saved, dtype=torch.int64)
    with machine(cuda=False, mps=False), pytest.raises(InputError, match="no CUDA device"):
        um.load(saved, device="cuda")


def test_cli_device_and_dtype_flags(saved: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["generate", str(saved), "--prompt", "x", "--max-new-tokens", "2"]
    assert cli.main([*base, "--device", "gpu"]) != 0
    assert "--device 'gpu': choose one of auto, cpu, cuda, mps (or cuda:N)" in capsys.readouterr().err
    assert cli.main(["eval", str(saved), "--dtype", "float8"]) != 0
    assert "--dtype 'float8': choose one of auto, float32, bfloat16, float16" in capsys.readouterr().err
    with machine(cuda=False, mps=False):
        assert cli.main([*base, "--device", "cuda"]) != 0
    assert "no CUDA device" in capsys.readouterr().err
    args = cli.build_parser().parse_args([*base, "--device", "cpu", "--dtype", "bf16"])
    # the checkpoint has no tokenizer, so generate stops after loading: what load got is the point
    with mock.patch.object(um, "load", wraps=um.load) as load, contextlib.suppress(InputError):
        cli.cmd_generate(args)
    load.assert_called_once_with(str(saved), device="cpu", dtype="bf16")


# ------------------------------------------------------------------ no device reads on the hot path
T = Tensor
_READS = {T.item, T.tolist, T.__bool__, T.__int__, T.__float__, T.__index__, T.nonzero, torch.nonzero, T.masked_select}


class HostReads(TorchFunctionMode):
    """Counts the calls that read tensor values on the host (a sync on a device): ``item``, ``tolist``,
    ``bool``/``int``/``float``, ``nonzero`` and boolean-mask indexing."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        bool_index = func is T.__getitem__ and isinstance(args[1], Tensor) and args[1].dtype == torch.bool
        if func in _READS or bool_index:
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def as_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors take the paths device tensors take: reading them counts as a sync."""
    monkeypatch.setattr(sync, "HOST_DEVICES", frozenset())


def _batch(vocab: int = 50) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 8), generator=g)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :2] = 0
    labels = ids.masked_fill(torch.arange(8) < 3, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_forward_reads_nothing_on_a_device(family: str, as_device: None) -> None:
    """A training forward (padding, ignored labels, the fused loss): no read inside inputs_checked, one
    read (all range checks at once) for a user's call; results equal the CPU path's."""
    model = build_tiny(family)
    batch = _batch()
    with inputs_checked(), HostReads() as reads:
        device_loss = model(**batch, return_logits=False).loss
    assert reads.calls == []
    with HostReads() as reads:
        model(**batch, return_logits=False)
    assert reads.calls == ["tolist"]
    with pytest.raises(InputError, match="outside this model's vocabulary"):  # the user's call is still checked
        model(**{**batch, "input_ids": batch["input_ids"] + model.vocab_size}, return_logits=False)
    with mock.patch.object(sync, "HOST_DEVICES", frozenset({"cpu"})):
        torch.testing.assert_close(device_loss, model(**batch, return_logits=False).loss)


def test_checks_are_skipped_under_compile_tracing(as_device: None) -> None:
    model = build_tiny("gpt")
    with mock.patch.object(torch.compiler, "is_compiling", return_value=True), HostReads() as reads:
        model(**_batch(), return_logits=False)
    assert reads.calls == []


def test_generation_steps_read_only_to_stop(as_device: None) -> None:
    """Greedy steps on a padded batch: no read per step except the end-of-sequence check."""
    model = build_tiny("gpt")
    batch = _batch()

    def reads(new_tokens: int, eos: int | None) -> int:
        with HostReads() as r:
            model.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                           max_new_tokens=new_tokens, eos_token_id=eos, do_sample=False)  # fmt: skip
        return len(r.calls)

    assert reads(6, None) == reads(2, None)  # 4 more steps, no more reads
    assert reads(6, 10_000 % model.vocab_size) - reads(2, 10_000 % model.vocab_size) <= 4  # the stop check


def test_decoding_layout_is_for_cpu_weights_only() -> None:
    cpu_layer = Linear(64, 256)
    with decoding_layout(cpu_layer, threads=2) as laid_out:
        assert laid_out
    device_layer = Linear(64, 256, device="meta")  # stands for a CUDA weight: no copy is made of it
    with decoding_layout(device_layer, threads=2) as laid_out:
        assert not laid_out
        assert device_layer.decoding() is None


# ------------------------------------------------------------------ the GPU check script, on the CPU
def test_gpu_check_quick_runs_on_the_cpu(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    assert spec is not None and spec.loader is not None
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclasses look their module up
    spec.loader.exec_module(gpu_check)
    with mock.patch.object(gpu_check, "CUDA", False):
        status = gpu_check.main(["--quick"])
    out = capsys.readouterr().out
    table = out[out.index("unimodel gpu_check on CPU only") :]
    assert status == 0, table
    rows = {line[:34].strip(): line[34:].strip() for line in table.splitlines()[1:-1]}
    for batch in (1, 8):
        assert rows[f"generate cpu fp32 batch {batch}"].startswith("ok  ")
        assert "tokens = transformers" in rows[f"generate cpu fp32 batch {batch}"]
        assert rows[f"generate cuda bfloat16 batch {batch}"] == "skipped (no CUDA)"
    assert rows["loss cpu float16 vs fp32"].startswith("ok")
    assert rows["train 6 steps, device auto, fp32"].startswith("ok")
    assert "reproduces steps 4-6" in rows["train 6 steps, device auto, fp32"]
    assert rows["train 6 steps, device auto, fp16"] == "skipped (no CUDA)"
    # a run started without a launcher shards over a process group of its own
    assert rows["FSDP2 single-process smoke run"].startswith("ok"), rows["FSDP2 single-process smoke run"]
