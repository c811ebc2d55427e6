"""Sequence-level knowledge distillation: an autoregressive teacher rewrites the targets of a pair corpus
(``unimodel distill``).

A non-autoregressive model learns much better from a teacher's outputs than from
the original targets (Mask-Predict: +7 BLEU at one iteration), because the
teacher's outputs are consistent where the data has several ways to say a thing.
:func:`distill` decodes every source with the teacher and writes a JSONL pair file
(``{"source": ..., "target": <the teacher's output>}`` per line, in input order)
that a ``cmlm`` run reads with ``data.paths``.

The file is written a batch at a time and flushed; an interrupted run is resumed
by calling :func:`distill` again with the same output: the pairs already there are
checked against the data and skipped, a half-written last line is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unimodel.data.pairs import Pair, read_pairs
from unimodel.errors import ConfigError, DataError
from unimodel.interfaces import Cap

if TYPE_CHECKING:
    from unimodel.model import Model


@dataclass
class DistillResult:
    """What :func:`distill` did.

    Attributes:
        path: the JSONL pair file.
        total: pairs in the data (and, when done, in the file).
        resumed: pairs already in the file, skipped.
        written: pairs decoded and written by this call.
        empty: teacher outputs that were empty, written with the original target instead.
    """

    path: Path
    total: int
    resumed: int
    written: int
    empty: int


def load_pairs(data: Any, *, split: str = "train") -> list[Pair]:
    """The ``(source, target)`` pairs of ``data``.

    ``data`` is a registered pair corpus name (``"numbers"``), a run config file
    (``.toml``/``.json``: its ``[data]`` table), a pair file or a list of them
    (JSONL or TSV, as ``data.paths`` reads them; every pair, nothing held out), a
    ``[data]`` table (a mapping or :class:`~unimodel.data.dataset.DataConfig`,
    e.g. ``{"corpus": "numbers", "corpus_options": {"count": 4}}``), or the pairs
    themselves (``(source, target)`` tuples or ``{"source", "target"}`` mappings).
    ``split`` (``train`` or ``validation``) applies to a corpus and a ``[data]`` table.
    """
    from unimodel.config import read_config_file
    from unimodel.data.dataset import DataConfig, load_data
    from unimodel.registry import get_registry

    if isinstance(data, str) and get_registry().has("corpus", data):
        data = DataConfig(corpus=data)
    elif isinstance(data, (str, Path)) and str(data).endswith((".toml", ".json")) and Path(data).is_file():
        data = DataConfig.from_dict(read_config_file(data).get("data", {}))
    if isinstance(data, (str, Path)):
        return read_pairs([str(data)])
    if isinstance(data, (DataConfig, Mapping)):
        config = data if isinstance(data, DataConfig) else DataConfig.from_dict(data)
        raw = load_data(config, kind="pairs")
        if split not in ("train", "validation"):
            raise ConfigError(f"distill: split must be 'train' or 'validation', got {split!r}")
        return list(raw.train if split == "train" else raw.validation)
    items = list(data)
    if items and all(isinstance(x, (str, Path)) for x in items):
        return read_pairs([str(x) for x in items])
    pairs = []
    for i, item in enumerate(items):
        pair = (item.get("source"), item.get("target")) if isinstance(item, Mapping) else item
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise DataError(f"distill: item {i} is not a (source, target) pair of strings: {item!r:.80}")
        pairs.append((pair[0], pair[1]))
    return pairs


def write_pairs(path: str | Path, pairs: Sequence[Pair]) -> Path:
    """``pairs`` as a JSONL pair file (``{"source": ..., "target": ...}`` per line), as a run reads them."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps({"source": s, "target": t}, ensure_ascii=False) + "\n" for s, t in pairs)
    out.write_text("".join(lines), encoding="utf-8")
    return out


def _done_pairs(path: Path, pairs: Sequence[Pair]) -> int:
    """How many pairs ``path`` already holds (a resumed run), after dropping a half-written last line."""
    if not path.exists():
        return 0
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) != len(raw):  # an interrupted write: keep the whole lines only
        path.write_bytes(complete)
    lines = complete.decode("utf-8").splitlines()
    if len(lines) > len(pairs):
        raise DataError(
            f"distill: {str(path)!r} holds {len(lines)} pairs but the data has {len(pairs)}; it was written from "
            "other data: delete it or choose another output file"
        )
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"distill: {str(path)!r} line {i + 1} is not JSON ({exc}); delete the file") from None
        if not isinstance(record, dict) or record.get("source") != pairs[i][0]:
            raise DataError(
                f"distill: {str(path)!r} line {i + 1} is not the distilled pair of source {pairs[i][0]!r}; the file "
                "was written from other data: delete it or choose another output file"
            )
    return len(lines)


