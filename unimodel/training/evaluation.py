"""Evaluation: the objective's token loss and perplexity on held-out examples, plus the data kind's task metric.

:func:`evaluate_examples` scores a model on examples its objective's
``prepare`` takes, sharded over the processes of a run; :func:`evaluate`
scores a model or checkpoint on its kind of data (a run's validation split by
default), and adds the data kind's task metric (exact match for pairs).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from unimodel.config import read_config_file
from unimodel.data.dataset import DataConfig, as_examples
from unimodel.data.exact_match import (
    ExactMatch,
    count_exact_matches,
    exact_match,
    generate_targets,
    normalize_whitespace,
)
from unimodel.data.kinds import TaskMetric, data_kind, data_kind_name, derive_seed, process_share, reduce_sum
from unimodel.errors import DataError
from unimodel.training.state import CHECKPOINT_DIR, RUN_FILE

if TYPE_CHECKING:
    from accelerate import Accelerator

    from unimodel.data.tokenizer import Tokenizer
    from unimodel.model import Model


@dataclass
class EvalResult:
    """Mean token loss (nats) over every predicted position, and its exponential.

    When the data kind has a task metric (the exact match of pairs: the share
    of validation pairs whose greedy decoding equals the target, whitespace
    normalised), also its name, score and the examples it was measured on;
    ``None`` when it was not measured.
    """

    loss: float
    perplexity: float
    n_tokens: int  # predicted positions that entered the mean
    n_examples: int
    split: str = "validation"
    unit: str = "blocks"  # what an example is: "blocks" of text, "pairs" ...
    task_metric: str | None = None  # the metric's name, e.g. "exact_match"
    task_score: float | None = None
    task_examples: int = 0
    task_report: str | None = None  # the metric's line, as ``unimodel eval`` prints it

    def with_metric(self, metric: TaskMetric) -> EvalResult:
        """This result with ``metric`` recorded."""
        self.task_metric, self.task_score, self.task_examples = metric.name, metric.score, metric.total
        self.task_report = metric.report()
        return self

    @property
    def exact_match(self) -> float | None:
        """The exact match of pair data (``None`` when not measured)."""
        return self.task_score if self.task_metric == ExactMatch.name else None

    @property
    def exact_match_examples(self) -> int:
        return self.task_examples if self.task_metric == ExactMatch.name else 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def perplexity(loss: float) -> float:
    """``exp(loss)``: inf past float range, nan for a nan loss."""
    if not math.isfinite(loss):
        return float("nan") if math.isnan(loss) else float("inf")
    return math.exp(loss) if loss < 700 else float("inf")


@torch.no_grad()
def evaluate_examples(
    model: Model,
    examples: Sequence[Mapping[str, Any]],
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
    indices, chunk = process_share(len(examples), batch_size, accelerator, limit)
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
    total = reduce_sum(total, accelerator)
    n = int(total[1])
    loss = float(total[0] / n) if n else float("nan")
    return EvalResult(
        loss=loss, perplexity=perplexity(loss), n_tokens=n, n_examples=len(examples), split=split, unit=unit
    )


def evaluate_blocks(model: Model, blocks: Sequence[Sequence[int]], **options: Any) -> EvalResult:
    """:func:`evaluate_examples` on blocks of text (lists of ids); same options."""
    return evaluate_examples(model, as_examples(blocks), **options)


def evaluate(
    model: Model | str | Path,
    *,
    data: DataConfig | Mapping[str, Any] | str | None = None,
    split: Literal["validation", "train", "all"] | None = None,
    batch_size: int = 16,
    max_batches: int | None = None,
    seed: int = 0,
    exact_match_examples: int | None = 500,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> EvalResult:
    """Loss and perplexity of a model (or a checkpoint folder, or a run's output folder) on its kind of data.

    ``device`` and ``dtype`` (as in :func:`unimodel.load`) load a folder there, or move a model there;
    ``None`` leaves a model where it is and loads a folder on the CPU in its saved dtype.

    ``data`` is a :class:`DataConfig`, its dict, a registered corpus name, a
    file/folder/glob, or a run config file (its ``[data]`` table). Without
    ``data`` the run config saved in the checkpoint is used and ``split``
    defaults to its validation split; with ``data``, to all of it (to the
    validation split when the data has one of its own: a pair corpus, or
    ``validation_paths``). Text is cut into blocks as long as the data
    config's ``block_size`` (capped by the model).

    A data kind with a task metric (pairs, for ``seq2seq``) also scores the
    first ``exact_match_examples`` examples with it (0: none; None: all).
    """
    model, run_data = _model_and_run_data(model, device, dtype)
    tokenizer = model.tokenizer
    kind = data_kind(data_kind_name(model.objective))
    if tokenizer is None and kind.uses_tokenizer:
        raise DataError("evaluate: the model has no tokenizer to encode text with; load a checkpoint saved with one")
    cfg = _eval_data_config(data, run_data)
    # validation files, or a pair corpus's own validation split, are the validation split of any data
    split = split or ("validation" if data is None or kind.has_own_validation(cfg) else "all")
    if split == "all":  # nothing held out by fraction: every document, in corpus order
        cfg = cfg.replace(validation_fraction=0.0)
    items = kind.read(cfg, objective=model.objective_name).split(split)
    if not items:
        raise DataError(
            f"evaluate: the {split} split is empty (no validation data in the run's [data]); "
            "evaluate with split='all' or give other data"
        )
    examples = kind.evaluation_examples(cfg, tokenizer, items, model)
    result = evaluate_examples(
        model,
        examples,
        tokenizer=tokenizer,
        batch_size=batch_size,
        seed=seed,
        max_batches=max_batches,
        split=split,
        unit=kind.unit,
    )
    if exact_match_examples != 0:
        metric = kind.task_metric(model, examples[:exact_match_examples], tokenizer=tokenizer, batch_size=batch_size)
        if metric is not None:
            result.with_metric(metric)
    return result


def _model_and_run_data(
    model: Model | str | Path, device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[Model, DataConfig | None]:
    """The model (loaded when given a folder, on ``device`` in ``dtype``), and the ``[data]`` of the run that
    saved it (if known)."""
    from unimodel.checkpoint import as_device, as_dtype, load, read_json

    if not isinstance(model, (str, Path)):
        if device is not None or dtype is not None:
            where = as_device(device, "evaluate") if device is not None else None
            model.to(device=where, dtype=as_dtype(dtype, "evaluate"))
        return model, None

    folder = Path(model)
    if not (folder / "config.json").is_file() and (folder / CHECKPOINT_DIR / "config.json").is_file():
        folder = folder / CHECKPOINT_DIR  # a run's output folder
    run_data = None
    if (folder / RUN_FILE).is_file():
        run_data = DataConfig.from_dict(read_json(folder / RUN_FILE).get("data", {}))
    return load(folder, device=device if device is not None else "cpu", dtype=dtype), run_data


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


__all__ = [
    "EvalResult",
    "ExactMatch",
    "count_exact_matches",
    "evaluate",
    "evaluate_blocks",
    "evaluate_examples",
    "exact_match",
    "generate_targets",
    "normalize_whitespace",
    "perplexity",
]
