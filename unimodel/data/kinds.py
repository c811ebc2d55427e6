"""Data kinds: what a run trains on, behind one small interface the trainer uses.

An objective names the kind of data it trains on (``Objective.data_kind``); a
``data`` component of that name, registered by a plugin like any other
component, is a :class:`DataKind` subclass. The core registers ``text``
(documents packed into token blocks, :class:`~unimodel.data.dataset.PackedData`)
and ``pairs`` (source -> target examples, :class:`~unimodel.data.dataset.PairData`).

The trainer never asks which kind it holds. It reads the data
(:meth:`DataKind.read`), trains a tokenizer on :meth:`RawData.tokenizer_texts`
when the kind uses one, encodes both splits (:meth:`DataKind.encode`) and then
only uses the instance's interface: training examples by index, the
validation examples, token counts, a fingerprint for resume, a description,
a task metric measured at each evaluation, the sample shown after training,
and optionally state carried from one step to the next (recurrent memory).

An *example* is whatever the objective's ``prepare`` takes: a mapping such as
``{"input_ids": ids}``, ``{"source": ids, "target": ids}`` or, for a kind
that holds images, ``{"pixel_values": tensor, "label": 3}``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from unimodel.errors import InputError, PluginError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from unimodel.data.dataset import DataConfig
    from unimodel.data.tokenizer import Tokenizer
    from unimodel.generation.config import GenerationConfig
    from unimodel.interfaces import ObjectiveOutput
    from unimodel.model import Model
    from unimodel.registry import Registry

Example = Mapping[str, Any]
"""One training example: what the objective's ``prepare`` takes (ids, pairs of ids, tensors ...)."""


@dataclass
class RawData:
    """Both splits of a data kind before encoding: documents, ``(source, target)`` pairs, or anything a
    kind reads (``kind`` names it)."""

    kind: str
    train: list[Any]
    validation: list[Any]
    fixed_validation: bool = False  # the validation split comes from the source, not from validation_fraction

    def tokenizer_texts(self) -> list[str]:
        """What a tokenizer trains on: the training documents, or both sides of the training pairs."""
        if self.kind == "pairs":
            return [side for pair in self.train for side in pair]
        return [t for t in self.train if isinstance(t, str)]

    def split(self, name: str) -> list[Any]:
        """The items of ``name``: ``"train"``, ``"validation"`` or ``"all"`` (both, training first)."""
        return {"validation": self.validation, "train": self.train, "all": self.train + self.validation}[name]


class TaskMetric(ABC):
    """A task's own score, measured on validation examples at each evaluation (exact match for pairs).

    ``metrics.jsonl`` records it as ``val_<name>`` and ``val_<name>_examples``.
    """

    name: ClassVar[str]  # e.g. "exact_match"
    label: ClassVar[str]  # e.g. "exact match"
    total: int  # examples scored, over all processes

    @property
    @abstractmethod
    def score(self) -> float:
        """The score, in [0, 1]."""

    @abstractmethod
    def summary(self) -> str:
        """The progress line's text, e.g. ``exact match 98.00% (49/50 pairs, greedy)``."""

    @abstractmethod
    def report(self) -> str:
        """The line ``unimodel eval`` prints, e.g. ``exact match: 98.00% (49 of 50 pairs, greedy decoding)``."""

    def values(self) -> dict[str, float]:
        """Further figures to record beside the score, as ``val_<key>`` in ``metrics.jsonl``. Default: none."""
        return {}

    def write_files(self, folder: Path, step: int) -> list[Path]:
        """Files the metric writes into the run folder at each evaluation during training (a PNG grid of
        reconstructions, say), on the main process only. Default: none."""
        return []

    def shown(self) -> str | None:
        """A few scored examples as text, the sample after training of a kind that shows them."""
        return None


@dataclass
class Sample:
    """What a run shows after training: a heading for the log and the text itself."""

    heading: str  # e.g. "sample (prompt 'The', top-k 40)"
    text: str


