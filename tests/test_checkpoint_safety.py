"""Checkpoints that cannot be lost: non-finite steps, the crash-safe save sequence, kills, the run lock,
resume checks, full disks, unwritable folders, data a checkpoint may make eval read, objective metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training import metrics, tiny_run

import unimodel as um
from unimodel import cli
from unimodel.errors import ConfigError, DataError, TrainingError
from unimodel.training import TrainConfig, Trainer, load_run_config, train
from unimodel.training.runfolder import (
    FAULT_ENV,
    FAULT_EXIT_CODE,
    SAVE_POINTS,
    InjectedFault,
    RunLock,
    find_resume_checkpoint,
    is_temporary,
    step_folders,
)

DRIVER = Path(__file__).with_name("crash_driver.py")
INF = float("inf")


def quiet(message: str) -> None:
    pass


def quick_run(out: Path, **train_opts) -> dict:
    """``tiny_run`` without a validation split: no evaluation before and after training."""
    return tiny_run(out, data={"validation_fraction": 0.0}, **train_opts)


def temporaries(out: Path) -> list[str]:
    return sorted(p.name for d in (out, out / "checkpoints") if d.is_dir() for p in d.iterdir() if is_temporary(p.name))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# ------------------------------------------------------------------ non-finite steps
def test_train_config_refuses_non_finite_and_out_of_range_numbers(tmp_path):
    bad = {
        "learning_rate": INF,
        "weight_decay": float("nan"),
        "adam_eps": 0.0,
        "adam_beta1": 1.0,
        "adam_beta2": -0.1,
        "max_grad_norm": -1.0,
        "min_lr_ratio": 1.5,
        "keep_checkpoints": 0,
        "max_nonfinite_steps": 0,
    }
    for name, value in bad.items():
        with pytest.raises(ConfigError, match=rf"train: .*{name}"):
            TrainConfig(**{name: value})
    with pytest.raises(ConfigError, match="weight_decay x learning_rate must be below 1"):
        TrainConfig(learning_rate=5.0, weight_decay=0.5)
    # through a run, before any data is read
    with pytest.raises(ConfigError, match="learning_rate.*finite"):
        train(tiny_run(tmp_path / "inf", learning_rate=INF))
    assert not (tmp_path / "inf").exists()


def _infinite_gradients_from(monkeypatch: pytest.MonkeyPatch, first_step: int) -> None:
    """From step ``first_step`` on, one weight's gradient is infinite while the loss stays finite."""
    real = Trainer.micro_step

    def micro_step(self, *args):
        if self.step + 1 < first_step:
            return real(self, *args)
        weight = next(self.model.parameters())
        handle = weight.register_hook(lambda g: torch.full_like(g, INF))
        try:
            return real(self, *args)
        finally:
            handle.remove()

    monkeypatch.setattr(Trainer, "micro_step", micro_step)


def test_steps_with_infinite_gradients_are_skipped_never_saved_and_stop_the_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _infinite_gradients_from(monkeypatch, 3)
    with pytest.raises(TrainingError) as err:
        train(quick_run(out, max_steps=8, checkpoint_every=1))
    message = str(err.value)
    assert message.startswith("step 5: the gradient norm (")
    assert "is not finite (3 steps in a row, train.max_nonfinite_steps = 3)" in message
    assert "from step 4" in message and "verified: every weight finite" in message
    events = [m for m in metrics(out) if m.get("event") == "skipped_non_finite"]
    assert [e["step"] for e in events] == [3, 4, 5]
    assert all(e["grad_norm"] in ("inf", "nan") and e["loss"] not in ("inf", "nan") for e in events)
    # the skipped steps changed nothing: the checkpoints of steps 3 and 4 hold the weights of step 2
    assert [r.step for r in step_folders(out)] == [4, 3]
    four, three = (weights(r.folder) for r in step_folders(out))
    assert all(torch.equal(four[k], three[k]) and torch.isfinite(four[k]).all() for k in four)
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["skipped_steps"] == 2
    # a run with fewer skips in a row than the limit goes on, and its losses stay finite
    monkeypatch.undo()
    resumed = train(quick_run(out, max_steps=6, checkpoint_every=1), resume=True)
    assert resumed.start_step == 4 and all(torch.isfinite(p).all() for p in resumed.model.parameters())


