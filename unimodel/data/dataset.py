"""The ``[data]`` section of a run: where data comes from, how it is tokenized, split and packed.

The objective decides what the data is (``Objective.data_kind``, a registered
:class:`~unimodel.data.kinds.DataKind`). The core's two kinds live here:
**text**, cut into fixed-length blocks (:class:`PackedData`), and **pairs**,
source -> target examples (:class:`PairData`, for ``seq2seq``).
:func:`load_data` reads either and splits it; :func:`make_tokenizer` trains a
tokenizer on the training split (both sides of the pairs), of the kind the run
names or else of the model family's recipe, or loads one;
:meth:`PackedData.encode` (:func:`encode_and_pack`) and
:meth:`PairData.encode` turn both splits into token ids. Every step is
deterministic, so every process of a distributed run, and a resumed run,
computes the same data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

from unimodel.data.config import DEFAULT_CORPUS as DEFAULT_CORPUS  # re-exported: it was defined here
from unimodel.data.config import TOKENIZER_KINDS, DataConfig
from unimodel.data.corpus import load_pair_corpus
from unimodel.data.kinds import DataKind, Example, RawData, Sample, TaskMetric
from unimodel.data.packing import pack_blocks, pack_blocks_with_tail, split_documents
from unimodel.data.pairs import Pair, encode_pairs, pair_key, read_pairs
from unimodel.data.text import read_documents
from unimodel.data.tokenizer import DEFAULT_BPE_ROLES, TOKENIZER_FILE, Tokenizer
from unimodel.errors import ConfigError, DataError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from unimodel.generation.config import GenerationConfig
    from unimodel.model import Model
    from unimodel.registry import Registry, TokenizerRecipe

ReadKind = Literal["text", "pairs"]  # what load_data reads: documents or source/target pairs


def _require(tokenizer: Tokenizer | None, unit: str) -> Tokenizer:
    if tokenizer is None:
        raise DataError(f"{unit} are token ids: encoding them needs a tokenizer")
    return tokenizer


def _position_limits(model: Model) -> list[int]:
    return [p.max_positions for p in (model.encoder, model.decoder) if p is not None and p.max_positions is not None]


@dataclass
class PackedData(DataKind):
    """The ``text`` data kind: token blocks of both splits.

    ``train``: (N, block_size) int64, every block full. ``validation``: lists
    of ids of at most ``block_size``, the last one possibly shorter. An
    example is ``{"input_ids": block}``.
    """

    train: Tensor
    validation: list[list[int]]
    block_size: int
    n_train_documents: int
    n_validation_documents: int
    unit: ClassVar[str] = "blocks"

    @classmethod
    def read(cls, config: DataConfig, *, objective: str | None = None, registry: Registry | None = None) -> RawData:
        return load_data(config, kind="text", objective=objective, registry=registry)

    @classmethod
    def encode(cls, config: DataConfig, tokenizer: Tokenizer | None, raw: RawData) -> PackedData:
        data = encode_and_pack(config, _require(tokenizer, cls.unit), raw.train, raw.validation)
        if config.recurrent_memory > 0:
            from unimodel.data.recurrent import RecurrentText

            return RecurrentText.from_packed(data, config.recurrent_memory)
        return data

    @classmethod
    def evaluation_examples(
        cls, config: DataConfig, tokenizer: Tokenizer | None, items: Sequence[Any], model: Model
    ) -> list[Example]:
        """Every document of ``items`` packed into blocks of ``config.block_size`` (capped by the model),
        the last block kept however short."""
        tok = _require(tokenizer, cls.unit)
        block_size = min([config.block_size, *_position_limits(model)])
        ids = tok.encode_batch(list(items))
        blocks = pack_blocks_with_tail(ids, block_size=block_size, separator_id=separator_id(tok))
        if not blocks:
            raise DataError("evaluate: the text holds fewer than 2 tokens")
        return list(as_examples(blocks))

    @property
    def n_train(self) -> int:
        return int(self.train.shape[0])

    def example(self, i: int) -> dict[str, list[int]]:
        """Training example ``i``: ``{"input_ids": block}``."""
        return {"input_ids": self.train[i].tolist()}

    @property
    def validation_examples(self) -> list[dict[str, list[int]]]:
        return as_examples(self.validation)

    def n_tokens(self, indices: Sequence[int]) -> int:
        """Tokens in the training examples ``indices``."""
        return len(indices) * self.block_size

    @property
    def n_train_tokens(self) -> int:
        return self.train.numel()

    @property
    def n_validation_tokens(self) -> int:
        return sum(len(b) for b in self.validation)

    def describe(self) -> str:
        return (
            f"{self.n_train_documents} documents -> {self.n_train} blocks of {self.block_size} tokens for "
            f"training, {self.n_validation_documents} documents ({self.n_validation_tokens} tokens) for validation"
        )

    def fix_for_too_few(self) -> str:
        return "add text, lower data.block_size or lower train.batch_size"

    def fingerprint(self) -> str:
        """A digest of the training blocks: a resumed run checks it still trains on the same data."""
        h = hashlib.blake2b(digest_size=16)
        h.update(str(tuple(self.train.shape)).encode())
        h.update(self.train.numpy().tobytes())
        return h.hexdigest()

    def check_fits(self, model: Model, tokenizer: Tokenizer | None) -> None:
        limits = _position_limits(model)
        if limits and self.block_size > min(limits):
            raise ConfigError(
                f"data.block_size {self.block_size} is longer than model {model.name!r} can take ({min(limits)} "
                "positions); lower data.block_size or build the model with a longer position table"
            )

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
        """A causal model's sampled continuation of ``prompt`` (special tokens shown)."""
        from unimodel.generation.text import generate_text
        from unimodel.interfaces import Cap

        if not prompt or Cap.CAUSAL not in model.provides:
            return None
        text = generate_text(
            model, prompt, tokenizer=tokenizer, generation_config=generation, seed=seed, skip_special_tokens=False
        )
        return Sample(f"sample (prompt {prompt!r}, top-k {generation.top_k or 0})", text)


