"""The non-autoregressive example pipeline from the command line, at tiny sizes: train the autoregressive
teacher (examples/cmlm_numbers_teacher.toml), `unimodel distill`, train examples/cmlm_numbers.toml on the
distilled pairs, then `unimodel generate` and `unimodel eval` with mask-predict options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unimodel import cli
from unimodel.config import read_config_file, to_toml
from unimodel.data.pairs import read_pairs
from unimodel.generation.distill import decode_sources, load_pairs
from unimodel.training import train

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=4", "model.d_ff=64", "data.vocab_size=300"]
STEPS = ["train.max_steps=2", "train.batch_size=8", "train.warmup_steps=1", "train.eval_every=0",
         "train.checkpoint_every=0", "train.log_every=1", "train.progress=false"]  # fmt: skip


def test_teacher_distill_student_generate_and_eval(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the examples write to runs/<file name> and read runs/cmlm_numbers_teacher/
    teacher_run = read_config_file(EXAMPLES / "cmlm_numbers_teacher.toml")
    assert teacher_run["objective"]["name"] == "seq2seq" and teacher_run["data"]["corpus_options"] == {"count": 4}
    teacher_run["data"]["corpus_options"] = {"count": 4, "n_train": 24, "n_validation": 3}  # the same task, small
    (tmp_path / "cmlm_numbers_teacher.toml").write_text(to_toml(teacher_run))
    teacher = train(tmp_path / "cmlm_numbers_teacher.toml", overrides=TINY + STEPS).model

    out, references = Path("runs/cmlm_numbers_teacher/distilled.jsonl"), "runs/cmlm_numbers_teacher/validation.jsonl"
    argv = ["distill", "runs/cmlm_numbers_teacher/checkpoint", "--data", "cmlm_numbers_teacher.toml"]
    assert cli.main([*argv, "--out", str(out), "--validation-out", references, "--batch-size", "10"]) == 0
    assert "wrote 24 distilled pairs" in capsys.readouterr().out
    pairs = read_pairs([str(out)])
    sources = [p[0] for p in pairs]
    assert len(pairs) == 24 and all(len(s.split()) == 4 for s in sources)  # four numbers per source
    raw = load_pairs("cmlm_numbers_teacher.toml")
    assert sources == [p[0] for p in raw]
    # the teacher's words, in order; an untrained teacher's empty output keeps the reference
    assert [p[1] for p in pairs[:10]] == [d or r[1] for d, r in zip(decode_sources(teacher, raw[:10]), raw)]
    assert len(read_pairs([references])) == 3
    assert cli.main([*argv, "--out", str(out)]) == 0  # a finished file is resumed: nothing to decode
    assert "wrote 0 distilled pairs to" in capsys.readouterr().out and len(read_pairs([str(out)])) == 24

    student = train(EXAMPLES / "cmlm_numbers.toml", overrides=TINY + STEPS).model  # as shipped: reads those files
    assert student.objective_name == "cmlm" and not student.decoder.is_causal
    ckpt = "runs/cmlm_numbers/checkpoint"
    generate = ["generate", ckpt, "--prompt", "4821 17 90321 5", "--max-new-tokens", "12"]
    assert cli.main([*generate, "--strategy", "mask_predict", "--option", "iterations=2", "--option", "length=5"]) == 0
    assert len(capsys.readouterr().out.strip()) > 0
    assert cli.main([*generate, "--option", "iteration=2"]) == 2  # the model's default strategy: mask_predict
    assert "Did you mean 'iterations'" in capsys.readouterr().err
    assert cli.main([*generate, "--strategy", "mask_predict", "--option", "schedule=cos"]) == 2
    assert "'schedule' must be one of 'linear', 'cosine'" in capsys.readouterr().err
    assert cli.main([*generate, "--strategy", "mask_predikt"]) == 2
    assert "mask_predict" in capsys.readouterr().err

    # the run's data files lie outside the checkpoint, so eval is given them again
    data = ["--data", str(EXAMPLES / "cmlm_numbers.toml")]
    assert cli.main(["eval", ckpt, *data, "--option", "iterations=1", "--option", "length_beam=2"]) == 0
    report = capsys.readouterr().out
    assert "exact match" in report and "mask_predict, iterations=1, length_beam=2 decoding" in report
    metrics = [json.loads(line) for line in Path("runs/cmlm_numbers/metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in m for m in metrics)
