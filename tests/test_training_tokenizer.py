"""The tokenizer a run trains: the one [data] names, else the model family's recipe."""

from __future__ import annotations

import pytest
from helpers import tiny_config

from unimodel.data.tokenizer import Tokenizer
from unimodel.registry import get_registry
from unimodel.training import train

pytestmark = pytest.mark.usefixtures("one_thread")


def run(out, family: str, **data):
    model = {"name": family, **tiny_config(family)}
    del model["vocab_size"]  # from the tokenizer
    return {
        "model": model,
        "data": {"corpus": "pydoc", "max_documents": 6, "vocab_size": 400, "block_size": 32, **data},
        "train": {
            "output_dir": str(out),
            "max_steps": 1,
            "batch_size": 4,
            "eval_every": 0,
            "checkpoint_every": 0,
            "progress": False,
            "sample_prompt": "",
        },
    }


@pytest.mark.parametrize(("family", "kind"), [("bert", "wordpiece"), ("t5", "unigram")])
def test_an_unset_data_tokenizer_trains_the_familys_recipe(tmp_path, family, kind, capsys):
    result = train(run(tmp_path / "run", family))
    saved = Tokenizer.load(tmp_path / "run" / "checkpoint")
    assert saved.kind == result.model.tokenizer.kind == kind
    assert f"trained a {kind} tokenizer" in capsys.readouterr().out
    declared = get_registry().get("model", family).tokenizer
    assert {role: saved.roles[role] for role in declared.roles} == dict(declared.roles)


def test_a_named_data_tokenizer_wins_over_the_recipe(tmp_path):
    train(run(tmp_path / "run", "bert", tokenizer="bpe"))
    tok = Tokenizer.load(tmp_path / "run" / "checkpoint")
    assert tok.kind == "bpe" and tok.roles["mask"] == "<|mask|>"
