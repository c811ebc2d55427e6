"""The trainer: one TOML file with ``[model]``, ``[objective]``, ``[data]`` and ``[train]``, run on accelerate.

:func:`train` reads the run config, trains (or loads) a tokenizer, prepares the
data the objective needs (text packed into blocks, or source -> target pairs),
builds the model with the objective the config names, and trains with
AdamW under a warm-up + cosine schedule. accelerate does the device placement,
mixed precision, gradient accumulation and multi-process data parallelism;
this module writes no distributed code of its own.

The output folder holds::

    metrics.jsonl          one JSON object per logged step / evaluation
    tokenizer/             the tokenizer trained for the run
    checkpoint/            config.json, model.safetensors, tokenizer files (a normal
                           unimodel checkpoint), plus run.json, trainer_state.json,
                           optimizer.safetensors and rng_state.safetensors

Trainer state is data only: tensors in safetensors, their structure in JSON.
Resuming restores weights, optimizer, schedule, data position and RNG states,
so on CPU a resumed run computes the same losses as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from unimodel.config import Config, check_schema_version, param, read_config_file
from unimodel.data.dataset import (
    DataConfig,
    DataKind,
    PackedData,
    PairData,
    as_examples,
    encode_data,
    load_data,
    make_tokenizer,
    separator_id,
    tokenizer_recipe,
)
from unimodel.data.packing import pack_blocks_with_tail
from unimodel.data.pairs import encode_pairs
from unimodel.data.tokenizer import Tokenizer
from unimodel.errors import CheckpointError, ConfigError, DataError, TrainingError, UnimodelError, did_you_mean

if TYPE_CHECKING:
    from accelerate import Accelerator

    from unimodel.model import Model

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"
TOKENIZER_DIR = "tokenizer"
RUN_FILE = "run.json"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng_state.safetensors"
STATE_FORMAT = "unimodel-trainer-state"
STATE_VERSION = 1
SECTIONS = ("model", "objective", "data", "train")


# ===================================================================== configs
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
    cpu: bool = param(True, "train on the CPU even when an accelerator is present")
    compile: bool = param(False, "wrap the model with torch.compile")
    eval_every: int = param(200, "evaluate on the validation split every N steps (0: only before and after)")
    eval_batch_size: int | None = param(None, "validation batch size (batch_size when null)")
    max_eval_batches: int | None = param(None, "evaluate on at most N validation batches")
    log_every: int = param(10, "append training metrics to metrics.jsonl every N steps")
    checkpoint_every: int = param(500, "write the checkpoint every N steps (0: only at the end)")
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
        "pair data: at each evaluation after step 0, greedy-decode this many validation pairs and report the "
        "exact match (0: never; null: all of them)",
    )

    def check(self) -> None:
        positive = ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every", "sample_tokens")
        for name in positive:
            if getattr(self, name) <= 0:
                self.fail(name, "must be positive")
        if self.exact_match_examples is not None and self.exact_match_examples < 0:
            self.fail("exact_match_examples", "must be 0 or more (null: every validation pair)")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "sample_top_k"):
            if getattr(self, name) < 0:
                self.fail(name, "must be 0 or more")
        if self.batch_size % self.gradient_accumulation_steps:
            self.fail(
                ("batch_size", "gradient_accumulation_steps"),
                "batch_size is the global batch; it must be divisible by gradient_accumulation_steps",
            )
        if self.learning_rate <= 0:
            self.fail("learning_rate", "must be positive")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            self.fail("min_lr_ratio", "must be in [0, 1]")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            self.fail(("weight_decay", "max_grad_norm"), "must be 0 or more")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                self.fail(name, "must be in [0, 1)")
        for name in ("eval_batch_size", "max_eval_batches"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                self.fail(name, "must be positive")


@dataclass(frozen=True)
class RunConfig(Config):
    """A whole training run: the four tables of a run config file."""

    section = "run"

    model: dict[str, Any] = param(doc="the model: name (a model or preset) and config fields")
    objective: dict[str, Any] | None = param(None, "the objective: name and options (the model's default when absent)")
    data: DataConfig = param(doc="text or pair source, tokenizer and blocks", default_factory=DataConfig)
    train: TrainConfig = param(doc="optimisation, logging and checkpoints", default_factory=TrainConfig)

    def check(self) -> None:
        if not isinstance(self.model.get("name"), str):
            raise ConfigError(
                'run: [model] needs a name, a model or preset such as "gpt2-tiny" (see `unimodel list model`)'
            )
        if self.objective is not None and not isinstance(self.objective.get("name"), str):
            raise ConfigError('run: [objective] needs a name, e.g. name = "clm" (see `unimodel list objective`)')

    @property
    def objective_name(self) -> str | None:
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
    import tomllib

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


# ===================================================================== results
@dataclass
class EvalResult:
    """Mean token loss (nats) over every predicted position, and its exponential.

    For pair data also the exact match: the share of ``exact_match_examples``
    validation pairs whose greedy decoding equals the target (whitespace
    normalised); ``None`` when it was not measured.
    """

    loss: float
    perplexity: float
    n_tokens: int  # predicted positions that entered the mean
    n_examples: int
    split: str = "validation"
    unit: str = "blocks"  # what an example is: "blocks" of text or "pairs"
    exact_match: float | None = None
    exact_match_examples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


# ===================================================================== schedule
def lr_multiplier(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate factor for optimizer step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps``
    steps, then a cosine from 1 down to ``min_lr_ratio``, reached at ``max_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight matrices decay; norms, biases (1-D) and embedding tables do not.

    Embedding tables are the weights of ``nn.Embedding`` modules and of modules
    whose class name says they hold embeddings or positions; a weight tied to
    an embedding (the LM head) follows the embedding.
    """
    no_decay: set[int] = set()
    for module in model.modules():
        kind = type(module).__name__.lower()
        table = isinstance(module, nn.Embedding) or "embedding" in kind or "position" in kind
        for p in module.parameters(recurse=False):
            if table or p.dim() < 2:
                no_decay.add(id(p))
    decay, rest = [], []
    for p in model.parameters():  # de-duplicated: a tied weight appears once
        if p.requires_grad:
            (rest if id(p) in no_decay else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": rest, "weight_decay": 0.0, "name": "no_decay"},
    ]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any hashable description, stable across runs and processes."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def epoch_order(n: int, *, seed: int, epoch: int) -> list[int]:
    """The shuffled order of the ``n`` training examples in ``epoch``; a pure function of its arguments."""
    g = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
    return torch.randperm(n, generator=g).tolist()


