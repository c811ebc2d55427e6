"""Memory bounds: models, generation calls, corpora and runs that would not fit are refused before allocating."""

from __future__ import annotations

import json
import random

import pytest
import torch

import unimodel as um
from unimodel import bounds
from unimodel.bounds import GIB, available_memory, estimate_model_bytes, memory_limit, parse_size
from unimodel.data.corpus import load_pair_corpus
from unimodel.errors import ConfigError, ResourceError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only adds waiting

TINY = {
    "gpt": dict(vocab_size=100, max_positions=32, d_model=32, n_layers=2, n_heads=4),
    "bert": dict(vocab_size=100, max_positions=32, d_model=32, n_layers=2, n_heads=4),
    "t5": dict(vocab_size=100, d_model=32, head_dim=8, d_ff=64, n_layers=2, n_heads=4),
    "bart": dict(
        vocab_size=100,
        max_positions=32,
        d_model=32,
        n_layers=1,
        n_decoder_layers=1,
        n_heads=4,
        n_decoder_heads=4,
        d_ff=64,
        d_decoder_ff=64,
    ),
}
LAYERS = {"gpt": "n_layers", "bert": "n_layers", "t5": "n_layers", "bart": "n_layers"}


def model_bytes(model: torch.nn.Module) -> int:
    unique = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in unique.values())


@pytest.mark.parametrize("family", sorted(TINY))
def test_the_estimate_is_the_built_model_and_leaves_the_random_state_alone(family):
    reg = um.get_registry()
    comp, _ = reg.resolve_model(family)
    cls = comp.load()
    config = cls.config_class.from_dict(TINY[family])
    objective = um.build_objective(comp.default_objective)
    bounds._ESTIMATES.clear()
    torch.manual_seed(1)
    state, py_state = torch.random.get_rng_state(), random.getstate()
    estimate = estimate_model_bytes(cls, config, objective)
    assert torch.equal(torch.random.get_rng_state(), state) and random.getstate() == py_state
    torch.manual_seed(1)
    model = um.build_model(family, **TINY[family])
    assert estimate is not None and estimate.complete and estimate.nbytes == model_bytes(model)


@pytest.mark.parametrize("family", sorted(TINY))
def test_a_million_layers_are_refused_after_a_few(family):
    with memory_limit(2 * GIB), pytest.raises(ResourceError) as err:
        um.build_model(family, **{**TINY[family], LAYERS[family]: 10**6})
    message = str(err.value)
    assert f"model '{family}': this needs about" in message and "more than the 2.0 GiB allowed" in message
    needed = float(message.split("needs about ")[1].split(" GiB")[0].replace(",", ""))
    assert needed > 10  # projected over the million layers from the first ones, not the partial sum at the limit


def test_a_huge_vocabulary_and_a_paired_stack_are_refused():
    with pytest.raises(ResourceError, match=r"model 'gpt': this needs at least [\d,.]+ GiB, more than the"):
        um.build_model("gpt", **{**TINY["gpt"], "vocab_size": 10**12})
    spec = {"name": "encoder-decoder", "encoder": {"name": "bert", **TINY["bert"], "n_layers": 10**7}}
    spec["decoder"] = {"name": "gpt", **TINY["gpt"]}
    with memory_limit(GIB), pytest.raises(ResourceError, match="model 'encoder-decoder': this needs about"):
        um.build_model(spec)


def test_the_limit_comes_from_the_environment_or_the_machine(monkeypatch):
    assert parse_size("8GiB") == 8 * GIB and parse_size("1.5 GB") == 1_500_000_000 and parse_size("512") == 512
    with pytest.raises(ConfigError, match="UNIMODEL_MEMORY_LIMIT='lots' is not a size"):
        parse_size("lots")
    monkeypatch.setenv("UNIMODEL_MEMORY_LIMIT", "10KiB")
    assert available_memory().nbytes == 10 << 10
    with pytest.raises(ResourceError, match=r"more than the 10.0 KiB allowed \(UNIMODEL_MEMORY_LIMIT=10KiB\)"):
        um.build_model("gpt", **TINY["gpt"])
    monkeypatch.delenv("UNIMODEL_MEMORY_LIMIT")
    machine = available_memory()
    assert machine is not None and machine.source == "available" and 0 < machine.nbytes < 1 << 50
    assert available_memory("meta") is None


