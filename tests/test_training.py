"""The trainer: configs, schedule, accumulation, exact resume, atomic checkpoints, NaN handling."""

from __future__ import annotations

import itertools
import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from helpers import tiny_config

import unimodel as um
from unimodel.errors import ConfigError, DataError, TrainingError
from unimodel.training import RunConfig, _ObjectiveStep, evaluate, load_run_config, lr_multiplier, param_groups, train

# the registered tiny GPT; its vocabulary comes from each run's tokenizer
TINY_MODEL = {"name": "gpt", **tiny_config("gpt"), "max_positions": 32}
del TINY_MODEL["vocab_size"]


def tiny_run(out: Path, *, model=None, objective=None, data=None, **train_opts) -> dict:
    """A run of a 2-layer d-32 GPT on a few pydoc topics with a 320-token BPE: seconds per run."""
    run = {
        "model": {**TINY_MODEL, **(model or {})},
        "data": {"corpus": "pydoc", "max_documents": 10, "vocab_size": 320, "block_size": 32, **(data or {})},
        "train": {
            "output_dir": str(out),
            "max_steps": 4,
            "batch_size": 8,
            "warmup_steps": 2,
            "learning_rate": 3e-3,
            "eval_every": 0,
            "checkpoint_every": 0,
            "log_every": 1,
            "progress": False,
            "sample_prompt": "",
            **train_opts,
        },
    }
    if objective is not None:
        run["objective"] = {"name": objective} if isinstance(objective, str) else objective
    return run


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def step_losses(out: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(out) if "loss" in m and "event" not in m}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One end-to-end run shared by the tests that only inspect its results."""
    out = tmp_path_factory.mktemp("run")
    run = tiny_run(out, max_steps=12, eval_every=6, checkpoint_every=6, sample_prompt="The ", sample_tokens=8)
    return train(run), run


# ------------------------------------------------------------------ configs
def test_unknown_keys_suggest_the_close_one(tmp_path):
    run = tiny_run(tmp_path)
    run["train"]["max_step"] = 3
    with pytest.raises(ConfigError, match=r"train: unknown key 'max_step'\. Did you mean 'max_steps'"):
        train(run)
    with pytest.raises(ConfigError, match=r"run: unknown key 'trian'\. Did you mean 'train'"):
        load_run_config({"model": {"name": "gpt"}, "trian": {}})
    with pytest.raises(ConfigError, match=r"unknown section 'dat'\. Did you mean 'data'"):
        load_run_config(tiny_run(tmp_path), ["dat.block_size=16"])
    with pytest.raises(ConfigError, match=r"model 'gpt': unknown key 'n_layer'.*'n_layers'"):
        train(tiny_run(tmp_path), overrides=["model.n_layer=3"])
    with pytest.raises(ConfigError, match="batch_size.*divisible by gradient_accumulation_steps"):
        load_run_config(tiny_run(tmp_path, batch_size=6, gradient_accumulation_steps=4))


def test_overrides_are_read_as_toml_values(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[model]\nname = "gpt2-tiny"\n\n[objective]\nname = "clm"\n\n[train]\nmax_steps = 5\n')
    run = load_run_config(
        cfg,
        [
            "train.max_steps=20",
            "train.compile=true",
            "train.output_dir=runs/x y",
            "data.paths=['a.txt', 'b.txt']",
            "train.learning_rate=1e-3",
            "objective.name=fim",
        ],
    )
    assert isinstance(run, RunConfig)
    assert run.train.max_steps == 20 and run.train.compile is True and run.train.output_dir == "runs/x y"
    assert run.data.paths == ("a.txt", "b.txt") and run.data.corpus is None
    assert run.train.learning_rate == 1e-3 and run.objective_name == "fim"
    assert load_run_config(cfg).train.output_dir == str(Path("runs") / "run")  # runs/<config file name>
    with pytest.raises(ConfigError, match="section.key=value"):
        load_run_config(cfg, ["max_steps=3"])
    # a run config round-trips through its dict
    assert RunConfig.from_dict(run.to_dict()) == run


# ------------------------------------------------------------------ schedule, groups
def test_warmup_then_cosine_to_the_floor():
    f = lambda s: lr_multiplier(s, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(4) == pytest.approx(0.5) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)  # half-way down the cosine: (1 + 0.1) / 2
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)  # the floor, and it stays there
    decay = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert lr_multiplier(0, warmup_steps=0, max_steps=10, min_lr_ratio=0.0) == pytest.approx(1.0)


def test_logged_learning_rates_follow_the_schedule(trained):
    result, run = trained
    t = run["train"]
    lrs = {m["step"]: m["lr"] for m in metrics(result.output_dir) if "lr" in m}
    assert sorted(lrs) == list(range(1, t["max_steps"] + 1))
    for step, lr in lrs.items():
        mult = lr_multiplier(step - 1, warmup_steps=t["warmup_steps"], max_steps=t["max_steps"], min_lr_ratio=0.1)
        assert lr == pytest.approx(t["learning_rate"] * mult)


def test_no_weight_decay_on_norms_biases_and_embeddings():
    model = um.build_model({**TINY_MODEL, "vocab_size": 64})
    decay, rest = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in rest["params"]}
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert {"decoder.wte.weight", "decoder.wpe.weight"} <= no_decay  # the LM head is tied to wte
    assert all(n.endswith("bias") or ".wte." in n or ".wpe." in n or "ln" in n or "norm" in n for n in no_decay)
    assert all(names[id(p)].endswith("weight") and p.dim() == 2 for p in decay["params"])
    n_params = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(rest["params"]) == n_params


# ------------------------------------------------------------------ end to end
def test_end_to_end_run(trained, capsys):
    result, _run = trained
    assert result.step == 12 and sorted(result.losses) == list(range(1, 13))
    # perplexity starts near the vocabulary size (uniform guessing) and drops
    assert 200 < result.val_perplexity_before < 600
    assert result.val_perplexity_after < 0.6 * result.val_perplexity_before
    assert result.after.loss == pytest.approx(math.log(result.val_perplexity_after))
    assert isinstance(result.sample, str) and result.sample.startswith("The ")
    # metrics: one line per step, evaluations before, at step 6 and after
    evals = [m["step"] for m in metrics(result.output_dir) if "val_loss" in m]
    assert evals == [0, 6, 12]
    # the checkpoint is an ordinary unimodel checkpoint, with the tokenizer the run trained
    model = um.load(result.checkpoint)
    tok = model.tokenizer
    assert tok.vocab_size == 320 == model.config.vocab_size
    assert model.config.eos_token_id == tok.special_id("eos") and model.config.pad_token_id == tok.special_id("pad")
    assert um.Tokenizer.load(result.output_dir / "tokenizer").roles == tok.roles
    for a, b in zip(model.parameters(), result.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # evaluate() on the checkpoint sees the run's own validation split
    again = evaluate(result.checkpoint)
    assert again.loss == pytest.approx(result.after.loss, abs=1e-6)
    assert again.n_tokens == result.after.n_tokens and again.split == "validation"


def test_evaluate_on_other_data(trained, tmp_path):
    result, _ = trained
    text = tmp_path / "t.txt"
    text.write_text("The for statement is used to iterate over the elements of a sequence. " * 20)
    on_file = evaluate(result.output_dir, data=str(text))
    assert on_file.split == "all" and on_file.n_tokens > 100 and math.isfinite(on_file.loss)
    capped = evaluate(
        result.model,
        data={"corpus": "pydoc", "max_documents": 10, "block_size": 32},
        split="train",
        max_batches=1,
        batch_size=4,
    )
    assert capped.n_examples > 4 and capped.n_tokens == 4 * 31  # one batch of four 32-token blocks
    with pytest.raises(DataError, match="no data given"):
        evaluate(result.model)


def test_objective_swap_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # each run writes to runs/<config file name>
    text = (
        '[model]\nname = "gpt"\nmax_positions = 32\nd_model = 32\nn_layers = 2\nn_heads = 4\n\n'
        '[objective]\nname = "clm"\n\n'
        "[data]\nmax_documents = 10\nvocab_size = 320\nblock_size = 32\n\n"
        '[train]\nmax_steps = 2\nbatch_size = 8\nprogress = false\nsample_prompt = ""\neval_every = 0\n'
    )
    Path("clm.toml").write_text(text)
    Path("fim.toml").write_text(text.replace('name = "clm"', 'name = "fim"'))
    changed = [a for a, b in zip(text.splitlines(), Path("fim.toml").read_text().splitlines(), strict=True) if a != b]
    assert changed == ['name = "clm"']
    clm, fim = train("clm.toml"), train("fim.toml")
    assert clm.output_dir == Path("runs/clm") and fim.output_dir == Path("runs/fim")
    assert um.load(clm.checkpoint).objective_name == "clm"
    fim_model = um.load(fim.checkpoint)
    assert fim_model.objective_name == "fim" and fim_model.tokenizer.has_role("fim_middle")
    # the same blocks, a share of them rearranged with FIM sentinels
    assert clm.before.loss != fim.before.loss and clm.losses != fim.losses


# ------------------------------------------------------------------ equivalences
def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    full = train(tiny_run(tmp_path / "full", batch_size=8, gradient_accumulation_steps=1, max_steps=3))
    accum = train(tiny_run(tmp_path / "accum", batch_size=8, gradient_accumulation_steps=2, max_steps=3))
    for step in (1, 2, 3):
        assert accum.losses[step] == pytest.approx(full.losses[step], abs=1e-5)
    for a, b in zip(full.model.parameters(), accum.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


class _Crash(RuntimeError):
    pass


def _fail_at(monkeypatch, call: int, make) -> None:
    """Make the ``call``-th training forward misbehave (``make(loss)`` returns the replacement)."""
    original = _ObjectiveStep.forward
    calls = {"n": 0}

    def forward(self, batch):
        loss = original(self, batch)
        calls["n"] += 1
        return make(loss) if calls["n"] == call else loss

    monkeypatch.setattr(_ObjectiveStep, "forward", forward)


def test_resume_continues_exactly(tmp_path, monkeypatch):
    # 219 blocks, 32 a step: epoch 0 is steps 1-6, so the resumed part crosses into epoch 1
    opts = {
        "max_steps": 8,
        "checkpoint_every": 3,
        "batch_size": 32,
        "data": {"max_documents": 2},
        "model": {"dropout": 0.1, "attn_dropout": 0.1},
    }
    a = train(tiny_run(tmp_path / "a", **opts))
    assert [m["epoch"] for m in metrics(tmp_path / "a") if "loss" in m] == [0] * 6 + [1] * 2

    def crash(loss):
        raise _Crash("simulated crash in step 5")

    with monkeypatch.context() as m:
        _fail_at(m, 5, crash)
        with pytest.raises(_Crash):
            train(tiny_run(tmp_path / "b", **opts))
    with pytest.raises(TrainingError, match="already holds a checkpoint.*--resume"):
        train(tiny_run(tmp_path / "b", **opts))
    b = train(tiny_run(tmp_path / "b", **opts), resume=True)
    assert b.start_step == 3 and sorted(b.losses) == [4, 5, 6, 7, 8]
    assert step_losses(tmp_path / "b") == step_losses(tmp_path / "a") == a.losses  # exactly, dropout included
    for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(x, y)
    # asking to resume where there is nothing to resume
    with pytest.raises(TrainingError, match="holds no trainer checkpoint"):
        train(tiny_run(tmp_path / "c", **opts), resume=True)


def test_checkpoint_and_resume_never_use_pickle(trained, tmp_path, monkeypatch):
    result, run = trained
    ckpt = result.checkpoint
    files = sorted(p.name for p in ckpt.iterdir())
    assert files == [
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "rng_state.safetensors",
        "run.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "trainer_state.json",
    ]
    for f in ckpt.iterdir():
        head = f.read_bytes()[:2]
        assert head not in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK")  # pickle / torch.save zip
    from safetensors.torch import load_file

    opt = load_file(str(ckpt / "optimizer.safetensors"))
    assert any(k.endswith("exp_avg_sq") for k in opt)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 12 and state["optimizer"]["dict"][0][0] == "state"

    # resuming reads everything without unpickling anything
    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    import shutil

    out = tmp_path / "copy"
    shutil.copytree(result.output_dir, out)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    resumed = train({**run, "train": {**run["train"], "output_dir": str(out), "max_steps": 13}}, resume=True)
    assert resumed.step == 13 and sorted(resumed.losses) == [13]


def test_a_failing_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny_run(out, max_steps=2, checkpoint_every=2))
    ckpt = out / "checkpoint"
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}

    import unimodel.checkpoint as ck

    real_save = ck.save_tensors

    def disk_full(tensors, path, metadata=None):
        if path.name == "optimizer.safetensors":
            path.write_bytes(b"half a file")
            raise OSError(28, "No space left on device")
        return real_save(tensors, path, metadata)

    monkeypatch.setattr(ck, "save_tensors", disk_full)
    with pytest.raises(TrainingError, match="step 4: could not write the checkpoint.*No space left.*free there"):
        train(tiny_run(out, max_steps=4, checkpoint_every=2), resume=True)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before  # untouched, byte for byte
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no half-written folder left
    monkeypatch.setattr(ck, "save_tensors", real_save)
    assert train(tiny_run(out, max_steps=4, checkpoint_every=2), resume=True).start_step == 2


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fail_at(monkeypatch, 5, lambda loss: loss * float("nan"))
    with pytest.raises(
        TrainingError, match=r"step 5: the training loss \(nan\) is not finite.*last good checkpoint, from step 4"
    ):
        train(tiny_run(out, max_steps=8, checkpoint_every=2, max_nonfinite_steps=1))
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 4
    model = um.load(out / "checkpoint")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert metrics(out)[-1] == {"step": 5, "event": "skipped_non_finite", "loss": "nan", "grad_norm": "nan"}


# ------------------------------------------------------------------ other options and errors
def test_bf16_with_a_progress_bar(tmp_path, capsys):
    result = train(tiny_run(tmp_path, max_steps=2, mixed_precision="bf16", progress=True))
    assert all(math.isfinite(v) for v in result.losses.values())
    bar = capsys.readouterr().err
    assert "2/2" in bar and "loss=" in bar and "tok_s=" in bar


def test_compile_wraps_the_model_and_trains_like_eager(tmp_path, monkeypatch):
    eager = train(tiny_run(tmp_path / "eager", max_steps=2))
    wrapped = []
    real_compile = torch.compile

    def spy(model, *args, **kwargs):
        wrapped.append(model)
        return real_compile(model, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    compiled = train(tiny_run(tmp_path / "compiled", max_steps=2, compile=True))
    assert len(wrapped) == 1 and wrapped[0] is compiled.model
    assert compiled.losses == pytest.approx(eager.losses, abs=1e-5)


def test_data_problems_surface_as_data_errors(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("only a few words here")
    with pytest.raises(DataError, match="too small for one block"):
        train(tiny_run(tmp_path / "a", data={"corpus": None, "paths": [str(small)], "validation_fraction": 0.0}))
    with pytest.raises(DataError, match="fewer than one batch"):
        train(tiny_run(tmp_path / "b", batch_size=4096))
    with pytest.raises(ConfigError, match="block_size 64 is longer than model 'gpt' can take \\(32"):
        train(tiny_run(tmp_path / "c", data={"block_size": 64}))
    with pytest.raises(ConfigError, match="fp16.*needs a GPU.*bf16"):
        train(tiny_run(tmp_path / "e", mixed_precision="fp16"))
    with pytest.raises(ConfigError, match="smaller than the tokenizer's vocabulary"):
        train(tiny_run(tmp_path / "d", model={"vocab_size": 100}))
