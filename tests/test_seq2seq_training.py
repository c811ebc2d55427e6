"""Training on source -> target pairs: the pair path of the trainer, exact match, eval and generate from the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import tiny_config

import unimodel as um
from unimodel import cli
from unimodel.data.tokenizer import Tokenizer
from unimodel.errors import ConfigError, DataError, TrainingError
from unimodel.training import (
    _ObjectiveStep,
    count_exact_matches,
    evaluate,
    exact_match,
    generate_targets,
    load_run_config,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
# the registered tiny T5, with a wider feed-forward; its vocabulary comes from each run's tokenizer
TINY_T5 = {"name": "t5", **tiny_config("t5"), "d_ff": 64}
del TINY_T5["vocab_size"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


def pair_run(out: Path, *, model=None, objective=None, data=None, **train_opts) -> dict:
    """A 2+2-layer d-32 T5 on 256 numbers pairs with a digit-splitting BPE: seconds per run."""
    return {
        "model": {**TINY_T5, **(model or {})},
        "objective": {"name": "seq2seq", **(objective or {})},
        "data": {
            "corpus": "numbers",
            "corpus_options": {"n_train": 256, "n_validation": 16},
            "tokenizer": "bpe",  # reproducible run to run (T5's own Unigram trainer is not), as in the example
            "vocab_size": 400,
            "split_digits": True,
            **(data or {}),
        },
        "train": {
            "output_dir": str(out),
            "max_steps": 6,
            "batch_size": 16,
            "warmup_steps": 2,
            "learning_rate": 3e-3,
            "eval_every": 0,
            "checkpoint_every": 0,
            "log_every": 1,
            "progress": False,
            "exact_match_examples": 8,
            **train_opts,
        },
    }


class Crash(RuntimeError):
    """A run killed mid-way."""


def crash_at_forward(monkeypatch, n: int, run) -> None:
    """Call ``run`` with the ``n``-th training forward pass raising :class:`Crash`; check that it did."""
    original, calls = _ObjectiveStep.forward, {"n": 0}

    def forward(self, batch):
        calls["n"] += 1
        if calls["n"] == n:
            raise Crash
        return original(self, batch)

    with monkeypatch.context() as m:
        m.setattr(_ObjectiveStep, "forward", forward)
        with pytest.raises(Crash):
            run()


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def step_losses(out: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(out) if "loss" in m}


# ------------------------------------------------------------------ the metric
def test_exact_match_counts_whitespace_normalised_equality():
    predictions = ["four thousand", "  twelve ", "one  hundred\tfive", "seven", "", "nine"]
    references = ["four thousand", "twelve", "one hundred five", "seventy", "zero", "Nine"]
    assert count_exact_matches(predictions, references) == 3  # rows 0-2 by hand; 3-5 differ
    assert count_exact_matches([], []) == 0
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        count_exact_matches(["a", "b"], ["a"])


def test_exact_match_scores_the_decodings_against_the_targets(monkeypatch):
    from unimodel.data import exact_match as exact_match_module

    tok = Tokenizer.train_bpe(
        ["four thousand twelve one hundred five seventy 0 1 2 3"] * 4, vocab_size=300, min_frequency=1
    )
    references = ["four thousand", "twelve", "one hundred five", "seventy"]
    examples = [{"source": tok.encode(str(i)), "target": tok.encode(r)} for i, r in enumerate(references)]
    predictions = ["four  thousand", " twelve", "one hundred", "seven"]  # by hand: the first two match

    def decode(model, part, *, tokenizer, batch_size, generate_options=None):
        return [predictions[examples.index(ex)] for ex in part]

    monkeypatch.setattr(exact_match_module, "generate_targets", decode)
    em = exact_match(None, examples, tokenizer=tok, batch_size=3)
    assert (em.matches, em.total, em.score) == (2, 4, 0.5)
    assert em.examples == [
        ("0", "four  thousand", "four thousand", True),
        ("1", " twelve", "twelve", True),
        ("2", "one hundred", "one hundred five", False),
    ]


def test_bart_starts_decoding_with_the_tokenizers_eos():
    from unimodel.registry import get_registry
    from unimodel.training import model_spec_for

    tok = Tokenizer.train_bpe(["one two three"] * 4, vocab_size=300, min_frequency=1)
    eos = tok.special_id("eos")
    assert eos != 2  # BART's own default start id
    bart = model_spec_for({"name": "bart-tiny"}, tok, registry=get_registry())
    assert bart["decoder_start_token_id"] == bart["forced_eos_token_id"] == bart["eos_token_id"] == eos
    t5 = model_spec_for({"name": "t5-tiny"}, tok, registry=get_registry())  # T5 starts with pad: left alone
    assert "decoder_start_token_id" not in t5 and t5["pad_token_id"] == tok.special_id("pad")
    assert (
        model_spec_for({"name": "bart", "decoder_start_token_id": 5}, tok, registry=get_registry())[
            "decoder_start_token_id"
        ]
        == 5
    )  # the table's own value wins


def test_batched_exact_match_equals_decoding_one_pair_at_a_time(tmp_path):
    result = train(pair_run(tmp_path / "run", max_steps=30))
    model, tok = result.model, result.model.tokenizer
    from unimodel.data.dataset import DataConfig, load_data
    from unimodel.data.pairs import encode_pairs

    raw = load_data(DataConfig(corpus="numbers", corpus_options={"n_train": 256, "n_validation": 16}), kind="pairs")
    examples = encode_pairs(tok, raw.validation)
    # sources of different lengths in one padded batch decode as each does alone
    batched = generate_targets(model, examples, tokenizer=tok, batch_size=7)
    alone = []
    for ex in examples:
        ids = torch.tensor([[*ex["source"], tok.special_id("eos")]])
        out = model.generate(ids, do_sample=False, max_new_tokens=len(ex["target"]) + 3)[0, 1:].tolist()
        alone.append(tok.decode(out[: out.index(tok.special_id("eos"))] if tok.special_id("eos") in out else out))
    assert batched == alone
    em = exact_match(model, examples, tokenizer=tok, batch_size=5)
    by_hand = sum(" ".join(p.split()) == t for p, (_, t) in zip(alone, raw.validation))
    assert em.total == 16 and em.matches == by_hand and em.score == by_hand / 16
    assert [e[0] for e in em.examples] == [s for s, _ in raw.validation[:3]]


# ------------------------------------------------------------------ the trainer on pairs
def test_training_on_pairs_lowers_the_loss_and_reports_exact_match(tmp_path):
    out = tmp_path / "run"
    result = train(pair_run(out, max_steps=40, eval_every=20, learning_rate=1e-2))
    assert result.after.loss < 0.5 * result.before.loss
    assert result.before.unit == "pairs" and result.before.n_examples == 16
    assert result.before.exact_match is None  # not measured before training
    assert 0.0 <= result.exact_match <= 1.0 and result.after.exact_match_examples == 8
    evals = [m for m in metrics(out) if "val_loss" in m]
    assert [m["step"] for m in evals] == [0, 20, 40]
    assert "val_exact_match" not in evals[0] and all(m["val_exact_match_examples"] == 8 for m in evals[1:])
    assert evals[-1]["val_exact_match"] == result.exact_match
    # tokens are counted from the pairs themselves
    first = next(m for m in metrics(out) if "tokens" in m)
    assert first["step"] == 1 and 16 * 4 < first["tokens"] < 16 * 30
    # the checkpoint evaluates the same on its run's validation pairs
    again = evaluate(out, exact_match_examples=8)
    assert again.loss == pytest.approx(result.after.loss, abs=1e-6)
    assert again.exact_match == result.exact_match and again.split == "validation"


def test_a_cmlm_run_resumes_exactly(tmp_path, monkeypatch):
    # cmlm builds the decoder without its causal mask: resuming compares [model] as the objective builds it
    opts = {"objective": {"name": "cmlm"}, "max_steps": 8, "checkpoint_every": 4, "exact_match_examples": 0}
    whole = train(pair_run(tmp_path / "a", **opts))
    crash_at_forward(monkeypatch, 6, lambda: train(pair_run(tmp_path / "b", **opts)))
    rest = train(pair_run(tmp_path / "b", **opts), resume=True)
    assert rest.start_step == 4 and sorted(rest.losses) == [5, 6, 7, 8]
    assert step_losses(tmp_path / "b") == step_losses(tmp_path / "a") == whole.losses  # the masking draws too
    # a real change of [model] is still refused
    with pytest.raises(TrainingError, match=r"\[model\] differs.*d_ff"):
        train(pair_run(tmp_path / "b", model={"d_ff": 48}, **{**opts, "max_steps": 10}), resume=True)


def test_resume_on_pairs_continues_exactly(tmp_path, monkeypatch):
    # 256 pairs, 32 a step: epoch 0 is steps 1-8, so the resumed part crosses into epoch 1
    opts = {"max_steps": 10, "checkpoint_every": 4, "batch_size": 32, "model": {"dropout": 0.1}}
    a = train(pair_run(tmp_path / "a", **opts))
    assert [m["epoch"] for m in metrics(tmp_path / "a") if "loss" in m] == [0] * 8 + [1] * 2
    crash_at_forward(monkeypatch, 6, lambda: train(pair_run(tmp_path / "b", **opts)))
    b = train(pair_run(tmp_path / "b", **opts), resume=True)
    assert b.start_step == 4 and sorted(b.losses) == [5, 6, 7, 8, 9, 10]
    assert step_losses(tmp_path / "b") == step_losses(tmp_path / "a") == a.losses  # dropout included
    for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(x, y)
    # other pairs: the fingerprint catches it
    with pytest.raises(Exception, match="training data differs"):
        train(
            pair_run(
                tmp_path / "b",
                data={"corpus_options": {"n_train": 256, "n_validation": 16, "seed": 1}},
                **{**opts, "max_steps": 12},
            ),
            resume=True,
        )


def test_wrong_kind_of_data_for_the_objective(tmp_path):
    with pytest.raises(DataError, match="corpus 'numbers' holds source -> target pairs, but objective 'clm' trains"):
        train(
            {
                "model": {"name": "gpt2-tiny"},
                "objective": {"name": "clm"},
                "data": {"corpus": "numbers"},
                "train": {"output_dir": str(tmp_path / "a")},
            }
        )
    # t5's default objective (span_corruption) trains on text too
    with pytest.raises(DataError, match="but objective 'span_corruption' trains on text"):
        train({"model": TINY_T5, "data": {"corpus": "numbers"}, "train": {"output_dir": str(tmp_path / "b")}})
    with pytest.raises(DataError, match="corpus 'pydoc' holds text, but objective 'seq2seq' trains on source"):
        train(pair_run(tmp_path / "c", data={"corpus": "pydoc", "corpus_options": {}}))
    with pytest.raises(DataError, match="the training split has 10 pairs, fewer than one batch.*add pairs"):
        train(pair_run(tmp_path / "d", data={"corpus_options": {"n_train": 10, "n_validation": 2}}))
    short = pair_run(tmp_path / "e")
    short["model"] = {"name": "bart", **tiny_config("bart"), "max_positions": 4, "n_layers": 1}
    del short["model"]["vocab_size"]
    with pytest.raises(ConfigError, match=r"longest source is 6 tokens.*takes \(4 positions\).*max_source_length = 4"):
        train(short)
    with pytest.raises(ConfigError, match="exact_match_examples.*must be 0 or more"):
        load_run_config(pair_run(tmp_path / "f", exact_match_examples=-1))


def test_pair_files_train_with_validation_files(tmp_path):
    from unimodel.data.synthetic import number_to_words

    (tmp_path / "train.tsv").write_text("".join(f"{i}\t{number_to_words(i)}\n" for i in range(64)))
    (tmp_path / "valid.jsonl").write_text(
        "".join(json.dumps({"src": str(i), "tgt": number_to_words(i)}) + "\n" for i in range(100, 104))
    )
    data = {
        "corpus": None,
        "corpus_options": {},
        "paths": [str(tmp_path / "train.tsv")],
        "validation_paths": [str(tmp_path / "valid.jsonl")],
        "source_field": "src",
        "target_field": "tgt",
    }
    result = train(pair_run(tmp_path / "run", data=data, max_steps=2))
    assert result.after.n_examples == 4 and result.after.exact_match_examples == 4


# ------------------------------------------------------------------ the example, from the command line
def test_t5_example_runs_from_the_cli_then_evaluates_and_translates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiny = [
        "model.d_model=32",
        "model.head_dim=8",
        "model.d_ff=64",
        "model.n_layers=1",
        "train.max_steps=4",
        "train.batch_size=16",
        "train.eval_every=2",
        "train.exact_match_examples=4",
        "train.progress=false",
        "data.corpus_options={n_train = 64, n_validation = 8}",
        "data.vocab_size=300",
    ]
    args = ["train", str(ROOT / "examples" / "t5_numbers.toml")]
    for item in tiny:
        args += ["--set", item]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "data: 64 pairs" in out and "8 pairs for validation" in out
    assert re.search(r"validation after training: .*exact match [\d.]+% \(\d/4 pairs, greedy\)", out)
    assert re.search(r"done: 4 steps, .*exact match [\d.]+%", out)
    assert "validation pairs, greedy decoding:" in out
    run = tmp_path / "runs" / "t5_numbers"
    assert (run / "checkpoint" / "trainer_state.json").is_file()

    assert cli.main(["eval", str(run / "checkpoint"), "--exact-match-examples", "3"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^exact match: [\d.]+% \(\d of 3 pairs, greedy decoding\)$", out, re.M)
    assert "8 pairs of the validation split" in out
    tsv = tmp_path / "more.tsv"
    tsv.write_text("12\ttwelve\n40\tforty\n")
    assert cli.main(["eval", str(run), "--data", str(tsv)]) == 0
    assert "2 pairs of the all split" in capsys.readouterr().out

    # generate decodes greedily for a model trained on pairs: the same words every time
    model = um.load(run / "checkpoint")
    tok = model.tokenizer
    ids = torch.tensor([[*tok.encode("4821"), tok.special_id("eos")]])
    expected = tok.decode(model.generate(ids, do_sample=False, max_new_tokens=12)[0, 1:].tolist())
    assert cli.main(["generate", str(run / "checkpoint"), "--prompt", "4821", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.strip() == expected.strip()


# ------------------------------------------------------------------ several processes
def test_two_processes_train_on_pairs(tmp_path):
    from test_distributed import accelerate_launch

    from unimodel.config import to_toml

    run = pair_run(tmp_path / "one", max_steps=2, eval_every=1)
    single = train(run)
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        to_toml({k: v for k, v in run.items() if k != "train"})
        + to_toml({"train": {k: v for k, v in run["train"].items() if k != "output_dir"}})
    )
    out = tmp_path / "two"
    proc = accelerate_launch(
        "--multi_gpu", "--num_processes", "2", args=[str(cfg), "--set", f"train.output_dir={out}"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 process(es)" in proc.stdout and proc.stdout.count("validation after training") == 1
    recs = metrics(out)
    # each process decodes its share of the 8 pairs; the counts are summed
    assert [r["val_exact_match_examples"] for r in recs if "val_exact_match_examples" in r] == [8, 8]
    # the validation loss is token-weighted over both shares: before training, the one-process figure
    val = [r["val_loss"] for r in recs if "val_loss" in r]
    ref = [r["val_loss"] for r in metrics(tmp_path / "one") if "val_loss" in r]
    assert val[0] == pytest.approx(ref[0], abs=1e-6)
    # a training step weights both processes by their predicted tokens (pairs differ in length): the
    # run equals one process with the same global batch
    assert val[1:] == pytest.approx(ref[1:], abs=1e-5)
    losses = {r["step"]: r["loss"] for r in recs if "loss" in r}
    assert losses == pytest.approx(single.losses, abs=1e-5)
