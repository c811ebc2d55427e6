"""Hugging Face generation defaults: read by from_hf, written by to_hf, and a bare generate that gives
transformers' tokens. Tiny random GPT-2, T5 and BART built locally, every tensor randomised."""

import json

import pytest
import torch
import transformers
from helpers import assert_peaked, randomize_

import unimodel as um
from unimodel import cli
from unimodel.data.tokenizer import Tokenizer
from unimodel.errors import CheckpointError
from unimodel.generation import GenerationConfig, generate_text

pytestmark = pytest.mark.usefixtures("one_thread")

GPT2 = dict(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=98, eos_token_id=7)
T5 = dict(vocab_size=99, d_model=32, d_ff=37, num_layers=2, num_heads=4, decoder_start_token_id=0)
BART = dict(
    vocab_size=99,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=37,
    decoder_ffn_dim=37,
    max_position_embeddings=64,
)
#: what bart-large-cnn ships in its config.json (lengths scaled to the tiny position table)
BART_CNN = dict(
    forced_bos_token_id=0,
    forced_eos_token_id=2,
    num_beams=4,
    no_repeat_ngram_size=3,
    early_stopping=True,
    length_penalty=2.0,
    min_length=8,
    max_length=20,
)


# Large initial weights make the random models' next-token distributions peaked, so that no two
# tokens tie up to float rounding and the tokens compare exactly.
@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2, initializer_range=0.3)).eval()
    return randomize_(model, scale=0.3)


@pytest.fixture(scope="module")
def t5():
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**T5, initializer_factor=3.0)).eval()
    return randomize_(model, scale=0.3)


@pytest.fixture(scope="module")
def bart():
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(transformers.BartConfig(**BART, init_std=0.3)).eval()
    randomize_(model, scale=0.3)
    with torch.no_grad():
        model.final_logits_bias[0, 2] += 2.0  # EOS wins now and then, so lengths and early stopping matter
    return model


def write(hf, folder, *, generation=None, in_config=None):
    """``hf`` saved by transformers, with ``generation`` merged into its generation_config.json, or with
    that file removed and ``in_config`` merged into config.json (as older hub folders keep them)."""
    hf.save_pretrained(folder)
    gen_file, cfg_file = folder / "generation_config.json", folder / "config.json"
    if generation is not None:
        gen_file.write_text(json.dumps({**json.loads(gen_file.read_text()), **generation}))
    if in_config is not None:
        gen_file.unlink()
        cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **in_config}))
    return folder


def bare_generate(folder, ids, *, seed=None):
    """transformers' and unimodel's bare ``generate(ids)`` on the same folder (seeded alike when sampling)."""
    hf = type_of(folder).from_pretrained(folder).eval()
    model = um.from_hf(folder)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        ref = hf.generate(ids)
    if seed is not None:
        torch.manual_seed(seed)
    return ref, model.generate(ids), model


def type_of(folder):
    arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    return getattr(transformers, arch)


def plain(model):
    """The model's special tokens with every other generation option at unimodel's default."""
    return GenerationConfig.from_special_tokens(model.special_tokens)


