"""One benchmark's section of docs/benchmarks.md, rewritten in place.

Each benchmark script owns the text between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->``; running one script leaves every other section as it is.
"""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(name: str, text: str, path: Path = DOCS) -> None:
    """Put ``text`` between the markers of section ``name`` in ``path`` (appended when the markers are missing)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    section = f"{begin}\n{text.strip()}\n{end}"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + section + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(doc, encoding="utf-8")
