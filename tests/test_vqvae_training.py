"""The image examples through `unimodel train`, as shipped with tiny overrides: a VQ-VAE on shapes (grid PNGs,
metrics, eval), then priors on its codes that `unimodel sample` draws from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

import unimodel as um
from unimodel import cli
from unimodel.errors import ConfigError
from unimodel.training import evaluate, load_run_config, train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY_VQ = [f"model.{k}={v}" for k, v in um.get_registry().get("model", "vqvae").tiny.items()]  # 16x16, 32 codes
TINY_DATA = ["data.corpus_options={n_train = 64, n_validation = 16, image_size = 16}"]
TINY_TRAIN = ["train.max_steps=4", "train.batch_size=16", "train.warmup_steps=1", "train.log_every=2"]
TINY_PRIOR = ["model.d_model=32", "model.n_layers=1", "model.n_heads=4", "model.d_ff=64", "model.max_positions=18"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A folder holding runs/vqvae_shapes (the examples' relative paths resolve from it), the working directory
    of every test here."""
    threads, cwd = torch.get_num_threads(), os.getcwd()
    folder = tmp_path_factory.mktemp("image_examples")
    torch.set_num_threads(1)
    os.chdir(folder)
    try:
        train(EXAMPLES / "vqvae_shapes.toml", overrides=[*TINY_VQ, *TINY_DATA, *TINY_TRAIN, "train.eval_every=2"])
        yield folder / "runs"
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


def test_the_vqvae_example_writes_reconstruction_grids_and_its_figures(runs):
    out = runs / "vqvae_shapes"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_codebook_usage" in r]
    assert [r["step"] for r in evals] == [2, 4]  # every evaluation after step 0
    for r in evals:
        assert 0 < r["val_codebook_usage"] <= 1 and r["val_codebook_usage_examples"] == 16
        assert 1 <= r["val_code_perplexity"] <= 32 and 5 < r["val_psnr"] < 60
    grid = Image.open(out / "reconstructions_step4.png")
    assert grid.size == (8 * 18 + 2, 2 * 18 + 2)  # 8 originals above, 8 reconstructions below, 2-pixel gaps
    model = um.load(out / "checkpoint")
    assert model.encode_codes(torch.rand(2, 3, 16, 16)).shape == (2, 16)
    scored = evaluate(out / "checkpoint")
    assert scored.task_metric == "codebook_usage" and scored.task_examples == 16
    assert "PSNR" in (scored.task_report or "")


def test_an_image_size_the_model_cannot_take_is_refused_before_training(runs):
    overrides = [*TINY_VQ, "data.corpus_options={n_train = 32, n_validation = 4, image_size = 32}", *TINY_TRAIN]
    with pytest.raises(ConfigError, match="the images are 3x32x32 .* takes 3x16x16"):
        train(EXAMPLES / "vqvae_shapes.toml", overrides=[*overrides, "train.output_dir=runs/wrong_size"])


@pytest.mark.parametrize(("example", "parallel"), [("prior_shapes", False), ("maskgit_shapes", True)])
def test_a_prior_example_trains_on_the_codes_and_samples_from_the_command_line(runs, example, parallel, capsys):
    shipped = load_run_config(EXAMPLES / f"{example}.toml")
    assert shipped.data.kind == "codes" and shipped.data.kind_options["class_conditional"] is True
    result = train(EXAMPLES / f"{example}.toml", overrides=[*TINY_PRIOR, *TINY_DATA, *TINY_TRAIN])
    assert result.model.vocab_size == 32 + 3 + 8 + 1  # codes, <image> <pad> <mask>, 8 shape classes, <class_none>
    checkpoint = str(runs / example / "checkpoint")
    png = runs / f"{example}.png"
    sample = ["sample", checkpoint, "--num", "4", "--class", "2", "--out", str(png)]
    assert cli.main(sample + (["--iterations", "3"] if parallel else [])) == 0
    out = capsys.readouterr().out
    assert ("parallel decoding, 3 iterations" in out) == parallel and ("autoregressive" in out) != parallel
    assert cli.main([*sample, "--guidance", "3"]) == 0  # the example trains the null class guidance needs
    assert "guidance 3" in capsys.readouterr().out
    assert cli.main([*sample, "--guidance", "0.5"]) == 2
    assert "guidance_scale must be at least 1 (1: no guidance), got 0.5" in capsys.readouterr().err
    assert Image.open(png).size == (2 * 18 + 2, 2 * 18 + 2)
    assert cli.main(["sample", checkpoint, "--class", "9", "--out", str(png)]) == 2
    assert "class 9 is not one of this prior's classes 0..7" in capsys.readouterr().err
    if not parallel:
        assert cli.main([*sample, "--iterations", "3"]) == 2
        assert "is autoregressive (sampled code by code): leave --iterations out" in capsys.readouterr().err
    assert cli.main(["sample", str(runs / "vqvae_shapes" / "checkpoint"), "--out", str(png)]) == 2
    assert "is not a prior over image codes" in capsys.readouterr().err


def test_an_image_corpus_given_to_a_text_objective_is_refused_with_the_fix(tmp_path):
    from unimodel.errors import DataError

    config = {"model": {"name": "gpt2-tiny"}, "data": {"corpus": "shapes"}, "train": {"output_dir": str(tmp_path)}}
    with pytest.raises(DataError, match="corpus 'shapes' holds images, but .* trains on text"):
        train(config)
    codes = {**config, "data": {"corpus": "shapes", "kind": "codes"}}
    with pytest.raises(ConfigError, match="needs a VQ-VAE: set data.kind_options.image_tokenizer"):
        train(codes)


def test_class_dropout_shows_a_seeded_share_of_training_images_with_the_null_class(runs, capsys):
    from unimodel_vqvae.data import CodeData

    vq = str(runs / "vqvae_shapes" / "checkpoint")
    options = f'data.kind_options={{image_tokenizer = "{vq}", class_conditional = true, class_dropout = 0.25}}'
    config = load_run_config(EXAMPLES / "prior_shapes.toml", overrides=[*TINY_DATA, options])
    raw = CodeData.read(config.data)
    layout = raw.image_tokenizer.layout
    assert layout.null_class and layout.null_class_id == 32 + 3 + 8
    data = CodeData.encode(config.data, None, raw)
    classes = torch.tensor([ids[1] for ids in data.train_ids])
    assert int((classes == layout.null_class_id).sum()) == 16  # a quarter of 64 training images
    assert not any(ids[1] == layout.null_class_id for ids in data.validation_ids)  # validation keeps its classes
    again = CodeData.encode(config.data, None, CodeData.read(config.data))
    assert again.train_ids == data.train_ids  # seeded
    for bad, message in [
        ("class_dropout = 1.0", "class_dropout must be in \\[0, 1\\), got 1"),
        ("class_dropout = 0.1, class_conditional = false", "needs class_conditional = true"),
    ]:
        wrong = f'data.kind_options={{image_tokenizer = "{vq}", {bad}}}'
        with pytest.raises(ConfigError, match=message):
            CodeData.read(load_run_config(EXAMPLES / "prior_shapes.toml", overrides=[*TINY_DATA, wrong]).data)
