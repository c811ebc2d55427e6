"""A call's generation options: Hugging Face names in, one resolved :class:`GenerationSettings` out.

``generate`` takes its options as keywords. Those that are
:class:`~unimodel.generation.config.GenerationConfig` fields override the
model's stored defaults (``model.generation_config``) one field at a time; the
rest belong to the call alone (``attention_mask``, ``seed``, ``generator``,
``streamer``) or to the strategy that declared them. :func:`resolve_settings`
checks what needs the model (token ids against the vocabulary, lengths against
the prompt and the position table) and returns the settings a strategy reads.

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

from unimodel.errors import InputError, did_you_mean
from unimodel.generation.config import DEFAULT_MAX_NEW_TOKENS, GenerationConfig, generation_fields

if TYPE_CHECKING:
    from unimodel.model import Model

#: options that belong to one call and are not part of a stored generation config
#: (``generation_config`` replaces the model's defaults as the base the other options override)
CALL_OPTIONS = ("attention_mask", "seed", "generator", "streamer", "generation_config")
#: every option ``generate`` accepts besides those a decoding strategy declares
OPTIONS = (*generation_fields(), *CALL_OPTIONS)

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
        suppress_tokens: ids never generated (empty: none).
        forced_bos_token_id, forced_eos_token_id: the first generated token, and the
            token before ``max_length``, are forced to these ids (``None``: off).
        config: the :class:`GenerationConfig` of the call (the model's defaults and
            the call's overrides) these settings were resolved from.
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
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    suppress_tokens: tuple[int, ...] = ()
    config: GenerationConfig = field(default_factory=GenerationConfig)

    @property
    def max_new_tokens(self) -> int:
        return self.max_length - self.prompt_length

    @property
    def uses_warpers(self) -> bool:
        """Whether sampling changes the distribution before drawing."""
        return self.temperature != 1.0 or self.top_k is not None or (self.top_p is not None and self.top_p < 1.0)


# ----------------------------------------------------------------- options
def check_option_names(options: Mapping[str, Any], accepted: Sequence[str]) -> None:
    """Reject option names generate does not know (a misspelling would be silently ignored)."""
    for name in options:
        if name not in accepted:
            raise InputError(
                f"generate got an unknown option {name!r}.{did_you_mean(name, accepted)} "
                f"Options: {', '.join(sorted(accepted))}."
            )


def chosen_strategy(model: Model, config: GenerationConfig) -> str:
    """The decoding component to run: ``config.strategy_name``, except that a call naming no strategy that
    would decode greedily runs the model's objective's ``default_strategy`` (``cmlm``: ``mask_predict``)."""
    name = config.strategy_name
    if config.strategy is None and name == "greedy":
        return getattr(model.objective, "default_strategy", None) or name
    return name


def default_config(model: Model) -> GenerationConfig:
    """The model's stored generation defaults; from its special tokens when it has none of its own."""
    config = getattr(model, "generation_config", None)
    if isinstance(config, GenerationConfig):
        return config
    return GenerationConfig.from_special_tokens(model.special_tokens)


def call_config(base: GenerationConfig, options: Mapping[str, Any]) -> GenerationConfig:
    """``base`` with the call's config options applied (``None`` keeps a field as it is).

    A ``generation_config`` option replaces ``base``. A tensor of eos ids is taken
    as the list of its values.
    """
    given_base = options.get("generation_config")
    if given_base is not None:
        if not isinstance(given_base, GenerationConfig):
            raise InputError(
                f"generate: generation_config must be a unimodel GenerationConfig, got {type(given_base).__name__}"
            )
        base = given_base
    fields = set(generation_fields())
    given = {k: v for k, v in options.items() if k in fields}
    eos = given.get("eos_token_id")
    if isinstance(eos, Tensor):
        given["eos_token_id"] = eos.flatten().tolist()
    strategy = given.get("strategy")
    if strategy is not None and not isinstance(strategy, str):
        raise InputError(f"generate: strategy must be a decoding component name, got {strategy!r}")
    return base.with_options(given)