# ============================================================ trainer state I/O
def encode_state(obj: Any, tensors: dict[str, Tensor], key: str) -> Any:
    """A nested state (dicts, lists, tuples, scalars, tensors) as JSON; tensors go to ``tensors``.

    Dicts become ``{"dict": [[key, value], ...]}`` (keys keep their int/str
    type), tuples ``{"tuple": [...]}``, tensors ``{"tensor": name}``.
    """
    if isinstance(obj, Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"tensor": key}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"tuple": [encode_state(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TrainingError(f"cannot save trainer state: key {k!r} under {key!r} is not a string or integer")
        return {"dict": [[k, encode_state(v, tensors, f"{key}.{k}")] for k, v in obj.items()]}
    raise TrainingError(f"cannot save trainer state: {key!r} holds a {type(obj).__name__}, which is not plain data")


def decode_state(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`encode_state`."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"tensor"}:
            if obj["tensor"] not in tensors:
                raise CheckpointError(f"trainer state names tensor {obj['tensor']!r}, which {OPTIMIZER_FILE} lacks")
            return tensors[obj["tensor"]]
        if set(obj) == {"tuple"}:
            return tuple(decode_state(v, tensors) for v in obj["tuple"])
        if set(obj) == {"dict"}:
            return {k: decode_state(v, tensors) for k, v in obj["dict"]}
        raise CheckpointError(f"trainer state holds an unexpected object with keys {sorted(obj)}")
    return obj


@dataclass
class DataPosition:
    """Where training is in the data: the epoch, and the examples of it already used."""

    epoch: int = 0
    examples_in_epoch: int = 0


# ===================================================================== the run
class _ObjectiveStep(nn.Module):
    """What accelerate wraps (DDP, autocast): one objective forward, returning the loss.

    The objective receives the model itself, attributes intact (a DDP wrapper
    hides them), or its ``torch.compile`` wrapper, which forwards attributes.
    """

    def __init__(self, model: Model, compiled: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_runner", compiled if compiled is not None else model)  # not a submodule

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """batch: the objective's tensors, (B, T) each -> the scalar mean loss (nats)."""
        return self.model.objective(self._runner, batch).loss


class _ExampleDataset(torch.utils.data.Dataset):
    """The training split as a map-style dataset: item i is training example i, the dict the objective's
    ``prepare`` takes (a block ``{"input_ids"}`` or a pair ``{"source", "target"}``)."""

    def __init__(self, data: PackedData | PairData) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.n_train

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.data.example(i)


def _as_list(examples: list[dict[str, list[int]]]) -> list[dict[str, list[int]]]:
    """A DataLoader collate function keeping a micro-batch as the list of its examples."""
    return examples


class Trainer:
    """One training run. Use :func:`train`; this class holds the run's state."""

    def __init__(self, run: RunConfig, *, resume: bool = False) -> None:
        self.run = run
        self.tc = run.train
        self.resume = resume
        self.out = Path(self.tc.output_dir)
        self.ckpt_dir = self.out / CHECKPOINT_DIR
        self.accelerator = _make_accelerator(self.tc)
        acc = self.accelerator
        self.main = acc.is_main_process
        self.world = acc.num_processes
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
        self.last_checkpoint_step: int | None = None
        self.last_exact_match: ExactMatch | None = None
        self.bar: Any = None

    # ------------------------------------------------------------- logging
    def log(self, message: str) -> None:
        if self.main:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    def write_metrics(self, record: Mapping[str, Any]) -> None:
        if self.main:
            with (self.out / METRICS_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps(dict(record)) + "\n")

    # ---------------------------------------------------------------- setup
    def prepare_output_dir(self) -> dict[str, Any] | None:
        """Check the output folder against ``resume``; returns the saved trainer state when resuming."""
        has_ckpt = (self.ckpt_dir / STATE_FILE).is_file()
        if self.resume:
            if not has_ckpt:
                raise TrainingError(
                    f"resume: {str(self.ckpt_dir)!r} holds no trainer checkpoint; run without --resume to start "
                    "a new run, or point train.output_dir at the run to continue"
                )
            state = read_json_state(self.ckpt_dir / STATE_FILE)
            if self.main:
                _truncate_metrics(self.out / METRICS_FILE, state["step"])
            return state
        if has_ckpt and not self.tc.overwrite:
            raise TrainingError(
                f"{str(self.out)!r} already holds a checkpoint of a run; pass --resume (resume=True) to continue it, "
                "set train.overwrite = true to replace it, or choose another train.output_dir"
            )
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.ckpt_dir.exists():
                shutil.rmtree(self.ckpt_dir)
            (self.out / METRICS_FILE).unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()
        return None

    def setup_tokenizer(self, train_docs: Sequence[str], needed_roles: Sequence[str]) -> Tokenizer:
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
                tok = make_tokenizer(
                    data, train_docs, needed_roles=needed_roles, recipe=tokenizer_recipe(self.run.model["name"])
                )
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

    def build_model(self, tokenizer: Tokenizer) -> Model:
        from unimodel.model import build_model
        from unimodel.registry import get_registry

        if self.resume:
            from unimodel.checkpoint import load

            model = load(self.ckpt_dir)
            wanted = self.run.objective_name
            if wanted is not None and wanted != model.objective_name:
                raise TrainingError(
                    f"resume: the checkpoint was trained with objective {model.objective_name!r} but the config names "
                    f"{wanted!r}; a resumed run continues the same objective. Start a new run (another "
                    "train.output_dir) to train with a different objective"
                )
            return model
        spec = model_spec_for(self.run.model, tokenizer, registry=get_registry())
        torch.manual_seed(self.tc.seed)  # the same initial weights in every process and every run
        return build_model(spec, objective=self.run.objective, tokenizer=tokenizer)

    # ------------------------------------------------------------ the loop
    def run_training(self) -> TrainResult:
        from accelerate.utils import set_seed

        started = time.perf_counter()
        tc, acc = self.tc, self.accelerator
        state = self.prepare_output_dir()
        set_seed(tc.seed)

        objective_name, kind = objective_data_kind(self.run)
        raw = load_data(self.run.data, kind=kind, objective=objective_name)
        tokenizer = self.setup_tokenizer(raw.tokenizer_texts(), needed_roles(self.run))
        data = encode_data(self.run.data, tokenizer, raw)
        model = self.build_model(tokenizer)
        if isinstance(data, PairData):
            check_pair_lengths(model, data, tokenizer)
        else:
            check_block_size(model, data.block_size)
        self.log(
            f"model {model.preset or model.name!r} + objective {model.objective_name!r}: "
            f"{model.num_parameters():,} parameters, vocabulary {model.vocab_size}; data: {data.describe()}; "
            f"{self.world} process(es)"
        )
        if data.n_train < self.tc.batch_size:
            raise DataError(
                f"the training split has {data.n_train} {data.unit}, fewer than one batch (train.batch_size "
                f"{tc.batch_size}); {data.fix_for_too_few()}"
            )

        optimizer = torch.optim.AdamW(
            param_groups(model, tc.weight_decay),
            lr=tc.learning_rate,
            betas=(tc.adam_beta1, tc.adam_beta2),
            eps=tc.adam_eps,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_multiplier(
                s, warmup_steps=tc.warmup_steps, max_steps=tc.max_steps, min_lr_ratio=tc.min_lr_ratio
            ),
        )
        fingerprint = data.fingerprint()
        rng_states: dict[str, Tensor] = {}
        if state is not None:
            rng_states = self.restore(state, optimizer, scheduler, fingerprint)
        compiled = torch.compile(model) if tc.compile else None
        step_module, opt, sched = acc.prepare(_ObjectiveStep(model, compiled), optimizer, scheduler)
        self.model, self.tokenizer, self.data = model, tokenizer, data

        before = self.evaluate_validation("before training")
        if state is not None:
            _set_rng_states(rng_states, state, acc.process_index)
        else:
            torch.manual_seed(derive_seed(tc.seed, "process", acc.process_index))  # dropout differs per process
        start_step = self.step
        losses = self.loop(step_module, opt, sched, optimizer, scheduler, fingerprint)

        if self.step > start_step and self.last_checkpoint_step != self.step:
            self.save_checkpoint(optimizer, scheduler, fingerprint)
        after = self.evaluate_validation("after training")
        sample = self.sample()
        acc.wait_for_everyone()
        elapsed = time.perf_counter() - started
        scored = "" if after is None or after.exact_match is None else f", exact match {after.exact_match:.2%}"
        self.log(
            f"done: {self.step} steps, {self.tokens_seen:,} tokens, {elapsed:.1f}s{scored}; checkpoint: {self.ckpt_dir}"
        )
        return TrainResult(
            output_dir=self.out,
            checkpoint=self.ckpt_dir if self.last_checkpoint_step is not None or self.resume else None,
            start_step=start_step,
            step=self.step,
            losses=losses,
            before=before,
            after=after,
            sample=sample,
            tokens_seen=self.tokens_seen,
            elapsed_s=elapsed,
            model=model,
        )

    def loop(
        self,
        step_module: nn.Module,
        opt: Any,
        sched: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        fingerprint: str,
    ) -> dict[int, float]:
        from tqdm.auto import tqdm

        tc, acc, model = self.tc, self.accelerator, self.model
        losses: dict[int, float] = {}
        if self.step >= tc.max_steps:
            self.log(f"the checkpoint is at step {self.step}, train.max_steps is {tc.max_steps}: nothing to train")
            return losses
        n_train = self.data.n_train
        accum = tc.gradient_accumulation_steps
        model.train()
        self.bar = tqdm(
            total=tc.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (self.main and tc.progress),
            file=sys.stderr,
        )
        window: list[float] = []
        window_tokens, window_start = 0, time.perf_counter()
        try:
            while self.step < tc.max_steps:
                pos = self.position
                steps_here = min(tc.max_steps - self.step, (n_train - pos.examples_in_epoch) // tc.batch_size)
                if steps_here <= 0:
                    self.position = DataPosition(pos.epoch + 1, 0)
                    continue
                order = epoch_order(n_train, seed=tc.seed, epoch=pos.epoch)
                chosen = order[pos.examples_in_epoch : pos.examples_in_epoch + steps_here * tc.batch_size]
                # every process iterates the same global order; accelerate gives each its share of each micro-batch
                loader = acc.prepare_data_loader(
                    torch.utils.data.DataLoader(
                        _ExampleDataset(self.data),
                        batch_size=self.micro_batch,
                        sampler=chosen,
                        drop_last=False,
                        collate_fn=_as_list,
                        # its own generator: a new iterator must not draw from the
                        # global RNG that dropout uses (resume would drift)
                        generator=torch.Generator(),
                    ),
                    device_placement=False,
                )
                steps_done = 0  # optimizer steps taken in this stretch of `chosen`
                micro, loss_sum, step_started = 0, torch.zeros((), dtype=torch.float64), time.perf_counter()
                for examples in loader:
                    with acc.accumulate(step_module):
                        # objective noise is a pure function of (seed, step, micro-batch, process): resumable
                        seed = derive_seed(tc.seed, "noise", self.step, micro, acc.process_index)
                        g = torch.Generator().manual_seed(seed)
                        batch = self.model.objective.prepare(examples, tokenizer=self.tokenizer, generator=g)
                        batch = {k: v.to(acc.device) for k, v in batch.items()}
                        loss = step_module(batch)
                        acc.backward(loss)
                        loss_sum += loss.detach().double().cpu()
                        micro += 1
                        grad_norm = None
                        if acc.sync_gradients:
                            step_loss = float(acc.reduce(loss_sum.to(acc.device) / accum, reduction="mean"))
                            if not math.isfinite(step_loss):
                                self.fail_not_finite(step_loss)
                            max_norm = tc.max_grad_norm if tc.max_grad_norm > 0 else float("inf")
                            grad_norm = float(acc.clip_grad_norm_(step_module.parameters(), max_norm))
                            lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
                        opt.step()
                        sched.step()
                        opt.zero_grad(set_to_none=True)
                    if not acc.sync_gradients:
                        continue
                    # ---- one optimizer step done
                    step_indices = chosen[steps_done * tc.batch_size : (steps_done + 1) * tc.batch_size]
                    tokens_per_step = self.data.n_tokens(step_indices)  # of the global batch
                    steps_done += 1
                    self.step += 1
                    self.position = DataPosition(pos.epoch, self.position.examples_in_epoch + tc.batch_size)
                    self.tokens_seen += tokens_per_step
                    losses[self.step] = step_loss
                    window.append(step_loss)
                    now = time.perf_counter()
                    tok_s = tokens_per_step / max(now - step_started, 1e-9)
                    self.bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.2e}", refresh=False)
                    self.bar.update(1)
                    window_tokens += tokens_per_step
                    if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                        self.write_metrics(
                            {
                                "step": self.step,
                                "loss": sum(window) / len(window),
                                "lr": lr,
                                "grad_norm": grad_norm,
                                "tokens": self.tokens_seen,
                                "epoch": pos.epoch,
                                "tokens_per_s": window_tokens / max(now - window_start, 1e-9),
                            }
                        )
                        window, window_tokens, window_start = [], 0, time.perf_counter()
                    if tc.eval_every and self.step % tc.eval_every == 0 and self.step != tc.max_steps:
                        self.evaluate_validation(f"step {self.step}")
                        model.train()
                    if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                        self.save_checkpoint(optimizer, scheduler, fingerprint)
                    micro, loss_sum, step_started = 0, torch.zeros((), dtype=torch.float64), time.perf_counter()
                if self.position.examples_in_epoch + tc.batch_size > n_train:
                    self.position = DataPosition(self.position.epoch + 1, 0)
        finally:
            self.bar.close()
        return losses

    def fail_not_finite(self, value: float) -> None:
        step = self.step + 1
        self.write_metrics({"step": step, "event": "non_finite_loss", "loss": str(value)})
        if self.last_checkpoint_step is not None:
            kept = (
                f"the last good checkpoint, from step {self.last_checkpoint_step}, is in place at "
                f"{str(self.ckpt_dir)!r}"
            )
        elif self.resume:
            kept = f"the checkpoint this run resumed from is in place at {str(self.ckpt_dir)!r}"
        else:
            kept = "no checkpoint had been written yet"
        raise TrainingError(
            f"step {step}: the training loss is {value} (not finite); training stopped and {kept}. Lower "
            "train.learning_rate, lengthen train.warmup_steps or keep train.max_grad_norm on, then resume with --resume"
        )

    # ------------------------------------------------------- evaluation etc.
    def evaluate_validation(self, when: str) -> EvalResult | None:
        examples = self.data.validation_examples
        if not examples:
            return None
        tc = self.tc
        batch_size = tc.eval_batch_size or tc.batch_size
        result = evaluate_examples(
            self.model,
            examples,
            tokenizer=self.tokenizer,
            batch_size=batch_size,
            seed=tc.seed,
            max_batches=tc.max_eval_batches,
            accelerator=self.accelerator,
            unit=self.data.unit,
        )
        line = (
            f"validation {when}: loss {result.loss:.4f}, perplexity {result.perplexity:,.2f} "
            f"({result.n_tokens:,} tokens)"
        )
        record: dict[str, Any] = {
            "step": self.step,
            "val_loss": result.loss,
            "val_perplexity": result.perplexity,
            "val_tokens": result.n_tokens,
        }
        # an untrained model matches nothing: exact match starts after the first step
        if isinstance(self.data, PairData) and tc.exact_match_examples != 0 and self.step > 0:
            em = exact_match(
                self.model,
                examples[: tc.exact_match_examples],
                tokenizer=self.tokenizer,
                batch_size=batch_size,
                accelerator=self.accelerator,
            )
            result.exact_match, result.exact_match_examples = em.score, em.total
            line += f"; exact match {em.score:.2%} ({em.matches}/{em.total} pairs, greedy)"
            record.update(val_exact_match=em.score, val_exact_match_examples=em.total)
            self.last_exact_match = em
        self.log(line)
        self.write_metrics(record)
        return result

    def sample(self) -> str | None:
        from unimodel.interfaces import Cap

        tc = self.tc
        if isinstance(self.data, PairData):
            return self.pair_samples()
        if not tc.sample_prompt or Cap.CAUSAL not in self.model.provides:
            return None
        text = None
        if self.main:
            text = generate_sample(
                self.model,
                self.tokenizer,
                tc.sample_prompt,
                max_new_tokens=tc.sample_tokens,
                top_k=tc.sample_top_k or None,
                seed=tc.seed,
            )
            self.log(f"sample (prompt {tc.sample_prompt!r}, top-k {tc.sample_top_k}):\n{text}")
        return text

    def pair_samples(self) -> str | None:
        """The first validation pairs as the last exact-match run decoded them (None without one)."""
        em = self.last_exact_match
        if em is None or not em.examples:
            return None
        lines = [
            f"  {src!r} -> {pred!r}" + ("" if ok else f"   (target {ref!r})") for src, pred, ref, ok in em.examples
        ]
        text = "\n".join(lines)
        self.log(f"validation pairs, greedy decoding:\n{text}")
        return text

    # ---------------------------------------------------------- checkpoints
    def save_checkpoint(self, optimizer: torch.optim.Optimizer, scheduler: Any, fingerprint: str) -> None:
        """Write ``checkpoint/`` atomically (main process); every process's RNG state goes in it."""
        acc = self.accelerator
        rng = torch.get_rng_state()
        all_rng = acc.gather(rng[None].to(acc.device)).cpu() if self.world > 1 else rng[None]
        if self.main:
            from unimodel.checkpoint import atomic_dir, save_tensors, write_json

            tensors: dict[str, Tensor] = {}
            opt_json = encode_state(optimizer.state_dict(), tensors, "optimizer")
            rng_tensors = {f"torch_cpu.{r}": all_rng[r] for r in range(all_rng.shape[0])}
            if torch.cuda.is_available():
                for i, s in enumerate(torch.cuda.get_rng_state_all()):
                    rng_tensors[f"cuda.{acc.process_index}.{i}"] = s
            state = {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "step": self.step,
                "epoch": self.position.epoch,
                "examples_in_epoch": self.position.examples_in_epoch,
                "tokens_seen": self.tokens_seen,
                "num_processes": self.world,
                "data_fingerprint": fingerprint,
                "optimizer": opt_json,
                "scheduler": encode_state(scheduler.state_dict(), {}, "scheduler"),
                "python_rng": encode_state(random.getstate(), {}, "python_rng"),
            }
            if acc.scaler is not None:  # fp16 loss scale: a resumed run continues with the same scale
                state["grad_scaler"] = encode_state(acc.scaler.state_dict(), {}, "grad_scaler")
            with atomic_dir(self.ckpt_dir) as tmp:
                self.model.save(tmp)
                write_json(tmp / RUN_FILE, {"schema_version": 1, **self.run.to_dict()})
                save_tensors(tensors, tmp / OPTIMIZER_FILE)
                save_tensors(rng_tensors, tmp / RNG_FILE)
                write_json(tmp / STATE_FILE, state)
        acc.wait_for_everyone()
        self.last_checkpoint_step = self.step

    def restore(
        self, state: Mapping[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any, fingerprint: str
    ) -> dict[str, Tensor]:
        """Load optimizer, schedule and position from a checkpoint; returns the saved RNG tensors."""
        from unimodel.checkpoint import load_tensors

        if state.get("data_fingerprint") != fingerprint:
            raise TrainingError(
                f"resume: the training data differs from the data of the checkpoint in {str(self.ckpt_dir)!r} "
                "(other text or pairs, tokenizer, block size or split); resume with the run's own [data] settings, "
                "or start "
                "a new run"
            )
        tensors, _ = load_tensors(self.ckpt_dir / OPTIMIZER_FILE)
        try:
            optimizer.load_state_dict(decode_state(state["optimizer"], tensors))
            scheduler.load_state_dict(decode_state(state["scheduler"], {}))
            if self.accelerator.scaler is not None and "grad_scaler" in state:
                self.accelerator.scaler.load_state_dict(decode_state(state["grad_scaler"], {}))
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"optimizer state in {str(self.ckpt_dir)!r} does not fit this model: {exc}") from None
        self.step = int(state["step"])
        self.position = DataPosition(int(state["epoch"]), int(state["examples_in_epoch"]))
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.last_checkpoint_step = self.step
        rng, _ = load_tensors(self.ckpt_dir / RNG_FILE)
        self.log(f"resuming from {self.ckpt_dir} at step {self.step} (epoch {self.position.epoch})")
        return rng


def read_json_state(path: Path) -> dict[str, Any]:
    from unimodel.checkpoint import read_json

    state = read_json(path)
    if state.get("format") != STATE_FORMAT or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{str(path)!r} is not a unimodel trainer state")
    if state.get("version", 0) > STATE_VERSION:
        raise CheckpointError(
            f"{str(path)!r} was written by a newer unimodel (trainer state v{state['version']}); upgrade unimodel"
        )
    return state


def _set_rng_states(rng: Mapping[str, Tensor], state: Mapping[str, Any], rank: int) -> None:
    key = f"torch_cpu.{rank}"
    if key in rng:
        torch.set_rng_state(rng[key])
    else:  # resumed on more processes than the run had: new ranks get a fresh, derived stream
        torch.manual_seed(derive_seed("resume", state.get("step"), rank))
    cuda = sorted(k for k in rng if k.startswith(f"cuda.{rank}."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[k] for k in cuda])
    random.setstate(decode_state(state["python_rng"], {}))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the checkpoint's step: a resumed run logs those steps again."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def _make_accelerator(tc: TrainConfig) -> Accelerator:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from accelerate.utils import DataLoaderConfiguration

    if not PartialState._shared_state or PartialState().num_processes == 1:
        # accelerate keeps process-wide state; a second run in one process (a notebook, a test)
        # may use another precision or accumulation, so start from a clean slate.
        AcceleratorState._reset_state()
        GradientState._reset_state()
    try:
        acc = Accelerator(
            cpu=tc.cpu,
            mixed_precision=tc.mixed_precision,
            gradient_accumulation_steps=tc.gradient_accumulation_steps,
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            rng_types=[],  # data order and noise are pure functions of (seed, step); nothing to synchronise
        )
    except ValueError as exc:
        raise ConfigError(f"train: accelerate cannot run this configuration: {exc}") from None
    if tc.mixed_precision == "fp16" and acc.device.type == "cpu":
        raise ConfigError(
            'train: mixed_precision = "fp16" needs a GPU: on the CPU accelerate neither autocasts nor scales '
            'fp16, so the run would silently train in fp32. Use "bf16" on the CPU, or set train.cpu = false on a '
            "machine with a GPU"
        )
    return acc


def _single_process_cpu_launch() -> bool:
    """True in a process that ``accelerate launch --cpu --num_processes N>1`` started alone (no mpirun):
    the launcher then sets MASTER_PORT for a process group it does not start itself."""
    env = os.environ
    launched_cpu = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    ranked = any(k in env for k in ("WORLD_SIZE", "RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"))
    return launched_cpu and "MASTER_PORT" in env and not ranked


def _requested_cpu_processes() -> int | None:
    """The ``--num_processes`` that the parent ``accelerate launch`` was given, or None when unknown.

    accelerate's CPU launcher starts one process and passes the count to nobody; the parent's
    command line is the one place it is still written.
    """
    try:
        import psutil

        cmdline = psutil.Process().parent().cmdline()
    except Exception:
        return None
    if "launch" not in cmdline:
        return None
    for i, arg in enumerate(cmdline):
        value = None
        if arg == "--num_processes" and i + 1 < len(cmdline):
            value = cmdline[i + 1]
        elif arg.startswith("--num_processes="):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def cpu_worker_command(train_args: Sequence[str]) -> list[str] | None:
    """The command that starts the CPU worker group ``accelerate launch --cpu --num_processes N`` asked for.

    Without mpirun, accelerate starts a single process for ``--cpu`` whatever ``--num_processes``
    says. In that process this returns a ``torch.distributed.run`` command that starts N ranked
    workers on the launcher's rendezvous address (each then joins a gloo group through
    accelerate), or None when no relaunch is needed: not under that launcher, already ranked, or
    a single process asked for.
    """
    if not _single_process_cpu_launch():
        return None
    n = _requested_cpu_processes()
    if n is None or n < 2:
        if n is None:
            import warnings

            warnings.warn(
                "accelerate launch --cpu started ONE process and the requested number of processes could not be "
                "read; training in one process. `accelerate launch --multi_gpu --num_processes N -m unimodel train "
                "CONFIG` starts N CPU processes (train.cpu = true keeps them on the CPU).",
                stacklevel=2,
            )
        return None
    env = os.environ
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(n),
        "--master_addr",
        env.get("MASTER_ADDR", "127.0.0.1"),
        "--master_port",
        env["MASTER_PORT"],
        "-m",
        "unimodel",
        *train_args,
    ]


# ============================================================ model helpers
def model_spec_for(model_section: Mapping[str, Any], tokenizer: Tokenizer, *, registry: Any) -> dict[str, Any]:
    """The ``[model]`` table with vocab_size and special-token ids taken from the tokenizer.

    Only fields the model's config class has are set (``vocab_size``,
    ``<role>_token_id``), and only when the table does not set them itself.
    Other id fields whose default is the family's own eos id (BART starts
    decoding with eos: ``decoder_start_token_id``, ``forced_eos_token_id``)
    follow the tokenizer's eos.
    """
    spec = dict(model_section)
    family, preset_values = registry.resolve_model(spec["name"])
    config_class = family.load().config_class
    fields = set(config_class.field_names())
    defaults = {f.name: f.default for f in dataclasses.fields(config_class)} | dict(preset_values)
    if "vocab_size" in fields:
        given = spec.get("vocab_size")
        if given is None:
            spec["vocab_size"] = tokenizer.vocab_size
        elif given < tokenizer.vocab_size:
            raise ConfigError(
                f"model: vocab_size {given} is smaller than the tokenizer's vocabulary ({tokenizer.vocab_size}); "
                "leave vocab_size out to take it from the tokenizer"
            )
    for role in tokenizer.roles:
        key = f"{role}_token_id"
        if key in fields and key not in spec:
            spec[key] = tokenizer.special_id(role)
    eos_default = defaults.get("eos_token_id")
    if tokenizer.has_role("eos") and isinstance(eos_default, int):
        for key in ("decoder_start_token_id", "forced_eos_token_id"):
            if key in fields and key not in spec and defaults.get(key) == eos_default:
                spec[key] = tokenizer.special_id("eos")
    return spec


def objective_data_kind(run: RunConfig) -> tuple[str, DataKind]:
    """(the run's objective name, the kind of data it trains on: ``"text"`` or ``"pairs"``)."""
    from unimodel.registry import get_registry

    reg = get_registry()
    family, _ = reg.resolve_model(run.model["name"])
    name = run.objective_name or family.default_objective
    if name is None:
        return "", "text"  # building the model reports the missing objective
    comp = reg.get("objective", name)  # a default objective is stored qualified; messages show the plain name
    return reg.display_name(comp), getattr(comp.load(), "data_kind", "text")


def needed_roles(run: RunConfig) -> list[str]:
    """Tokenizer roles to reserve: those of the run's objective and of every objective its model could train with."""
    from unimodel.registry import get_registry

    reg = get_registry()
    family, _ = reg.resolve_model(run.model["name"])
    chosen = run.objective_name or family.default_objective
    names = ([chosen] if chosen else []) + reg.compatible_objectives(family.provides)
    roles: list[str] = []
    for name in dict.fromkeys(names):
        try:
            cls = reg.load("objective", name)
        except UnimodelError:
            if name == chosen:
                raise
            continue  # a broken plugin's objective must not stop this run
        roles.extend(getattr(cls, "special_tokens", ()))
    return list(dict.fromkeys(roles))


def check_block_size(model: Model, block_size: int) -> None:
    limits = [p.max_positions for p in (model.encoder, model.decoder) if p is not None and p.max_positions is not None]
    if limits and block_size > min(limits):
        raise ConfigError(
            f"data.block_size {block_size} is longer than model {model.name!r} can take ({min(limits)} positions); "
            "lower data.block_size or build the model with a longer position table"
        )


def check_pair_lengths(model: Model, data: PairData, tokenizer: Tokenizer) -> None:
    """Fail before training when the longest source or target (framed by the objective) exceeds the model."""
    every = data.train + data.validation
    if not every:
        return
    longest = [max(every, key=lambda ex: len(ex[side])) for side in ("source", "target")]
    batch = model.objective.prepare(longest, tokenizer=tokenizer, generator=torch.Generator().manual_seed(0))
    checks = [("source", "input_ids", model.encoder), ("target", "labels", model.decoder)]
    for side, key, part in checks:
        limit = part.max_positions if part is not None else None
        if key in batch and limit is not None and batch[key].shape[1] > limit:
            raise ConfigError(
                f"the longest {side} is {batch[key].shape[1]} tokens (framing included), more than model "
                f"{model.name!r} takes ({limit} positions); set objective.max_{side}_length = {limit} to truncate, "
                "or build the model with a longer position table"
            )


def generate_sample(
    model: Model, tokenizer: Tokenizer, prompt: str, *, max_new_tokens: int, top_k: int | None, seed: int
) -> str:
    """Sample a continuation of ``prompt``; returns the decoded text (prompt included for decoder-only models)."""
    ids = tokenizer.encode(prompt)
    if not ids:
        ids = [tokenizer.special_id("bos" if tokenizer.has_role("bos") else "eos")]
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            torch.tensor([ids], device=model.device),
            max_new_tokens=max_new_tokens,
            do_sample=True,
            top_k=top_k,
            seed=seed,
        )
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0].tolist())


