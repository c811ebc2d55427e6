"""Every run file in examples/ loads and trains: each is parsed as it ships and trained a couple of
steps with tiny overrides (the values that decide what the example is stay as written)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest

from unimodel.config import read_config_file
from unimodel.errors import TrainingError
from unimodel.training import load_run_config, train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# t5_numbers.toml is trained from the command line, evaluated and decoded in test_seq2seq_training.py;
# the image examples (a VQ-VAE, then priors on its codes) one after the other in test_vqvae_training.py;
# the cmlm pair (teacher, distillation, student) in test_nat_cli.py
ELSEWHERE = {
    "t5_numbers.toml",
    "vqvae_shapes.toml",
    "prior_shapes.toml",
    "maskgit_shapes.toml",
    "cmlm_numbers.toml",
    "cmlm_numbers_teacher.toml",
}

TINY_MODEL = ["model.d_model=32", "model.n_layers=1", "model.n_heads=4", "model.d_ff=64"]
TINY_TRAIN = [
    "train.max_steps=2",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "train.log_every=1",
    "train.progress=false",
]
TINY_DATA = {
    "text": ["data.max_documents=8", "data.vocab_size=300", "data.block_size=32", "train.sample_tokens=4"],
    "pairs": ["data.corpus_options={n_train = 32, n_validation = 4}", "data.vocab_size=300"],
}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_overrides(path: Path) -> list[str]:
    kind = "pairs" if read_config_file(path)["data"].get("corpus") == "numbers" else "text"
    return TINY_MODEL + TINY_DATA[kind] + TINY_TRAIN


EXAMPLE_FILES = sorted(p for p in EXAMPLES.glob("*.toml") if p.name not in ELSEWHERE)


def test_every_example_is_covered():
    files = {p.name for p in EXAMPLES.glob("*.toml")}
    assert files >= ELSEWHERE and {p.name for p in EXAMPLE_FILES} == files - ELSEWHERE


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.stem for p in EXAMPLE_FILES])
def test_example_loads_as_shipped_and_trains(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example writes to runs/<file name>
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shipped = load_run_config(path)
    assert not [w for w in caught if "is deprecated" in str(w.message)], "examples use the current config names"
    assert shipped.train.output_dir == f"runs/{path.stem}" and shipped.train.overwrite
    result = train(path, overrides=tiny_overrides(path))
    out = tmp_path / "runs" / path.stem
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    assert result.model.objective_name == (shipped.objective_name or result.model.objective_name)
    assert math.isfinite(result.after.loss)


def test_overwrite_replaces_a_finished_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = EXAMPLES / "gpt_pydoc.toml"  # the README's main job; ships with train.overwrite = true
    overrides = tiny_overrides(path)
    train(path, overrides=overrides)
    out = tmp_path / "runs" / "gpt_pydoc"
    with pytest.raises(TrainingError, match="already holds a checkpoint.*train.overwrite = true"):
        train(path, overrides=[*overrides, "train.overwrite=false"])
    train(path, overrides=[*overrides, "train.max_steps=1"])
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 1
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 1  # the first run's records went with it


RECIPES = Path(__file__).resolve().parents[1] / "benchmarks" / "recipes"


def test_the_prior_benchmark_recipes_load_and_build_on_the_example_vq_vae():
    configs = {p.stem: read_config_file(p) for p in sorted(RECIPES.glob("*.toml"))}
    assert set(configs) == {"vqvae_128", "prior_128", "maskgit_128"}
    for path in RECIPES.glob("*.toml"):
        load_run_config(path)  # every value checked as `unimodel train` checks it
    example, vq = read_config_file(EXAMPLES / "vqvae_shapes.toml"), configs["vqvae_128"]
    # the example with 128 codes: only the codebook, the run folder and the evaluation cadence differ
    assert vq["model"] == {**example["model"], "codebook_size": 128}
    assert (vq["objective"], vq["data"]) == (example["objective"], example["data"])
    changed = {k for k in {*vq["train"], *example["train"]} if vq["train"].get(k) != example["train"].get(k)}
    assert changed == {"output_dir", "eval_every", "checkpoint_every"}
    for name in ("prior_128", "maskgit_128"):  # both priors model that VQ-VAE's codes, on the same data
        options = configs[name]["data"]["kind_options"]
        assert options["image_tokenizer"] == f"{vq['train']['output_dir']}/checkpoint"
    assert configs["prior_128"]["data"] == configs["maskgit_128"]["data"]
