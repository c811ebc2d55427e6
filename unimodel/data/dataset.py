"""The ``[data]`` section of a run: where text comes from, how it is tokenized, split and packed.

:func:`load_split` reads the documents and splits them by document;
:func:`make_tokenizer` trains a tokenizer on the training split (or loads
one); :func:`encode_and_pack` turns both splits into blocks of token ids.
Every step is deterministic, so every process of a distributed run, and a
resumed run, computes the same blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from unimodel.config import Config, param
from unimodel.data.packing import pack_blocks, pack_blocks_with_tail, split_documents
from unimodel.data.text import DEFAULT_EXTENSIONS, read_documents
from unimodel.data.tokenizer import DEFAULT_BPE_ROLES, TOKENIZER_FILE, Tokenizer
from unimodel.errors import DataError

DEFAULT_CORPUS = "pydoc"
TOKENIZER_KINDS = ("bpe", "wordpiece", "unigram")


@dataclass(frozen=True)
class DataConfig(Config):
    """Text source, tokenizer and block settings (the ``[data]`` table of a run config)."""

    section = "data"

    corpus: str | None = param(
        None, "a registered corpus (see `unimodel list corpus`); pydoc when neither corpus nor paths is set"
    )
    paths: tuple[str, ...] | str = param(
        (), "text/JSONL files, folders (searched recursively) and globs, relative to the working directory"
    )
    format: Literal["auto", "text", "jsonl"] = param(
        "auto", "file format; auto reads .jsonl/.ndjson as JSONL, the rest as UTF-8 text"
    )
    text_field: str = param("text", "the JSONL field holding each record's text")
    extensions: tuple[str, ...] = param(DEFAULT_EXTENSIONS, "file endings read from folders")
    document_unit: Literal["file", "paragraph", "line"] = param("file", "what one document of a text file is")
    max_documents: int | None = param(None, "use only the first N documents")
    block_size: int = param(128, "tokens per packed example")
    validation_fraction: float = param(0.1, "fraction of documents held out for validation (0 for none)")
    seed: int = param(0, "seed of the train/validation split")
    tokenizer: str = param(
        "bpe", "bpe, wordpiece or unigram to train one on the training split; or a folder with tokenizer.json"
    )
    vocab_size: int = param(8192, "vocabulary size of a trained tokenizer (special tokens included)")
    min_frequency: int = param(2, "a trained tokenizer's pieces occur at least this often")

    def check(self) -> None:
        if isinstance(self.paths, str):
            object.__setattr__(self, "paths", (self.paths,))
        if self.corpus is None and not self.paths:
            object.__setattr__(self, "corpus", DEFAULT_CORPUS)
        if self.block_size < 2:
            self.fail("block_size", "must be at least 2")
        if not 0.0 <= self.validation_fraction < 1.0:
            self.fail("validation_fraction", "must be in [0, 1)")
        if self.max_documents is not None and self.max_documents <= 0:
            self.fail("max_documents", "must be positive")
        if self.vocab_size <= 0:
            self.fail("vocab_size", "must be positive")
        if self.min_frequency < 1:
            self.fail("min_frequency", "must be at least 1")
        bad = [e for e in self.extensions if not e.startswith(".")]
        if bad:
            self.fail("extensions", f"write file endings with their dot, e.g. '.txt' (got {', '.join(bad)})")

    @property
    def trains_tokenizer(self) -> bool:
        return self.tokenizer in TOKENIZER_KINDS


@dataclass
class PackedData:
    """Token blocks of both splits.

    ``train``: (N, block_size) int64, every block full. ``validation``: lists
    of ids of at most ``block_size``, the last one possibly shorter.
    """

    train: Tensor
    validation: list[list[int]]
    block_size: int
    n_train_documents: int
    n_validation_documents: int

    @property
    def n_train_tokens(self) -> int:
        return self.train.numel()

    @property
    def n_validation_tokens(self) -> int:
        return sum(len(b) for b in self.validation)

    def fingerprint(self) -> str:
        """A digest of the training blocks: a resumed run checks it still trains on the same data."""
        h = hashlib.blake2b(digest_size=16)
        h.update(str(tuple(self.train.shape)).encode())
        h.update(self.train.numpy().tobytes())
        return h.hexdigest()


def load_split(config: DataConfig, *, registry: Any = None) -> tuple[list[str], list[str]]:
    """(train documents, validation documents) of a data config."""
    docs = read_documents(
        corpus=config.corpus,
        paths=tuple(config.paths),
        format=config.format,
        text_field=config.text_field,
        extensions=config.extensions,
        document_unit=config.document_unit,
        max_documents=config.max_documents,
        registry=registry,
    )
    train_idx, val_idx = split_documents(docs, validation_fraction=config.validation_fraction, seed=config.seed)
    return [docs[i] for i in train_idx], [docs[i] for i in val_idx]


def tokenizer_roles(kind: str, needed: Iterable[str] = ()) -> dict[str, str] | None:
    """Special-token roles to reserve when training a tokenizer of ``kind``.

    A byte-level BPE reserves eos/bos, pad, mask and the FIM sentinels
    (what the decoder-only objectives need); any role in ``needed`` that the
    kind's defaults lack gets a token of its own, ``<|role|>``. ``None``
    means the trainer's own defaults suffice.
    """
    if kind == "bpe":
        roles = dict(DEFAULT_BPE_ROLES)
    else:
        from unimodel.data import tokenizer as tk

        defaults = tk.DEFAULT_WORDPIECE_ROLES if kind == "wordpiece" else tk.DEFAULT_UNIGRAM_ROLES
        roles = dict(defaults)
    extra = [r for r in needed if r not in roles and not (kind == "unigram" and r.startswith("sentinel"))]
    if kind != "bpe" and not extra:
        return None
    roles.update({r: f"<|{r}|>" for r in extra})
    return roles


def make_tokenizer(config: DataConfig, train_texts: Sequence[str], *, needed_roles: Iterable[str] = ()) -> Tokenizer:
    """Train a tokenizer of kind ``config.tokenizer`` on ``train_texts``, or load one from a folder."""
    if config.trains_tokenizer:
        roles = tokenizer_roles(config.tokenizer, needed_roles)
        # the Unigram trainer has no frequency threshold
        options = {} if config.tokenizer == "unigram" else {"min_frequency": config.min_frequency}
        return Tokenizer.train(config.tokenizer, train_texts, config.vocab_size, roles, **options)
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
        f"{', '.join(sorted(tokenizer.roles)) or 'none'}); train one with data.tokenizer = \"bpe\" or add an eos role"
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