def prompts(n, length, low, seed):
    return torch.randint(low, 90, (n, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ parity of a bare generate
def test_gpt2_generation_config_json(gpt2, tmp_path):
    folder = write(gpt2, tmp_path, generation=dict(no_repeat_ngram_size=2, repetition_penalty=1.5, max_length=18))
    ids = prompts(3, 6, 10, 0)
    with torch.no_grad():
        assert_peaked(gpt2(ids).logits)
    ref, ours, model = bare_generate(folder, ids)
    assert ours.tolist() == ref.tolist()
    assert ref.shape[1] == 18  # max_length counts the prompt
    assert not torch.equal(model.generate(ids, generation_config=plain(model)), ours)  # the settings matter


def test_gpt2_settings_in_config_json_with_beams(gpt2, tmp_path):
    settings = dict(no_repeat_ngram_size=3, repetition_penalty=0.8, max_length=25, num_beams=3, early_stopping="never")
    # EOS 27, a token this model likes, so that hypotheses end
    folder = write(gpt2, tmp_path, in_config={**settings, "length_penalty": -0.5, "eos_token_id": 27})
    ids = prompts(3, 6, 10, 1)
    ref, ours, model = bare_generate(folder, ids)
    assert ours.tolist() == ref.tolist()
    assert model.generation_config.num_beams == 3 and model.generation_config.early_stopping == "never"
    assert ref.shape[1] < 25 or (ref == 27).any()  # a hypothesis ended with EOS


@pytest.mark.parametrize("early_stopping", [False, True, "never"])
def test_t5_beams_length_penalty_min_length(t5, tmp_path, early_stopping):
    settings = dict(num_beams=3, length_penalty=0.6, min_length=6, max_length=14, early_stopping=early_stopping)
    folder = write(t5, tmp_path, generation=settings)
    ids = prompts(3, 9, 3, 2)
    ref, ours, model = bare_generate(folder, ids)
    assert ours.tolist() == ref.tolist()
    without_min = model.generate(ids, min_length=0)
    assert not torch.equal(without_min, ours)  # min_length held EOS back


def test_beam_search_fills_with_eos_when_the_pad_id_is_0(t5, tmp_path):
    """transformers fills a finished beam hypothesis with ``pad_token_id or eos_token_id[0]``: with T5's
    pad id 0 that is EOS."""
    folder = write(t5, tmp_path, generation=dict(num_beams=3, max_length=14))
    ids = prompts(3, 9, 3, 2)
    ref, ours, model = bare_generate(folder, ids)
    assert model.generation_config.pad_token_id == 0
    finished = [i for i, row in enumerate(ref.tolist()) if 1 in row[1:] and row.index(1, 1) < len(row) - 1]
    assert finished, "the test needs a hypothesis that ends before the longest"
    for i in finished:
        end = ref[i].tolist().index(1, 1)
        assert ours[i, end:].tolist() == [1] * (ref.shape[1] - end)
    assert ours.tolist() == ref.tolist()


def test_bart_as_bart_large_cnn_ships(bart, tmp_path):
    """bart-large-cnn keeps its generation settings in config.json: forced BOS and EOS, 4 beams,
    no repeated trigrams, early stopping, length penalty 2, min and max length."""
    folder = write(bart, tmp_path, in_config=BART_CNN)
    ids = prompts(3, 9, 3, 3)
    with torch.no_grad():
        assert_peaked(bart(input_ids=ids, decoder_input_ids=ids).logits)
    ref, ours, model = bare_generate(folder, ids)
    assert ours.tolist() == ref.tolist()
    assert (ref[:, 1] == 0).all()  # forced BOS after the decoder start token
    assert not torch.equal(model.generate(ids, generation_config=plain(model)), ours)


def test_bart_default_forced_eos(bart, tmp_path):
    """A BART folder as transformers saves it carries forced_eos_token_id 2: the last token before the
    default max_length (20 new) is EOS."""
    folder = write(bart, tmp_path)
    assert json.loads((folder / "generation_config.json").read_text())["forced_eos_token_id"] == 2
    ids = prompts(3, 9, 3, 4)
    ref, ours, model = bare_generate(folder, ids)
    assert ours.tolist() == ref.tolist()
    assert ref.shape[1] == 21 and ref[ref[:, -1] != 1, -1].eq(2).all()
    full_rows = ref[:, -1] != 1
    assert full_rows.any(), "the test needs a row that runs to max_length"
    free = model.generate(ids, generation_config=model.generation_config.replace(forced_eos_token_id=None))
    assert not torch.equal(free[full_rows], ref[full_rows])


def test_sampling_uses_hugging_face_top_k_default(gpt2, tmp_path):
    """A file that asks for sampling and sets no top_k samples from the 50 most likely tokens."""
    folder = write(gpt2, tmp_path, generation=dict(do_sample=True, temperature=2.0))
    ids = prompts(3, 6, 10, 5)
    ref, ours, model = bare_generate(folder, ids, seed=11)
    assert model.generation_config.top_k == 50
    assert ours.tolist() == ref.tolist()
    torch.manual_seed(11)
    every_token = model.generation_config.replace(top_k=None)
    assert not torch.equal(model.generate(ids, generation_config=every_token), ours)


def test_beam_sampling_ranks_candidates_like_transformers(t5, tmp_path):
    """Beam sampling sorts the sampled candidates best first before the nb best may finish."""
    folder = write(t5, tmp_path, generation=dict(do_sample=True, num_beams=4, temperature=1.5, max_length=12))
    ids = prompts(4, 9, 3, 6)
    for seed in range(3):
        ref, ours, _ = bare_generate(folder, ids, seed=seed)
        assert ours.tolist() == ref.tolist(), f"seed {seed}"


# ------------------------------------------------------------------ reading
def test_generation_config_json_wins_and_other_keys_are_ignored(gpt2, tmp_path):
    generation = dict(num_beams=2, top_k=0, eos_token_id=[7, 500], typical_p=0.5, watermarking_config={"x": 1})
    folder = write(gpt2, tmp_path, generation=generation)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "num_beams": 5, "min_length": 4}))
    gen = um.from_hf(folder).generation_config
    assert gen.num_beams == 2 and gen.min_length == 0  # config.json's keys are not read beside the file
    assert gen.top_k is None  # 0 is transformers' "no top-k filter"
    assert gen.eos_token_ids == (7,)  # an id outside the vocabulary of 99 is dropped
    assert gen.bos_token_id == 98 and gen.pad_token_id is None


def test_a_folder_without_generation_keys_gets_hugging_face_defaults(gpt2, tmp_path):
    folder = write(gpt2, tmp_path, in_config={})
    gen = um.from_hf(folder).generation_config
    assert gen == GenerationConfig(top_k=50, bos_token_id=98, eos_token_id=7)