def decode_sources(
    model: Model, pairs: Sequence[Pair], *, max_new_tokens: int | None = None, **generate_options: Any
) -> list[str]:
    """``model``'s outputs (text) for the sources of ``pairs``, decoded as one batch with
    :func:`~unimodel.generation.generate_texts` (sources framed as in training, each output cut at its eos).

    Without ``max_new_tokens`` an output may take twice the longest reference
    target plus 8 tokens (capped by the decoder's positions). ``generate_options``
    choose the decoding (a teacher's beams, a ``cmlm`` model's mask-predict options).
    """
    from unimodel.generation.text import generate_texts

    tok = model.tokenizer
    assert tok is not None and model.decoder is not None
    if max_new_tokens is None:
        max_new_tokens = 2 * max(len(ids) for ids in tok.encode_batch([p[1] for p in pairs])) + 8
        limit = model.decoder.max_positions
        if limit is not None:
            max_new_tokens = min(max_new_tokens, limit - 1)
    options = {"do_sample": False, **generate_options}
    return [t.strip() for t in generate_texts(model, [p[0] for p in pairs], max_new_tokens=max_new_tokens, **options)]


def distill(
    teacher: Model | str | Path,
    data: Any,
    out: str | Path,
    *,
    split: str = "train",
    batch_size: int = 64,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
    progress: bool = False,
    **generate_options: Any,
) -> DistillResult:
    """Decode every source of ``data`` with an autoregressive ``teacher`` and write the pairs to ``out`` (JSONL).

    Args:
        teacher: a :class:`~unimodel.Model` with its tokenizer (a ``seq2seq`` checkpoint), or a checkpoint folder.
        data: the pairs to distill (see :func:`load_pairs`).
        out: the JSONL file; if it exists, a resumed run continues it.
        split: which split of a ``[data]`` table.
        batch_size: sources decoded at once.
        num_beams: beam search when above 1, else greedy.
        max_new_tokens: the longest teacher output (see :func:`decode_sources`).
        progress: show a progress bar.
        **generate_options: more ``generate`` options for the teacher.
    """
    from unimodel.model import Model

    if not isinstance(teacher, Model):  # a checkpoint folder
        from unimodel.checkpoint import load

        teacher = load(teacher)
    if Cap.CAUSAL not in teacher.provides or not teacher.is_encoder_decoder:
        raise ConfigError(
            f"distill needs an autoregressive encoder-decoder teacher (a seq2seq model); {teacher.name!r} with "
            f"objective {teacher.objective_name!r} provides {', '.join(sorted(teacher.provides))}"
        )
    if teacher.tokenizer is None:
        raise ConfigError("distill: the teacher has no tokenizer; load it from a checkpoint that holds tokenizer.json")
    if batch_size < 1:
        raise ConfigError(f"distill: batch_size must be >= 1, got {batch_size}")
    pairs = load_pairs(data, split=split)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _done_pairs(path, pairs)
    result = DistillResult(path=path, total=len(pairs), resumed=done, written=0, empty=0)
    bar = _progress(progress, len(pairs), done)
    was_training = teacher.training
    teacher.eval()
    try:
        with path.open("a", encoding="utf-8") as f:
            for start in range(done, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                outputs = decode_sources(
                    teacher, chunk, num_beams=num_beams, max_new_tokens=max_new_tokens, **generate_options
                )
                lines = []
                for (source, target), output in zip(chunk, outputs):
                    if not output:  # an empty side would make the file unreadable as pairs
                        result.empty += 1
                        output = target
                    lines.append(json.dumps({"source": source, "target": output}, ensure_ascii=False) + "\n")
                f.write("".join(lines))
                f.flush()
                result.written += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        teacher.train(was_training)
        if bar is not None:
            bar.close()
    return result


def _progress(enabled: bool, total: int, done: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="pair", desc="distill")


__all__ = ["DistillResult", "decode_sources", "distill", "load_pairs", "write_pairs"]
