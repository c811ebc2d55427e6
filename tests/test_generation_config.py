"""GenerationConfig: checked like every config, stored with a checkpoint, overridden per call; generate_text."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

import unimodel as um
import unimodel.generation.text as text_module
from unimodel import cli
from unimodel.data.dataset import PackedData
from unimodel.data.exact_match import exact_match
from unimodel.data.tokenizer import Tokenizer
from unimodel.errors import CheckpointError, ConfigError, InputError
from unimodel.generation import GenerationConfig, GenerationOptionError, generate_text

TINY_GPT = dict(max_positions=64, d_model=32, n_layers=2, n_heads=4)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_bpe(["the quick brown fox jumps over the lazy dog"] * 20, vocab_size=300, min_frequency=2)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    gpt = um.build_model("gpt", vocab_size=tokenizer.vocab_size, **TINY_GPT, tokenizer=tokenizer)
    for p in gpt.parameters():  # peaked distributions: continuations vary, as a trained model's do
        p.data.normal_(0, 0.3)
    return gpt.eval()


# ------------------------------------------------------------------ checks
@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"do_sample": True, "temperature": 0.0}, "temperature must be > 0 when sampling"),
        ({"strategy": "sample", "temperature": -1.0}, "temperature must be > 0 when sampling"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
        ({"num_beams": 0}, "num_beams must be >= 1"),
        ({"num_return_sequences": 2}, "greedy decoding returns one sequence"),
        ({"num_beams": 2, "num_return_sequences": 3}, "cannot exceed num_beams"),
        ({"top_k": 0}, "top_k must be >= 1"),
        ({"max_new_tokens": -1}, "max_new_tokens must be >= 0"),
        ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size must be >= 0"),
        ({"early_stopping": "sometimes"}, "early_stopping must be True, False or 'never'"),
        ({"eos_token_id": [2, -1]}, "eos_token_id must be a token id"),
        ({"temperature": math.nan}, "temperature must be a finite number"),
        ({"top_p": math.nan}, "top_p must be a finite number"),
        ({"repetition_penalty": math.inf}, "repetition_penalty must be a finite number"),
        ({"length_penalty": -math.inf}, "length_penalty must be a finite number"),
    ],
)
def test_out_of_range_options_are_refused_naming_the_option(values, match):
    with pytest.raises(GenerationOptionError, match=match) as info:
        GenerationConfig(**values)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, InputError)
    assert info.value.field in values


def test_unknown_keys_get_a_did_you_mean_and_types_are_checked():
    with pytest.raises(ConfigError, match=r"unknown key 'max_new_token'\. Did you mean 'max_new_tokens'"):
        GenerationConfig.from_dict({"max_new_token": 5})
    with pytest.raises(ConfigError, match="field 'num_beams' must be an integer"):
        GenerationConfig(num_beams="4")  # type: ignore[arg-type]
    assert GenerationConfig(temperature=0.0).temperature == 0.0  # greedy: the temperature does not apply
    assert GenerationConfig(eos_token_id=[1, 2]).eos_token_ids == (1, 2)
    assert GenerationConfig.from_dict(GenerationConfig(num_beams=3, top_p=0.5).to_dict()) == GenerationConfig(
        num_beams=3, top_p=0.5
    )


# ------------------------------------------------------------------ stored defaults
def test_model_defaults_come_from_its_special_tokens(model):
    config = model.generation_config
    assert config.eos_token_id == model.special_tokens["eos"] and config.bos_token_id == model.special_tokens["bos"]
    assert (config.num_beams, config.do_sample, config.max_new_tokens) == (1, False, None)


def test_generation_defaults_round_trip_through_a_checkpoint_and_calls_override_one_field(model, tmp_path):
    ids = torch.tensor([[5, 17, 40, 9]])
    stored = model.generation_config.replace(num_beams=3, max_new_tokens=6, no_repeat_ngram_size=2)
    model.generation_config = stored
    try:
        model.save(tmp_path / "ck")
    finally:
        model.generation_config = model.generation_config.replace(num_beams=1, max_new_tokens=None)
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["generation"]["num_beams"] == 3
    loaded = um.load(tmp_path / "ck")
    assert loaded.generation_config == stored
    explicit = dict(num_beams=3, max_new_tokens=6, no_repeat_ngram_size=2)
    assert torch.equal(loaded.generate(ids), model.generate(ids, **explicit))
    # a call overrides only the fields it names: greedy, the stored length and n-gram ban kept
    greedy = loaded.generate(ids, num_beams=1)
    assert torch.equal(greedy, model.generate(ids, **{**explicit, "num_beams": 1}))
    assert greedy.shape[1] == ids.shape[1] + 6
    assert not torch.equal(greedy, loaded.generate(ids, num_beams=1, no_repeat_ngram_size=0))


def test_a_checkpoint_without_generation_defaults_loads_and_a_bad_one_is_refused(model, tmp_path):
    model.save(tmp_path / "ck")
    config_file = tmp_path / "ck" / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("generation")  # a checkpoint written before generation defaults were stored
    config_file.write_text(json.dumps(config))
    assert um.load(tmp_path / "ck").generation_config == GenerationConfig.from_special_tokens(model.special_tokens)
    config["generation"] = {"num_beam": 2}
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unknown key 'num_beam'\. Did you mean 'num_beams'"):
        um.load(tmp_path / "ck")


# ------------------------------------------------------------------ generate_text
def test_generate_text_continues_the_prompt_and_streams_what_it_returns(model, tokenizer):
    prompt = "the quick"
    ids = torch.tensor([tokenizer.encode(prompt)])
    new = model.generate(ids, max_new_tokens=5)[0, ids.shape[1] :].tolist()
    stream = io.StringIO()
    text = generate_text(model, prompt, max_new_tokens=5, stream=stream)
    assert text == prompt + tokenizer.decode(new) == stream.getvalue()
    assert generate_text(model, prompt, max_new_tokens=5, num_beams=2, stream=io.StringIO()).startswith(prompt)


def test_the_cli_the_trainer_sample_and_exact_match_share_generate_text(
    model, tokenizer, tmp_path, monkeypatch, capsys
):
    calls: list[int] = []
    real = text_module._generate

    def spy(m, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return real(m, prompts, *args, **kwargs)

    monkeypatch.setattr(text_module, "_generate", spy)
    model.save(tmp_path / "ck")
    assert cli.main(["generate", str(tmp_path / "ck"), "--prompt", "the", "--greedy", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out == generate_text(model, "the", max_new_tokens=4) + "\n"
    assert calls == [1, 1]

    blocks = PackedData(torch.zeros(1, 4, dtype=torch.long), [], 4, 1, 0)
    sample = blocks.sample(
        model,
        tokenizer,
        prompt="the",
        generation=GenerationConfig(max_new_tokens=3, do_sample=True),
        seed=0,
        metric=None,
    )
    assert sample is not None and sample.text.startswith("the") and calls == [1, 1, 1]

    t5 = um.build_model("t5-tiny", vocab_size=tokenizer.vocab_size, objective="seq2seq", tokenizer=tokenizer).eval()
    pairs = [
        {"source": tokenizer.encode(s), "target": tokenizer.encode(t)} for s, t in [("the", "fox"), ("dog", "the")]
    ]
    assert exact_match(t5, pairs, tokenizer=tokenizer, batch_size=2).total == 2
    assert calls == [1, 1, 1, 2]  # one batch of two sources


def test_cli_flags_are_named_in_generation_option_errors(model, tmp_path, capsys):
    model.save(tmp_path / "ck")
    assert cli.main(["generate", str(tmp_path / "ck"), "--prompt", "x", "--top-p", "nan"]) == 2
    assert "--top-p must be a finite number" in capsys.readouterr().err
    assert cli.main(["generate", str(tmp_path / "ck"), "--prompt", "x", "--temperature", "0"]) == 2
    assert "--temperature must be > 0 when sampling" in capsys.readouterr().err