class DataKind(ABC):
    """Encoded training data of one kind: what the trainer needs from it.

    Subclasses implement the abstract members; the others have defaults that
    fit data whose examples are independent (shuffled every epoch, nothing
    carried between steps).
    """

    unit: ClassVar[str] = "examples"  # what one example is, plural ("blocks", "pairs", "images")
    uses_tokenizer: ClassVar[bool] = True  # False: no tokenizer is trained or loaded for this data
    carries_state: ClassVar[bool] = False  # True: the trainer calls carry_in / carry_out every micro-batch
    greedy_by_default: ClassVar[bool] = False  # `unimodel generate` decodes greedily unless asked to sample

    # ------------------------------------------------------------ reading
    @classmethod
    @abstractmethod
    def read(cls, config: DataConfig, *, objective: str | None = None, registry: Registry | None = None) -> RawData:
        """Both splits of ``config`` (the ``[data]`` table) as this kind; ``objective`` names the run's
        objective in error messages."""

    @classmethod
    @abstractmethod
    def encode(cls, config: DataConfig, tokenizer: Tokenizer | None, raw: RawData) -> DataKind:
        """Both splits as examples (token ids, tensors ...), ready for training."""

    @classmethod
    @abstractmethod
    def evaluation_examples(
        cls, config: DataConfig, tokenizer: Tokenizer | None, items: Sequence[Any], model: Model
    ) -> list[Example]:
        """The examples that :func:`~unimodel.training.evaluate` scores ``model`` on, from raw ``items``
        (every item counts, none dropped)."""

    @classmethod
    def own_tokenizer(cls, config: DataConfig, raw: RawData) -> Tokenizer | None:
        """The tokenizer whose ids this kind's examples are, when the kind makes it itself (a vocabulary of
        image codes, say); ``None`` (the default): the trainer trains or loads one as ``[data] tokenizer`` says."""
        return None

    @classmethod
    def has_own_validation(cls, config: DataConfig) -> bool:
        """Whether ``config``'s source fixes its own validation split (validation files, a pair corpus)."""
        return bool(config.validation_paths)

    # -------------------------------------------------------- the examples
    @property
    @abstractmethod
    def n_train(self) -> int:
        """Training examples."""

    @abstractmethod
    def example(self, i: int) -> Example:
        """Training example ``i``."""

    @property
    @abstractmethod
    def validation_examples(self) -> Sequence[Example]:
        """The validation split."""

    @abstractmethod
    def n_tokens(self, indices: Sequence[int]) -> int:
        """Tokens (or the kind's unit of work) in the training examples ``indices``: the tokens/s figure."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A digest of the training examples: a resumed run checks it still trains on the same data."""

    @abstractmethod
    def describe(self) -> str:
        """One line on both splits for the run's log."""

    def fix_for_too_few(self) -> str:
        """What to change when the training split holds fewer examples than one batch."""
        return "add data or lower train.batch_size"

    def check_fits(self, model: Model, tokenizer: Tokenizer | None) -> None:
        """Raise a :class:`~unimodel.errors.ConfigError` before training when the examples do not fit
        ``model`` (longer than its position table ...). Default: every example fits."""
        return None

    def plan_batches(self, batch_size: int) -> None:
        """Told the global batch size before training, for a kind whose :meth:`epoch_order` depends on it
        (one lane of consecutive examples per batch row). Default: nothing to plan."""
        return None

    def epoch_order(self, epoch: int, *, seed: int) -> list[int]:
        """Training example indices in the order epoch ``epoch`` uses them, a pure function of its arguments.

        The trainer takes consecutive ``batch_size`` runs of it as global batches,
        so a kind that must keep related examples in one batch row across steps
        (consecutive segments of a document) arranges them here.
        """
        return shuffled_order(self.n_train, seed=seed, epoch=epoch)

    # -------------------------------------------------- steps and results
    def carry_in(self, batch: dict[str, Tensor], carried: Any) -> dict[str, Tensor]:
        """The micro-batch the objective receives, given what :meth:`carry_out` returned at the previous
        step for the same micro-batch slot (``None`` at the first step). Called only when
        :attr:`carries_state`; the carried state is not part of a checkpoint (a resumed run starts
        without it). Default: unchanged."""
        return batch

    def carry_out(self, output: ObjectiveOutput) -> Any:
        """What to hand to the next step's :meth:`carry_in` (recurrent memory, detached). Default: nothing."""
        return None

    @classmethod
    def task_metric(
        cls,
        model: Model,
        examples: Sequence[Example],
        *,
        tokenizer: Tokenizer | None,
        batch_size: int,
        accelerator: Accelerator | None = None,
        generate_options: Mapping[str, Any] | None = None,
    ) -> TaskMetric | None:
        """The task's own score on validation ``examples`` (``None``: the kind has none); ``generate_options``
        choose the decoding of a task scored on generated outputs."""
        return None

    def sample(
        self,
        model: Model,
        tokenizer: Tokenizer | None,
        *,
        prompt: str,
        generation: GenerationConfig,
        seed: int,
        metric: TaskMetric | None,
    ) -> Sample | None:
        """What the run shows after training (``None``: nothing). ``prompt`` and ``generation`` come
        from the ``[train]`` sample settings; ``metric`` is the last :meth:`task_metric` result."""
        return None

    @classmethod
    def prompt_inputs(
        cls, model: Model, tokenizer: Tokenizer | None, prompts: Sequence[Sequence[int]]
    ) -> tuple[Tensor, Tensor | None]:
        """Token-id prompts as ``generate`` inputs: ``(input_ids (B, S), attention_mask (B, S) or None)``.

        Default: a decoder-only model's prompts are left-padded (generation continues
        from each row's end), an encoder's inputs right-padded.
        """
        if any(len(p) == 0 for p in prompts):
            raise InputError("a prompt is empty; give at least one token")
        width = max(len(p) for p in prompts)
        left = model.encoder is None
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, p in enumerate(prompts):
            where = slice(width - len(p), width) if left else slice(0, len(p))
            ids[row, where] = torch.as_tensor(list(p), dtype=torch.long)
            mask[row, where] = 1
        return ids, None if bool(mask.all()) else mask


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any hashable description, stable across runs and processes."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def shuffled_order(n: int, *, seed: int, epoch: int) -> list[int]:
    """A shuffled order of ``n`` examples for ``epoch``; a pure function of its arguments."""
    g = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
    return torch.randperm(n, generator=g).tolist()


