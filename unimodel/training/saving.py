"""The trainer's side of the run folder: start-up checks, saving, resuming, and the stop on non-finite steps.

:class:`RunFolderSteps` is mixed into :class:`~unimodel.training.trainer.Trainer`;
how checkpoints are written and found is :mod:`unimodel.training.runfolder`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unimodel.errors import TrainingError
from unimodel.training.runfolder import CheckpointRef, RunLock, checkpoint_problem, commit_checkpoint
from unimodel.training.sharding import full_model, full_optimizer_state, is_sharded, load_full_optimizer_state
from unimodel.training.state import (
    METRICS_FILE,
    OPTIMIZER_FILE,
    RNG_FILE,
    RUN_FILE,
    STATE_FILE,
    DataPosition,
    gather_rng_states,
    read_json_state,
    restore_optimizer,
    rng_tensors,
    state_record,
    truncate_metrics,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

    from unimodel.model import Model
    from unimodel.training.config import RunConfig, TrainConfig
    from unimodel.training.steps import StepRecord


class RunFolderSteps:
    """Checkpoint handling of a :class:`~unimodel.training.trainer.Trainer` (attributes it sets)."""

    run: RunConfig
    tc: TrainConfig
    out: Path
    resume: bool
    main: bool
    world: int
    accelerator: Accelerator
    checkpoint: CheckpointRef | None
    lock: RunLock
    model: Model
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: int
    position: DataPosition
    tokens_seen: int
    fingerprint: str
    skipped_steps: int
    nonfinite_in_a_row: int
    last_checkpoint_step: int | None
    current: StepRecord

    if TYPE_CHECKING:  # the trainer's

        def log(self, message: str) -> None: ...

        def what_is_not_finite(self) -> str: ...

    @property
    def ckpt_dir(self) -> Path:
        """The folder of the run's newest checkpoint (the step folder), or where the link to it is."""
        from unimodel.checkpoint import RUN_LATEST

        return self.checkpoint.folder if self.checkpoint is not None else self.out / RUN_LATEST

    def prepare_output_dir(self) -> dict[str, Any] | None:
        """Check the output folder against ``resume`` (the main process locks it first, and every process
        learns the outcome); returns the saved trainer state when resuming."""
        from unimodel.training.runfolder import open_run_folder

        outcome: list[Any] = [None, None]  # (error message, step of the checkpoint to resume)
        if self.main:
            try:
                ref = open_run_folder(
                    self.out, self.lock, resume=self.resume, overwrite=self.tc.overwrite, log=self.log
                )
                outcome = [None, None if ref is None else ref.step]
            except TrainingError as exc:
                outcome = [str(exc), None]
        if self.world > 1:
            from accelerate.utils import broadcast_object_list

            outcome = broadcast_object_list(outcome)
        if outcome[0] is not None:
            raise TrainingError(outcome[0])
        if outcome[1] is None:
            return None
        from unimodel.checkpoint import RUN_CHECKPOINTS_DIR
        from unimodel.training.runfolder import step_folder_name

        step = int(outcome[1])
        self.checkpoint = CheckpointRef(step, self.out / RUN_CHECKPOINTS_DIR / step_folder_name(step))
        state = read_json_state(self.ckpt_dir / STATE_FILE)
        if self.main:
            truncate_metrics(self.out / METRICS_FILE, state["step"])
        return state

    def check_model_unchanged(self) -> None:
        """Refuse to resume when ``[model]`` resolves to another config than the checkpoint's run had."""
        from unimodel.checkpoint import read_json
        from unimodel.training.spec import resolve_model_spec

        saved = read_json(self.ckpt_dir / RUN_FILE).get("model")
        if not isinstance(saved, dict):
            return  # a checkpoint without its run's [model]: its config.json is the model
        # both as the objective builds them (cmlm: causal_decoder = false), however the table spelled it
        objective = self.run.objective_spec.objective_class
        before = resolve_model_spec(saved).for_objective(objective)
        now = self.run.model_spec
        old, new = before.config.to_dict(), now.config.to_dict()
        keys = sorted(set(old) | set(new))
        changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
        if before.family.name != now.family.name:
            changed.insert(0, f"model: {before.name!r} -> {now.name!r}")
        if changed:
            raise TrainingError(
                f"resume: [model] differs from the model of the checkpoint in {str(self.ckpt_dir)!r} "
                f"({'; '.join(changed)}); the weights are of the checkpoint's model. Restore those [model] "
                "settings to resume (training settings such as max_steps may change), or start a new run in "
                "another train.output_dir"
            )

    def fail_not_finite(self) -> None:
        step, n = self.step + 1, self.nonfinite_in_a_row
        if self.checkpoint is not None:
            problem = checkpoint_problem(self.checkpoint)
            if problem is None:
                kept = (
                    f"the last good checkpoint, from step {self.checkpoint.step}, is in place at "
                    f"{str(self.ckpt_dir)!r} (verified: every weight finite)"
                )
            else:
                kept = f"the checkpoint at {str(self.ckpt_dir)!r} cannot be resumed from: {problem}"
        else:
            kept = "no checkpoint had been written yet"
        raise TrainingError(
            f"step {step}: the {self.what_is_not_finite()} is not finite"
            + (f" ({n} steps in a row, train.max_nonfinite_steps = {n})" if n > 1 else "")
            + f"; training stopped and {kept}. Lower train.learning_rate, lengthen train.warmup_steps or keep "
            "train.max_grad_norm on, then resume with --resume"
        )

    def save_checkpoint(self) -> None:
        """Write a step folder crash-safely and make it the run's checkpoint (main process; see
        :mod:`unimodel.training.runfolder`); every process's RNG state goes in it. Weights that are not
        finite are never saved.

        A sharded run gathers the full parameters and the optimizer state by parameter name first (every
        process takes part); the step folder holds them whole, as a run on one process would.
        """
        acc = self.accelerator
        all_rng = gather_rng_states(self.world)
        optimizer_state = full_optimizer_state(self.model, self.optimizer) if is_sharded(self.model) else None
        with full_model(self.model) as model:
            if self.main:
                self.checkpoint = self.write_checkpoint(model, all_rng, optimizer_state)
            else:
                from unimodel.checkpoint import RUN_CHECKPOINTS_DIR
                from unimodel.training.runfolder import step_folder_name

                folder = self.out / RUN_CHECKPOINTS_DIR / step_folder_name(self.step)
                self.checkpoint = CheckpointRef(self.step, folder)
        acc.wait_for_everyone()
        self.last_checkpoint_step = self.step

    def write_checkpoint(
        self, model: Model, all_rng: list[dict[str, Tensor]], optimizer_state: dict[str, Any] | None
    ) -> CheckpointRef:
        """The main process's part of :meth:`save_checkpoint`: ``model`` (whole) and the trainer state in a new
        step folder, committed as the run's checkpoint."""
        from unimodel.checkpoint import dedup_state_dict, nonfinite_tensors

        bad = nonfinite_tensors(dedup_state_dict(model)[0])
        if bad:
            raise TrainingError(
                f"step {self.step}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                f"({', '.join(bad[:3])}); nothing was saved, and the run's checkpoint is still "
                f"{str(self.ckpt_dir)!r}"
            )
        tensors: dict[str, Tensor] = {}
        state = state_record(
            step=self.step,
            position=self.position,
            tokens_seen=self.tokens_seen,
            num_processes=self.world,
            fingerprint=self.fingerprint,
            skipped_steps=self.skipped_steps,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.accelerator.scaler,
            tensors=tensors,
            optimizer_state=optimizer_state,
        )

        def write(folder: Path) -> None:
            from unimodel.checkpoint import save_tensors, write_json

            model.save(folder)
            write_json(folder / RUN_FILE, {"schema_version": 1, **self.run.to_dict()})
            save_tensors(tensors, folder / OPTIMIZER_FILE)
            save_tensors(rng_tensors(all_rng), folder / RNG_FILE)
            write_json(folder / STATE_FILE, state)  # last: a folder with a trainer state is whole

        try:
            return commit_checkpoint(self.out, self.step, write, keep=self.tc.keep_checkpoints)
        except OSError as exc:
            raise self.save_failed(exc) from None

    def save_failed(self, exc: OSError) -> TrainingError:
        """The error of a save that the file system refused (disk full, file-size limit, permissions)."""
        import shutil

        from unimodel.bounds import format_size
        from unimodel.checkpoint import RUN_CHECKPOINTS_DIR

        folder = self.out / RUN_CHECKPOINTS_DIR
        try:
            free = f"{format_size(shutil.disk_usage(self.out).free)} free there"
        except OSError:
            free = "free space unknown"
        kept = (
            f"the previous checkpoint, of step {self.checkpoint.step}, is intact at {str(self.checkpoint.folder)!r}"
            if self.checkpoint is not None
            else "no earlier checkpoint exists"
        )
        return TrainingError(
            f"step {self.step}: could not write the checkpoint in {str(folder)!r}: {exc.strerror or exc} ({free}); "
            f"{kept}. Free disk space (or raise the file-size limit), then continue with --resume"
        )

    def restore(self, state: Mapping[str, Any]) -> dict[str, Tensor]:
        """Load optimizer, schedule and position from a checkpoint; returns the saved RNG tensors."""
        from unimodel.checkpoint import load_tensors

        if state.get("data_fingerprint") != self.fingerprint:
            raise TrainingError(
                f"resume: the training data differs from the data of the checkpoint in {str(self.ckpt_dir)!r} "
                "(other text or pairs, tokenizer, block size or split); resume with the run's own [data] settings, "
                "or start a new run"
            )
        by_name = None
        if is_sharded(self.model):  # the saved state is whole and keyed by name: each process takes its shard
            model, optimizer = self.model, self.optimizer

            def by_name(saved: dict[str, Any]) -> None:
                load_full_optimizer_state(model, optimizer, saved)

        restore_optimizer(state, self.ckpt_dir, self.optimizer, self.scheduler, self.accelerator.scaler, by_name)
        self.step = int(state["step"])
        self.position = DataPosition(int(state["epoch"]), int(state["examples_in_epoch"]))
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.last_checkpoint_step = self.step
        rng, _ = load_tensors(self.ckpt_dir / RNG_FILE)
        self.log(f"resuming from {self.ckpt_dir} at step {self.step} (epoch {self.position.epoch})")
        return rng


__all__ = ["RunFolderSteps"]
