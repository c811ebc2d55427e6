"""Registered corpora: named text collections a run config selects with ``corpus = "NAME"``.

A ``corpus`` component's target is a callable taking no arguments and
returning an iterable of documents (one ``str`` each). The core registers
``pydoc``, which ships with every Python, so a training run works on a fresh
machine with no download. Plugins register more the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from unimodel.errors import DataError, UnimodelError


def pydoc_topics() -> list[str]:
    """The standard library's pydoc help topics (``pydoc_data.topics.topics``).

    About 80 documents, roughly 460k characters of English and Python
    describing the language. Sorted by topic name so the order never depends
    on the Python build's dict order.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # some distributions strip pydoc_data
        raise DataError(
            "corpus 'pydoc' needs the standard library's pydoc_data package, which this Python lacks "
            f"({exc}); install the full Python standard library or use data.paths instead"
        ) from None
    return [topics[name] for name in sorted(topics)]


def load_corpus(name: str, *, registry: Any = None) -> Iterator[str]:
    """Documents of the registered corpus ``name``.

    Raises :class:`DataError` when the name is unknown (with a did-you-mean)
    or the corpus yields something other than strings.
    """
    from unimodel.registry import get_registry

    reg = registry or get_registry()
    try:
        target = reg.load("corpus", name)
    except UnimodelError as exc:
        raise DataError(f"data.corpus: {exc}") from None
    source: Any = target() if callable(target) else target
    if isinstance(source, str) or not isinstance(source, Iterable):
        raise DataError(
            f"corpus {name!r} returned {type(source).__name__}; a corpus must return an iterable of documents (str)"
        )
    for i, doc in enumerate(source):
        if not isinstance(doc, str):
            raise DataError(f"corpus {name!r}: document {i} is {type(doc).__name__}, expected str")
        yield doc