@pytest.mark.parametrize(
    "where,key,value,message",
    [
        ("generation", "num_beams", "four", "'num_beams' must be an integer"),
        ("generation", "temperature", True, "'temperature' must be a number"),
        ("generation", "early_stopping", "sometimes", "'early_stopping' must be true, false or \"never\""),
        ("generation", "eos_token_id", ["7"], "'eos_token_id' must be a token id or a list"),
        ("generation", "top_k", -1, "'top_k' must be an integer >= 0"),
        ("generation", "top_p", 1.5, "key 'top_p'.*must be in \\(0, 1\\]"),
        ("generation", "num_beams", 0, "key 'num_beams'.*must be >= 1"),
        ("config", "repetition_penalty", -2.0, "config.json' key 'repetition_penalty'.*must be > 0"),
        ("config", "forced_bos_token_id", -3, "'forced_bos_token_id' must be a token id \\(0 or more\\)"),
    ],
)
def test_malformed_values_name_the_file_and_key(gpt2, tmp_path, where, key, value, message):
    if where == "generation":
        folder = write(gpt2, tmp_path, generation={key: value})
    else:
        folder = write(gpt2, tmp_path, in_config={key: value})
    with pytest.raises(CheckpointError, match=message) as info:
        um.from_hf(folder)
    assert ("generation_config.json" if where == "generation" else "config.json") in str(info.value)


def test_a_generation_file_that_is_no_object_or_not_finite_is_refused(gpt2, tmp_path):
    folder = write(gpt2, tmp_path)
    (folder / "generation_config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="generation_config.json"):
        um.from_hf(folder)
    (folder / "generation_config.json").write_text('{"temperature": NaN, "do_sample": true}')
    with pytest.raises(CheckpointError, match="temperature"):
        um.from_hf(folder)


# ------------------------------------------------------------------ writing and round trips
def test_to_hf_writes_what_transformers_reads_back(bart, tmp_path):
    folder = write(bart, tmp_path / "in", in_config=BART_CNN)
    model = um.from_hf(folder)
    um.to_hf(model, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    # token ids, and only the options whose values differ from transformers' defaults
    assert written == {**BART_CNN, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "decoder_start_token_id": 2}
    theirs = transformers.GenerationConfig.from_pretrained(tmp_path / "out")
    assert all(getattr(theirs, key) == value for key, value in written.items())
    assert um.from_hf(tmp_path / "out").generation_config == model.generation_config
    model.save(tmp_path / "native")
    assert um.load(tmp_path / "native").generation_config == model.generation_config


def test_a_native_model_exports_its_own_defaults(tmp_path):
    """unimodel's top_k default (no filter) is written as transformers' spelling of it, 0."""
    model = um.build_model("gpt", vocab_size=99, max_positions=64, d_model=32, n_layers=1, n_heads=4)
    model.generation_config = model.generation_config.replace(num_beams=3, length_penalty=0.5, max_new_tokens=7)
    um.to_hf(model, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert written["top_k"] == 0 and written["num_beams"] == 3 and written["max_new_tokens"] == 7
    assert "temperature" not in written and "do_sample" not in written
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "out").top_k == 0
    assert um.from_hf(tmp_path / "out").generation_config == model.generation_config


# ------------------------------------------------------------------ the command line
def test_cli_convert_keeps_them_and_generate_uses_them(tmp_path, capsys):
    tokenizer = Tokenizer.train_bpe(["the quick brown fox jumps over the lazy dog"] * 20, vocab_size=270)
    torch.manual_seed(0)
    config = transformers.GPT2Config(**{**GPT2, "vocab_size": tokenizer.vocab_size}, initializer_range=0.3)
    hf = randomize_(transformers.GPT2LMHeadModel(config).eval(), scale=0.3)
    folder = write(hf, tmp_path / "hf", generation=dict(num_beams=3, no_repeat_ngram_size=2, max_new_tokens=8))
    tokenizer.save(folder)
    assert cli.main(["convert", str(folder), str(tmp_path / "um")]) == 0
    assert cli.main(["convert", str(tmp_path / "um"), str(tmp_path / "hf2")]) == 0
    read = [json.loads((f / "generation_config.json").read_text()) for f in (folder, tmp_path / "hf2")]
    assert read[1] == {key: read[0].get(key) for key in read[1]}
    assert {"num_beams", "no_repeat_ngram_size", "max_new_tokens", "bos_token_id", "eos_token_id"} <= read[1].keys()
    capsys.readouterr()

    model = um.from_hf(folder)
    prompt = "the quick"
    stored = generate_text(model, prompt)
    override = generate_text(model, prompt, num_beams=1, max_new_tokens=3)
    assert stored != override
    for path in (folder, tmp_path / "um"):
        assert cli.main(["generate", str(path), "--prompt", prompt]) == 0
        assert capsys.readouterr().out == stored + "\n"
    assert cli.main(["generate", str(folder), "--prompt", prompt, "--num-beams", "1", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out == override + "\n"
