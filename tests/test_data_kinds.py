"""Data kinds are registered components; the trainer uses one only through the DataKind interface."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
import unimodel_gpt
from unimodel_gpt.objectives import CausalLM

import unimodel.builtin
from unimodel.data.dataset import PackedData, PairData, load_data
from unimodel.data.kinds import DataKind, RawData, Sample, TaskMetric, data_kind
from unimodel.errors import ComponentNotFoundError
from unimodel.registry import Component, Registry, set_registry
from unimodel.training import load_run_config, train

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class ShortShare(TaskMetric):
    """Share of validation lines shorter than 8 tokens: a metric that needs no model output."""

    name: ClassVar[str] = "short_share"
    label: ClassVar[str] = "short lines"
    short: int
    total: int

    @property
    def score(self) -> float:
        return self.short / self.total

    def summary(self) -> str:
        return f"short lines {self.score:.2%}"

    def report(self) -> str:
        return f"short lines: {self.score:.2%}"


class LineData(DataKind):
    """Each line of the documents is one example, held as a tensor of ids (not a list)."""

    unit: ClassVar[str] = "lines"

    def __init__(self, train: list[torch.Tensor], validation: list[torch.Tensor]) -> None:
        self.train, self.validation = train, validation

    @classmethod
    def read(cls, config, *, objective=None, registry=None) -> RawData:
        docs = load_data(config, kind="text", objective=objective, registry=registry)
        lines = [
            [ln for d in part for ln in d.splitlines() if len(ln.split()) > 2] for part in (docs.train, docs.validation)
        ]
        return RawData("lines", lines[0], lines[1])

    @classmethod
    def encode(cls, config, tokenizer, raw) -> LineData:
        def ids(lines: list[str]) -> list[torch.Tensor]:
            return [torch.tensor(t[: config.block_size]) for t in tokenizer.encode_batch(lines)]

        return LineData(ids(raw.train), ids(raw.validation))

    @classmethod
    def evaluation_examples(cls, config, tokenizer, items, model) -> list[dict[str, Any]]:
        return [{"input_ids": torch.tensor(t)} for t in tokenizer.encode_batch(list(items))]

    @property
    def n_train(self) -> int:
        return len(self.train)

    def example(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.train[i]}

    @property
    def validation_examples(self) -> list[dict[str, Any]]:
        return [{"input_ids": t} for t in self.validation]

    def n_tokens(self, indices: Sequence[int]) -> int:
        return sum(int(self.train[i].numel()) for i in indices)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([t.tolist() for t in self.train]).encode()).hexdigest()

    def describe(self) -> str:
        return f"{self.n_train} lines for training"

    def epoch_order(self, epoch: int, *, seed: int) -> list[int]:
        return list(range(self.n_train))[::-1]  # any order the kind chooses: here the last line first

    @classmethod
    def task_metric(
        cls, model, examples, *, tokenizer, batch_size, accelerator=None, generate_options=None
    ) -> TaskMetric:
        return ShortShare(sum(int(ex["input_ids"].numel()) < 8 for ex in examples), len(examples))

    def sample(self, model, tokenizer, *, prompt, generation, seed, metric) -> Sample:
        return Sample("lines", f"{self.n_train} lines, {metric.total if metric else 0} scored")


class LineCLM(CausalLM):
    """Causal LM on lines: its examples hold tensors, which prepare turns into lists."""

    data_kind = "lines"

    def prepare(self, examples, *, tokenizer=None, generator=None):
        return super().prepare([{"input_ids": ex["input_ids"].tolist()} for ex in examples], tokenizer=tokenizer)


class LinesPlugin:
    @unimodel.hookimpl
    def unimodel_components(self) -> list[Component]:
        return [
            Component(kind="data", name="lines", target="um_test_lines:LineData", summary="one line, one example"),
            Component(
                kind="objective",
                name="line_clm",
                target="um_test_lines:LineCLM",
                summary="causal LM on lines",
                requires=("decoder_only", "causal", "lm_head"),
            ),
            Component(
                kind="objective",
                name="odd_clm",
                target="um_test_lines:OddCLM",
                summary="names a data kind nobody registered",
                requires=("decoder_only", "causal", "lm_head"),
            ),
        ]


class OddCLM(CausalLM):
    data_kind = "linez"


@pytest.fixture
def registry(monkeypatch):
    module = types.ModuleType("um_test_lines")
    module.LineData, module.LineCLM, module.OddCLM = LineData, LineCLM, OddCLM  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "um_test_lines", module)
    reg = Registry(discover=False)
    reg.add_plugin(unimodel.builtin, "core")
    reg.add_plugin(unimodel_gpt, "gpt")
    reg.add_plugin(LinesPlugin(), "lines")
    old = set_registry(reg)
    yield reg
    set_registry(old)


def run(tmp_path, objective: str) -> dict[str, Any]:
    return {
        "model": {"name": "gpt", "max_positions": 32, "d_model": 32, "n_layers": 1, "n_heads": 4},
        "objective": {"name": objective},
        "data": {"corpus": "pydoc", "max_documents": 3, "vocab_size": 300, "block_size": 16},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 3,
            "batch_size": 4,
            "eval_every": 0,
            "log_every": 1,
            "progress": False,
            "exact_match_examples": 6,
        },
    }


def test_the_core_registers_text_and_pairs():
    assert data_kind("text") is PackedData and data_kind("pairs") is PairData
    with pytest.raises(ComponentNotFoundError, match="no data named 'pair'.*Did you mean 'pairs'"):
        data_kind("pair")


def test_a_plugin_data_kind_trains_through_the_protocol(registry, tmp_path, capsys):
    config = run(tmp_path, "line_clm")
    lines = LineData.read(load_run_config(config).data).train
    result = train(config)
    assert result.step == 3 and f"data: {len(lines)} lines for training" in capsys.readouterr().out
    assert result.after is not None and result.after.task_metric == "short_share" and result.after.task_examples == 6
    assert result.sample == f"{len(lines)} lines, 6 scored"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_short_share"] == result.after.task_score and records[-1]["val_short_share_examples"] == 6
    # the kind chose the order (last line first) and counted the tokens: 3 steps of 4 lines
    tokenizer = result.model.tokenizer
    used = [len(ids[:16]) for ids in tokenizer.encode_batch(lines[::-1][:12])]
    assert result.tokens_seen == sum(used) and [r["tokens"] for r in records if "loss" in r][-1] == sum(used)


def test_an_unknown_data_kind_is_reported_when_the_run_is_loaded(registry, tmp_path):
    with pytest.raises(ComponentNotFoundError, match="no data named 'linez'.*Did you mean 'lines'"):
        load_run_config(run(tmp_path, "odd_clm"))
