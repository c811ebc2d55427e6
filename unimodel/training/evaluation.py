"""Evaluation: the objective's token loss and perplexity on held-out examples, plus the data kind's task metric.

:func:`evaluate_examples` scores a model on examples its objective's
``prepare`` takes, sharded over the processes of a run; :func:`evaluate`
scores a model or checkpoint on its kind of data (a run's validation split by
default), and adds the data kind's task metric (exact match for pairs).
"""

from __future__ import annotations

import dataclasses
import itertools
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
from unimodel.data.kinds import TaskMetric, data_kind, derive_seed, process_share, reduce_sum, run_data_kind_name
from unimodel.errors import DataError
from unimodel.training.state import RUN_FILE

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
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # the objective's, per prediction
    loss_is_token_ce: bool = True  # the loss is a token cross-entropy: perplexity means something

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
    metric_sums: dict[str, float] = {}  # the objective's metrics, weighted by predictions
    try:
        with autocast:
            for start in range(0, len(indices), chunk):
                part = indices[start : start + chunk]
                g = torch.Generator().manual_seed(derive_seed(seed, "eval", part[0]))
                batch = model.objective.prepare([examples[i] for i in part], tokenizer=tokenizer, generator=g)
                out = model.objective(model, {k: v.to(device) for k, v in batch.items()})
                total[0] += float(out.loss) * out.n_predictions
                total[1] += out.n_predictions
                for name, value in out.metrics.items():
                    metric_sums[name] = metric_sums.get(name, 0.0) + float(value) * out.n_predictions
    finally:
        model.train(was_training)
    total = reduce_sum(total, accelerator)
    names = sorted(metric_sums)
    if accelerator is not None and accelerator.num_processes > 1:  # a process may have had no batch
        from accelerate.utils import gather_object

        names = sorted({n for part in gather_object([names]) for n in part})
    sums = torch.tensor([metric_sums.get(n, 0.0) for n in names], dtype=torch.float64)
    sums = reduce_sum(sums, accelerator) if names else sums
    n = int(total[1])
    loss = float(total[0] / n) if n else float("nan")
    return EvalResult(
        loss=loss,
        perplexity=perplexity(loss),
        n_tokens=n,
        n_examples=len(examples),
        split=split,
        unit=unit,
        metrics={name: float(v) / n for name, v in zip(names, sums.tolist(), strict=True)} if n else {},
        loss_is_token_ce=bool(getattr(model.objective, "loss_is_token_ce", False)),
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
    generate_options: Mapping[str, Any] | None = None,
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
    first ``exact_match_examples`` examples with it (0: none; None: all), decoding
    with ``generate_options`` (a strategy and its options) where it decodes.
    """
    model, run_data, outside = _model_and_run_data(model, device, dtype)
    tokenizer = model.tokenizer
    cfg = _eval_data_config(data, run_data, outside)
    kind = data_kind(run_data_kind_name(cfg, model.objective))
    if tokenizer is None and kind.uses_tokenizer:
        raise DataError("evaluate: the model has no tokenizer to encode text with; load a checkpoint saved with one")
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
        metric = kind.task_metric(
            model,
            examples[:exact_match_examples],
            tokenizer=tokenizer,
            batch_size=batch_size,
            generate_options=generate_options,
        )
        if metric is not None:
            result.with_metric(metric)
    return result


def _model_and_run_data(
    model: Model | str | Path, device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[Model, DataConfig | None, tuple[str, ...]]:
    """The model (loaded when given a folder, on ``device`` in ``dtype``), the ``[data]`` of the run that
    saved it (if known), and the data paths it records that lead outside the checkpoint folder.

    A checkpoint is data, and may come from anyone: the data files its ``run.json`` records are
    read only when they lie inside the checkpoint folder (relative paths are read relative to it);
    otherwise the recorded data is not used and evaluation asks for ``data``.
    """
    from unimodel.checkpoint import as_device, as_dtype, load, read_json, resolve_run_folder

    if not isinstance(model, (str, Path)):
        if device is not None or dtype is not None:
            where = as_device(device, "evaluate") if device is not None else None
            model.to(device=where, dtype=as_dtype(dtype, "evaluate"))
        return model, None, ()

    folder = resolve_run_folder(Path(model))  # a run's output folder: the checkpoint its pointer names
    run_data: DataConfig | None = None
    outside: tuple[str, ...] = ()
    if (folder / RUN_FILE).is_file():
        run_data, outside = _confined(DataConfig.from_dict(read_json(folder / RUN_FILE).get("data", {})), folder)
    return load(folder, device=device if device is not None else "cpu", dtype=dtype), run_data, outside


def _confined(run_data: DataConfig, folder: Path) -> tuple[DataConfig, tuple[str, ...]]:
    """``run_data`` with its file paths read relative to ``folder``, and those of its paths that lead
    outside ``folder`` (``..``, an absolute path elsewhere, a link out, a glob reaching out) or match nothing
    in it."""
    import glob

    root = folder.resolve()
    fields: dict[str, tuple[str, ...]] = {}
    outside: list[str] = []
    for name in ("paths", "validation_paths"):
        resolved = []
        for entry in getattr(run_data, name):
            path = Path(entry) if Path(entry).is_absolute() else folder / entry
            resolved.append(str(path))
            fixed = Path(*[part for part in itertools.takewhile(lambda x: not glob.has_magic(x), path.parts)])
            if not fixed.resolve().is_relative_to(root):  # decided before anything outside is listed
                outside.append(entry)
                continue
            matches = [Path(m) for m in glob.glob(str(path), recursive=True)] if glob.has_magic(str(path)) else [path]
            files = [f for m in matches if m.exists() for f in ([m, *m.rglob("*")] if m.is_dir() else [m])]
            if not files or not all(f.resolve().is_relative_to(root) for f in files):  # absent counts as outside
                outside.append(entry)
        fields[name] = tuple(resolved)
    return run_data.replace(**fields), tuple(outside)


def _eval_data_config(
    data: DataConfig | Mapping[str, Any] | str | None, run_data: DataConfig | None, outside: tuple[str, ...] = ()
) -> DataConfig:
    if data is None:
        if run_data is None:
            raise DataError(
                "evaluate: no data given and the checkpoint holds no run config (run.json); pass data= "
                "(a corpus name such as 'pydoc', a file, folder or glob, or a run config file)"
            )
        if outside:
            shown = ", ".join(repr(p[:80]) for p in outside[:3]) + (" ..." if len(outside) > 3 else "")
            raise DataError(
                f"evaluate: the checkpoint's run.json records data that is not inside the checkpoint folder ({shown}); "
                "unimodel reads a checkpoint's recorded data only inside its folder. Give the data again: "
                "--data PATH (data=) names a file, folder, glob, corpus or run config file"
            )
        return run_data
    if isinstance(data, DataConfig):
        return data
    if isinstance(data, Mapping):
        return DataConfig.from_dict(data)
    from unimodel.registry import get_registry

    # how the run read its data applies to other data named on its own
    kept = (
        "block_size",
        "format",
        "text_field",
        "source_field",
        "target_field",
        "document_unit",
        "kind",
        "kind_options",
    )
    inherit = {k: getattr(run_data, k) for k in kept} if run_data is not None else {}
    if get_registry().has("corpus", data):
        if run_data is None:
            return DataConfig(corpus=data)
        # the run's corpus options apply when the run trained on this corpus
        options = run_data.corpus_options if run_data.corpus == data else {}
        return DataConfig(
            corpus=data,
            block_size=run_data.block_size,
            corpus_options=options,
            kind=run_data.kind,
            kind_options=run_data.kind_options,
        )
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
