"""Text in, text out: :func:`generate_text` and :func:`generate_texts`.

The one place that turns a text prompt into generated text: it encodes the
prompt with the model's tokenizer, frames it as the model's kind of data
frames prompts (a source of a pair objective gets its eos ...; see
:meth:`~unimodel.data.kinds.DataKind.prompt_inputs`), calls ``generate`` and
decodes the new tokens. The CLI's ``generate``, the trainer's sample and the
exact-match metric all go through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from unimodel.errors import InputError
from unimodel.generation.settings import call_config, default_config

if TYPE_CHECKING:
    from torch import Tensor

    from unimodel.data.tokenizer import Tokenizer
    from unimodel.generation.config import GenerationConfig
    from unimodel.model import Model

Prompt = str | Sequence[int]
"""A prompt: text, or token ids already encoded."""


class TextStreamer:
    """Prints a growing token sequence as text, one decoding step at a time.

    Byte-level BPE splits a multi-byte character over several tokens; decoding
    a prefix that ends inside one yields U+FFFD. Text is therefore printed only
    up to a point where the decoded string is stable, and the rest at the end.
    """

    def __init__(self, decode: Callable[[list[int]], str], stream: TextIO, prefix: str = "") -> None:
        self.decode = decode
        self.stream = stream
        self.prefix = prefix  # written with the first step, so an option error prints nothing to the stream
        self.ids: list[int] = []
        self.printed = ""

    def __call__(self, tokens: Tensor) -> None:
        """``tokens``: LongTensor (B,) of the step's new tokens; only row 0 is shown."""
        self._write_prefix()
        self.ids.append(int(tokens.reshape(-1)[0]))
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return  # inside a multi-byte character: wait for its remaining bytes
        self._emit(text)

    def _emit(self, text: str) -> None:
        if text.startswith(self.printed):
            new = text[len(self.printed) :]
        else:  # a decoder that revises earlier text: print from where they differ
            same = next(
                (i for i, (a, b) in enumerate(zip(text, self.printed)) if a != b), min(len(text), len(self.printed))
            )
            new = text[same:]
        if new:
            self.stream.write(new)
            self.stream.flush()
        self.printed = text

    def _write_prefix(self) -> None:
        if self.prefix:
            self.stream.write(self.prefix)
            self.stream.flush()
            self.prefix = ""

    def end(self, ids: Sequence[int] | None = None) -> None:
        """Print what is left; ``ids``, when given, are the final tokens (those of a strategy that did not
        stream, or the streamed ones cut at their end)."""
        if ids is not None:
            self.ids = list(ids)
        self._write_prefix()
        self._emit(self.decode(self.ids))


def continuation_text(tokenizer: Tokenizer, prompt_ids: Sequence[int], new_ids: Sequence[int], skip: bool) -> str:
    """The text ``new_ids`` add after ``prompt_ids``.

    Decoded together with the prompt, so tokenizers that join pieces with spaces
    (WordPiece) put the space between prompt and continuation where it belongs.
    """
    if not prompt_ids:
        return tokenizer.decode(new_ids, skip_special_tokens=skip)
    before = tokenizer.decode(prompt_ids, skip_special_tokens=skip)
    whole = tokenizer.decode([*prompt_ids, *new_ids], skip_special_tokens=skip)
    return whole[len(before) :] if whole.startswith(before) else tokenizer.decode(new_ids, skip_special_tokens=skip)


def generate_text(
    model: Model,
    prompt: Prompt,
    *,
    tokenizer: Tokenizer | None = None,
    stream: TextIO | None = None,
    skip_special_tokens: bool = True,
    **options: Any,
) -> str:
    """Generate from one prompt and return text.

    For a decoder-only model the result is the prompt followed by its
    continuation; for an encoder-decoder model it is the output alone. The text
    ends at the first eos. ``options`` are ``generate``'s (``max_new_tokens``,
    ``do_sample``, ``num_beams``, ``seed``, ``generation_config`` ...).

    Args:
        model: a model that generates, with a tokenizer (or pass ``tokenizer``).
        prompt: text, or token ids. An empty prompt of a decoder-only model starts
            from its bos (else eos) token.
        stream: when given, the text is written to it as it is generated (the
            prompt first); beam search writes it when the search ends.
        skip_special_tokens: drop special tokens (eos, pad ...) from the text.
    """
    limit = options.pop("max_new_tokens", None)
    return _generate(model, [prompt], tokenizer, limit, skip_special_tokens, stream, options)[0]


