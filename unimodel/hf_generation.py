"""Hugging Face generation defaults <-> :class:`~unimodel.generation.config.GenerationConfig`.

``transformers`` keeps a model's generation defaults in ``generation_config.json``;
a folder without one (older exports, e.g. ``bart-large-cnn``) keeps them among
the keys of ``config.json``, and ``transformers`` then reads those. Either way
the file's keys are the whole story: a key the file leaves out has
``transformers``' global default, not a family's class default.

Field names are the same on both sides; the values differ in two places:

- ``top_k``: Hugging Face samples from the 50 most likely tokens when the file
  sets nothing, and ``top_k: 0`` (or ``null``) turns the filter off; unimodel's
  ``top_k = None`` is "off". So an absent key becomes ``top_k = 50`` and ``0``
  becomes ``None`` (and back on export).
- token ids outside the model's vocabulary are dropped, as the converters drop
  such special tokens from ``config.json`` (tiny test configs keep GPT-2's
  50256 with a vocabulary of 99); ``transformers`` could never produce them.

Everything else (``max_length`` counting the prompt of a decoder-only model,
``min_length``, ``early_stopping`` ``true``/``false``/``"never"``, forced first
and last tokens) already means in unimodel what it means in ``transformers``.
Only JSON is read; values go through :class:`GenerationConfig`'s range checks,
and a value of the wrong type or range is a :class:`CheckpointError` naming the
file and the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unimodel.errors import CheckpointError, UnimodelError
from unimodel.generation.config import GenerationConfig

GENERATION_FILE = "generation_config.json"

#: Hugging Face's top_k when a generation config sets none (``_get_default_generation_params``)
HF_DEFAULT_TOP_K = 50

_INTS = (
    "max_new_tokens",
    "max_length",
    "min_new_tokens",
    "min_length",
    "num_beams",
    "num_return_sequences",
    "no_repeat_ngram_size",
)
_FLOATS = ("temperature", "top_p", "repetition_penalty", "length_penalty")
_TOKENS = ("bos_token_id", "pad_token_id", "decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id")

#: transformers' value for each field when a file leaves it out (token ids: none)
_HF_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": None,
    "max_length": None,
    "min_new_tokens": None,
    "min_length": 0,
    "num_beams": 1,
    "num_return_sequences": 1,
    "no_repeat_ngram_size": 0,
    "do_sample": False,
    "temperature": 1.0,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "early_stopping": False,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Reader:
    """Reads one file's generation keys, naming the file and key in every error."""

    def __init__(self, values: Mapping[str, Any], where: str, vocab_size: int) -> None:
        self.values = values
        self.where = where
        self.vocab_size = vocab_size

    def fail(self, key: str, expected: str) -> CheckpointError:
        shown = json.dumps(self.values[key])[:60]
        return CheckpointError(f"{self.where}: {key!r} must be {expected}, got {shown}")

    def options(self) -> dict[str, Any]:
        v = self.values
        out: dict[str, Any] = {}
        for key in _INTS:
            if v.get(key) is not None:
                if not _is_int(v[key]):
                    raise self.fail(key, "an integer")
                out[key] = v[key]
        for key in _FLOATS:
            if v.get(key) is not None:
                if not _is_number(v[key]):
                    raise self.fail(key, "a number")
                out[key] = float(v[key])
        if v.get("do_sample") is not None:
            if not isinstance(v["do_sample"], bool):
                raise self.fail("do_sample", "true or false")
            out["do_sample"] = v["do_sample"]
        if v.get("early_stopping") is not None:
            if v["early_stopping"] not in (True, False, "never") or not isinstance(v["early_stopping"], (bool, str)):
                raise self.fail("early_stopping", 'true, false or "never"')
            out["early_stopping"] = v["early_stopping"]
        out["top_k"] = self._top_k()
        for key in _TOKENS:
            token = self._token(key, v.get(key))
            if token is not None:
                out[key] = token
        eos = self._eos()
        if eos is not None:
            out["eos_token_id"] = eos
        return out

    def _top_k(self) -> int | None:
        if "top_k" not in self.values:
            return HF_DEFAULT_TOP_K
        top_k = self.values["top_k"]
        if top_k is None:
            return HF_DEFAULT_TOP_K  # transformers fills an unset (null) top_k with its default too
        if not _is_int(top_k) or top_k < 0:
            raise self.fail("top_k", "an integer >= 0 (0 keeps every token)")
        return top_k or None

    def _token(self, key: str, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, list) and key == "pad_token_id":  # a few configs list one pad id
            value = value[0] if value else None
            if value is None:
                return None
        if not _is_int(value):
            raise self.fail(key, "a token id (an integer)")
        if value < 0:
            raise self.fail(key, "a token id (0 or more)")
        return value if value < self.vocab_size else None

    def _eos(self) -> int | tuple[int, ...] | None:
        value = self.values.get("eos_token_id")
        if value is None:
            return None
        if _is_int(value):
            return self._token("eos_token_id", value)
        if not isinstance(value, list) or not all(_is_int(t) and t >= 0 for t in value):
            raise self.fail("eos_token_id", "a token id or a list of token ids")
        kept = tuple(t for t in value if t < self.vocab_size)
        return kept or None


def generation_from_hf(folder: Path, hf_config: Mapping[str, Any], vocab_size: int) -> GenerationConfig:
    """The generation defaults of the Hugging Face folder ``folder``.

    Read from ``generation_config.json`` when the folder has one, else from the
    generation keys of ``hf_config`` (its ``config.json``), as ``transformers``
    does. ``vocab_size`` is the model's: token ids at or beyond it are dropped.
    Keys that are not generation options (and generation options unimodel does
    not implement, such as ``typical_p``) are ignored.

    Raises:
        CheckpointError: a value of the wrong type or out of range, naming the file and key.
    """
    from unimodel.checkpoint import read_json

    path = folder / GENERATION_FILE
    if path.is_file():
        values: Mapping[str, Any] = read_json(path)
    else:
        path = folder / "config.json"
        values = hf_config
    where = repr(str(path))
    if not isinstance(values, Mapping):
        raise CheckpointError(f"{where} must hold a JSON object, got {type(values).__name__}")
    options = _Reader(values, where, vocab_size).options()
    try:
        return GenerationConfig.from_dict(options, section=f"{where} (generation options)")
    except UnimodelError as exc:
        field = getattr(exc, "field", None)
        key = f" key {field!r}" if field else ""
        raise CheckpointError(f"{where}{key}: {exc}") from None


def generation_to_hf(config: GenerationConfig) -> dict[str, Any]:
    """``config`` as ``generation_config.json`` contents: the token ids that are set, and every other
    option whose value differs from what ``transformers`` assumes when the key is absent.

    ``strategy`` has no Hugging Face counterpart and is not written (a plugin
    strategy does not survive an export; the built-in ones follow from
    ``num_beams`` and ``do_sample``).
    """
    out: dict[str, Any] = {}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        value = getattr(config, key)
        if value is not None:
            out[key] = list(value) if isinstance(value, tuple) else value
    for key, default in _HF_DEFAULTS.items():
        value = getattr(config, key)
        if value is not None and value != default:  # top_p None keeps every token, as HF's 1.0 does
            out[key] = value
    if config.top_k != HF_DEFAULT_TOP_K:
        out["top_k"] = 0 if config.top_k is None else config.top_k
    for key in ("forced_bos_token_id", "forced_eos_token_id"):
        value = getattr(config, key)
        if value is not None:
            out[key] = value
    return out


__all__ = ["GENERATION_FILE", "HF_DEFAULT_TOP_K", "generation_from_hf", "generation_to_hf"]