# ================================================================= evaluation
def _my_share(
    n: int, batch_size: int, accelerator: Accelerator | None, limit: int | None = None
) -> tuple[list[int], int]:
    """(indices of the first ``limit`` of ``n`` examples this process handles, its per-batch count).

    With several processes each takes a contiguous share and the global ``batch_size`` is split
    between them, so sums reduced over processes do not depend on the process count.
    """
    indices = list(range(n if limit is None else min(n, limit)))
    world = accelerator.num_processes if accelerator is not None else 1
    if world > 1:
        with accelerator.split_between_processes(indices) as part:  # type: ignore[union-attr]
            indices = list(part)
    return indices, max(1, batch_size // world)


def _reduce_sum(total: Tensor, accelerator: Accelerator | None) -> Tensor:
    if accelerator is None or accelerator.num_processes == 1:
        return total
    return accelerator.reduce(total.to(accelerator.device), reduction="sum").cpu()


@torch.no_grad()
def evaluate_examples(
    model: Model,
    examples: Sequence[Mapping[str, Sequence[int]]],
    *,
    tokenizer: Tokenizer | None,
    batch_size: int = 16,
    seed: int = 0,
    max_batches: int | None = None,
    accelerator: Accelerator | None = None,
    split: str = "validation",
    unit: str = "blocks",
) -> EvalResult:
    """Token-weighted mean loss of ``model``'s objective over ``examples`` (what its ``prepare`` takes).

    With an ``accelerator`` of several processes, each takes a share of the
    examples and the sums are reduced; the result does not depend on the
    process count. Objective noise (masking ...) is seeded per batch from ``seed``.
    """
    limit = None if max_batches is None else max_batches * batch_size
    indices, chunk = _my_share(len(examples), batch_size, accelerator, limit)
    device = accelerator.device if accelerator is not None else model.device
    autocast = accelerator.autocast() if accelerator is not None else nullcontext()
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)  # (sum of loss * predictions, predictions)
    try:
        with autocast:
            for start in range(0, len(indices), chunk):
                part = indices[start : start + chunk]
                g = torch.Generator().manual_seed(derive_seed(seed, "eval", part[0]))
                batch = model.objective.prepare([examples[i] for i in part], tokenizer=tokenizer, generator=g)
                out = model.objective(model, {k: v.to(device) for k, v in batch.items()})
                total[0] += float(out.loss) * out.n_predictions
                total[1] += out.n_predictions
    finally:
        model.train(was_training)
    total = _reduce_sum(total, accelerator)
    n = int(total[1])
    loss = float(total[0] / n) if n else float("nan")
    return EvalResult(
        loss=loss, perplexity=_perplexity(loss), n_tokens=n, n_examples=len(examples), split=split, unit=unit
    )


