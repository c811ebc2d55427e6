"""Checkpoint and Hugging Face folders as users find them on disk: sharded weights, damaged files."""

import json

import pytest
import torch
import transformers
from helpers import build_tiny, randomize_
from safetensors.torch import load_file, save_file

import unimodel as um
from unimodel.errors import CheckpointError

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def hf_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    return randomize_(transformers.GPT2LMHeadModel(config).eval())


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_sharded_folder_loads_like_a_single_file(hf_gpt2, tmp_path):
    hf_gpt2.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    hf_gpt2.save_pretrained(tmp_path / "single")
    index = json.loads((tmp_path / "sharded" / INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (tmp_path / "sharded" / "model.safetensors").exists()
    ids = torch.randint(0, 99, (2, 9))
    assert torch.equal(logits(um.from_hf(tmp_path / "sharded"), ids), logits(um.from_hf(tmp_path / "single"), ids))
    assert (logits(um.load(tmp_path / "sharded"), ids) - hf_gpt2(ids).logits).abs().max() < 1e-4


@pytest.mark.parametrize("shard", ["../outside.safetensors", "sub/model-1.safetensors", ".hidden.safetensors"])
def test_a_shard_path_leaving_the_folder_is_refused(hf_gpt2, tmp_path, shard):
    folder = tmp_path / "hf"
    hf_gpt2.save_pretrained(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    save_file(tensors, str(tmp_path / "outside.safetensors"), metadata={"format": "pt"})  # a readable target
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(tensors, shard)}))
    with pytest.raises(CheckpointError, match=rf"names shard '{shard}' outside the folder"):
        um.from_hf(folder)


def test_damaged_hf_folders_are_named(hf_gpt2, tmp_path):
    folder = tmp_path / "hf"
    hf_gpt2.save_pretrained(folder)
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors' cannot be read as safetensors \(truncated or"):
        um.from_hf(folder)
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config[: len(config) // 2])
    with pytest.raises(CheckpointError, match=r"config\.json' is not valid JSON \(truncated or corrupt\?\)"):
        um.from_hf(folder)
    (folder / "model.safetensors").unlink()
    (folder / "config.json").write_text(config)
    (folder / INDEX).write_text('{"weight_map": {"a": ')
    with pytest.raises(CheckpointError, match=r"index\.json' is not valid JSON"):
        um.from_hf(folder)


def test_damaged_unimodel_checkpoints_are_named(tmp_path):
    build_tiny("gpt").save(tmp_path)
    config = (tmp_path / "config.json").read_text()
    weights = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(weights[:100])
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        um.load(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(weights)
    (tmp_path / "config.json").write_text(config[:-40])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        um.load(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        um.load(tmp_path)
