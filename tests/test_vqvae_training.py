"""Images through `unimodel train`: a VQ-VAE on shapes (grid PNGs, metrics), then priors on its codes."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import unimodel as um
from unimodel import cli
from unimodel.errors import ConfigError
from unimodel.training import evaluate, train

TINY = dict(um.get_registry().get("model", "vqvae").tiny)  # 16x16 RGB, 4x4 grid, 32 codes
SHAPES = {"corpus": "shapes", "corpus_options": {"n_train": 64, "n_validation": 16, "image_size": 16}}
TRAIN = {"max_steps": 4, "batch_size": 16, "learning_rate": 3e-3, "warmup_steps": 1, "log_every": 2}


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("vq_run")
    config = {
        "model": {"name": "vqvae", **TINY},
        "objective": {"name": "vq_reconstruction"},
        "data": SHAPES,
        "train": {**TRAIN, "output_dir": str(out), "eval_every": 2},
    }
    return out, train(config)


def test_a_vqvae_trains_on_shapes_and_writes_reconstruction_grids(vq_run):
    out, _ = vq_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_codebook_usage" in r]
    assert [r["step"] for r in evals] == [2, 4]  # every evaluation after step 0
    for r in evals:
        assert 0 < r["val_codebook_usage"] <= 1 and r["val_codebook_usage_examples"] == 16
        assert 1 <= r["val_code_perplexity"] <= 32 and 5 < r["val_psnr"] < 60
    grid = Image.open(out / "reconstructions_step4.png")
    assert grid.size == (8 * 18 + 2, 2 * 18 + 2)  # 8 originals above, 8 reconstructions below, 2-pixel gaps
    model = um.load(out / "checkpoint")
    codes = model.encode_codes(torch.rand(2, 3, 16, 16))
    assert codes.shape == (2, 16)
    scored = evaluate(out / "checkpoint")
    assert scored.task_metric == "codebook_usage" and scored.task_examples == 16
    assert "PSNR" in (scored.task_report or "")


def test_an_image_size_the_model_cannot_take_is_refused_before_training(tmp_path):
    config = {
        "model": {"name": "vqvae", **TINY},
        "data": {**SHAPES, "corpus_options": {**SHAPES["corpus_options"], "image_size": 32}},
        "train": {**TRAIN, "output_dir": str(tmp_path)},
    }
    with pytest.raises(ConfigError, match="the images are 3x32x32 .* takes 3x16x16"):
        train(config)


@pytest.mark.parametrize(("model", "objective", "parallel"), [("gpt2-tiny", "clm", False)])
def test_priors_train_on_codes_and_sample_from_the_command_line(vq_run, tmp_path, model, objective, parallel, capsys):
    vq_dir = vq_run[0] / "checkpoint"
    config = {
        "model": {"name": model, "max_positions": 32},
        "objective": {"name": objective},
        "data": {
            **SHAPES,
            "kind": "codes",
            "kind_options": {"image_tokenizer": str(vq_dir), "class_conditional": True},
        },
        "train": {**TRAIN, "output_dir": str(tmp_path / "prior"), "eval_every": 4},
    }
    result = train(config)
    assert result.model.vocab_size == 32 + 3 + 8  # codes, <image> <pad> <mask>, 8 shape classes
    out_png = tmp_path / "grid.png"
    status = cli.main(
        ["sample", str(tmp_path / "prior" / "checkpoint"), "--num", "4", "--class", "2", "--out", str(out_png)]
    )
    assert status == 0, capsys.readouterr().err
    assert ("parallel decoding" in capsys.readouterr().out) == parallel
    assert Image.open(out_png).size == (2 * 18 + 2, 2 * 18 + 2)
    assert cli.main(["sample", str(tmp_path / "prior" / "checkpoint"), "--class", "9", "--out", str(out_png)]) == 2
    assert "class 9 is not one of this prior's classes 0..7" in capsys.readouterr().err
