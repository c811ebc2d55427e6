"""The trainer: one run of a :class:`~unimodel.training.config.RunConfig` on accelerate.

:class:`Trainer` reads the data the objective's data kind names, trains (or
loads) a tokenizer, builds the model and trains it with AdamW under a warm-up
+ cosine schedule. Each step of the loop is :meth:`Trainer.train_step` (from
:class:`~unimodel.training.steps.TrainingSteps`: every micro-batch's forward and
backward weighted by predictions, then on the last one the step's loss and
gradient norm over all processes, a skip when either is not finite, and the
update) followed by :meth:`Trainer.after_step` (progress, metrics, evaluation,
checkpoint). Checkpoints are written and resumed by
:class:`~unimodel.training.saving.RunFolderSteps`. Data kinds differ only
behind :class:`~unimodel.data.kinds.DataKind`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from unimodel.data.dataset import make_tokenizer, tokenizer_recipe
from unimodel.data.kinds import DataKind, Example, TaskMetric, data_kind, derive_seed
from unimodel.data.tokenizer import Tokenizer
from unimodel.errors import ConfigError, DataError, TrainingError
from unimodel.training.config import RunConfig, load_run_config
from unimodel.training.evaluation import EvalResult, evaluate_examples
from unimodel.training.launch import make_accelerator
from unimodel.training.runfolder import CheckpointRef, RunLock
from unimodel.training.saving import RunFolderSteps
from unimodel.training.schedule import make_optimizer, make_scheduler
from unimodel.training.sharding import full_model, gathered_model, shard_model
from unimodel.training.spec import needed_roles
from unimodel.training.state import (
    METRICS_FILE,
    TOKENIZER_DIR,
    DataPosition,
    set_rng_states,
)
from unimodel.training.steps import (
    LogWindow,
    StepRecord,
    TrainingSteps,
    _ObjectiveStep,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

    from unimodel.model import Model


@dataclass
class TrainResult:
    """What :func:`train` returns. ``losses`` maps each step run by this call to its training loss."""

    output_dir: Path
    checkpoint: Path | None
    start_step: int
    step: int
    losses: dict[int, float]
    before: EvalResult | None
    after: EvalResult | None
    sample: str | None
    tokens_seen: int
    elapsed_s: float
    model: Model = dataclasses.field(repr=False)

    @property
    def val_perplexity_before(self) -> float | None:
        return None if self.before is None else self.before.perplexity

    @property
    def val_perplexity_after(self) -> float | None:
        return None if self.after is None else self.after.perplexity

    @property
    def exact_match(self) -> float | None:
        """Exact match on the validation pairs after training (pair data), else None."""
        return None if self.after is None else self.after.exact_match


class Trainer(TrainingSteps, RunFolderSteps):
    """One training run. Use :func:`train`; this class holds the run's state.

    Attributes set by :meth:`setup`: ``data`` (a :class:`DataKind`), ``tokenizer``,
    ``model``; ``optimizer`` and ``scheduler`` (the torch objects, whose state is
    saved), ``objective_step`` (the module that computes the loss) and
    ``prepared_optimizer``, ``prepared_scheduler`` and ``step_module``
    (accelerate's wrappers of those three, which the loop calls).
    """

    data: DataKind
    tokenizer: Tokenizer | None
    model: Model
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    prepared_optimizer: Any
    prepared_scheduler: Any
    objective_step: _ObjectiveStep
    step_module: nn.Module

    def __init__(self, run: RunConfig, *, resume: bool = False) -> None:
        self.run = run
        self.tc = run.train
        self.resume = resume
        self.out = Path(self.tc.output_dir)
        self.checkpoint: CheckpointRef | None = None  # the run's newest complete checkpoint
        self.lock = RunLock(self.out)
        self.accelerator: Accelerator = make_accelerator(self.tc)
        self.main = self.accelerator.is_main_process
        self.world = self.accelerator.num_processes
        if self.tc.batch_size % (self.tc.gradient_accumulation_steps * self.world):
            raise ConfigError(
                f"train: batch_size {self.tc.batch_size} (the global batch) must be divisible by "
                f"gradient_accumulation_steps ({self.tc.gradient_accumulation_steps}) x processes ({self.world}); "
                "change batch_size or the number of processes"
            )
        self.micro_batch = self.tc.batch_size // self.tc.gradient_accumulation_steps  # over all processes
        self.step = 0
        self.position = DataPosition()
        self.tokens_seen = 0
        self.losses: dict[int, float] = {}
        self.fingerprint = ""
        self.last_checkpoint_step: int | None = None
        self.skipped_steps = 0  # steps skipped for a non-finite loss or gradient norm
        self.nonfinite_in_a_row = 0
        self.last_metric: TaskMetric | None = None
        self.carried: dict[int, Any] = {}  # per micro-batch slot: what the data kind carries between steps
        self.current = StepRecord()
        self.window = LogWindow()
        self.bar: Any = None

    # ------------------------------------------------------------- logging
    def log(self, message: str) -> None:
        if self.main:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    def device_summary(self) -> str:
        """The device the run trains on and its precision, as logged and written to metrics.jsonl."""
        acc = self.accelerator
        return f"{acc.device.type} ({acc.mixed_precision if acc.mixed_precision != 'no' else 'fp32'})"

    def write_metrics(self, record: Mapping[str, Any]) -> None:
        if self.main:
            with (self.out / METRICS_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps(dict(record)) + "\n")

    # ---------------------------------------------------------------- setup
    def setup_tokenizer(self, train_docs: Sequence[str], roles: Sequence[str]) -> Tokenizer:
        data = self.run.data
        if self.resume:
            return Tokenizer.load(self.ckpt_dir)
        if not data.trains_tokenizer:
            return make_tokenizer(data, train_docs)
        folder = self.out / TOKENIZER_DIR
        # One process trains and saves; the others read what it wrote, so all hold the same vocabulary.
        with self.accelerator.main_process_first():
            if self.main:
                started = time.perf_counter()
                recipe = tokenizer_recipe(self.run.model_spec.name)
                tok = make_tokenizer(data, train_docs, needed_roles=roles, recipe=recipe)
                from unimodel.checkpoint import atomic_dir

                with atomic_dir(folder) as tmp:
                    tok.save(tmp)
                self.log(
                    f"trained a {tok.kind} tokenizer: {tok.vocab_size} tokens "
                    f"in {time.perf_counter() - started:.1f}s -> {folder}"
                )
            else:
                tok = Tokenizer.load(folder)
        return tok

    def build_model(self, tokenizer: Tokenizer | None) -> Model:
        from unimodel.model import build_model

        if self.resume:
            from unimodel.checkpoint import load

            self.check_model_unchanged()
            model = load(self.ckpt_dir)
            wanted = self.run.objective_name
            if wanted is not None and wanted != model.objective_name:
                raise TrainingError(
                    f"resume: the checkpoint was trained with objective {model.objective_name!r} but the config names "
                    f"{wanted!r}; a resumed run continues the same objective. Start a new run (another "
                    "train.output_dir) to train with a different objective"
                )
            return model
        spec = self.run.model_spec
        config = spec.filled(tokenizer) if tokenizer is not None else spec.config
        torch.manual_seed(self.tc.seed)  # the same initial weights in every process and every run
        return build_model(spec.build_spec(config), objective=self.run.objective_spec.build_spec(), tokenizer=tokenizer)

    def setup(self, state: Mapping[str, Any] | None) -> dict[str, Tensor]:
        """Data, tokenizer, model, optimizer and schedule, restored from ``state`` when resuming; returns
        the checkpoint's RNG tensors (empty for a new run)."""
        tc, objective = self.tc, self.run.objective_spec
        kind = data_kind(self.run.data.kind or objective.data_kind)
        raw = kind.read(self.run.data, objective=objective.name)
        tokenizer = None
        own = None if self.resume or not kind.uses_tokenizer else kind.own_tokenizer(self.run.data, raw)
        if own is not None:
            tokenizer = own
        elif kind.uses_tokenizer:
            roles = needed_roles(self.run.model_spec, objective)
            tokenizer = self.setup_tokenizer(raw.tokenizer_texts(), roles)
        data = kind.encode(self.run.data, tokenizer, raw)
        model = self.build_model(tokenizer)
        if tc.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        data.check_fits(model, tokenizer)
        data.plan_batches(tc.batch_size)
        self.log(
            f"model {model.preset or model.name!r} + objective {model.objective_name!r}: "
            f"{model.num_parameters():,} parameters, vocabulary {model.vocab_size}; data: {data.describe()}; "
            f"{self.world} process(es) on {self.device_summary()}"
        )
        if data.n_train < tc.batch_size:
            raise DataError(
                f"the training split has {data.n_train} {data.unit}, fewer than one batch (train.batch_size "
                f"{tc.batch_size}); {data.fix_for_too_few()}"
            )
        if tc.fsdp:  # before the optimizer, which steps the sharded parameters
            shard_model(model, self.accelerator)
        self.model = model
        self.optimizer = make_optimizer(model, tc)
        self.scheduler = make_scheduler(self.optimizer, tc)
        self.fingerprint = data.fingerprint()
        rng = self.restore(state) if state is not None else {}
        compiled: Any = torch.compile(model) if tc.compile else None
        self.objective_step = _ObjectiveStep(model, compiled, keep_output=data.carries_state)
        if tc.fsdp:  # sharded already: accelerate wraps only the optimizer and schedule (step skipping)
            self.step_module = self.objective_step
            self.prepared_optimizer, self.prepared_scheduler = self.accelerator.prepare(self.optimizer, self.scheduler)
        else:
            self.step_module, self.prepared_optimizer, self.prepared_scheduler = self.accelerator.prepare(
                self.objective_step, self.optimizer, self.scheduler
            )
        self.tokenizer, self.data = tokenizer, data
        return rng

    # ------------------------------------------------------------ the run
    def run_training(self) -> TrainResult:
        """The whole run under the run folder's lock (released however the run ends)."""
        started = time.perf_counter()
        try:
            return self._run(started)
        finally:
            self.lock.release()

    def _run(self, started: float) -> TrainResult:
        from accelerate.utils import set_seed

        state = self.prepare_output_dir()
        set_seed(self.tc.seed)
        rng = self.setup(state)
        before = self.evaluate_validation("before training")
        if state is not None:
            set_rng_states(rng, state, self.accelerator.process_index)
        else:  # dropout differs per process
            torch.manual_seed(derive_seed(self.tc.seed, "process", self.accelerator.process_index))
        start_step = self.step
        self.loop()
        if self.step > start_step and self.last_checkpoint_step != self.step:
            self.save_checkpoint()
        after = self.evaluate_validation("after training")
        sample = self.sample()
        final = gathered_model(self.model)  # a sharded run returns the model whole
        self.accelerator.wait_for_everyone()
        elapsed = time.perf_counter() - started
        scored = ""
        if after is not None and after.task_score is not None and self.last_metric is not None:
            scored = f", {self.last_metric.label} {after.task_score:.2%}"
        self.log(
            f"done: {self.step} steps, {self.tokens_seen:,} tokens, {elapsed:.1f}s{scored}; checkpoint: {self.ckpt_dir}"
        )
        return TrainResult(
            output_dir=self.out,
            checkpoint=self.ckpt_dir if self.checkpoint is not None else None,
            start_step=start_step,
            step=self.step,
            losses=self.losses,
            before=before,
            after=after,
            sample=sample,
            tokens_seen=self.tokens_seen,
            elapsed_s=elapsed,
            model=final,
        )

    # ------------------------------------------------------------ the loop
    def loop(self) -> None:
        """Train until ``max_steps``, one epoch's remaining examples at a time."""
        from tqdm.auto import tqdm

        tc = self.tc
        if self.step >= tc.max_steps:
            self.log(f"the checkpoint is at step {self.step}, train.max_steps is {tc.max_steps}: nothing to train")
            return
        self.model.train()
        self.bar = tqdm(
            total=tc.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (self.main and tc.progress),
            file=sys.stderr,
        )
        self.window, self.current = LogWindow(), StepRecord()
        try:
            while self.step < tc.max_steps:
                for step_examples in self.global_batches():
                    self.train_step(step_examples)
                    self.after_step()
                if self.position.examples_in_epoch + tc.batch_size > self.data.n_train:
                    self.position = DataPosition(self.position.epoch + 1, 0)
        finally:
            self.bar.close()

    def after_step(self) -> None:
        """Bookkeeping after an optimizer step: position, progress, metrics, evaluation, checkpoint."""
        tokens = self.advance()
        self.show_progress(tokens)
        self.log_step()
        tc = self.tc
        if tc.eval_every and self.step % tc.eval_every == 0 and self.step != tc.max_steps:
            self.evaluate_validation(f"step {self.step}")
            self.model.train()
        if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
            self.save_checkpoint()
        self.current = StepRecord()

    def advance(self) -> int:
        """Count the step just taken; returns the tokens of its global batch."""
        bs, pos = self.tc.batch_size, self.position
        tokens = self.data.n_tokens(self.epoch_indices[pos.examples_in_epoch : pos.examples_in_epoch + bs])
        self.step += 1
        self.position = DataPosition(pos.epoch, pos.examples_in_epoch + bs)
        self.tokens_seen += tokens
        if not self.current.skipped:  # a skipped step's loss is not finite; it changed nothing
            self.losses[self.step] = self.current.loss
            self.window.losses.append(self.current.loss)
            self.window.metrics.append(self.current.metrics)
        self.window.tokens += tokens
        return tokens

    def show_progress(self, tokens: int) -> None:
        step = self.current
        tok_s = tokens / max(time.perf_counter() - step.started, 1e-9)
        parts = {name: f"{value:.4g}" for name, value in step.metrics.items()}
        self.bar.set_postfix(
            loss=f"{step.loss:.4f}", **parts, tok_s=f"{tok_s:,.0f}", lr=f"{step.lr:.2e}", refresh=False
        )
        self.bar.update(1)

    def log_step(self) -> None:
        """Every ``log_every`` steps (and at the last): the window's mean loss and throughput to metrics.jsonl."""
        tc, window = self.tc, self.window
        if self.step % tc.log_every and self.step != tc.max_steps:
            return
        self.write_metrics(
            {
                "step": self.step,
                "loss": sum(window.losses) / len(window.losses) if window.losses else None,
                "lr": self.current.lr,
                "grad_norm": self.current.grad_norm,
                "tokens": self.tokens_seen,
                "epoch": self.position.epoch,
                "tokens_per_s": window.tokens / max(time.perf_counter() - window.started, 1e-9),
                **({"metrics": mean_metrics(window.metrics)} if any(window.metrics) else {}),
                "device": str(self.accelerator.device),
                "mixed_precision": self.accelerator.mixed_precision,
            }
        )
        self.window = LogWindow()

    # ------------------------------------------------------- evaluation etc.
    def evaluate_validation(self, when: str) -> EvalResult | None:
        examples = self.data.validation_examples
        if not examples:
            return None
        tc = self.tc
        batch_size = tc.eval_batch_size or tc.batch_size
        with full_model(self.model) as model:  # sharded training: gathered full parameters
            return self.evaluate_on(model, examples, batch_size, when)

    def evaluate_on(self, model: Model, examples: Sequence[Example], batch_size: int, when: str) -> EvalResult:
        """Validation loss (and the task metric) of ``model``, logged and written to metrics.jsonl."""
        tc = self.tc
        result = evaluate_examples(
            model,
            examples,
            tokenizer=self.tokenizer,
            batch_size=batch_size,
            seed=tc.seed,
            max_batches=tc.max_eval_batches,
            accelerator=self.accelerator,
            unit=self.data.unit,
        )
        line = f"validation {when}: loss {result.loss:.4f}"
        record: dict[str, Any] = {"step": self.step, "val_loss": result.loss}
        if result.loss_is_token_ce:
            line += f", perplexity {result.perplexity:,.2f}"
            record["val_perplexity"] = result.perplexity
        line += "".join(f", {name} {value:.4g}" for name, value in result.metrics.items())
        line += f" ({result.n_tokens:,} {'tokens' if result.loss_is_token_ce else 'predictions'})"
        record["val_tokens"] = result.n_tokens
        if result.metrics:
            record["val_metrics"] = result.metrics
        metric = self.task_metric(model, examples, batch_size)
        if metric is not None:
            result.with_metric(metric)
            line += f"; {metric.summary()}"
            record.update({f"val_{metric.name}": metric.score, f"val_{metric.name}_examples": metric.total})
            record.update({f"val_{key}": value for key, value in metric.values().items()})
            if self.main:
                for path in metric.write_files(self.out, self.step):
                    line += f" -> {path}"
            self.last_metric = metric
        self.log(line)
        self.write_metrics(record)
        return result

    def task_metric(self, model: Model, examples: Sequence[Example], batch_size: int) -> TaskMetric | None:
        """The data kind's task metric on the first ``exact_match_examples`` validation examples."""
        limit = self.tc.exact_match_examples
        if limit == 0 or self.step == 0:  # an untrained model matches nothing: scoring starts after step 0
            return None
        return self.data.task_metric(
            model, examples[:limit], tokenizer=self.tokenizer, batch_size=batch_size, accelerator=self.accelerator
        )

    def sample(self) -> str | None:
        """What the data kind shows after training (on the main process), logged and returned."""
        with full_model(self.model) as model:  # every process gathers; the main one samples
            if not self.main:
                return None
            return self.sample_from(model)

    def sample_from(self, model: Model) -> str | None:
        tc = self.tc
        # the model's special tokens and processors, sampled as [train] says
        generation = model.generation_config.replace(
            max_new_tokens=tc.sample_tokens,
            do_sample=True,
            top_k=tc.sample_top_k or None,
            num_beams=1,
            num_return_sequences=1,
            strategy=None,
        )
        shown = self.data.sample(
            model,
            self.tokenizer,
            prompt=tc.sample_prompt,
            generation=generation,
            seed=tc.seed,
            metric=self.last_metric,
        )
        if shown is None:
            return None
        self.log(f"{shown.heading}:\n{shown.text}")
        return shown.text


def mean_metrics(records: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per name, the mean over the records that have it."""
    names = sorted({name for r in records for name in r})
    return {n: sum(r[n] for r in records if n in r) / sum(n in r for r in records) for n in names}


def train(
    config: str | Path | Mapping[str, Any] | RunConfig,
    *,
    resume: bool = False,
    overrides: Sequence[str] | None = None,
) -> TrainResult:
    """Train the model a run config describes; returns losses, perplexities, the sample and the model.

    ``config``: a ``.toml``/``.json`` path, a dict or a :class:`RunConfig`.
    ``overrides``: ``"section.key=value"`` strings, e.g. ``"train.max_steps=20"``.
    ``resume``: continue the run whose checkpoint is in ``train.output_dir``.
    Works the same under ``accelerate launch`` with several processes.
    The run config is checked whole (the ``[model]`` and ``[objective]`` keys
    against their config classes) before any data is read.
    """
    run = load_run_config(config, overrides)
    return Trainer(run, resume=resume).run_training()


__all__ = ["TrainResult", "Trainer", "train"]
