"""Deterministic train/validation splits by document, and packing of token streams into blocks."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from unimodel.errors import DataError


def document_key(text: str, seed: int) -> bytes:
    """A seeded digest of a document's content: its place in the split order.

    Depends on nothing but ``(seed, text)``, so a document lands in the same
    split in every run, in every process, whatever the other documents are.
    Identical documents share a key and therefore a split (no leakage).
    """
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16, key=str(seed).encode()).digest()


def split_documents(docs: Sequence[str], *, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the (train, validation) documents, each in corpus order.

    The ``round(validation_fraction * len(docs))`` documents with the
    smallest :func:`document_key` form the validation split (at least one
    when the fraction is positive, never all of them).
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise DataError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    n = len(docs)
    if validation_fraction == 0.0:
        return list(range(n)), []
    if n < 2:
        raise DataError(
            f"the corpus has {n} document(s), too few to hold some out for validation; add documents, set "
            'data.document_unit = "paragraph" (or "line") to split files, or set data.validation_fraction = 0'
        )
    n_val = min(max(1, round(validation_fraction * n)), n - 1)
    order = sorted(range(n), key=lambda i: (document_key(docs[i], seed), i))
    val = set(order[:n_val])
    return [i for i in range(n) if i not in val], sorted(val)


def pack_stream(token_lists: Sequence[Sequence[int]], *, separator_id: int | None) -> Tensor:
    """Documents' ids concatenated into one stream, ``separator_id`` after each document: (N,) int64."""
    total = sum(len(t) for t in token_lists) + (len(token_lists) if separator_id is not None else 0)
    stream = torch.empty(total, dtype=torch.long)
    pos = 0
    for ids in token_lists:
        n = len(ids)
        if n:
            stream[pos : pos + n] = torch.as_tensor(ids, dtype=torch.long)
        pos += n
        if separator_id is not None:
            stream[pos] = separator_id
            pos += 1
    return stream


def pack_blocks(
    token_lists: Sequence[Sequence[int]], *, block_size: int, separator_id: int | None, what: str = "training data"
) -> Tensor:
    """Pack documents into full blocks: (N_blocks, block_size) int64; the tail shorter than a block is dropped.

    Raises :class:`DataError` when there is not enough text for one block.
    """
    if block_size < 2:
        raise DataError(f"block_size must be at least 2 tokens, got {block_size}")
    stream = pack_stream(token_lists, separator_id=separator_id)
    n_blocks = stream.numel() // block_size
    if n_blocks == 0:
        raise DataError(
            f"the {what} is too small for one block: {stream.numel()} tokens < block_size {block_size}; "
            "add text or lower data.block_size"
        )
    return stream[: n_blocks * block_size].view(n_blocks, block_size).clone()


def pack_blocks_with_tail(
    token_lists: Sequence[Sequence[int]], *, block_size: int, separator_id: int | None
) -> list[list[int]]:
    """Like :func:`pack_blocks` but keeps the last, shorter block (if it has 2+ tokens): for evaluation,
    where every token should count and ragged batches are padded by the objective."""
    stream = pack_stream(token_lists, separator_id=separator_id).tolist()
    blocks = [stream[i : i + block_size] for i in range(0, len(stream), block_size)]
    return [b for b in blocks if len(b) >= 2]
