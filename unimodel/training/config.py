"""The run config: ``[model]``, ``[objective]``, ``[data]`` and ``[train]``, and ``--set`` overrides.

A :class:`RunConfig` is checked as a whole when it is made: the ``[model]``
table resolves through its presets into the family's config class and the
``[objective]`` table into the objective's, without building anything, so a
misspelled key is reported before any data is read or a tokenizer trained.
The resolved, typed sections are :attr:`RunConfig.model_spec` and
:attr:`RunConfig.objective_spec`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from unimodel.config import Config, check_schema_version, param, read_config_file
from unimodel.data.config import DataConfig
from unimodel.errors import ConfigError, did_you_mean
from unimodel.training.spec import ModelSpec, ObjectiveSpec, resolve_model_spec, resolve_objective_spec

SECTIONS = ("model", "objective", "data", "train")


@dataclass(frozen=True)
class TrainConfig(Config):
    """Optimisation, schedule, logging and checkpointing (the ``[train]`` table)."""

    section = "train"

    output_dir: str = param(
        "runs/unimodel",
        "folder for metrics.jsonl, the tokenizer and the checkpoint; for a config file, runs/<file name> by default",
    )
    overwrite: bool = param(False, "start afresh even if output_dir holds a checkpoint (it is replaced)")
    seed: int = param(0, "seed of model initialisation, data order, dropout and objective noise")
    max_steps: int = param(1000, "optimizer steps to train for")
    batch_size: int = param(32, "GLOBAL batch: examples per optimizer step, over all processes and accumulation steps")
    gradient_accumulation_steps: int = param(1, "micro-batches per optimizer step (each batch_size / this)")
    learning_rate: float = param(3e-4, "peak learning rate, reached at the end of warm-up")
    min_lr_ratio: float = param(0.1, "the cosine decay ends at learning_rate * min_lr_ratio")
    warmup_steps: int = param(100, "steps of linear warm-up from learning_rate / warmup_steps")
    weight_decay: float = param(0.1, "AdamW decoupled weight decay on weight matrices (not norms, biases, embeddings)")
    adam_beta1: float = param(0.9, "AdamW beta1")
    adam_beta2: float = param(0.95, "AdamW beta2")
    adam_eps: float = param(1e-8, "AdamW epsilon")
    max_grad_norm: float = param(1.0, "clip the global gradient norm to this; 0 disables clipping")
    mixed_precision: Literal["no", "bf16", "fp16"] = param("no", "autocast precision (accelerate)")
    device: Literal["auto", "cpu", "cuda", "mps"] = param(
        "auto", "where to train: auto (CUDA, then MPS, then the CPU), or cpu, cuda or mps to insist on one"
    )
    cpu: bool | None = param(None, 'deprecated: cpu = true is device = "cpu"')
    compile: bool = param(False, "wrap the model with torch.compile")
    gradient_checkpointing: bool = param(
        False, "recompute each block's activations in the backward pass: less memory, about a third more time"
    )
    fsdp: bool = param(
        False,
        "shard parameters, gradients and optimizer state over the processes with FSDP2 (fully_shard); "
        "evaluation, samples and checkpoints use gathered full parameters (docs/distributed.md)",
    )
    find_unused_parameters: bool = param(
        False,
        "last resort for a plugin model whose loss leaves some parameters unused in a step: DDP then searches "
        "the graph for them every step (slower); unimodel's own families never need it (docs/distributed.md)",
    )
    eval_every: int = param(200, "evaluate on the validation split every N steps (0: only before and after)")
    eval_batch_size: int | None = param(None, "validation batch size (batch_size when null)")
    max_eval_batches: int | None = param(None, "evaluate on at most N validation batches")
    log_every: int = param(10, "append training metrics to metrics.jsonl every N steps")
    checkpoint_every: int = param(500, "write the checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = param(
        2, "complete checkpoints kept in output_dir/checkpoints (the newest; older ones are removed after a save)"
    )
    max_nonfinite_steps: int = param(
        3,
        "a step whose loss or gradient norm is NaN or infinite is skipped (no update, never saved); the run "
        "stops after this many such steps in a row (1: at the first)",
    )
    progress: bool = param(True, "show a progress bar")
    sample_prompt: str = param(
        "The",
        "after training, a causal model continues this prompt ('' for no sample); a run on pairs shows "
        "validation pairs decoded instead",
    )
    sample_tokens: int = param(48, "tokens to generate for the sample")
    sample_top_k: int = param(40, "top-k of the sample's sampling (0 keeps every token)")
    exact_match_examples: int | None = param(
        500,
        "data with a task metric (exact match of pairs): at each evaluation after step 0, score this many "
        "validation examples (0: never; null: all of them)",
    )

    @property
    def requested_device(self) -> str:
        """``device``, or ``"cpu"`` when the deprecated ``cpu = true`` is set."""
        return "cpu" if self.cpu else self.device

    def check(self) -> None:
        if self.cpu is not None:
            import warnings

            if self.cpu and self.device not in ("auto", "cpu"):
                self.fail(("cpu", "device"), f'cpu = true contradicts device = "{self.device}"; drop cpu')
            warnings.warn(
                f'[train] cpu is deprecated: write device = "{self.requested_device}" instead',
                DeprecationWarning,
                stacklevel=2,
            )
        self.require_positive(
            "max_steps",
            "batch_size",
            "gradient_accumulation_steps",
            "log_every",
            "sample_tokens",
            "keep_checkpoints",
            "max_nonfinite_steps",
            "eval_batch_size",
            "max_eval_batches",
        )
        self.require_at_least(0, "warmup_steps", "eval_every", "checkpoint_every", "sample_top_k")
        self.require_at_least(0, "exact_match_examples")  # null: every validation pair
        if self.batch_size % self.gradient_accumulation_steps:
            self.fail(
                ("batch_size", "gradient_accumulation_steps"),
                "batch_size is the global batch; it must be divisible by gradient_accumulation_steps",
            )
        # NaN and infinities are refused for every float field before check() runs
        self.require_positive("learning_rate", "adam_eps")
        if self.learning_rate > 10.0:
            self.fail("learning_rate", "must be at most 10 (AdamW steps are about learning_rate per weight)")
        self.require_fraction("min_lr_ratio", inclusive=True)
        self.require_at_least(0, "weight_decay", "max_grad_norm")
        if self.weight_decay * self.learning_rate >= 1.0:
            self.fail(
                ("weight_decay", "learning_rate"),
                "weight_decay x learning_rate must be below 1 (AdamW multiplies the weights by 1 - their product "
                "every step)",
            )
        self.require_fraction("adam_beta1", "adam_beta2")
        if self.adam_eps >= 1.0:
            self.fail("adam_eps", "must be below 1 (a small number added to the update's denominator)")


@dataclass(frozen=True)
class RunConfig(Config):
    """A whole training run: the four tables of a run config file.

    ``model`` and ``objective`` keep the tables as written (a preset name and
    the keys set); :attr:`model_spec` and :attr:`objective_spec` are the same
    tables resolved into their registered config classes, checked when the
    run config is made.
    """

    section = "run"

    model: dict[str, Any] = param(doc="the model: name (a model or preset) and config fields")
    objective: dict[str, Any] | None = param(None, "the objective: name and options (the model's default when absent)")
    data: DataConfig = param(doc="text or pair source, tokenizer and blocks", default_factory=DataConfig)
    train: TrainConfig = param(doc="optimisation, logging and checkpoints", default_factory=TrainConfig)

    def check(self) -> None:
        model = resolve_model_spec(self.model)
        objective = resolve_objective_spec(self.objective, model)
        model = model.for_objective(objective.objective_class)  # cmlm builds its decoder non-causal
        object.__setattr__(self, "_specs", (model, objective))  # derived, not a field: equality and dicts ignore it

    @property
    def model_spec(self) -> ModelSpec:
        """``[model]`` resolved: the family, its preset values and the typed config (before the tokenizer's
        values are filled in)."""
        spec: ModelSpec = self._specs[0]  # type: ignore[attr-defined]
        return spec

    @property
    def objective_spec(self) -> ObjectiveSpec:
        """``[objective]`` resolved (the model's default objective when the table is absent)."""
        spec: ObjectiveSpec = self._specs[1]  # type: ignore[attr-defined]
        return spec

    @property
    def objective_name(self) -> str | None:
        """The objective the ``[objective]`` table names (``None`` when it is absent)."""
        return None if self.objective is None else self.objective["name"]


def load_run_config(
    config: str | Path | Mapping[str, Any] | RunConfig, overrides: Sequence[str] | None = None
) -> RunConfig:
    """A :class:`RunConfig` from a file path, a dict or a config, with ``section.key=value`` overrides applied."""
    if isinstance(config, RunConfig):
        if not overrides:
            return config
        values: dict[str, Any] = config.to_dict()
    elif isinstance(config, (str, Path)):
        values = read_config_file(config)
        train_table = values.setdefault("train", {})
        if isinstance(train_table, dict):
            # runs of different config files land in different folders
            train_table.setdefault("output_dir", str(Path("runs") / Path(config).stem))
    elif isinstance(config, Mapping):
        values = json.loads(json.dumps(dict(config)))  # a deep copy; overrides must not touch the caller's dict
        check_schema_version(values, "run config")
    else:
        raise ConfigError(f"train takes a config path, a dict or a RunConfig; got {type(config).__name__}")
    values.pop("schema_version", None)
    for item in overrides or ():
        apply_override(values, item)
    return RunConfig.from_dict(values)


def apply_override(values: dict[str, Any], item: str) -> None:
    """Set ``section.key=value`` in ``values``; the value is read as TOML (``20``, ``true``, ``[1, 2]``),
    else taken as a string."""
    key, sep, raw = item.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(f"override {item!r}: write section.key=value, e.g. train.max_steps=100")
    if parts[0] not in SECTIONS:
        raise ConfigError(
            f"override {item!r}: unknown section {parts[0]!r}.{did_you_mean(parts[0], SECTIONS)} "
            f"Sections: {', '.join(SECTIONS)}."
        )
    from unimodel.config import tomllib

    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word or path: a string
    table = values
    for part in parts[:-1]:
        nxt = table.get(part)
        if nxt is None:
            nxt = table[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {item!r}: {part!r} is a value, not a table")
        table = nxt
    table[parts[-1]] = value


__all__ = ["SECTIONS", "RunConfig", "TrainConfig", "apply_override", "load_run_config"]