def generate_texts(
    model: Model,
    prompts: Sequence[Prompt],
    *,
    tokenizer: Tokenizer | None = None,
    max_new_tokens: int | Sequence[int] | None = None,
    skip_special_tokens: bool = True,
    **options: Any,
) -> list[str]:
    """:func:`generate_text` for a batch of prompts, decoded together; one text per returned sequence
    (``num_return_sequences`` consecutive texts per prompt).

    ``max_new_tokens`` may give each prompt its own limit: the batch generates up
    to the largest and each text is cut at its own, so a text does not depend on
    the batch it was generated in.
    """
    return _generate(model, prompts, tokenizer, max_new_tokens, skip_special_tokens, None, options)


def _generate(
    model: Model,
    prompts: Sequence[Prompt],
    tokenizer: Tokenizer | None,
    max_new_tokens: int | Sequence[int] | None,
    skip: bool,
    stream: TextIO | None,
    options: dict[str, Any],
) -> list[str]:
    from unimodel.data.kinds import data_kind, data_kind_name

    tok = tokenizer if tokenizer is not None else model.tokenizer
    if tok is None:
        raise InputError(
            f"model {model.name!r} has no tokenizer, so a text prompt cannot be encoded; attach one "
            "(model.tokenizer = ...) or pass tokenizer="
        )
    if not prompts:
        return []
    config = call_config(default_config(model), options)
    prompt_ids = [_prompt_ids(model, config, tok, p) for p in prompts]
    kind = data_kind(data_kind_name(model.objective), registry=options.get("registry"))
    input_ids, mask = kind.prompt_inputs(model, tok, prompt_ids)
    caps: list[int | None] = (
        list(max_new_tokens) if isinstance(max_new_tokens, Sequence) else [max_new_tokens] * len(prompts)
    )
    given = [c for c in caps if c is not None]
    limit = max(given) if given else None
    texts_from = [_text_head(model, tok, p, ids, skip) for p, ids in zip(prompts, prompt_ids)]
    streamer = _streamer(model, tok, prompt_ids[0], texts_from[0], skip, stream)
    if streamer is not None and config.num_beams == 1:
        # beam search re-ranks its beams at every step: nothing is final before the end, so nothing streams
        options = {**options, "streamer": streamer}
    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=limit, **options)

    start = input_ids.shape[1] if model.encoder is None else _decoder_prompt_length(config)
    eos = set(config.eos_token_ids)
    per_prompt = config.num_return_sequences
    texts = []
    for row, seq in enumerate(out[:, start:].tolist()):
        i = row // per_prompt
        new = _until_eos(seq[: caps[i]] if caps[i] is not None else seq, eos, keep=not skip)
        if row == 0 and streamer is not None:
            streamer.end(new)
        body = continuation_text(tok, prompt_ids[i], new, skip) if model.encoder is None else tok.decode(new, skip)
        texts.append(texts_from[i] + body)
    return texts


def _decoder_prompt_length(config: GenerationConfig) -> int:
    """Decoder tokens before the first generated one of an encoder-decoder model: its start token, if any."""
    return 1 if config.decoder_start_token_id is not None or config.bos_token_id is not None else 0


def _prompt_ids(model: Model, config: GenerationConfig, tokenizer: Tokenizer, prompt: Prompt) -> list[int]:
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
    if ids or model.encoder is not None:
        return ids
    eos = config.eos_token_ids
    start = config.bos_token_id if config.bos_token_id is not None else (eos[0] if eos else None)
    if start is None:
        raise InputError("the prompt is empty and the model has no bos/eos token to start from; give a prompt")
    return [start]


def _text_head(model: Model, tokenizer: Tokenizer, prompt: Prompt, ids: Sequence[int], skip: bool) -> str:
    """The text before the generated part: a decoder-only model's prompt (as given), else nothing."""
    if model.encoder is not None:
        return ""
    return prompt if isinstance(prompt, str) else tokenizer.decode(ids, skip_special_tokens=skip)


def _streamer(
    model: Model, tokenizer: Tokenizer, prompt_ids: Sequence[int], head: str, skip: bool, stream: TextIO | None
) -> TextStreamer | None:
    if stream is None:
        return None
    if model.encoder is None:
        return TextStreamer(lambda ids: continuation_text(tokenizer, prompt_ids, ids, skip), stream, head)
    return TextStreamer(lambda ids: tokenizer.decode(ids, skip_special_tokens=skip), stream, head)


def _until_eos(ids: list[int], eos: set[int], *, keep: bool) -> list[int]:
    """``ids`` up to the first eos (kept with ``keep``); what follows an eos is padding."""
    for i, token in enumerate(ids):
        if token in eos:
            return ids[: i + 1] if keep else ids[:i]
    return ids


__all__ = ["Prompt", "TextStreamer", "continuation_text", "generate_text", "generate_texts"]
