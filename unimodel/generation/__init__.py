"""Text generation: :func:`generate` and the decoding-strategy contract.

``generate(model, input_ids, **options)`` takes Hugging Face's option names and
semantics and returns what HF returns: for a decoder-only model the prompt
followed by the new tokens, for an encoder-decoder model the decoder sequence
starting with the decoder start token. Rows that end early are filled with the
pad id; the output is as long as the longest row.

Decoding strategies are components
----------------------------------
A strategy is a ``decoding`` component, looked up in the registry by name
(``greedy``, ``sample`` and ``beam`` are built in), so a plugin adds one the way
it adds a model::

    Component(kind="decoding", name="mask_predict", target="my_plugin.decoding:mask_predict",
              requires=("encoder_decoder", "noncausal_decoder", "lm_head"),
              options=("iterations",))

``generate`` runs the component named by ``strategy=`` (else ``beam`` when
``num_beams > 1``, else the model's own strategy when its family declares one
(``Backbone.decoding``), else ``sample`` when ``do_sample``, else the model's
objective's ``default_strategy``, normally ``greedy``) after checking that the
model provides every capability in the component's ``requires``.
The options are a :class:`GenerationConfig` (the model's stored defaults,
``model.generation_config``, with the call's overrides), validated when made.
Option names a strategy lists in its ``options`` are accepted by
``generate`` and reach it in ``settings.extra``. The strategy is called as::

    strategy(model, inputs, settings) -> torch.LongTensor   # (B * num_return_sequences, L)

- ``model``: the :class:`~unimodel.model.Model`, in eval mode, under
  ``torch.inference_mode``.
- ``inputs``: :class:`GenerationInputs`: ``input_ids`` (B, S) as given,
  ``attention_mask`` (B, S) or ``None`` when nothing is padded,
  ``decoder_input_ids`` (B, P) where the decoder starts (the prompt, or a column
  of decoder start tokens; (B, 0) for a model without a start token), and ``encoder_output`` (already computed once for
  an encoder-decoder model). Autoregressive strategies drive the decoder with
  :class:`IncrementalDecoder` (KV cache, prefill then one token per step).
- ``settings``: :class:`GenerationSettings`, the resolved options: decoder
  lengths, special ids, the RNG for sampling, the streamer, the strategy's own
  options in ``settings.extra`` and the whole :class:`GenerationConfig` in
  ``settings.config``.

:func:`generate_text` generates text from a text prompt (encoding, framing
and decoding with the model's tokenizer); the CLI and the trainer use it.

The strategy returns the full decoder sequences, prompt included, an input's
returned sequences on consecutive rows; or, when an option asks for more (an
iteration history, say), an object holding them that copies itself with
``clone()``, which ``generate`` returns. A strategy that never multiplies a
single row by the weights (parallel decoding) sets the attribute
``uses_decoding_layout = False`` on itself, so ``generate`` skips making the
one-row weight copies of :func:`~unimodel.nn.linear.decoding_layout`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unimodel.errors import InputError
from unimodel.generation.config import GenerationConfig, GenerationOptionError
from unimodel.generation.incremental import GenerationInputs, IncrementalDecoder, recompute_prefix
from unimodel.generation.processors import ScoreProcessors, banned_ngram_tokens, warp
from unimodel.generation.settings import (
    OPTIONS,
    GenerationSettings,
    call_config,
    check_option_names,
    chosen_strategy,
    default_config,
    resolve_settings,
)
from unimodel.generation.text import TextStreamer, generate_text, generate_texts
from unimodel.inputs import inputs_checked
from unimodel.nn.linear import decoding_layout
from unimodel.registry import Component, Registry, get_registry

if TYPE_CHECKING:
    from unimodel.model import Model

__all__ = [
    "OPTIONS",
    "GenerationConfig",
    "GenerationInputs",
    "GenerationOptionError",
    "GenerationSettings",
    "IncrementalDecoder",
    "ScoreProcessors",
    "TextStreamer",
    "banned_ngram_tokens",
    "declared_options",
    "generate",
    "generate_text",
    "generate_texts",
    "recompute_prefix",
    "warp",
]


def declared_options(component: Component) -> tuple[str, ...]:
    """The extra ``generate`` options a ``decoding`` component declares (reaching it in ``settings.extra``)."""
    return tuple(component.options)


def generate(model: Model, input_ids: Tensor, *, registry: Registry | None = None, **options: Any) -> Any:
    """Generate continuations of ``input_ids`` (B, S); returns a LongTensor (B * num_return_sequences, L)
    (or a strategy's richer result, when one of its options asks for it).

    Options (Hugging Face names and meanings). Every :class:`GenerationConfig`
    field overrides the model's default (``model.generation_config``) for this
    call; ``None`` keeps the default:
        max_new_tokens / max_length: how far to generate (``max_new_tokens`` wins;
            ``max_length`` counts the prompt, or the decoder sequence for an
            encoder-decoder model). Default: 20 new tokens, capped at the
            position table.
        min_new_tokens / min_length: EOS is suppressed until reached.
        do_sample, temperature, top_k, top_p: sampling; ``top_k``/``top_p``
            ``None`` keep every token (HF's default top_k is 50: pass it to match;
            a model imported from a Hugging Face folder stores it).
        num_beams, length_penalty, early_stopping (True, False or "never"): beam search.
        num_return_sequences: outputs per input (sampling, or <= num_beams).
        repetition_penalty, no_repeat_ngram_size, forced_bos_token_id,
            forced_eos_token_id: HF's processors.
        eos_token_id (int or list), pad_token_id, bos_token_id, decoder_start_token_id:
            the model's special tokens by default; pad falls back to eos.
        strategy: name of a ``decoding`` component to run instead of the default.
    and for the call alone:
        attention_mask: (B, S) 1 for real tokens, 0 for padding. A decoder-only
            batch must be left-padded; each row then generates exactly what it
            would alone.
        seed or generator: makes sampling reproducible.
        streamer: callable receiving each step's new tokens, a LongTensor (B,).

    The model is put in eval mode for the call (and restored after).

    Where this differs from Hugging Face, on purpose: ``top_k=None`` means no
    top-k filter (HF defaults to 50); no attention mask is guessed from pad ids
    in ``input_ids`` (pass ``attention_mask``); a right-padded decoder-only
    batch is refused rather than decoded wrongly; ``max_new_tokens=0`` returns
    the decoder prompt (HF raises). As in HF, beam search fills ended hypotheses
    with the pad id, or with the first EOS id when the pad id is 0.

    Raises:
        InputError, ConfigError: invalid inputs or options, or a model that cannot generate.
        ComponentNotFoundError: an unknown strategy name.
    """
    reg = registry or get_registry()
    config = call_config(default_config(model), options)
    if config.strategy is None and config.num_beams == 1 and model.decoding is not None:
        config = config.replace(strategy=model.decoding)  # the family's own way to generate (it reads do_sample)
    strategy_name = chosen_strategy(model, config)
    # a strategy chosen from num_beams/do_sample is the core's, the family's default its plugin's,
    # whatever other plugins call theirs
    if options.get("strategy"):
        prefer = None
    elif config.strategy is not None and config.strategy == model.decoding:
        prefer = (model.provenance.get("model", {}).get("component") or "").partition(":")[0] or None
    else:
        prefer = "core"
    component = reg.get("decoding", strategy_name, prefer=prefer)
    declared = declared_options(component)
    check_option_names(options, tuple(dict.fromkeys(OPTIONS + declared)))
    _check_can_generate(model, strategy_name, component.requires, reg)

    ids, mask = _check_inputs(model, input_ids, options.get("attention_mask"))
    # The decoder prompt is the prompt itself, or the decoder start token of an encoder-decoder model.
    if model.is_encoder_decoder:
        has_start = config.decoder_start_token_id is not None or config.bos_token_id is not None
        prompt_length = 1 if has_start else 0
    else:
        prompt_length = ids.shape[1]
    settings = resolve_settings(
        model,
        config,
        prompt_length=prompt_length,
        seed=options.get("seed"),
        generator=options.get("generator"),
        streamer=options.get("streamer"),
        extra={name: options[name] for name in declared if name in options},
    )
    from unimodel.bounds import check_generation_memory

    strategy = component.load()
    if not getattr(strategy, "checks_memory", False):  # a strategy may estimate its own buffers instead
        check_generation_memory(model, ids, settings)  # before any cache or beam buffer is allocated
    if not model.is_encoder_decoder:
        inputs = GenerationInputs(ids, mask, ids)
    else:
        start = settings.decoder_start_token_id
        decoder_ids = ids.new_full((ids.shape[0], 1), start) if start is not None else ids[:, :0]
        inputs = GenerationInputs(ids, mask, decoder_ids)

    was_training = model.training
    switch = any(m.training for m in model.modules())  # eval() on a model already in eval mode costs ms
    if switch:
        model.eval()
    try:
        lm_head = model.heads["lm"] if "lm" in model.heads else None  # noqa: SIM401 - nn.ModuleDict has no get()
        main = model.decoder if model.decoder is not None else model.encoder
        layout = decoding_layout(main, lm_head) if getattr(strategy, "uses_decoding_layout", True) else None
        # the prompt was checked above and every later token comes from the model: no device read per step
        with torch.inference_mode(), layout or contextlib.nullcontext(), inputs_checked():
            if inputs.encoder_output is None and model.is_encoder_decoder:
                inputs.encoder_output = model.encode(inputs.input_ids, attention_mask=inputs.attention_mask)
            if settings.max_new_tokens == 0:
                out = inputs.decoder_input_ids.repeat_interleave(settings.num_return_sequences, dim=0)
            else:
                out = strategy(model, inputs, settings)
    finally:
        if switch:
            model.train(was_training)
    # A copy made outside inference mode is an ordinary tensor, so the ids can be fed
    # back into a forward pass that autograd records (inference tensors cannot).
    return out.clone()


def _check_can_generate(model: Model, strategy: str, requires: Collection[str], registry: Registry) -> None:
    missing = [cap for cap in requires if cap not in model.provides]
    if missing:
        fits = [c.name for c in registry.components("decoding") if set(c.requires) <= set(model.provides)]
        if model.decoder is None and not fits:
            raise InputError(
                f"model {model.name!r} has no decoder (it is an encoder only) and no decoding strategy fits it, "
                "so it cannot generate; use a decoder-only or encoder-decoder model"
            )
        raise InputError(
            f"decoding strategy {strategy!r} needs capabilit{'y' if len(missing) == 1 else 'ies'} "
            f"{', '.join(repr(m) for m in missing)}, which model {model.name!r} does not provide "
            f"(it provides {', '.join(sorted(model.provides))}). Strategies this model supports: "
            f"{', '.join(fits) or '(none)'}; choose one with strategy=..."
        )


def _check_inputs(model: Model, input_ids: Any, attention_mask: Any) -> tuple[Tensor, Tensor | None]:
    """Check ids (B, S) and mask, move them to the model's device; the mask is ``None`` when nothing is padded."""
    part = model.encoder if model.encoder is not None else model.decoder
    assert part is not None
    model.check_ids(input_ids, "input_ids", part)  # integer dtype, (B, S), ids inside the vocabulary
    device = model.device
    ids = input_ids.to(device=device, dtype=torch.long)
    if attention_mask is None:
        return ids, None
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != ids.shape:
        got = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
        raise InputError(f"attention_mask must be a tensor shaped like input_ids {tuple(ids.shape)}, got {got}")
    mask = attention_mask.to(device=device, dtype=torch.long)
    if bool(((mask != 0) & (mask != 1)).any()):
        raise InputError("attention_mask must hold 1 for real tokens and 0 for padding")
    if not bool(mask.any(dim=1).all()):
        raise InputError("attention_mask has a row with no real token; every row needs at least one")
    if bool(mask.all()):
        return ids, None  # nothing padded: the decoder's unmasked fast path applies
    if not model.is_encoder_decoder and bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise InputError(
            "attention_mask has padding after real tokens; decoder-only generation continues from the end "
            "of each row, so pad on the left (tokenizer padding_side='left')"
        )
    return ids, mask