# ------------------------------------------------------------------ the save sequence
def test_an_error_at_each_save_point_keeps_a_complete_checkpoint_to_resume(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run = load_run_config(quick_run(out, max_steps=3, checkpoint_every=1, keep_checkpoints=2))
    trainer = Trainer(run)
    trainer.setup(trainer.prepare_output_dir())
    try:
        trainer.save_checkpoint()  # step 0: the first complete checkpoint
        renamed = SAVE_POINTS.index("folder-renamed")
        for i, point in enumerate(SAVE_POINTS):
            before = find_resume_checkpoint(out, quiet)
            trainer.step = before.step + 1
            monkeypatch.setenv(FAULT_ENV, f"{point}:raise")
            with pytest.raises(InjectedFault, match=point):
                trainer.save_checkpoint()
            monkeypatch.delenv(FAULT_ENV)
            found = find_resume_checkpoint(out, quiet)
            assert found.step == (trainer.step if i >= renamed else before.step), point
            assert temporaries(out) == [], point  # an error (unlike a kill) cleans up at once
            # the link readers use names a complete checkpoint at every point
            assert um.load(out / "checkpoint").num_parameters() == trainer.model.num_parameters()
        assert len(step_folders(out)) <= 3  # keep 2, plus one written before its pruning failed
    finally:
        trainer.lock.release()
    resumed = train(quick_run(out, max_steps=len(SAVE_POINTS) + 1, checkpoint_every=1), resume=True)
    assert resumed.start_step == len(SAVE_POINTS) - renamed
    assert [r.step for r in step_folders(out)] == [resumed.step, resumed.step - 1]


def test_kills_at_every_save_point_and_at_twenty_random_moments(tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "run.json"
    config.write_text(json.dumps(tiny_run(out, checkpoint_every=1, data={"validation_fraction": 0.0})))
    spec = {"out": str(out), "config": str(config), "logs": str(tmp_path / "logs"), "seed": 0, "kills": 20}
    spec["fsize"] = 20_000  # bytes: below the size of the weights file
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    root = DRIVER.parent.parent  # this checkout's unimodel and plugins, whatever else is installed
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), str(root / "plugins"), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(tmp_path / "spec.json")], capture_output=True, text=True, check=False, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["initial"] == {"code": 0, "step": 1}

    renamed = SAVE_POINTS.index("folder-renamed")
    for i, fault in enumerate(report["faults"]):
        assert fault["code"] == FAULT_EXIT_CODE, fault  # the process died at that point
        assert fault["resumed_at"] == fault["before"], fault  # and had resumed from the newest complete one
        assert fault["after"] == fault["before"] + (1 if i >= renamed else 0), fault

    fsize = report["fsize"]
    assert fsize["code"] == 2 and not fsize["traceback"] and fsize["after"] == fsize["before"]
    assert len(fsize["error"]) == 1 and fsize["temporaries"] == []
    assert "could not write the checkpoint in" in fsize["error"][0] and "File too large" in fsize["error"][0]
    assert "free there" in fsize["error"][0] and f"of step {fsize['before']}, is intact" in fsize["error"][0]

    kills = report["kills"]
    assert len(kills) == 20 and all(k["code"] == "killed" for k in kills), kills  # none failed by itself
    for kill in kills:
        assert kill["after"] is not None and kill["after"] >= kill["before"], kill  # never lost, never back
        assert kill["resumed_at"] in (None, kill["before"]), kill  # when it got that far: the newest one

    final = report["final"]
    before = final["before"]
    assert final["code"] == 0 and final["resumed_at"] == before
    assert final["pointer"] == before + 1 and final["folders"] == [before + 1, before]
    assert final["link"] == f"checkpoints/step-{before + 1:06d}"
    assert final["problems"] == [None, None] and final["temporaries"] == [] and not final["lock_left"]


# ------------------------------------------------------------------ lock, resume checks, disk
def test_a_second_trainer_is_refused_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    held = RunLock(out)
    held.acquire(quiet)
    try:
        with pytest.raises(TrainingError, match=rf"in use by another training run \(pid {os.getpid()} on host "):
            train(quick_run(out, max_steps=1))
    finally:
        held.release()
    gone = subprocess.Popen(["true"])
    gone.wait()
    import socket

    (out / "train.lock").write_text(json.dumps({"pid": gone.pid, "hostname": socket.gethostname(), "started": 0}))
    train(quick_run(out, max_steps=1))
    assert f"taking over the stale lock of a run that is gone (pid {gone.pid} on host" in capsys.readouterr().out
    assert not (out / "train.lock").exists()  # released at the end