@dataclass
class PairData(DataKind):
    """The ``pairs`` data kind: tokenized source -> target pairs of both splits,
    ``{"source": ids, "target": ids}`` each. Its task metric is the exact match."""

    train: list[dict[str, list[int]]]
    validation: list[dict[str, list[int]]]
    unit: ClassVar[str] = "pairs"
    greedy_by_default: ClassVar[bool] = True  # a prompt is a source: its most likely translation

    @classmethod
    def read(cls, config: DataConfig, *, objective: str | None = None, registry: Registry | None = None) -> RawData:
        return load_data(config, kind="pairs", objective=objective, registry=registry)

    @classmethod
    def encode(cls, config: DataConfig, tokenizer: Tokenizer | None, raw: RawData) -> PairData:
        tok = _require(tokenizer, cls.unit)
        return PairData(encode_pairs(tok, raw.train), encode_pairs(tok, raw.validation))

    @classmethod
    def evaluation_examples(
        cls, config: DataConfig, tokenizer: Tokenizer | None, items: Sequence[Any], model: Model
    ) -> list[Example]:
        return list(encode_pairs(_require(tokenizer, cls.unit), items))

    @classmethod
    def has_own_validation(cls, config: DataConfig) -> bool:
        return bool(config.validation_paths) or config.corpus is not None  # a pair corpus fixes its own split

    @property
    def n_train(self) -> int:
        return len(self.train)

    def example(self, i: int) -> dict[str, list[int]]:
        return self.train[i]

    @property
    def validation_examples(self) -> list[dict[str, list[int]]]:
        return self.validation

    def n_tokens(self, indices: Sequence[int]) -> int:
        """Source and target tokens of the training examples ``indices`` (framing tokens not counted)."""
        return sum(len(self.train[i]["source"]) + len(self.train[i]["target"]) for i in indices)

    @property
    def n_train_tokens(self) -> int:
        return self.n_tokens(range(self.n_train))

    @property
    def n_validation_tokens(self) -> int:
        return sum(len(ex["source"]) + len(ex["target"]) for ex in self.validation)

    def describe(self) -> str:
        return (
            f"{self.n_train:,} pairs ({self.n_train_tokens:,} tokens) for training, "
            f"{len(self.validation):,} pairs for validation"
        )

    def fix_for_too_few(self) -> str:
        return "add pairs or lower train.batch_size"

    def fingerprint(self) -> str:
        """A digest of the training pairs' ids: a resumed run checks it still trains on the same data."""
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps([[ex["source"], ex["target"]] for ex in self.train]).encode())
        return h.hexdigest()

    def check_fits(self, model: Model, tokenizer: Tokenizer | None) -> None:
        """Fail before training when the longest source or target (framed by the objective) exceeds the model."""
        every = self.train + self.validation
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
                    f"{model.name!r} takes ({limit} positions); set objective.max_{side}_length = {limit} to "
                    "truncate, or build the model with a longer position table"
                )

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
        """The exact match of decodings of ``examples``' sources against their targets (greedy, or as
        ``generate_options`` say)."""
        from unimodel.data.exact_match import exact_match

        tok = _require(tokenizer, cls.unit)
        return exact_match(
            model,
            examples,
            tokenizer=tok,
            batch_size=batch_size,
            accelerator=accelerator,
            generate_options=generate_options,
        )

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
        """The first validation pairs as the last exact-match run decoded them (None without one)."""
        text = None if metric is None else metric.shown()
        return None if text is None else Sample("validation pairs, greedy decoding", text)

    @classmethod
    def prompt_inputs(
        cls, model: Model, tokenizer: Tokenizer | None, prompts: Sequence[Sequence[int]]
    ) -> tuple[Tensor, Tensor | None]:
        """Prompts are sources: framed (eos ...) and padded as the objective frames them in training."""
        examples: list[Mapping[str, Sequence[int]]] = [{"source": list(p), "target": []} for p in prompts]
        batch = model.objective.prepare(examples, tokenizer=tokenizer, generator=torch.Generator().manual_seed(0))
        mask = batch.get("attention_mask")
        return batch["input_ids"], None if mask is None or bool(mask.all()) else mask


