"""Generation options as a frozen, validated config: :class:`GenerationConfig`.

One object carries every option ``generate`` takes beyond the inputs: the
lengths, the search, the sampling warpers, the score processors and the
special token ids. Field names are Hugging Face's (``max_new_tokens``,
``num_beams``, ``eos_token_id``, ``forced_eos_token_id`` ...) so that a
``generation_config.json`` maps onto it field for field.

A model keeps its defaults in ``model.generation_config`` (from its special
tokens, or from the ``generation`` section of a checkpoint's ``config.json``);
a call overrides single fields (``model.generate(ids, num_beams=4)``). Ranges
that need no model are checked here, when the config is made; token ids
against the vocabulary and lengths against the prompt and the position table
are checked by ``generate``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from unimodel.config import Config, param
from unimodel.errors import ConfigError, InputError

# Hugging Face generates 20 new tokens when no length is given.
DEFAULT_MAX_NEW_TOKENS = 20

_FLOATS = ("temperature", "top_p", "repetition_penalty", "length_penalty")
_TOKEN_IDS = ("bos_token_id", "pad_token_id", "decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id")

#: special-token roles of a model (``model.special_tokens``) and the fields that default to them
ROLE_FIELDS = {
    "bos": "bos_token_id",
    "eos": "eos_token_id",
    "pad": "pad_token_id",
    "decoder_start": "decoder_start_token_id",
}


class GenerationOptionError(InputError, ConfigError):
    """A generation option out of its range: a bad input of the call and a bad config value alike.

    ``field`` names the option and ``problem`` says what is wrong with it, so a
    front end can name its own spelling of the option (the CLI's ``--top-p``).
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"generate: {field} {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class GenerationConfig(Config):
    """What ``generate`` does: how long, which search, which warpers, which special tokens.

    Lengths are *decoder* lengths: for a decoder-only model the prompt counts,
    for an encoder-decoder model the decoder sequence (which starts with the
    decoder start token) counts and the encoder input does not.
    """

    section = "generation"

    max_new_tokens: int | None = param(
        None, "tokens to generate (wins over max_length); null: 20, capped at the position table"
    )
    max_length: int | None = param(None, "decoder length at which generation stops, the prompt included")
    min_new_tokens: int | None = param(None, "eos is suppressed until this many tokens are new (wins over min_length)")
    min_length: int = param(0, "eos is suppressed while the decoder sequence is shorter than this")
    do_sample: bool = param(False, "draw tokens from the distribution instead of taking the best ones")
    num_beams: int = param(1, "beams per input; 1 is no beam search")
    num_return_sequences: int = param(1, "outputs per input (sampling, or at most num_beams in beam search)")
    temperature: float = param(1.0, "sampling: divide the logits by this (> 0)")
    top_k: int | None = param(None, "sampling: keep the k most likely tokens (null keeps all; HF's default is 50)")
    top_p: float | None = param(None, "sampling: keep the smallest set of tokens holding this much mass, in (0, 1]")
    repetition_penalty: float = param(1.0, "scores of tokens already present are divided by this (1.0 is off)")
    no_repeat_ngram_size: int = param(0, "ban tokens that would repeat an n-gram of this size (0 is off)")
    length_penalty: float = param(1.0, "beam search: a hypothesis scores sum_logprobs / length ** length_penalty")
    early_stopping: bool | str = param(False, "beam search: true, false or 'never' (Hugging Face's meanings)")
    bos_token_id: int | None = param(None, "beginning-of-sequence id; the decoder start when that is null")
    eos_token_id: int | tuple[int, ...] | None = param(None, "id(s) that end a sequence; null: only lengths stop")
    pad_token_id: int | None = param(None, "written after a sequence has ended; null: the first eos id (else 0)")
    decoder_start_token_id: int | None = param(None, "first decoder token of an encoder-decoder model")
    forced_bos_token_id: int | None = param(None, "the first generated token is forced to this id")
    forced_eos_token_id: int | None = param(None, "the last token before max_length is forced to this id")
    strategy: str | None = param(
        None,
        "a decoding component (greedy, sample, beam, or a plugin's); null: beam if num_beams > 1, else "
        "sample if do_sample, else greedy",
    )

    def __post_init__(self) -> None:
        # before the generic checks: a non-finite option is named as the option it is (the CLI's --top-p ...)
        for name in _FLOATS:
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
                raise GenerationOptionError(name, f"must be a finite number, got {value}")
        super().__post_init__()

    def check(self) -> None:
        self._check_search()
        self._check_warpers()
        self._check_lengths()
        for name in (*_TOKEN_IDS, "eos_token_id"):
            for token in self._ids(name):
                if token < 0:
                    raise GenerationOptionError(name, f"must be a token id (0 or more), got {token}")

    def _check_search(self) -> None:
        if self.num_beams < 1:
            raise GenerationOptionError("num_beams", f"must be >= 1 (1 means no beam search), got {self.num_beams}")
        if self.num_return_sequences < 1:
            raise GenerationOptionError("num_return_sequences", f"must be >= 1, got {self.num_return_sequences}")
        strategy = self.strategy_name
        if strategy == "beam" and self.num_return_sequences > self.num_beams:
            raise GenerationOptionError(
                "num_return_sequences",
                f"({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams}) in beam search; "
                f"raise num_beams to at least {self.num_return_sequences}",
            )
        if strategy == "greedy" and self.num_return_sequences > 1:
            raise GenerationOptionError(
                "num_return_sequences",
                f"is {self.num_return_sequences}, but greedy decoding returns one sequence per input; "
                "pass do_sample=True or num_beams >= num_return_sequences",
            )
        if self.early_stopping not in (True, False, "never") or not isinstance(self.early_stopping, (bool, str)):
            raise GenerationOptionError(
                "early_stopping", f"must be True, False or 'never', got {self.early_stopping!r}"
            )

    def _check_warpers(self) -> None:
        # validated whenever given, so a typo is caught before a run
        if self.samples and self.temperature <= 0:
            raise GenerationOptionError(
                "temperature",
                f"must be > 0 when sampling, got {self.temperature}; for deterministic output use do_sample=False "
                "(greedy)",
            )
        if self.top_k is not None and self.top_k < 1:
            raise GenerationOptionError("top_k", f"must be >= 1, got {self.top_k}; pass top_k=None to keep every token")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise GenerationOptionError(
                "top_p", f"must be in (0, 1], got {self.top_p}; 1.0 (or None) keeps every token"
            )
        if self.repetition_penalty <= 0:
            raise GenerationOptionError(
                "repetition_penalty", f"must be > 0 (1.0 is off), got {self.repetition_penalty}"
            )

    def _check_lengths(self) -> None:
        for name in ("max_new_tokens", "min_new_tokens", "min_length", "no_repeat_ngram_size"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise GenerationOptionError(name, f"must be >= 0, got {value}")
        if self.max_length is not None and self.max_length < 1:
            raise GenerationOptionError("max_length", f"must be >= 1, got {self.max_length}")

    # ----------------------------------------------------------------- views
    def _ids(self, name: str) -> tuple[int, ...]:
        value = getattr(self, name)
        if value is None:
            return ()
        return (value,) if isinstance(value, int) else tuple(value)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The ids that end a sequence (``eos_token_id`` as a tuple; empty when unset)."""
        return self._ids("eos_token_id")

    @property
    def samples(self) -> bool:
        """Whether tokens are drawn rather than chosen (``do_sample``, or the ``sample`` strategy)."""
        return self.do_sample or self.strategy == "sample"

    @property
    def strategy_name(self) -> str:
        """The decoding component that runs: ``strategy``, else Hugging Face's rule."""
        if self.strategy is not None:
            return self.strategy
        if self.num_beams > 1:
            return "beam"
        return "sample" if self.do_sample else "greedy"

    def with_options(self, options: Mapping[str, Any]) -> GenerationConfig:
        """This config with the fields of ``options`` replaced; a ``None`` value keeps the field as it is.

        Keys must be fields of this class (a call's other options are sorted out by ``generate``).
        """
        changes = {k: v for k, v in options.items() if v is not None}
        return self.replace(**changes) if changes else self

    @classmethod
    def from_special_tokens(cls, special_tokens: Mapping[str, int | None]) -> GenerationConfig:
        """A model's default generation config: its special tokens, everything else at the defaults."""
        return cls.from_dict({field: special_tokens.get(role) for role, field in ROLE_FIELDS.items()})


def generation_fields() -> tuple[str, ...]:
    """The names of :class:`GenerationConfig`'s fields."""
    return tuple(GenerationConfig.field_names())


__all__ = ["DEFAULT_MAX_NEW_TOKENS", "GenerationConfig", "GenerationOptionError", "generation_fields"]
