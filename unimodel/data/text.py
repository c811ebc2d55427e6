"""Text sources: files, folders, globs, JSONL files and registered corpora -> documents.

A *document* is one string: a whole text file (or a paragraph or line of it,
see ``document_unit``), one JSONL record's text field, or one item of a
registered corpus. Sources are read in a fixed order (sorted paths) so the
same config always yields the same documents, on any machine and in every
process of a distributed run.

Registered corpora are read through :mod:`unimodel.data.corpus`. The
file-level pieces (path expansion, format detection, JSONL records and
their fields, UTF-8 reading) are shared with :mod:`unimodel.data.pairs`,
which reads source/target pairs from the same kinds of files.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from unimodel.data.corpus import load_corpus
from unimodel.data.messages import objective_phrase
from unimodel.errors import DataError, did_you_mean

Format = Literal["auto", "text", "jsonl", "tsv"]
DocumentUnit = Literal["file", "paragraph", "line"]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
TSV_SUFFIXES = (".tsv",)
DEFAULT_EXTENSIONS = (".txt", ".md", ".rst", ".jsonl")
_GLOB_CHARS = re.compile(r"[*?\[]")
_PARAGRAPH_BREAK = re.compile(r"\n(?:[ \t]*\n)+")


def file_format(path: Path, format: Format) -> Literal["text", "jsonl", "tsv"]:
    """How ``path`` is read: ``format`` itself, or for ``"auto"`` its ending (.jsonl/.ndjson, .tsv, else text)."""
    if format != "auto":
        return format
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in TSV_SUFFIXES:
        return "tsv"
    return "text"


def format_reason(path: Path, format: Format) -> str:
    """Why :func:`file_format` chose what it chose, for error messages."""
    if format != "auto":
        return f"data.format = {format!r}"
    return f'data.format "auto" reads a {path.suffix or "file without an ending"} file as {file_format(path, format)}'


def resolve_paths(paths: Sequence[str], *, extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> list[Path]:
    """Expand files, folders (recursively, files ending in ``extensions``) and globs.

    Relative paths are relative to the working directory. Each entry keeps
    its place; files inside one folder or glob are sorted. A file named
    twice is read once.
    """
    out: list[Path] = []
    for entry in paths:
        if _GLOB_CHARS.search(entry):
            matches = sorted(Path(p) for p in glob.glob(entry, recursive=True))
            files = [p for p in matches if p.is_file()]
            if not files:
                raise DataError(
                    f"data.paths: the glob {entry!r} matched no files (working directory {str(Path.cwd())!r}); "
                    "check the pattern, and use '**' to descend into folders"
                )
            out.extend(files)
            continue
        p = Path(entry).expanduser()
        if p.is_dir():
            exts = tuple(e.lower() for e in extensions)
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in exts)
            if not files:
                raise DataError(
                    f"data.paths: folder {entry!r} holds no files ending in {', '.join(exts)}; "
                    "add text files or set data.extensions"
                )
            out.extend(files)
        elif p.is_file():
            out.append(p)
        else:
            parent = p.parent if p.parent.is_dir() else None
            hint = did_you_mean(p.name, [c.name for c in parent.iterdir()]) if parent is not None else ""
            raise DataError(
                f"data.paths: {entry!r} does not exist (working directory {str(Path.cwd())!r}).{hint} "
                "Give an existing file, folder or glob."
            )
    return list(dict.fromkeys(out))


def split_text(text: str, unit: DocumentUnit) -> list[str]:
    """One file's text as documents: the whole file, its paragraphs, or its lines (blank ones dropped)."""
    if unit == "file":
        parts = [text]
    elif unit == "paragraph":
        parts = _PARAGRAPH_BREAK.split(text)
    else:
        parts = text.splitlines()
    return [p for p in parts if p.strip()]


def jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for every non-blank line of a JSONL file; each record must be an object."""
    with open_text(path) as f:
        for lineno, line in enumerate(text_lines(f, path), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{str(path)!r} line {lineno} is not valid JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{str(path)!r} line {lineno} holds a JSON {type(record).__name__}; each line must be an "
                    "object (one record per line)"
                )
            yield lineno, record


def string_field(record: dict[str, Any], field: str, *, path: Path, lineno: int, option: str, what: str) -> str:
    """``record[field]`` as a string; a :class:`DataError` naming the file, line and config ``option`` otherwise."""
    if field not in record:
        keys = list(record)
        raise DataError(
            f"{str(path)!r} line {lineno} has no {field!r} field.{did_you_mean(field, keys)} "
            f"Its fields: {', '.join(keys) or 'none'}. Set data.{option} to the field holding the {what}."
        )
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"{str(path)!r} line {lineno}: field {field!r} is {type(value).__name__}, expected a string")
    return value


def read_jsonl(
    path: Path, *, text_field: str, pair_fields: tuple[str, str] = ("source", "target"), objective: str | None = None
) -> Iterator[str]:
    """The ``text_field`` string of every record of a JSONL file (blank lines skipped).

    A record without the text field but with both ``pair_fields`` is a
    source/target pair, which a text objective cannot use: that is reported as such.
    """
    for lineno, record in jsonl_records(path):
        if text_field not in record and all(f in record for f in pair_fields):
            src, tgt = pair_fields
            raise DataError(
                f"{str(path)!r} line {lineno} holds a source/target pair (fields {src!r} and {tgt!r}) and no "
                f"{text_field!r} text, but {objective_phrase(objective)} trains on text. Train on pairs with "
                'objective "seq2seq" (an encoder-decoder such as t5 or bart), or set data.text_field to a field '
                "holding text"
            )
        value = string_field(record, text_field, path=path, lineno=lineno, option="text_field", what="text")
        if value.strip():
            yield value


def read_documents(
    *,
    corpus: str | None = None,
    paths: Sequence[str] = (),
    format: Format = "auto",
    text_field: str = "text",
    pair_fields: tuple[str, str] = ("source", "target"),
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    document_unit: DocumentUnit = "file",
    max_documents: int | None = None,
    corpus_options: dict[str, Any] | None = None,
    objective: str | None = None,
    registry: Any = None,
) -> list[str]:
    """Every document of a registered ``corpus`` and/or the files of ``paths``, in a fixed order.

    ``format`` ``"auto"`` reads ``.jsonl``/``.ndjson`` files as JSONL and
    everything else but ``.tsv`` as plain UTF-8 text. TSV files and pair
    corpora hold source/target pairs, not text: they are refused with the
    fix (``objective`` names the run's objective in that message). Empty
    documents are dropped; an empty result is a :class:`DataError`.
    """
    if corpus is None and not paths:
        raise DataError('no data source: set data.corpus (e.g. "pydoc") or data.paths (files, folders or globs)')
    docs: list[str] = []
    if corpus is not None:
        for doc in load_corpus(corpus, registry=registry, options=corpus_options, objective=objective):
            docs.extend(split_text(doc, document_unit) if document_unit != "file" else ([doc] if doc.strip() else []))
    for path in resolve_paths(paths, extensions=extensions):
        kind = file_format(path, format)
        if kind == "tsv":
            raise DataError(
                f"{str(path)!r} is read as TSV source<TAB>target pairs ({format_reason(path, format)}), but "
                f'{objective_phrase(objective)} trains on text. Set data.format = "text" to read it as plain '
                'text, or train on the pairs with objective "seq2seq" (an encoder-decoder such as t5 or bart)'
            )
        if kind == "jsonl":
            docs.extend(read_jsonl(path, text_field=text_field, pair_fields=pair_fields, objective=objective))
        else:
            with open_text(path) as f:
                text = "".join(text_lines(f, path))
            docs.extend(split_text(text, document_unit))
        if max_documents is not None and len(docs) >= max_documents:
            break
    if max_documents is not None:
        docs = docs[:max_documents]
    if not docs:
        where = f"corpus {corpus!r}" if corpus is not None else f"data.paths {list(paths)!r}"
        raise DataError(f"{where} yielded no text (the corpus is empty); point data at files with content")
    return docs


def open_text(path: Path) -> Any:
    try:
        return path.open("r", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc.strerror}") from None


def text_lines(f: Any, path: Path) -> Iterator[str]:
    try:
        yield from f
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{str(path)!r} is not UTF-8 text (byte {exc.start}: {exc.reason}); convert it to UTF-8 or leave it out"
        ) from None
