"""Text sources: files, folders, globs, JSONL files and registered corpora -> documents.

A *document* is one string: a whole text file (or a paragraph or line of it,
see ``document_unit``), one JSONL record's text field, or one item of a
registered corpus. Sources are read in a fixed order (sorted paths) so the
same config always yields the same documents, on any machine and in every
process of a distributed run.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from unimodel.errors import DataError, did_you_mean

Format = Literal["auto", "text", "jsonl"]
DocumentUnit = Literal["file", "paragraph", "line"]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
DEFAULT_EXTENSIONS = (".txt", ".md", ".rst", ".jsonl")
_GLOB_CHARS = re.compile(r"[*?\[]")
_PARAGRAPH_BREAK = re.compile(r"\n(?:[ \t]*\n)+")


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


def read_jsonl(path: Path, *, text_field: str) -> Iterator[str]:
    """The ``text_field`` string of every record of a JSONL file (blank lines skipped)."""
    with _open_text(path) as f:
        for lineno, line in enumerate(_lines(f, path), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{str(path)!r} line {lineno} is not valid JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{str(path)!r} line {lineno} holds a JSON {type(record).__name__}; each line must be an "
                    f"object with a {text_field!r} field"
                )
            if text_field not in record:
                keys = list(record)
                raise DataError(
                    f"{str(path)!r} line {lineno} has no {text_field!r} field.{did_you_mean(text_field, keys)} "
                    f"Its fields: {', '.join(keys) or 'none'}. Set data.text_field to the field holding the text."
                )
            value = record[text_field]
            if not isinstance(value, str):
                raise DataError(
                    f"{str(path)!r} line {lineno}: field {text_field!r} is {type(value).__name__}, expected a string"
                )
            if value.strip():
                yield value


def read_documents(
    *,
    corpus: str | None = None,
    paths: Sequence[str] = (),
    format: Format = "auto",
    text_field: str = "text",
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    document_unit: DocumentUnit = "file",
    max_documents: int | None = None,
    registry: Any = None,
) -> list[str]:
    """Every document of a registered ``corpus`` and/or the files of ``paths``, in a fixed order.

    ``format`` ``"auto"`` reads ``.jsonl``/``.ndjson`` files as JSONL and
    everything else as plain UTF-8 text. Empty documents are dropped; an
    empty result is a :class:`DataError`.
    """
    if corpus is None and not paths:
        raise DataError("no data source: set data.corpus (e.g. \"pydoc\") or data.paths (files, folders or globs)")
    docs: list[str] = []
    if corpus is not None:
        from unimodel.data.corpus import load_corpus

        for doc in load_corpus(corpus, registry=registry):
            docs.extend(split_text(doc, document_unit) if document_unit != "file" else ([doc] if doc.strip() else []))
    for path in resolve_paths(paths, extensions=extensions):
        as_jsonl = format == "jsonl" or (format == "auto" and path.suffix.lower() in JSONL_SUFFIXES)
        if as_jsonl:
            docs.extend(read_jsonl(path, text_field=text_field))
        else:
            with _open_text(path) as f:
                text = "".join(_lines(f, path))
            docs.extend(split_text(text, document_unit))
        if max_documents is not None and len(docs) >= max_documents:
            break
    if max_documents is not None:
        docs = docs[:max_documents]
    if not docs:
        where = f"corpus {corpus!r}" if corpus is not None else f"data.paths {list(paths)!r}"
        raise DataError(f"{where} yielded no text (the corpus is empty); point data at files with content")
    return docs


def _open_text(path: Path) -> Any:
    try:
        return path.open("r", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc.strerror}") from None


def _lines(f: Any, path: Path) -> Iterator[str]:
    try:
        yield from f
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{str(path)!r} is not UTF-8 text (byte {exc.start}: {exc.reason}); convert it to UTF-8 or leave it out"
        ) from None
