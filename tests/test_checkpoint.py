"""Checkpoint folders: what saving may replace, and what loading refuses or warns about."""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path

import pytest
import torch

import unimodel as um
from unimodel.errors import CheckpointError, InputError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only adds waiting

GPT = dict(vocab_size=100, max_positions=32, d_model=32, n_layers=1, n_heads=4)


@pytest.fixture(scope="module")
def model() -> um.Model:
    torch.manual_seed(0)
    return um.build_model("gpt", **GPT)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    return model.save(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def with_tokenizer(tmp_path_factory) -> Path:
    from unimodel.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.train_bpe(["the quick brown fox"] * 10, vocab_size=300, min_frequency=1)
    model = um.build_model("gpt", **{**GPT, "vocab_size": tokenizer.vocab_size}, tokenizer=tokenizer)
    return model.save(tmp_path_factory.mktemp("tok") / "model")


def copy_of(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / folder.name
    dst.mkdir()
    for f in folder.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


# ------------------------------------------------------------------ saving
@pytest.mark.parametrize("writer", ["save", "to_hf"])
def test_a_folder_of_other_files_is_refused_and_left_intact(model, tmp_path, writer):
    write = model.save if writer == "save" else lambda p, **kw: um.to_hf(model, p, **kw)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    (folder / "vocab.txt").write_text("a file name a checkpoint format also uses")
    with pytest.raises(CheckpointError, match=r"is not a unimodel or Hugging Face checkpoint and is not empty"):
        write(folder)
    assert sorted(os.listdir(folder)) == ["thesis.tex", "vocab.txt"]
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind

    write(folder, overwrite=True)  # replaces only what a checkpoint owns
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert not (folder / "vocab.txt").exists()  # a checkpoint file name: replaced by the new checkpoint's files
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    write(folder)  # now a checkpoint holding one other file: replaced again, the other file kept
    assert (folder / "thesis.tex").read_text() == "years of work"
    loaded = um.load(folder)
    assert torch.equal(loaded.decoder.wte.weight, model.decoder.wte.weight)


def test_an_existing_checkpoint_is_replaced_whole(model, saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    (folder / "tokenizer.json").write_text("{}")  # a file of the old checkpoint the new one does not have
    (folder / "trainer_state.json").write_text("{}")
    model.save(folder)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    with pytest.raises(CheckpointError, match="is a file"):
        model.save(folder / "config.json")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_new_folders_get_the_permissions_the_umask_gives(model, tmp_path, umask):
    old = os.umask(umask)
    try:
        path = model.save(tmp_path / "new")
        um.to_hf(model, tmp_path / "hf")
    finally:
        os.umask(old)
    for folder in (path, tmp_path / "hf"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask


# ------------------------------------------------------------------ arguments of the wrong type
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, p: um.load(123), "unimodel.load: path must be a folder path.*got int 123"),
        (lambda m, p: um.load(""), "unimodel.load: path is an empty string"),
        (lambda m, p: um.load(p, device="nowhere"), "unimodel.load: device 'nowhere' is not a device"),
        (lambda m, p: um.load(p, objective=5), "unimodel.load: objective must be a name or a dict"),
        (lambda m, p: um.from_hf(1.5), "unimodel.from_hf: path must be a folder path.*got float"),
        (lambda m, p: um.from_hf(p, device=[0]), "unimodel.from_hf: device"),
        (lambda m, p: um.to_hf("x", p), "model must be a unimodel Model, got str 'x'"),
        (lambda m, p: um.to_hf(m, None), "unimodel.to_hf: path must be a folder path.*got NoneType"),
        (lambda m, p: m.save(None), "save: path must be a folder path.*got NoneType"),
        (lambda m, p: m.save(b"bytes"), "save: path must be a folder path.*got bytes"),
    ],
)
def test_arguments_of_the_wrong_type_are_input_errors(model, saved, call, message):
    with pytest.raises(InputError, match=message):
        call(model, saved)


def test_a_device_this_machine_lacks_is_named(saved):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match="this torch sees no CUDA device; use 'cpu'"):
        um.load(saved, device="cuda")


# ------------------------------------------------------------------ loading
def test_a_tensor_relabelled_with_another_dtype_is_refused(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    weights = folder / "model.safetensors"
    raw = weights.read_bytes()
    assert b'"dtype":"F32"' in raw
    weights.write_bytes(raw.replace(b'"dtype":"F32"', b'"dtype":"I32"', 1))  # same size, other meaning
    with pytest.raises(CheckpointError, match=r"dtype mismatches .*: checkpoint torch.int32 vs model torch.float32"):
        um.load(folder)


def test_non_finite_weights_load_with_a_warning_naming_them(model, tmp_path):
    broken = um.build_model("gpt", **GPT)
    with torch.no_grad():
        broken.decoder.wte.weight[3, 1] = float("nan")
        broken.decoder.norm.bias[0] = float("-inf")
    broken.save(tmp_path / "nan")
    with pytest.warns(UserWarning, match=r"2 tensor\(s\) hold NaN or infinite values \(decoder.norm.bias, decoder.wte"):
        um.load(tmp_path / "nan")
    um.to_hf(broken, tmp_path / "hf")
    with pytest.warns(UserWarning, match="decoder.norm.bias"):
        um.from_hf(tmp_path / "hf")
    with warnings.catch_warnings():  # finite weights: silent
        warnings.simplefilter("error")
        um.load(model.save(tmp_path / "fine"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "must hold a JSON object, got list"),
        ('{"unimodel_roles": "eos"}', "unimodel_roles must map role names to token strings"),
        ('{"unimodel_roles": {"eos": 7}}', "unimodel_roles must map role names to token strings"),
        ('{"unimodel_roles": {"eos": "no-such-token"}}', "names token 'no-such-token', which is not in the vocab"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_a_malformed_tokenizer_config_is_a_checkpoint_error(with_tokenizer, tmp_path, content, message):
    folder = copy_of(with_tokenizer, tmp_path)
    (folder / "tokenizer_config.json").write_text(content)
    with pytest.raises(CheckpointError, match=message):
        um.load(folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(objective=5), "'objective' must be a JSON object with a 'name'"),
        (lambda c: c.update(objective=["clm"]), "'objective' must be a JSON object with a 'name'"),
        (lambda c: c["objective"].update(name=3), "'objective' must be a JSON object with a 'name'"),
        (lambda c: c.update(model="gpt"), "'model' must be a JSON object with a 'name'"),
        (lambda c: c["model"].pop("name"), "'model' must be a JSON object with a 'name'"),
        (lambda c: c["model"].update(init_std=float("nan")), "'init_std' must be a finite number, got nan"),
    ],
)
def test_a_malformed_config_json_is_a_checkpoint_error(saved, tmp_path, edit, message):
    folder = copy_of(saved, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))  # json writes NaN as NaN, as Python reads it
    with pytest.raises(CheckpointError, match=message):
        um.load(folder)


def test_a_malformed_hugging_face_index_is_a_checkpoint_error(model, tmp_path):
    folder = um.to_hf(model, tmp_path / "hf")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text('{"weight_map": ["model-00001-of-00001.safetensors"]}')
    with pytest.raises(CheckpointError, match="weight_map must map tensor names to shard file names"):
        um.from_hf(folder)
