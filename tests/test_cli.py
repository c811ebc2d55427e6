"""The `unimodel` command: list, info, doctor, generate, convert, train, eval, and its error handling.

Most commands run in-process through ``cli.main`` (torch is already imported
here, so they are quick); what depends on a fresh process (no torch on
``list``, exit codes, tracebacks) runs in a subprocess.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import build_tiny, tiny_config

import unimodel as um
from unimodel import cli, hookimpl
from unimodel.data.tokenizer import Tokenizer
from unimodel.hookspecs import PLUGIN_API_VERSION
from unimodel.registry import Component, Registry, set_registry

TINY_GPT = {k: v for k, v in tiny_config("gpt").items() if k != "vocab_size"}

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unimodel", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    # Rare characters stay split into byte pieces, which is what the streaming decoder must handle.
    text = ["hello world, the quick brown fox jumps over the lazy dog. café, naïve, 日本語, ✓ done."] * 40
    return Tokenizer.train_bpe(text, vocab_size=300, min_frequency=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer) -> Path:
    torch.manual_seed(0)
    model = um.build_model("gpt", vocab_size=tokenizer.vocab_size, **TINY_GPT, tokenizer=tokenizer)
    path = tmp_path_factory.mktemp("cli") / "ckpt"
    model.save(path)
    return path


# ------------------------------------------------------------------ list
def test_list_imports_no_torch():
    """`unimodel list` reads registry metadata only: no torch, no model code (what keeps it instant)."""
    code = textwrap.dedent("""
        import sys
        from unimodel.cli import main
        status = main(["list"])
        heavy = sorted(m for m in ("torch", "unimodel.model", "unimodel_gpt.model", "transformers") if m in sys.modules)
        print("RESULT", status, ",".join(heavy) or "none", file=sys.stderr)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    status, heavy = re.search(r"RESULT (\d+) (\S+)", proc.stderr).groups()
    assert status == "0" and heavy == "none", proc.stderr
    assert re.search(r"^  gpt2-tiny\s+2 layers, d 128.*\[preset of gpt\]\s+\(gpt\)$", proc.stdout, re.M)
    assert re.search(r"^  clm\s+causal language modelling", proc.stdout, re.M)


