"""Registered corpora: named collections a run config selects with ``corpus = "NAME"``.

A corpus holds either text or source -> target pairs; its component says
which in ``data_kind="pairs"`` (``"text"`` by default), so the trainer can
refuse a corpus its objective cannot use before importing anything.

- A **text** corpus's target is a callable returning an iterable of
  documents (one ``str`` each).
- A **pair** corpus's target is a callable taking ``split`` (``"train"`` or
  ``"validation"``) and returning an iterable of pairs: mappings with
  ``"source"`` and ``"target"`` strings, or ``(source, target)`` tuples. Its
  two splits are fixed by the corpus (``data.validation_fraction`` does not
  apply to it).

Both are called with the keyword arguments of ``data.corpus_options`` too.
The core registers ``pydoc`` (text that ships with every Python) and
``numbers`` (digits -> English words, generated), so training works on a
fresh machine with no download. Plugins register more the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

from unimodel.bounds import check_corpus_memory
from unimodel.data.messages import objective_phrase
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


CorpusKind = Literal["text", "pairs"]


def corpus_kind(name: str, *, registry: Any = None) -> CorpusKind:
    """``"pairs"`` or ``"text"``: what the registered corpus ``name`` holds, from its metadata (no import)."""
    kind: CorpusKind = _component(name, registry).data_kind
    return kind


def _component(name: str, registry: Any) -> Any:
    from unimodel.registry import get_registry

    reg = registry or get_registry()
    try:
        return reg.get("corpus", name)
    except UnimodelError as exc:
        raise DataError(f"data.corpus: {exc}") from None


def _call(name: str, component: Any, options: Mapping[str, Any] | None, **args: Any) -> Any:
    """Import the corpus and call it with ``args`` plus the user's ``data.corpus_options``."""
    try:
        target = component.load()
    except UnimodelError as exc:
        raise DataError(f"data.corpus: {exc}") from None
    options = dict(options or {})
    if not callable(target):
        if options:
            raise DataError(f"corpus {name!r} takes no options; remove data.corpus_options")
        return target
    if options:
        params = inspect.signature(target).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        known = [
            n
            for n, p in params.items()
            if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and n not in args)
        ]
        unknown = [k for k in options if k not in known and not takes_any]
        if unknown:
            from unimodel.errors import did_you_mean

            raise DataError(
                f"data.corpus_options: corpus {name!r} has no option {unknown[0]!r}."
                f"{did_you_mean(unknown[0], known)} Its options: {', '.join(known) or 'none'}."
            )
    try:
        check_corpus_memory(name, target, {**args, **options})  # before the corpus builds anything
        return target(**args, **options)
    except ValueError as exc:  # a corpus rejecting its options' values
        raise DataError(f"corpus {name!r}: {exc}; change data.corpus_options") from None


def load_corpus(
    name: str, *, registry: Any = None, options: Mapping[str, Any] | None = None, objective: str | None = None
) -> Iterator[str]:
    """Documents of the registered text corpus ``name``.

    Raises :class:`DataError` when the name is unknown (with a did-you-mean),
    when the corpus holds pairs (``objective`` names the run's objective in
    the message), or when it yields something other than strings.
    """
    comp = _component(name, registry)
    if corpus_kind(name, registry=registry) == "pairs":
        raise DataError(
            f"corpus {name!r} holds source -> target pairs, but {objective_phrase(objective)} trains on text. "
            'Train on it with objective "seq2seq" and an encoder-decoder (t5, bart), or choose a text corpus '
            "(`unimodel list --kind corpus`)"
        )
    source: Any = _call(name, comp, options)
    if isinstance(source, str) or not isinstance(source, Iterable):
        raise DataError(
            f"corpus {name!r} returned {type(source).__name__}; a corpus must return an iterable of documents (str)"
        )
    for i, doc in enumerate(source):
        if not isinstance(doc, str):
            raise DataError(f"corpus {name!r}: document {i} is {type(doc).__name__}, expected str")
        yield doc


def load_pair_corpus(
    name: str,
    split: str,
    *,
    registry: Any = None,
    options: Mapping[str, Any] | None = None,
    objective: str | None = None,
) -> list[tuple[str, str]]:
    """The ``(source, target)`` pairs of the ``split`` (``"train"`` or ``"validation"``) of pair corpus ``name``."""
    comp = _component(name, registry)
    if corpus_kind(name, registry=registry) != "pairs":
        raise DataError(
            f"corpus {name!r} holds text, but {objective_phrase(objective)} trains on source -> target pairs. "
            'Use a pair corpus (e.g. data.corpus = "numbers"; `unimodel list --kind corpus`), or give data.paths: '
            "JSONL files with source and target fields, or TSV files (source<TAB>target per line)"
        )
    source: Any = _call(name, comp, options, split=split)
    if isinstance(source, (str, Mapping)) or not isinstance(source, Iterable):
        raise DataError(
            f"corpus {name!r} returned {type(source).__name__} for split {split!r}; a pair corpus must "
            "return an iterable of pairs"
        )
    pairs: list[tuple[str, str]] = []
    for i, item in enumerate(source):
        if isinstance(item, Mapping):
            pair = (item.get("source"), item.get("target"))
        elif isinstance(item, tuple) and len(item) == 2:
            pair = item
        else:
            pair = (None, None)
        source_text, target_text = pair
        if not (isinstance(source_text, str) and isinstance(target_text, str)):
            raise DataError(
                f"corpus {name!r} split {split!r}: item {i} is not a pair of strings (got {item!r:.80}); a pair "
                'corpus yields {"source": str, "target": str} mappings or (source, target) tuples'
            )
        pairs.append((source_text, target_text))
    if not pairs:
        raise DataError(f"corpus {name!r} split {split!r} holds no pairs")
    return pairs