def load_data(
    config: DataConfig, *, kind: ReadKind = "text", objective: str | None = None, registry: Any = None
) -> RawData:
    """Both splits of a data config, read as ``kind``: text documents or source/target pairs.

    ``objective`` names the run's objective in the error raised when the
    data is of the other kind (a pair corpus for a text objective ...).
    """
    if kind == "pairs":
        return _load_pairs(config, objective=objective, registry=registry)
    docs = read_documents(
        corpus=config.corpus,
        paths=tuple(config.paths),
        format=config.format,
        text_field=config.text_field,
        pair_fields=(config.source_field, config.target_field),
        extensions=config.extensions_for("text"),
        document_unit=config.document_unit,
        max_documents=config.max_documents,
        corpus_options=config.corpus_options,
        objective=objective,
        registry=registry,
    )
    if config.validation_paths:
        held_out = read_documents(
            paths=tuple(config.validation_paths),
            format=config.format,
            text_field=config.text_field,
            pair_fields=(config.source_field, config.target_field),
            extensions=config.extensions_for("text"),
            document_unit=config.document_unit,
            objective=objective,
        )
        return RawData("text", docs, held_out, fixed_validation=True)
    train_idx, val_idx = split_documents(docs, validation_fraction=config.validation_fraction, seed=config.seed)
    return RawData("text", [docs[i] for i in train_idx], [docs[i] for i in val_idx])


def _load_pairs(config: DataConfig, *, objective: str | None, registry: Any) -> RawData:
    def read(paths: Sequence[str], limit: int | None = None) -> list[Pair]:
        return read_pairs(
            paths,
            format=config.format,
            source_field=config.source_field,
            target_field=config.target_field,
            extensions=config.extensions_for("pairs"),
            max_pairs=limit,
            objective=objective,
        )

    train: list[Pair] = []
    validation: list[Pair] = []
    fixed = bool(config.validation_paths)
    if config.corpus is not None:
        options = {"registry": registry, "options": config.corpus_options, "objective": objective}
        train += load_pair_corpus(config.corpus, "train", **options)[: config.max_documents]
        validation += load_pair_corpus(config.corpus, "validation", **options)
        fixed = True
    if config.paths:
        pairs = read(config.paths, config.max_documents)
        if config.validation_paths or config.validation_fraction == 0.0:
            train += pairs
        elif len(pairs) < 2:
            raise DataError(
                f"data.paths hold {len(pairs)} pair(s), too few to hold some out for validation; add pairs, give "
                "data.validation_paths, or set data.validation_fraction = 0"
            )
        else:
            keys = [pair_key(p) for p in pairs]
            train_idx, val_idx = split_documents(keys, validation_fraction=config.validation_fraction, seed=config.seed)
            train += [pairs[i] for i in train_idx]
            validation += [pairs[i] for i in val_idx]
    if config.validation_paths:
        validation += read(config.validation_paths)
    return RawData("pairs", train, validation, fixed_validation=fixed)


def load_split(config: DataConfig, *, registry: Any = None) -> tuple[list[str], list[str]]:
    """(train documents, validation documents) of a data config read as text."""
    raw = load_data(config, kind="text", registry=registry)
    return raw.train, raw.validation