# ----------------------------------------------------------------- checks
def _inside_vocabulary(ids: tuple[int, ...], name: str, vocab: int) -> tuple[int, ...]:
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise InputError(
            f"generate: {name} {bad[0]} is outside the model's vocabulary of {vocab}; pass an id in 0..{vocab - 1}"
        )
    return ids


def _one(value: int | None, name: str, vocab: int) -> int | None:
    return None if value is None else _inside_vocabulary((value,), name, vocab)[0]


def _lengths(model: Model, config: GenerationConfig, prompt_length: int) -> tuple[int, int]:
    """``(max_length, min_length)`` as decoder lengths, checked against the prompt and the position table."""
    max_new, max_length = config.max_new_tokens, config.max_length
    max_pos = generating_part(model).max_positions
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
    min_length = config.min_length
    if config.min_new_tokens is not None:  # min_new_tokens wins over min_length, as in HF
        min_length = prompt_length + config.min_new_tokens
    return max_length, min_length


def generating_part(model: Model) -> Any:
    """The part whose tokens generation extends: the decoder, or the encoder of an encoder-only model
    that a decoding strategy of its family generates with."""
    part = model.decoder if model.decoder is not None else model.encoder
    assert part is not None
    return part


def _generator(model: Model, seed: Any, generator: Any) -> torch.Generator | None:
    if seed is not None and generator is not None:
        raise InputError("generate: pass either seed or generator, not both")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"generate: seed must be an integer, got {seed!r}")
        return torch.Generator(device=model.device).manual_seed(seed)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(f"generate: generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def resolve_settings(
    model: Model,
    config: GenerationConfig,
    *,
    prompt_length: int,
    seed: Any = None,
    generator: Any = None,
    streamer: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> GenerationSettings:
    """The settings a strategy reads: ``config`` checked against ``model``, lengths resolved.

    ``prompt_length`` is the decoder prompt length (the prompt of a decoder-only
    model; for an encoder-decoder model 1, the start token, or 0 without one).
    """
    vocab = generating_part(model).vocab_size
    eos = _inside_vocabulary(config.eos_token_ids, "eos_token_id", vocab)
    pad = _one(config.pad_token_id, "pad_token_id", vocab)
    if pad is None:
        pad = eos[0] if eos else 0  # only ever written after an EOS, so without one it never shows
    start = None
    if model.is_encoder_decoder:
        start = _one(config.decoder_start_token_id, "decoder_start_token_id", vocab)
        if start is None:  # HF falls back to bos
            start = _one(config.bos_token_id, "bos_token_id", vocab)
    max_length, min_length = _lengths(model, config, prompt_length)
    if streamer is not None and not callable(streamer):
        raise InputError(
            f"generate: streamer must be a callable taking each step's tokens (a LongTensor of shape (batch,)), "
            f"got {type(streamer).__name__}"
        )
    return GenerationSettings(
        strategy=config.strategy_name,
        prompt_length=prompt_length,
        max_length=max_length,
        min_length=min_length,
        do_sample=config.samples,
        num_beams=config.num_beams,
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        repetition_penalty=config.repetition_penalty,
        no_repeat_ngram_size=config.no_repeat_ngram_size,
        length_penalty=config.length_penalty,
        early_stopping=config.early_stopping,  # type: ignore[arg-type]  # checked by GenerationConfig
        eos_token_ids=eos,
        pad_token_id=pad,
        decoder_start_token_id=start,
        num_return_sequences=config.num_return_sequences,
        generator=_generator(model, seed, generator),
        streamer=streamer,
        extra=dict(extra or {}),
        forced_bos_token_id=_one(config.forced_bos_token_id, "forced_bos_token_id", vocab),
        forced_eos_token_id=_one(config.forced_eos_token_id, "forced_eos_token_id", vocab),
        suppress_tokens=_inside_vocabulary(tuple(config.suppress_tokens or ()), "suppress_tokens", vocab),
        config=config,
    )