def test_resume_refuses_a_changed_model_and_keeps_run_json_true(tmp_path):
    out = tmp_path / "run"
    train(quick_run(out, max_steps=1, checkpoint_every=1))
    with pytest.raises(TrainingError, match=r"\[model\] differs .*\(n_heads: 4 -> 2; n_layers: 2 -> 3\)"):
        train(quick_run(out, max_steps=2, model={"n_layers": 3, "n_heads": 2}), resume=True)
    # training settings may change; run.json then records them, and the model it records is the weights'
    train(quick_run(out, max_steps=2, checkpoint_every=1, learning_rate=1e-3), resume=True)
    saved = json.loads((out / "checkpoint" / "run.json").read_text())
    assert saved["train"]["max_steps"] == 2 and saved["train"]["learning_rate"] == 1e-3
    assert um.load(out).config.n_layers == saved["model"]["n_layers"] == 2


def test_an_older_run_folder_with_a_checkpoint_folder_is_resumed(tmp_path):
    out = tmp_path / "run"
    train(quick_run(out, max_steps=2, checkpoint_every=1))
    # the layout before step folders: one checkpoint/ folder, no pointer
    real = (out / "checkpoint").resolve()
    (out / "checkpoint").unlink()
    real.rename(out / "checkpoint")
    shutil.rmtree(out / "checkpoints")
    (out / "checkpoint.json").unlink()
    assert um.load(out).num_parameters() > 0  # readers see it as before
    resumed = train(quick_run(out, max_steps=3, checkpoint_every=1), resume=True)
    assert resumed.start_step == 2 and [r.step for r in step_folders(out)] == [3, 2]
    assert (out / "checkpoint").is_symlink()


def _unwritable(folder: Path) -> None:
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores permissions; the immutable flag it does not
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        if done.returncode:
            folder.chmod(0o755)
            pytest.skip("cannot make a folder unwritable here (root without chattr)")


def _writable(folder: Path) -> None:
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True, check=False)
    folder.chmod(0o755)


def test_an_unwritable_output_folder_is_refused_at_start_also_on_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _unwritable(out)
    try:
        for resume in (False, True):
            with pytest.raises(TrainingError, match=r"output_dir .*run' is not writable"):
                train(quick_run(out, max_steps=2, overwrite=True), resume=resume)
    finally:
        _writable(out)


# ------------------------------------------------------------------ what a checkpoint makes eval read
def test_eval_reads_recorded_data_only_inside_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_run(out, max_steps=1))
    ckpt = tmp_path / "downloaded"
    shutil.copytree(out / "checkpoint", ckpt)
    secret = tmp_path / "private.txt"
    secret.write_text("SECRET-LINE-1\tSECRET-LINE-2\n")
    run = json.loads((ckpt / "run.json").read_text())

    def record(data: dict) -> None:
        (ckpt / "run.json").write_text(json.dumps({**run, "data": {**run["data"], **data}}))

    for paths in (["../private.txt"], [str(secret)], ["../*.txt"]):
        record({"corpus": None, "paths": paths})
        assert cli.main(["eval", str(ckpt)]) == 2
        err = capsys.readouterr().err
        assert "records data that is not inside the checkpoint folder" in err and "--data" in err
        assert "SECRET" not in err
    # inside the checkpoint folder (relative to it): read
    (ckpt / "held_out.txt").write_text("def f(x):\n    return x + 1\n" * 40)
    record({"corpus": None, "paths": ["held_out.txt"], "validation_fraction": 0.0})
    assert um.training.evaluate(ckpt, split="all").n_tokens > 0
    # given again by the user: read
    record({"corpus": None, "paths": ["../private.txt"]})
    assert cli.main(["eval", str(ckpt), "--data", str(ckpt / "held_out.txt")]) == 0
    record({"corpus": None, "paths": ["../private.txt"]})
    with pytest.raises(DataError, match="not inside the checkpoint folder"):
        um.training.evaluate(ckpt)


# ------------------------------------------------------------------ objective metrics
def test_objective_metrics_are_logged_and_perplexity_only_for_token_losses(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    result = train(tiny_run(out, max_steps=2, progress=True))
    steps = [m for m in metrics(out) if "loss" in m]
    assert all(0.0 <= m["metrics"]["accuracy"] <= 1.0 for m in steps)
    assert all("val_metrics" in m and "val_perplexity" in m for m in metrics(out) if "val_loss" in m)
    assert "accuracy=" in capsys.readouterr().err  # the progress line
    assert 0.0 <= result.after.metrics["accuracy"] <= 1.0
    assert cli.main(["eval", str(out), "--max-batches", "1"]) == 0
    shown = capsys.readouterr().out
    assert "perplexity:" in shown and "accuracy:" in shown

    objective = type(um.load(out).objective)
    assert objective.loss_is_token_ce is True
    monkeypatch.setattr(objective, "loss_is_token_ce", False)
    assert cli.main(["eval", str(out), "--max-batches", "1"]) == 0
    shown = capsys.readouterr().out
    assert "perplexity" not in shown and "loss:" in shown and "accuracy:" in shown