def tokenizer_roles(
    kind: str, needed: Iterable[str] = (), *, base: Mapping[str, str] | None = None
) -> dict[str, str] | None:
    """Special-token roles to reserve when training a tokenizer of ``kind``.

    ``base`` (a family's recipe) gives the roles and their tokens; without it a
    byte-level BPE reserves eos/bos, pad, mask and the FIM sentinels (what the
    decoder-only objectives need), the other kinds their trainer's defaults. Any
    role in ``needed`` that these lack gets a token of its own, ``<|role|>``.
    ``None`` means the trainer's own defaults suffice.
    """
    from unimodel.data import tokenizer as tk

    defaults = {"bpe": DEFAULT_BPE_ROLES, "wordpiece": tk.DEFAULT_WORDPIECE_ROLES}.get(kind, tk.DEFAULT_UNIGRAM_ROLES)
    roles = dict(defaults if base is None else base)
    extra = [r for r in needed if r not in roles and not (kind == "unigram" and r.startswith("sentinel"))]
    if kind != "bpe" and base is None and not extra:
        return None
    roles.update({r: f"<|{r}|>" for r in extra})
    return roles


def tokenizer_recipe(model_name: str, *, registry: Registry | None = None) -> TokenizerRecipe | None:
    """The tokenizer recipe the family of model or preset ``model_name`` registers (``None`` when none)."""
    from unimodel.registry import get_registry

    family, _ = (registry or get_registry()).resolve_model(model_name)
    return family.tokenizer


def make_tokenizer(
    config: DataConfig,
    train_texts: Sequence[str],
    *,
    needed_roles: Iterable[str] = (),
    recipe: TokenizerRecipe | None = None,
) -> Tokenizer:
    """Train a tokenizer on ``train_texts``, or load one from the folder ``config.tokenizer`` names.

    The kind trained is ``config.tokenizer``; when that is unset, the model
    family's ``recipe`` (its kind and special tokens), else a byte-level BPE.
    ``needed_roles`` (what the run's objectives need) are reserved as well.
    """
    if config.trains_tokenizer:
        kind = config.tokenizer_kind(recipe)
        base = recipe.roles if config.tokenizer is None and recipe is not None else None
        roles = tokenizer_roles(kind, needed_roles, base=base)
        # the Unigram trainer has no frequency threshold
        options: dict[str, Any] = {} if kind == "unigram" else {"min_frequency": config.min_frequency}
        return Tokenizer.train(kind, train_texts, config.vocab_size, roles, split_digits=config.split_digits, **options)
    assert config.tokenizer is not None  # a folder: trains_tokenizer is False
    folder = Path(config.tokenizer).expanduser()
    if not (folder / TOKENIZER_FILE).is_file():
        raise DataError(
            f"data.tokenizer {config.tokenizer!r} is neither a tokenizer kind to train ({', '.join(TOKENIZER_KINDS)}) "
            f"nor a folder holding {TOKENIZER_FILE}; fix the path or name a kind"
        )
    return Tokenizer.load(folder)


def separator_id(tokenizer: Tokenizer) -> int:
    """The id placed between packed documents: the tokenizer's eos, else its sep."""
    for role in ("eos", "sep"):
        if tokenizer.has_role(role):
            return tokenizer.special_id(role)
    raise DataError(
        f"the tokenizer has no eos (or sep) token to separate packed documents (its roles: "
        f'{", ".join(sorted(tokenizer.roles)) or "none"}); train one with data.tokenizer = "bpe" or add an eos role'
    )


def encode_and_pack(
    config: DataConfig, tokenizer: Tokenizer, train_docs: Sequence[str], validation_docs: Sequence[str]
) -> PackedData:
    """Tokenize both splits (batch encoding) and pack them into blocks of ``config.block_size``."""
    sep = separator_id(tokenizer)
    train_ids = tokenizer.encode_batch(list(train_docs))
    train = pack_blocks(train_ids, block_size=config.block_size, separator_id=sep, what="training split")
    validation: list[list[int]] = []
    if validation_docs:
        val_ids = tokenizer.encode_batch(list(validation_docs))
        validation = pack_blocks_with_tail(val_ids, block_size=config.block_size, separator_id=sep)
    return PackedData(
        train=train,
        validation=validation,
        block_size=config.block_size,
        n_train_documents=len(train_docs),
        n_validation_documents=len(validation_docs),
    )


def as_examples(blocks: Tensor | Sequence[Sequence[int]]) -> list[dict[str, list[int]]]:
    """Blocks as the examples :meth:`Objective.prepare` takes: ``[{"input_ids": [...]}, ...]``."""
    if isinstance(blocks, Tensor):
        blocks = blocks.tolist()
    return [{"input_ids": list(b)} for b in blocks]
