"""Source -> target pairs from files: JSONL records with two fields, or TSV lines.

A pair is ``(source, target)``, two non-empty strings with surrounding
whitespace removed. Files are found exactly as text files are (files,
folders, globs; :func:`unimodel.data.text.resolve_paths`) and read in a
fixed order, so every process of a run sees the same pairs.

- **JSONL** (``.jsonl``/``.ndjson``, or ``data.format = "jsonl"``): one object
  per line with a source and a target field (``data.source_field`` /
  ``data.target_field``, default ``"source"`` / ``"target"``).
- **TSV** (``.tsv``, or ``data.format = "tsv"``): ``source<TAB>target`` on
  each line, exactly one tab; blank lines are skipped.

Every problem is a :class:`DataError` naming the file, the line and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unimodel.data.messages import objective_phrase
from unimodel.data.text import (
    Format,
    file_format,
    format_reason,
    jsonl_records,
    open_text,
    resolve_paths,
    string_field,
    text_lines,
)
from unimodel.errors import DataError

Pair = tuple[str, str]
PAIR_EXTENSIONS = (".jsonl", ".ndjson", ".tsv")


def _pair(source: str, target: str, *, path: Path, lineno: int) -> Pair:
    source, target = source.strip(), target.strip()
    for side, text in (("source", source), ("target", target)):
        if not text:
            raise DataError(
                f"{str(path)!r} line {lineno}: the {side} is empty; every pair needs text on both sides "
                "(remove the line or fill it in)"
            )
    return source, target


def read_tsv_pairs(path: Path) -> list[Pair]:
    """The pairs of a TSV file: ``source<TAB>target`` per line."""
    pairs: list[Pair] = []
    with open_text(path) as f:
        for lineno, line in enumerate(text_lines(f, path), start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) == 1:
                raise DataError(  # the line itself is not shown: error messages never echo file contents
                    f"{str(path)!r} line {lineno} has no tab ({len(line)} characters); each line of a TSV pair "
                    "file is source<TAB>target"
                )
            if len(parts) > 2:
                raise DataError(
                    f"{str(path)!r} line {lineno} has {len(parts) - 1} tabs; each line of a TSV pair file is "
                    "source<TAB>target with exactly one tab (use JSONL for texts that hold tabs)"
                )
            pairs.append(_pair(parts[0], parts[1], path=path, lineno=lineno))
    return pairs


def read_jsonl_pairs(path: Path, *, source_field: str = "source", target_field: str = "target") -> list[Pair]:
    """The pairs of a JSONL file: each record's ``source_field`` and ``target_field`` strings."""
    pairs: list[Pair] = []
    for lineno, record in jsonl_records(path):
        source = string_field(record, source_field, path=path, lineno=lineno, option="source_field", what="source")
        target = string_field(record, target_field, path=path, lineno=lineno, option="target_field", what="target")
        pairs.append(_pair(source, target, path=path, lineno=lineno))
    return pairs


def read_pairs(
    paths: Sequence[str],
    *,
    format: Format = "auto",
    source_field: str = "source",
    target_field: str = "target",
    extensions: Sequence[str] = PAIR_EXTENSIONS,
    max_pairs: int | None = None,
    objective: str | None = None,
) -> list[Pair]:
    """Every pair of the files of ``paths``, in a fixed order (at most ``max_pairs``).

    ``format`` ``"auto"`` reads ``.jsonl``/``.ndjson`` as JSONL and ``.tsv`` as
    TSV; any other file is refused (plain text holds no pairs). A file with no
    pairs is an error naming it. ``objective`` names the run's objective in
    error messages.
    """
    pairs: list[Pair] = []
    for path in resolve_paths(paths, extensions=extensions):
        kind = file_format(path, format)
        if kind == "jsonl":
            found = read_jsonl_pairs(path, source_field=source_field, target_field=target_field)
        elif kind == "tsv":
            found = read_tsv_pairs(path)
        else:
            raise DataError(
                f"{str(path)!r} is read as plain text ({format_reason(path, format)}), but "
                f"{objective_phrase(objective)} trains on source -> target pairs. Give JSONL files with "
                f"{source_field!r} and {target_field!r} fields or TSV files (source<TAB>target per line), or set "
                'data.format = "tsv" (or "jsonl") to read this file as pairs'
            )
        if not found:
            raise DataError(
                f"{str(path)!r} holds no source/target pairs (the file is empty or blank); fill it or leave it out "
                "of data.paths"
            )
        pairs.extend(found)
        if max_pairs is not None and len(pairs) >= max_pairs:
            break
    return pairs[:max_pairs] if max_pairs is not None else pairs


def pair_key(pair: Pair) -> str:
    """The text a pair's split place is derived from (see :func:`unimodel.data.packing.split_documents`)."""
    return f"{pair[0]}\t{pair[1]}"


def encode_pairs(tokenizer: Any, pairs: Sequence[Pair]) -> list[dict[str, list[int]]]:
    """Pairs as the examples a pair objective's ``prepare`` takes: ``{"source": ids, "target": ids}``."""
    sources = tokenizer.encode_batch([p[0] for p in pairs])
    targets = tokenizer.encode_batch([p[1] for p in pairs])
    return [{"source": s, "target": t} for s, t in zip(sources, targets, strict=True)]
