"""The distributed set-up that needs no second process: engine refusals and the DDP last resort."""

from __future__ import annotations

import pytest

from unimodel.errors import ConfigError
from unimodel.training.config import TrainConfig
from unimodel.training.launch import make_accelerator
from unimodel.training.steps import prediction_weight


def test_a_deepspeed_launch_without_deepspeed_names_the_install(monkeypatch):
    pytest.importorskip("accelerate")
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here: the refusal cannot be seen")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match=r"pip install deepspeed"):
        make_accelerator(TrainConfig())


def test_find_unused_parameters_reaches_ddp_only_when_asked():
    assert make_accelerator(TrainConfig()).ddp_handler is None
    acc = make_accelerator(TrainConfig(find_unused_parameters=True))
    assert acc.ddp_handler is not None and acc.ddp_handler.find_unused_parameters


def test_prediction_weights_make_the_step_a_mean_over_all_predictions():
    # two processes x two micro-batches with 3, 1 | 4, 0 predictions: DDP averages over the 2 processes and
    # accelerate divides by the 2 accumulation steps; the weights undo both and divide by the 8 predictions
    counts = [[3, 1], [4, 0]]
    total = sum(map(sum, counts))
    means = [[2.0, 5.0], [1.0, 0.0]]  # each micro-batch's mean loss over its predictions
    step = sum(
        m * prediction_weight(n, total, world=2, accumulation=2) / 2 / 2
        for row_n, row_m in zip(counts, means)
        for n, m in zip(row_n, row_m)
    )
    assert step == pytest.approx((3 * 2.0 + 1 * 5.0 + 4 * 1.0) / 8)
    assert prediction_weight(0, 0, world=2, accumulation=1) == 0.0  # a step without predictions