def evaluate_blocks(model: Model, blocks: Sequence[Sequence[int]], **options: Any) -> EvalResult:
    """:func:`evaluate_examples` on blocks of text (lists of ids); same options."""
    return evaluate_examples(model, as_examples(blocks), **options)


def normalize_whitespace(text: str) -> str:
    """``text`` with surrounding whitespace dropped and every inner run of whitespace one space."""
    return " ".join(text.split())


def count_exact_matches(predictions: Sequence[str], references: Sequence[str]) -> int:
    """How many predictions equal their reference after :func:`normalize_whitespace`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return sum(normalize_whitespace(p) == normalize_whitespace(r) for p, r in zip(predictions, references))


@dataclass
class ExactMatch:
    """Greedy decodings of validation sources compared with their targets."""

    matches: int
    total: int
    examples: list[tuple[str, str, str, bool]]  # (source, prediction, reference, matched), the first few

    @property
    def score(self) -> float:
        return self.matches / self.total if self.total else float("nan")


@torch.no_grad()
def generate_targets(
    model: Model, examples: Sequence[Mapping[str, Sequence[int]]], *, tokenizer: Tokenizer, batch_size: int = 64
) -> list[str]:
    """Greedy decodings (text) of the sources of pair ``examples``, in order.

    Sources are framed and padded by the objective's ``prepare`` exactly as in
    training. A prediction is cut at its first eos, and at ``len(target) + 3``
    tokens (the target with its framing, and one more): a prediction longer
    than its reference is seen as such, and the text does not depend on the
    batch it was decoded in.
    """
    has_start = any(model.special_tokens.get(role) is not None for role in ("decoder_start", "bos"))
    eos = tokenizer.role_id("eos")
    texts: list[str] = []
    for start in range(0, len(examples), batch_size):
        part = list(examples[start : start + batch_size])
        batch = model.objective.prepare(part, tokenizer=tokenizer, generator=torch.Generator().manual_seed(0))
        caps = [len(ex["target"]) + 3 for ex in part]
        out = model.generate(
            batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False, max_new_tokens=max(caps)
        )
        for row, cap in zip(out[:, 1 if has_start else 0 :].tolist(), caps):
            row = row[:cap]
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts


def exact_match(
    model: Model,
    examples: Sequence[Mapping[str, Sequence[int]]],
    *,
    tokenizer: Tokenizer,
    batch_size: int = 64,
    accelerator: Accelerator | None = None,
    keep: int = 3,
) -> ExactMatch:
    """Share of pair ``examples`` whose greedy decoding equals the target text (whitespace normalised).

    The reference is the target as the tokenizer writes it back
    (``decode(encode(target))``), so a lossy tokenizer (a lowercasing WordPiece)
    does not count every prediction wrong. With several processes each decodes
    a share and the counts are summed. ``keep`` first examples are returned for display.
    """
    indices, chunk = _my_share(len(examples), batch_size, accelerator)
    mine = [examples[i] for i in indices]
    predictions = generate_targets(model, mine, tokenizer=tokenizer, batch_size=chunk)
    references = [tokenizer.decode(ex["target"]) for ex in mine]
    matches = count_exact_matches(predictions, references)
    total = _reduce_sum(torch.tensor([matches, len(mine)], dtype=torch.float64), accelerator)
    shown = [
        (tokenizer.decode(ex["source"]), p, r, normalize_whitespace(p) == normalize_whitespace(r))
        for ex, p, r in zip(mine[:keep], predictions, references)
    ]
    return ExactMatch(matches=int(total[0]), total=int(total[1]), examples=shown)


def _perplexity(loss: float) -> float:
    if not math.isfinite(loss):
        return float("nan") if math.isnan(loss) else float("inf")
    return math.exp(loss) if loss < 700 else float("inf")


def evaluate(
    model: Model | str | Path,
    *,
    data: DataConfig | Mapping[str, Any] | str | None = None,
    split: Literal["validation", "train", "all"] | None = None,
    batch_size: int = 16,
    max_batches: int | None = None,
    seed: int = 0,
    exact_match_examples: int | None = 500,
) -> EvalResult:
    """Loss and perplexity of a model (or a checkpoint folder, or a run's output folder) on its kind of data.

    ``data`` is a :class:`DataConfig`, its dict, a registered corpus name, a
    file/folder/glob, or a run config file (its ``[data]`` table). Without
    ``data`` the run config saved in the checkpoint is used and ``split``
    defaults to its validation split; with ``data``, to all of it (to the
    validation split when the data has one of its own: a pair corpus, or
    ``validation_paths``). Text is cut into blocks as long as the data
    config's ``block_size`` (capped by the model).

    A model whose objective trains on pairs (``seq2seq``) is evaluated on
    pairs, and also greedy-decodes the first ``exact_match_examples`` of them
    (0: none; None: all) to report the exact match.
    """
    from unimodel.checkpoint import load

    run_data: DataConfig | None = None
    if isinstance(model, (str, Path)):
        folder = Path(model)
        if not (folder / "config.json").is_file() and (folder / CHECKPOINT_DIR / "config.json").is_file():
            folder = folder / CHECKPOINT_DIR  # a run's output folder
        if (folder / RUN_FILE).is_file():
            from unimodel.checkpoint import read_json

            saved = read_json(folder / RUN_FILE)
            run_data = DataConfig.from_dict(saved.get("data", {}))
        model = load(folder)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise DataError("evaluate: the model has no tokenizer to encode text with; load a checkpoint saved with one")
    cfg = _eval_data_config(data, run_data)
    kind: DataKind = getattr(type(model.objective), "data_kind", "text")
    # validation files, or a pair corpus's own validation split, are the validation split of any data
    own_validation = bool(cfg.validation_paths) or (kind == "pairs" and cfg.corpus is not None)
    split = split or ("validation" if data is None or own_validation else "all")
    if split == "all":  # nothing held out by fraction: every document, in corpus order
        cfg = cfg.replace(validation_fraction=0.0)
    raw = load_data(cfg, kind=kind, objective=model.objective_name)
    items = {"validation": raw.validation, "train": raw.train, "all": raw.train + raw.validation}[split]
    if not items:
        raise DataError(
            f"evaluate: the {split} split is empty (no validation data in the run's [data]); "
            "evaluate with split='all' or give other data"
        )
    options = {
        "tokenizer": tokenizer,
        "batch_size": batch_size,
        "seed": seed,
        "max_batches": max_batches,
        "split": split,
    }
    if kind == "pairs":
        examples = encode_pairs(tokenizer, items)
        result = evaluate_examples(model, examples, unit="pairs", **options)
        if exact_match_examples != 0:
            em = exact_match(model, examples[:exact_match_examples], tokenizer=tokenizer, batch_size=batch_size)
            result.exact_match, result.exact_match_examples = em.score, em.total
        return result
    limits = [p.max_positions for p in (model.encoder, model.decoder) if p is not None and p.max_positions is not None]
    block_size = min([cfg.block_size, *limits])
    sep = separator_id(tokenizer)
    blocks = pack_blocks_with_tail(tokenizer.encode_batch(items), block_size=block_size, separator_id=sep)
    if not blocks:
        raise DataError(f"evaluate: the {split} text holds fewer than 2 tokens")
    return evaluate_blocks(model, blocks, **options)


def _eval_data_config(data: DataConfig | Mapping[str, Any] | str | None, run_data: DataConfig | None) -> DataConfig:
    if data is None:
        if run_data is None:
            raise DataError(
                "evaluate: no data given and the checkpoint holds no run config (run.json); pass data= "
                "(a corpus name such as 'pydoc', a file, folder or glob, or a run config file)"
            )
        return run_data
    if isinstance(data, DataConfig):
        return data
    if isinstance(data, Mapping):
        return DataConfig.from_dict(data)
    from unimodel.registry import get_registry

    # how the run read its data applies to other data named on its own
    kept = ("block_size", "format", "text_field", "source_field", "target_field", "document_unit")
    inherit = {k: getattr(run_data, k) for k in kept} if run_data is not None else {}
    if get_registry().has("corpus", data):
        if run_data is None:
            return DataConfig(corpus=data)
        # the run's corpus options apply when the run trained on this corpus
        options = run_data.corpus_options if run_data.corpus == data else {}
        return DataConfig(corpus=data, block_size=run_data.block_size, corpus_options=options)
    if data.endswith((".toml", ".json")) and Path(data).is_file():
        table = read_config_file(data)
        return DataConfig.from_dict(table.get("data", {}))
    return DataConfig(paths=(data,), **inherit)


# ================================================================= entry point
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
    """
    run = load_run_config(config, overrides)
    return Trainer(run, resume=resume).run_training()


__all__ = [
    "DataConfig",
    "EvalResult",
    "ExactMatch",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "count_exact_matches",
    "evaluate",
    "evaluate_blocks",
    "evaluate_examples",
    "exact_match",
    "generate_targets",
    "load_run_config",
    "lr_multiplier",
    "param_groups",
    "train",
]