def test_list_filters_by_pattern_and_kind(capsys):
    assert cli.main(["list", "gpt2*", "--kind", "model"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model:\n") and "gpt2-medium" in out and "clm" not in out and "decoder:" not in out
    assert cli.main(["list", "tiny"]) == 0  # a bare word matches anywhere in the name
    assert "gpt2-tiny" in capsys.readouterr().out
    assert cli.main(["list", "--json", "--kind", "objective"]) == 0
    data = json.loads(capsys.readouterr().out)
    fim = next(e for e in data["objective"] if e["name"] == "fim")
    assert fim["plugin"] == "gpt" and fim["summary"].startswith("fill-in-the-middle")
    assert cli.main(["list", "zzz-nothing"]) == 0
    assert "no components match 'zzz-nothing'" in capsys.readouterr().err
    # a kind's name that no component name contains lists that kind
    assert cli.main(["list", "corpus"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("corpus:\n") and "numbers" in out and "pydoc" in out and "model:" not in out
    # a word that is both a kind and part of component names stays a name pattern
    assert cli.main(["list", "encoder"]) == 0
    assert "encoder-decoder" in capsys.readouterr().out


def test_list_shows_both_entries_of_a_clash_and_filters_by_plugin(custom_registry, capsys):
    clm = dict(kind="objective", name="clm", target="unimodel_gpt.objectives:CausalLM", requires=("causal",))
    custom_registry.add_plugin(_Plugin([Component(**clm, summary="causal LM")]), "gpt", source="unimodel")
    custom_registry.add_plugin(
        _Plugin([Component(**clm, summary="another clm"), Component(**{**clm, "name": "fim"}, summary="fim")]),
        "third",
        source="third-dist",
    )
    assert cli.main(["list", "clm"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"^  gpt:clm\s+causal LM\s+\(gpt\)$", captured.out, re.M)
    assert re.search(r"^  third:clm\s+another clm\s+\(third\)$", captured.out, re.M)
    assert (
        "conflict: objective 'clm' is registered by plugins 'gpt' and 'third'; a plain 'clm' is ambiguous, "
        "use 'gpt:clm', 'third:clm'" in captured.out
    )
    assert cli.main(["list", "--plugin", "third"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  third:clm\s", out, re.M) and re.search(r"^  fim\s", out, re.M)
    assert not re.search(r"^  gpt:clm", out, re.M)
    assert cli.main(["list", "--plugin", "thrid"]) == 2
    assert "--plugin 'thrid': no such plugin. Did you mean 'third'?" in capsys.readouterr().err
    assert cli.main(["info", "clm"]) == 2  # ambiguous: the error lists the qualified choices
    assert "name the one you mean: 'gpt:clm' or 'third:clm'" in capsys.readouterr().err
    assert cli.main(["info", "third:clm"]) == 0
    assert capsys.readouterr().out.startswith("clm (objective) from plugin 'third'")


def test_not_found_puts_the_failed_plugin_first(custom_registry, capsys):
    custom_registry.add_plugin(_Plugin([], fail="needs frobnicate"), "broken", source="dist-broken")
    assert cli.main(["info", "mymodel"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: no component named 'mymodel': plugin 'broken' failed to load (RuntimeError: needs frobnicate)"
    )


# ------------------------------------------------------------------ info
def test_info_model_shows_fields_with_preset_values_and_objectives(capsys):
    assert cli.main(["info", "gpt2-mini"]) == 0
    out = capsys.readouterr().out
    assert "gpt2-mini (model) from plugin 'gpt'" in out
    assert "preset chain: gpt2-mini -> gpt" in out
    assert "capabilities: causal, decoder_only, kv_cache, lm_head" in out
    assert re.search(r"compatible objectives: .*\bclm\b.*\bfim\b", out)
    assert re.search(r"^  d_model\s+an integer\s+384 \*\s+hidden width$", out, re.M)  # the preset's value
    assert re.search(r"^  vocab_size\s+an integer\s+50257\s+vocabulary size", out, re.M)  # the family default
    assert re.search(r"^  d_ff\s+an integer or null\s+null\s+", out, re.M)


def test_info_objective_lists_requirements_and_models(capsys):
    assert cli.main(["info", "fim"]) == 0
    out = capsys.readouterr().out
    assert "requires: causal, decoder_only, lm_head" in out
    assert "tokenizer roles needed: fim_prefix, fim_middle, fim_suffix" in out
    assert re.search(r"works with models: .*\bgpt\b.*\bgpt2-xl\b", out)
    assert re.search(r"^  rate\s+a number\s+0.5\s+fraction of examples", out, re.M)


def test_info_other_kinds_and_ambiguous_names(capsys):
    assert cli.main(["info", "greedy"]) == 0
    out = capsys.readouterr().out
    assert "greedy (decoding) from plugin 'core'" in out and "requires:  causal, lm_head\n" in out
    assert cli.main(["info", "gpt"]) == 0  # a model and a decoder: the model wins, the decoder is pointed to
    out = capsys.readouterr().out
    assert out.startswith("gpt (model)") and "`unimodel info gpt --kind decoder`" in out
    assert cli.main(["info", "gpt", "--kind", "decoder"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpt (decoder)") and "config fields:" in out and "memory_dim" in out


def test_info_unknown_name_is_one_error_line(capsys):
    assert cli.main(["info", "gtp2"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: no component named 'gtp2'. Did you mean 'gpt2'")
    assert captured.err.endswith("See `unimodel list` for what is registered.\n") and captured.err.count("\n") == 1
    assert captured.out == ""


# ------------------------------------------------------------------ errors and flags
def test_user_errors_print_one_line_and_exit_2_and_debug_shows_the_traceback(tmp_path):
    proc = run_cli("train", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2
    assert proc.stderr == f"error: config file {str(tmp_path / 'missing.toml')!r} does not exist\n"
    proc = run_cli("--debug", "train", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: config file")
    proc = run_cli("info", "clm", "--kind", "model")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "'clm' is a" in proc.stderr


def test_version_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"unimodel {um.__version__}\n"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["list", "--kind", "modle"])
    assert exit_.value.code == 2 and "invalid choice: 'modle'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["trian", "run.toml"], "invalid choice: 'trian'"),
        (["generate", "ckpt"], "the following arguments are required: --prompt"),
        (["generate", "ckpt", "--prompt", "x", "--max-new-tokens", "many"], "invalid int value: 'many'"),
        (["eval", "ckpt", "--batch-size", "2.5"], "invalid int value: '2.5'"),
        (["convert", "src"], "the following arguments are required: DST"),
        (["convert", "a", "b", "--to", "onnx"], "invalid choice: 'onnx'"),
        (["train"], "the following arguments are required: CONFIG"),
    ],
)
def test_argument_errors_exit_2_with_the_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and err.startswith("usage: unimodel")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--num-beams", "0"], "--num-beams must be >= 1"),
        (["--temperature", "0"], "--temperature must be > 0 when sampling"),
        (["--top-k", "0"], "--top-k must be >= 1"),
    ],
)
def test_generate_option_values_are_checked_before_loading(options, message, tmp_path, capsys):
    # the checkpoint does not even exist: the options fail first, in one line
    assert cli.main(["generate", str(tmp_path / "nowhere"), "--prompt", "x", *options]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {message}" + captured.err.split(message, 1)[1] and captured.out == ""
    assert captured.err.count("\n") == 1


# ------------------------------------------------------------------ doctor
class _Plugin:
    def __init__(self, components, api=PLUGIN_API_VERSION, fail=None):
        self._components, self._fail = components, fail
        if api is not None:
            self.unimodel_api_version = hookimpl(lambda: api)

    @hookimpl
    def unimodel_components(self):
        if self._fail:
            raise RuntimeError(self._fail)
        return self._components


@pytest.fixture
def custom_registry():
    reg = Registry(discover=False)
    old = set_registry(reg)
    yield reg
    set_registry(old)


def test_doctor_on_a_healthy_install(custom_registry, capsys):
    custom_registry.add_plugin(
        _Plugin([Component(kind="model", name="gpt", target="unimodel_gpt.model:GPT", summary="GPT")]),
        "gpt",
        source="unimodel",
    )
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"unimodel {um.__version__} (plugin API {PLUGIN_API_VERSION})" in out
    for dist in ("python", "torch", "accelerate", "transformers"):
        assert re.search(rf"^{dist} \d", out, re.M), dist
    assert re.search(r"^  gpt\s+unimodel\s+api 1\s+1 components\s+OK$", out, re.M)
    assert "component imports: 1 of 1 OK" in out and out.rstrip().endswith("no problems found")


def test_doctor_on_the_installed_distribution(capsys):
    """The real entry points, discovered afresh: every built-in plugin loads and every component imports."""
    old = set_registry(Registry())
    try:
        assert cli.main(["doctor"]) == 0
        out = capsys.readouterr().out
        targets = [c for c in um.get_registry().components() if c.base is None]  # presets have none to import
    finally:
        set_registry(old)
    for plugin in ("core", "gpt", "bert", "t5", "bart"):
        assert re.search(
            rf"^  {plugin}\s+unimodel {re.escape(um.__version__)}\s+api {PLUGIN_API_VERSION}\s+\d+ components\s+OK$",
            out,
            re.M,
        )
    imported = re.search(r"component imports: (\d+) of (\d+) OK", out)
    assert imported and imported[1] == imported[2] == str(len(targets))
    assert out.rstrip().endswith("no problems found") and "FAILED" not in out


def test_doctor_reports_every_kind_of_breakage(custom_registry, capsys):
    twin = dict(kind="objective", name="twin", target="unimodel_gpt.objectives:CausalLM", summary="t")
    custom_registry.add_plugin(_Plugin([Component(**twin)]), "alpha", source="dist-alpha")
    custom_registry.add_plugin(
        _Plugin(
            [
                Component(**twin),
                Component(kind="model", name="typo", target="unimodel_gpt.model:GTP", summary="bad target"),
            ],
            api=None,
        ),
        "beta",
        source="dist-beta",
    )
    custom_registry.add_plugin(_Plugin([], fail="hook exploded"), "gamma", source="dist-gamma")
    assert cli.main(["doctor"]) == 1
    captured = capsys.readouterr()
    out = captured.out
    assert re.search(r"^  gamma\s+dist-gamma\s+api 1\s+0 components\s+FAILED$", out, re.M)
    assert "FAILED plugin 'gamma' (dist-gamma): RuntimeError: hook exploded" in out
    assert "CONFLICT objective 'twin' is registered by plugins 'alpha' (dist-alpha) and 'beta' (dist-beta)" in out
    assert "name 'alpha:twin' or 'beta:twin'" in out
    # a clashing component still counts for its plugin; the clash is no breakage (qualified names reach both)
    assert re.search(r"^  beta\s+dist-beta\s+api -\s+2 components\s+OK$", out, re.M)
    assert "plugin(s) beta do not declare the plugin API" in out
    assert "FAILED model 'typo' from plugin 'beta' could not be imported from 'unimodel_gpt.model:GTP'" in out
    assert "Traceback" not in out
    assert "2 problem(s) found; 1 name conflict(s): use qualified names (plugin:name)" in captured.err
    assert cli.main(["doctor", "-v"]) == 1
    assert "RuntimeError: hook exploded" in capsys.readouterr().out.split("FAILED plugin 'gamma'")[1]


# ------------------------------------------------------------------ generate
def test_text_streamer_prints_multibyte_characters_whole(tokenizer):
    text = "café ✓ 日本語 done"
    ids = tokenizer.encode(text)
    pieces = [tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces), "the test needs a character split over several tokens"
    sink = io.StringIO()
    writes: list[str] = []
    sink.write = lambda s: writes.append(s) or len(s)  # type: ignore[method-assign]
    streamer = cli.TextStreamer(tokenizer.decode, sink)
    for i in ids:
        streamer(torch.tensor([i]))
    streamer.end()
    assert "".join(writes) == text
    assert not any("\ufffd" in w for w in writes) and len(writes) > 3  # streamed in pieces, never broken


def test_generate_streams_the_greedy_continuation(checkpoint, tokenizer, monkeypatch, capsys):
    model = um.load(checkpoint)
    prompt = "hello world"
    ids = torch.tensor([tokenizer.encode(prompt)])
    expected = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :].tolist()
    writes: list[str] = []
    real_write = sys.stdout.write
    monkeypatch.setattr(sys.stdout, "write", lambda s: writes.append(s) or real_write(s))
    assert cli.main(["generate", str(checkpoint), "--prompt", prompt, "--max-new-tokens", "6", "--greedy"]) == 0
    out = capsys.readouterr().out
    assert out == prompt + tokenizer.decode(expected) + "\n"
    assert len(writes) >= 3  # the prompt, then tokens as they came, then the newline


def test_generate_sampling_is_reproducible_with_a_seed_and_beams_work(checkpoint, capsys):
    args = [
        "generate",
        str(checkpoint),
        "--prompt",
        "the quick",
        "--max-new-tokens",
        "5",
        "--seed",
        "3",
        "--top-k",
        "20",
        "--temperature",
        "0.9",
    ]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert cli.main(args) == 0
    assert capsys.readouterr().out == first and first.startswith("the quick")
    assert cli.main(["generate", str(checkpoint), "--prompt", "the", "--num-beams", "3", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("the")


def test_generate_beam_search_prints_what_model_generate_returns(checkpoint, tokenizer, capsys):
    model = um.load(checkpoint)
    prompt = "the quick brown"
    ids = torch.tensor([tokenizer.encode(prompt)])
    beams = model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False)[0, ids.shape[1] :]
    greedy = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :]
    assert not torch.equal(beams, greedy), "the test needs a prompt where beam search departs from greedy"
    argv = ["generate", str(checkpoint), "--prompt", prompt, "--max-new-tokens", "6", "--num-beams", "3"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == prompt + tokenizer.decode(beams.tolist()) + "\n"


def test_generate_rejects_bad_options_and_missing_tokenizer(checkpoint, tmp_path, capsys):
    assert cli.main(["generate", str(checkpoint), "--prompt", "x", "--top-p", "1.5"]) == 2
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err
    assert cli.main(["generate", str(checkpoint), "--prompt", "hello", "--max-new-tokens", "500"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "position table of 64" in captured.err  # no half-written prompt
    bare = tmp_path / "bare"
    um.build_model("gpt", vocab_size=50, **TINY_GPT).save(bare)
    assert cli.main(["generate", str(bare), "--prompt", "x"]) == 2
    assert "has no tokenizer.json" in capsys.readouterr().err


# ------------------------------------------------------------------ convert
def test_convert_both_ways_round_trips_exactly(checkpoint, tmp_path, capsys):
    hf_dir, back = tmp_path / "hf", tmp_path / "back"
    assert cli.main(["convert", str(checkpoint), str(hf_dir)]) == 0  # unimodel -> hf, inferred
    assert json.loads((hf_dir / "config.json").read_text())["model_type"] == "gpt2"
    assert (hf_dir / "tokenizer.json").is_file()
    assert cli.main(["convert", str(hf_dir), str(back)]) == 0  # hf -> unimodel, inferred
    assert "wrote unimodel checkpoint" in capsys.readouterr().out
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert torch.equal(um.load(back)(input_ids=ids).logits, um.load(checkpoint)(input_ids=ids).logits)

    assert cli.main(["convert", str(hf_dir), str(tmp_path / "x"), "--to", "hf"]) == 2
    assert "is already a Hugging Face folder" in capsys.readouterr().err
    assert cli.main(["convert", str(checkpoint), str(back)]) == 2  # would replace a folder
    assert "pass --overwrite" in capsys.readouterr().err
    other = tmp_path / "other"
    build_tiny("gpt", vocab_size=um.load(checkpoint).vocab_size, seed=5).save(other)
    assert cli.main(["convert", str(other), str(hf_dir), "--overwrite"]) == 0  # replaces the earlier export
    assert "wrote Hugging Face folder" in capsys.readouterr().out
    with torch.no_grad():
        assert torch.equal(um.from_hf(hf_dir)(input_ids=ids).logits, um.load(other)(input_ids=ids).logits)
    assert not (hf_dir / "tokenizer.json").exists()  # nothing of the replaced folder is left behind
    assert cli.main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------ train and eval
def test_train_then_eval_then_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("corpus.txt").write_text(
        "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(80))
    )
    Path("run.toml").write_text(
        textwrap.dedent("""
        [model]
        name = "gpt"
        max_positions = 32
        d_model = 32
        n_layers = 1
        n_heads = 4

        [data]
        paths = ["corpus.txt"]
        document_unit = "line"
        block_size = 16
        vocab_size = 300
        min_frequency = 1

        [train]
        output_dir = "run"
        max_steps = 2
        batch_size = 4
        warmup_steps = 1
        eval_every = 0
        checkpoint_every = 0
        progress = false
        sample_prompt = ""
    """)
    )
    assert cli.main(["train", "run.toml", "--set", "train.max_steps=3"]) == 0
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 3  # the --set override reached the trainer
    capsys.readouterr()

    # the run's data file lies outside its checkpoint: eval reads it only when named again
    assert cli.main(["eval", "run"]) == 2
    assert "records data that is not inside the checkpoint folder ('corpus.txt')" in capsys.readouterr().err
    assert cli.main(["eval", "run", "--data", "corpus.txt"]) == 0
    out = capsys.readouterr().out
    loss = float(re.search(r"^loss: ([\d.]+)$", out, re.M).group(1))
    ppl = float(re.search(r"^perplexity: ([\d.]+)$", out, re.M).group(1))
    assert abs(ppl - torch.tensor(loss).exp().item()) / ppl < 1e-3 and "all split" in out
    assert cli.main(["eval", "run", "--data", "corpus.txt", "--max-batches", "1"]) == 0
    assert "all split" in capsys.readouterr().out

    assert cli.main(["train", "run.toml", "--resume", "--set", "train.max_steps=4"]) == 0
    assert json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())["step"] == 4
    assert cli.main(["train", "run.toml", "--set", "trian.max_steps=1"]) == 2
    assert "unknown section 'trian'. Did you mean 'train'?" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be 1 or more, got 0"),
        (["--batch-size", "-3"], "--batch-size must be 1 or more, got -3"),
        (["--max-batches", "0"], "--max-batches must be 1 or more (leave it out to evaluate every batch), got 0"),
    ],
)
def test_eval_refuses_batch_counts_that_evaluate_nothing(checkpoint, tmp_path, capsys, flags, message):
    (tmp_path / "text.txt").write_text("hello world, the quick brown fox jumps over the lazy dog.\n" * 20)
    assert cli.main(["eval", str(checkpoint), "--data", str(tmp_path / "text.txt"), *flags]) == 2
    out = capsys.readouterr()
    assert message in out.err and "loss" not in out.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere"], "checkpoint 'nowhere' does not exist"),
        (["ckpt", "--exact-match-examples", "-1"], "--exact-match-examples must be 0 or more"),
        (["ckpt", "--data", "missing.txt"], "missing.txt"),
        (["ckpt", "--data", "no_such_corpus"], "no_such_corpus"),
        (["empty"], "empty"),
    ],
)
def test_eval_errors_are_one_line(args, message, checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").symlink_to(checkpoint, target_is_directory=True)
    (tmp_path / "empty").mkdir()
    assert cli.main(["eval", *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err and captured.err.count("\n") == 1


def test_plugins_add_commands_and_a_taken_name_is_left_out(capsys):
    import argparse
    import types

    from unimodel import hookimpl
    from unimodel.hookspecs import CliCommand

    def args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--times", type=int, default=1)

    plugin = types.ModuleType("um_commands")
    plugin.unimodel_cli_commands = hookimpl(
        lambda: [
            CliCommand("echo", "say hello", args, "um_commands_run:run"),
            CliCommand("train", "taken", args, "x:y"),
        ]
    )
    runner = types.ModuleType("um_commands_run")
    runner.run = lambda ns: print("hello " * ns.times) or 3
    sys.modules["um_commands_run"] = runner
    reg = Registry(discover=False)
    assert reg.add_plugin(plugin, "cmds").ok
    old = set_registry(reg)
    try:
        assert cli.main(["echo", "--times", "2"]) == 3
        out, err = capsys.readouterr()
        assert out.strip() == "hello hello"
        assert "plugin 'cmds' adds command 'train', which is taken; it is left out" in err
        del runner.run
        assert cli.main(["echo"]) == 2
        assert "its command's code 'um_commands_run:run' cannot be imported" in capsys.readouterr().err
    finally:
        set_registry(old)
        sys.modules.pop("um_commands_run", None)
