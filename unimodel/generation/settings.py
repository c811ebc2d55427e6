"""Generation options: Hugging Face names in, one validated :class:`GenerationSettings` out.

Every length here is a *decoder* length: for a decoder-only model the prompt
counts, for an encoder-decoder model the decoder sequence (which starts with
the decoder start token) counts and the encoder input does not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from unimodel.errors import ConfigError, InputError, did_you_mean

if TYPE_CHECKING:
    from unimodel.model import Model

# Hugging Face generates 20 new tokens when no length is given.
DEFAULT_MAX_NEW_TOKENS = 20

OPTIONS = (
    "attention_mask",
    "max_new_tokens",
    "max_length",
    "min_new_tokens",
    "min_length",
    "do_sample",
    "num_beams",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "length_penalty",
    "early_stopping",
    "eos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
    "num_return_sequences",
    "seed",
    "generator",
    "streamer",
    "strategy",
)

EarlyStopping = bool | Literal["never"]


@dataclass(frozen=True)
class GenerationSettings:
    """Resolved generation options, the third argument of every decoding strategy.

    Lengths are decoder lengths (see the module docstring).

    Attributes:
        strategy: name of the ``decoding`` component that runs.
        prompt_length: length of the decoder prompt P (the prompt, or 1 for the start token).
        max_length: decoder length at which generation stops, P included.
        min_length: EOS is suppressed while the decoder sequence is shorter than this.
        do_sample: draw tokens instead of taking the best ones.
        num_beams: beams per input (1 without beam search).
        temperature, top_k, top_p: sampling warpers (``None``: off).
        repetition_penalty: 1.0 is off; scores of already-present tokens are
            divided (positive) or multiplied (negative) by it.
        no_repeat_ngram_size: 0 is off; bans tokens that would repeat an n-gram.
        length_penalty, early_stopping: beam-search scoring and stopping.
        eos_token_ids: ids that end a sequence (empty: only the length limit stops).
        pad_token_id: written after a sequence has ended.
        decoder_start_token_id: first decoder token of an encoder-decoder model
            (``None`` if the model has none; left-to-right strategies then refuse to run).
        num_return_sequences: outputs per input row.
        generator: RNG for sampling (``None``: torch's global RNG).
        streamer: called with each step's new tokens, a LongTensor (B,).
        extra: options a plugin strategy declared (``Component.extra["options"]``).
    """

    strategy: str
    prompt_length: int
    max_length: int
    min_length: int = 0
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    early_stopping: EarlyStopping = False
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    decoder_start_token_id: int | None = None
    num_return_sequences: int = 1
    generator: torch.Generator | None = None
    streamer: Callable[[Tensor], Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def max_new_tokens(self) -> int:
        return self.max_length - self.prompt_length

    @property
    def uses_warpers(self) -> bool:
        """Whether sampling changes the distribution before drawing."""
        return self.temperature != 1.0 or self.top_k is not None or (self.top_p is not None and self.top_p < 1.0)


# ----------------------------------------------------------------- checks
def _int(options: Mapping[str, Any], name: str, *, minimum: int | None = None) -> int | None:
    v = options.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"generate: {name} must be an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise InputError(f"generate: {name} must be >= {minimum}, got {v}")
    return v


def _float(options: Mapping[str, Any], name: str, default: float) -> float:
    v = options.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(f"generate: {name} must be a number, got {v!r}")
    return float(v)


def _token_ids(value: Any, name: str, vocab: int) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, Tensor):
        value = value.flatten().tolist()
    ids = [value] if isinstance(value, int) else list(value) if isinstance(value, Sequence) else None
    if ids is None or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InputError(f"generate: {name} must be a token id or a list of ids, got {value!r}")
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise InputError(
            f"generate: {name} {bad[0]} is outside the model's vocabulary of {vocab}; pass an id in 0..{vocab - 1}"
        )
    return tuple(ids)


def _one_token(value: Any, name: str, vocab: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"generate: {name} must be one token id (an int), got {value!r}")
    return _token_ids(value, name, vocab)[0]


def check_option_names(options: Mapping[str, Any], accepted: Sequence[str]) -> None:
    """Reject option names generate does not know (a misspelling would be silently ignored)."""
    for name in options:
        if name not in accepted:
            raise InputError(
                f"generate got an unknown option {name!r}.{did_you_mean(name, accepted)} "
                f"Options: {', '.join(sorted(accepted))}."
            )


def choose_strategy(options: Mapping[str, Any], default: str = "greedy") -> str:
    """The decoding component to run: the explicit ``strategy``, else HF's rule (``default`` in place of greedy)."""
    name = options.get("strategy")
    if name is not None:
        if not isinstance(name, str):
            raise InputError(f"generate: strategy must be a decoding component name, got {name!r}")
        return name
    beams = options.get("num_beams")
    if isinstance(beams, int) and beams > 1:
        return "beam"
    return "sample" if options.get("do_sample") else default


def resolve_settings(
    model: Model,
    options: Mapping[str, Any],
    *,
    strategy: str,
    prompt_length: int,
    extra: Mapping[str, Any] | None = None,
) -> GenerationSettings:
    """Validate ``options`` and fill defaults from ``model.special_tokens``.

    ``prompt_length`` is the decoder prompt length (the prompt of a decoder-only
    model; for an encoder-decoder model 1, the start token, or 0 without one).
    """
    assert model.decoder is not None
    vocab = model.decoder.vocab_size
    special = model.special_tokens

    # ---- strategy shape
    num_beams = _int(options, "num_beams")
    if num_beams is not None and num_beams < 1:
        raise ConfigError(f"generate: num_beams must be >= 1 (1 means no beam search), got {num_beams}")
    num_beams = num_beams or 1
    do_sample = bool(options.get("do_sample") or False) or strategy == "sample"
    num_return = _int(options, "num_return_sequences")
    if num_return is not None and num_return < 1:
        raise ConfigError(f"generate: num_return_sequences must be >= 1, got {num_return}")
    num_return = num_return or 1
    if strategy == "beam" and num_return > num_beams:
        raise ConfigError(
            f"generate: num_return_sequences ({num_return}) cannot exceed num_beams ({num_beams}) in beam search; "
            f"raise num_beams to at least {num_return}"
        )
    if strategy == "greedy" and num_return > 1:
        raise ConfigError(
            f"generate: greedy decoding returns one sequence per input, not num_return_sequences={num_return}; "
            "pass do_sample=True or num_beams >= num_return_sequences"
        )

    # ---- sampling warpers: validated whenever given, so a typo is caught before a run
    temperature = _float(options, "temperature", 1.0)
    if do_sample and temperature <= 0:
        raise ConfigError(
            f"generate: temperature must be > 0 when sampling, got {temperature}; "
            "for deterministic output use do_sample=False (greedy)"
        )
    top_k = _int(options, "top_k")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"generate: top_k must be >= 1, got {top_k}; pass top_k=None to keep every token")
    top_p = options.get("top_p")
    if top_p is not None:
        top_p = _float(options, "top_p", 1.0)
        if not 0.0 < top_p <= 1.0:
            raise ConfigError(f"generate: top_p must be in (0, 1], got {top_p}; 1.0 (or None) keeps every token")

    # ---- processors
    repetition_penalty = _float(options, "repetition_penalty", 1.0)
    if repetition_penalty <= 0:
        raise ConfigError(f"generate: repetition_penalty must be > 0 (1.0 is off), got {repetition_penalty}")
    ngram = _int(options, "no_repeat_ngram_size", minimum=0) or 0
    length_penalty = _float(options, "length_penalty", 1.0)
    early_stopping = options.get("early_stopping", False)
    if early_stopping is None:
        early_stopping = False
    if early_stopping not in (True, False, "never") or not isinstance(early_stopping, (bool, str)):
        raise ConfigError(f"generate: early_stopping must be True, False or 'never', got {early_stopping!r}")

    # ---- special tokens
    eos_value = options.get("eos_token_id")
    eos = _token_ids(special.get("eos") if eos_value is None else eos_value, "eos_token_id", vocab)
    pad = _one_token(options.get("pad_token_id"), "pad_token_id", vocab)
    if pad is None:
        pad = special.get("pad")
    if pad is None:
        pad = eos[0] if eos else 0  # only ever written after an EOS, so without one it never shows
    start = None
    if model.encoder is not None:
        start = _one_token(options.get("decoder_start_token_id"), "decoder_start_token_id", vocab)
        for role in ("decoder_start", "bos"):  # HF falls back to bos
            if start is None:
                start = special.get(role)

    # ---- lengths
    max_new = _int(options, "max_new_tokens")
    if max_new is not None and max_new < 0:
        raise InputError(f"generate: max_new_tokens must be >= 0, got {max_new}")
    max_length = _int(options, "max_length")
    max_pos = model.decoder.max_positions
    if max_new is not None:  # max_new_tokens wins over max_length, as in HF
        max_length = prompt_length + max_new
    elif max_length is not None:
        if max_length <= prompt_length:
            raise InputError(
                f"generate: max_length ({max_length}) must exceed the decoder prompt length ({prompt_length}); "
                "raise max_length or use max_new_tokens"
            )
    else:
        max_length = prompt_length + DEFAULT_MAX_NEW_TOKENS
        if max_pos is not None:
            max_length = min(max_length, max_pos)
    if max_pos is not None and max_length > max_pos:
        room = max(max_pos - prompt_length, 0)
        raise InputError(
            f"generate: prompt ({prompt_length} tokens) + {max_length - prompt_length} new tokens = {max_length} "
            f"positions, but model {model.name!r} has a position table of {max_pos}; "
            f"ask for at most {room} new tokens or shorten the prompt"
        )
    if max_length <= prompt_length and max_new is None:
        raise InputError(
            f"generate: the prompt ({prompt_length} tokens) already fills model {model.name!r}'s position table "
            f"of {max_pos}; shorten the prompt"
        )
    min_new = _int(options, "min_new_tokens", minimum=0)
    min_length = _int(options, "min_length", minimum=0) or 0
    if min_new is not None:  # min_new_tokens wins over min_length, as in HF
        min_length = prompt_length + min_new

    # ---- sampling RNG and streaming
    seed, generator = options.get("seed"), options.get("generator")
    if seed is not None and generator is not None:
        raise InputError("generate: pass either seed or generator, not both")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"generate: seed must be an integer, got {seed!r}")
        generator = torch.Generator(device=model.device).manual_seed(seed)
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(f"generate: generator must be a torch.Generator, got {type(generator).__name__}")
    streamer = options.get("streamer")
    if streamer is not None and not callable(streamer):
        raise InputError(
            f"generate: streamer must be a callable taking each step's tokens (a LongTensor of shape (batch,)), "
            f"got {type(streamer).__name__}"
        )

    return GenerationSettings(
        strategy=strategy,
        prompt_length=prompt_length,
        max_length=max_length,
        min_length=min_length,
        do_sample=do_sample,
        num_beams=num_beams,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=ngram,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        eos_token_ids=eos,
        pad_token_id=pad,
        decoder_start_token_id=start,
        num_return_sequences=num_return,
        generator=generator,
        streamer=streamer,
        extra=dict(extra or {}),
    )