def data_kind_name(objective: object) -> str:
    """The name of the data kind ``objective`` (an objective or its class) trains on."""
    cls = objective if isinstance(objective, type) else type(objective)
    return str(getattr(cls, "data_kind", "text"))


def run_data_kind_name(data: DataConfig | None, objective: object) -> str:
    """The data kind a run reads: ``[data] kind`` when set, else the one ``objective`` names."""
    chosen = getattr(data, "kind", None) if data is not None else None
    return chosen if chosen else data_kind_name(objective)


def data_kind(name: str, *, registry: Registry | None = None) -> type[DataKind]:
    """The registered ``data`` component ``name``: a :class:`DataKind` subclass."""
    from unimodel.registry import get_registry

    reg = registry or get_registry()
    target = reg.load("data", name)
    if not (isinstance(target, type) and issubclass(target, DataKind)):
        comp = reg.get("data", name)
        raise PluginError(
            f"data kind {name!r} from plugin {comp.plugin!r} is {target!r}, not a unimodel.data.kinds.DataKind subclass"
        )
    return target


# ------------------------------------------------------------ processes
def process_share(
    n: int, batch_size: int, accelerator: Accelerator | None, limit: int | None = None
) -> tuple[list[int], int]:
    """(indices of the first ``limit`` of ``n`` examples this process handles, its per-batch count).

    With several processes each takes a contiguous share and the global ``batch_size`` is split
    between them, so sums reduced over processes do not depend on the process count.
    """
    indices = list(range(n if limit is None else min(n, limit)))
    world = accelerator.num_processes if accelerator is not None else 1
    if accelerator is not None and world > 1:
        with accelerator.split_between_processes(indices) as part:
            indices = list(part)
    return indices, max(1, batch_size // world)


def reduce_sum(total: Tensor, accelerator: Accelerator | None) -> Tensor:
    """``total`` summed over the processes of ``accelerator`` (itself with one process)."""
    if accelerator is None or accelerator.num_processes == 1:
        return total
    summed: Tensor = accelerator.reduce(total.to(accelerator.device), reduction="sum")
    return summed.cpu()


__all__ = [
    "DataKind",
    "Example",
    "RawData",
    "Sample",
    "TaskMetric",
    "data_kind",
    "data_kind_name",
    "derive_seed",
    "process_share",
    "reduce_sum",
    "run_data_kind_name",
    "shuffled_order",
]