def test_load_and_from_hf_refuse_a_huge_config_before_reading_weights(tmp_path):
    model = um.build_model("gpt", **TINY["gpt"])
    model.save(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["model"]["n_layers"] = 10**6
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ResourceError, match="model 'gpt': this needs about"):
        um.load(tmp_path / "ckpt")

    um.to_hf(um.build_model("gpt", **TINY["gpt"]), tmp_path / "hf")
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    hf_config["n_layer"] = 10**6
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(ResourceError, match="this needs about"):
        um.from_hf(tmp_path / "hf")
    with memory_limit(1000), pytest.raises(ResourceError, match="model.safetensors'"):  # the weights' size too
        bounds_free_read(tmp_path / "ckpt" / "model.safetensors")


def bounds_free_read(path):
    from unimodel.checkpoint import load_tensors

    return load_tensors(path)


def test_generate_refuses_a_million_beams_or_samples():
    model = um.build_model("gpt", **TINY["gpt"])
    ids = torch.randint(0, 100, (1, 4))
    with memory_limit(GIB):
        with pytest.raises(ResourceError, match=r"generate \(batch 1 x 1000000 beams or samples, 24 positions\)"):
            model.generate(ids, num_beams=10**6)
        with pytest.raises(ResourceError, match="Lower num_beams, num_return_sequences"):
            model.generate(ids, do_sample=True, num_return_sequences=10**6, seed=0)
        assert model.generate(ids, num_beams=3, max_new_tokens=4).shape == (1, 8)  # an ordinary call runs
    t5 = um.build_model("t5", **TINY["t5"])
    with memory_limit(GIB), pytest.raises(ResourceError, match="generate"):
        t5.generate(ids, num_beams=10**6, max_new_tokens=4)


def test_the_generation_estimate_covers_the_cache_it_replaces():
    model = um.build_model("gpt", **TINY["gpt"])
    ids = torch.randint(0, 100, (2, 4))
    rows, length = 2 * 5, 4 + 20
    cache = model.decoder.new_cache(rows, length, dtype=torch.float32, device=torch.device("cpu"))
    cache_bytes = bounds.tensor_bytes(cache)
    with memory_limit(cache_bytes), pytest.raises(ResourceError):
        model.generate(ids, num_beams=5)


def test_corpus_options_that_need_too_much_memory_are_refused():
    with pytest.raises(
        ResourceError, match=r"corpus 'numbers' \(n_train=1000000000000, max_value=999999999999\): this needs about"
    ):
        load_pair_corpus("numbers", "train", options={"n_train": 10**12, "max_value": 10**12 - 1})
    with memory_limit(10**6), pytest.raises(ResourceError, match="Lower the sizes in data.corpus_options"):
        load_pair_corpus("numbers", "validation", options={"n_validation": 20_000})
    with memory_limit(10**6):  # a corpus that fits runs
        assert len(load_pair_corpus("numbers", "train", options={"n_train": 50, "n_validation": 5})) == 50


def test_a_toml_run_is_refused_before_building(tmp_path, monkeypatch):
    from unimodel import training

    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 20)
    run = {
        "model": {"name": "gpt", "max_positions": 32, "d_model": 32, "n_heads": 4, "n_layers": 10**6},
        "data": {
            "paths": ["text.txt"],
            "document_unit": "line",
            "block_size": 16,
            "vocab_size": 300,
            "min_frequency": 1,
        },
        "train": {"output_dir": "run", "max_steps": 1, "batch_size": 2, "progress": False},
    }
    with memory_limit(GIB), pytest.raises(ResourceError, match="model 'gpt': this needs about"):
        training.train(run)
    run["model"]["n_layers"] = 1
    run["data"] = {"corpus": "numbers", "corpus_options": {"n_train": 10**12, "max_value": 10**12 - 1}}
    run["objective"] = {"name": "seq2seq"}
    run["model"] = {"name": "t5", **TINY["t5"]}
    with pytest.raises(ResourceError, match="corpus 'numbers'"):
        training.train(run)


def test_a_model_past_the_probe_is_measured_then_built_with_the_same_weights(monkeypatch):
    comp, _ = um.get_registry().resolve_model("gpt")
    family = comp.load()
    torch.manual_seed(3)
    direct = family.build_backbone(family.config_class.from_dict(TINY["gpt"]))
    monkeypatch.setattr(bounds, "PROBE_BYTES", 10_000)  # the tiny model passes it: the meta path runs
    bounds._ESTIMATES.clear()
    torch.manual_seed(3)
    model = um.build_model("gpt", **TINY["gpt"])
    assert any(k.startswith("unimodel_gpt.model.GPT|") for k in bounds._ESTIMATES)  # it was measured on meta
    expected = direct.decoder.state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in model.decoder.state_dict().items())
