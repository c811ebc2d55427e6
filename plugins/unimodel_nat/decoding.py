"""Mask-predict (Ghazvininejad et al. 2019): parallel decoding for a model with a non-causal decoder.

``model.generate(input_ids, strategy="mask_predict", iterations=10, length_beam=3)``:

1. the length head (built by ``cmlm``) proposes the ``length_beam`` most likely
   target lengths of each input (or ``length=`` forces one);
2. every candidate starts all-masked; one decoder pass predicts every position;
3. at iteration t of T the ``N * (T - t) / T`` least confident tokens of a
   candidate of length N are masked again and predicted again; decoding stops
   early once an iteration changes no token (``early_stop``);
4. each input keeps the candidate with the best mean log-probability: its
   tokens' log-probabilities plus ``length_score`` times the length head's
   log-probability of its length, over ``N ** length_penalty``
   (``length_penalty = 1`` is the mean, above 1 favours longer candidates, below
   1 shorter ones). ``length_score = 0`` scores the tokens alone, as the
   Mask-Predict paper does; the default 1 scores the candidate whole, its
   length included. A model trained with label smoothing is about equally sure
   of every token it has settled (near ``log(1 - smoothing)``) after a few
   passes, whatever the length, so the tokens alone hardly tell a candidate of
   the wrong length from the right one.

All candidates of all inputs are one batch, padded to the longest candidate;
the encoder runs once (in ``generate``). The loop itself is
:func:`unimodel.generation.refinement.refine`.

Options (``generate`` keywords): ``iterations`` (T, default 10), ``length_beam``
(default 3), ``length`` (an int, or one per input, to force the target length),
``return_history`` (return a :class:`MaskPredictOutput` with every iteration's
tokens), ``schedule`` (``"linear"``, mask-predict's, or ``"cosine"``),
``early_stop`` (default true), ``length_score`` (default 1), and the standard ``length_penalty``,
``num_return_sequences`` (at most ``length_beam``: the best candidates, best
first), ``max_new_tokens`` / ``max_length`` (cap the length, EOS included, only
when given), ``eos_token_id``, ``pad_token_id``, ``decoder_start_token_id``, and
``streamer``, which receives the result a position at a time once decoding ends
(no token is final before the last pass).

The output has ``generate``'s layout for encoder-decoders: the decoder start
token, the tokens, EOS, then padding.

Shapes: B inputs, K length candidates per input, N = B * K rows, L longest candidate, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from unimodel.capabilities import Cap
from unimodel.config import Config, param
from unimodel.errors import ConfigError, InputError
from unimodel.generation.incremental import GenerationInputs
from unimodel.generation.refinement import SCHEDULES, Refinement, refine
from unimodel.generation.settings import GenerationSettings
from unimodel.nn import MemoryCache, gather_positions
from unimodel_nat.objective import length_head_of

if TYPE_CHECKING:
    from unimodel.interfaces import Decoder
    from unimodel.model import Model

DEFAULT_ITERATIONS = 10
DEFAULT_LENGTH_BEAM = 3


@dataclass
class MaskPredictOutput:
    """``generate(..., strategy="mask_predict", return_history=True)``.

    Attributes:
        sequences: (R, W) what ``generate`` returns otherwise (R = B * num_return_sequences).
        scores: (R,) each returned candidate's score (mean log-probability with ``length_penalty = 1``).
        lengths: (R,) each returned candidate's length, framing excluded.
        iterations: decoder passes run (fewer than ``iterations`` after an early stop).
        history: the candidates after each pass, (R, W) each, laid out as ``sequences``.
        masked: the positions predicted in each pass, (R, W) bool each, aligned with ``history``.
    """

    sequences: Tensor
    scores: Tensor
    lengths: Tensor
    iterations: int
    history: list[Tensor] = field(default_factory=list)
    masked: list[Tensor] = field(default_factory=list)

    def clone(self) -> MaskPredictOutput:
        """A copy of every tensor (``generate`` hands back copies made outside inference mode)."""
        return replace(
            self,
            sequences=self.sequences.clone(),
            scores=self.scores.clone(),
            lengths=self.lengths.clone(),
            history=[h.clone() for h in self.history],
            masked=[m.clone() for m in self.masked],
        )


@dataclass(frozen=True)
class MaskPredictConfig(Config):
    """mask_predict's own ``generate`` options, checked like every config (unknown names get close matches)."""

    section = "mask_predict"

    iterations: int = param(DEFAULT_ITERATIONS, "decoder passes T; 1 is a single parallel pass")
    length_beam: int = param(DEFAULT_LENGTH_BEAM, "target lengths tried per input (the length head's most likely)")
    length: int | tuple[int, ...] | None = param(None, "force the target length: one for every input, or one each")
    return_history: bool = param(False, "return a MaskPredictOutput with every pass's tokens")
    schedule: Literal["linear", "cosine"] = param("linear", "re-masked share per pass: (T - t) / T, or cosine")
    early_stop: bool = param(True, "stop once a pass changes no token")
    length_score: float = param(
        1.0, "weight of the length head's log-probability in a candidate's score (0: its tokens alone)"
    )

    def check(self) -> None:
        for name in ("iterations", "length_beam"):
            if getattr(self, name) < 1:
                self.fail(name, f"must be an integer >= 1, got {getattr(self, name)}")
        if self.length_score < 0:  # NaN and infinity are refused with the field, before check()
            self.fail("length_score", "must be a finite number >= 0 (0 scores a candidate by its tokens alone)")
        lengths = (self.length,) if isinstance(self.length, int) else self.length or ()
        if any(n < 1 for n in lengths):
            self.fail("length", f"must be a target length >= 1 (or one per input), got {self.length!r}")


#: option names mask_predict reads beyond its config: the caps (see MASK_PREDICT_OPTIONS in the plugin)
_CAPS = ("max_new_tokens", "max_length")


@dataclass(frozen=True)
class Options:
    """The validated mask-predict options of one call."""

    iterations: int
    length_beam: int
    length: Tensor | None  # (B,) forced lengths
    return_history: bool
    schedule: str
    early_stop: bool
    length_score: float
    cap: int | None  # longest target allowed by max_new_tokens / max_length, EOS excluded


# ------------------------------------------------------------------ options
def strategy_config(extra: Mapping[str, Any]) -> MaskPredictConfig:
    """The :class:`MaskPredictConfig` of a call's strategy options (``length`` may be a tensor);
    an out-of-range or mistyped value is an InputError naming the option."""
    values = {k: v for k, v in extra.items() if k not in _CAPS}
    if isinstance(values.get("length"), Tensor):
        values["length"] = tuple(int(n) for n in values["length"].flatten().tolist())
    elif isinstance(values.get("length"), list):
        values["length"] = tuple(values["length"])
    try:
        return MaskPredictConfig.from_dict(values, section="generate: mask_predict")
    except ConfigError as exc:
        raise InputError(str(exc)) from None


def _forced_lengths(value: int | tuple[int, ...] | None, batch: int, device: torch.device) -> Tensor | None:
    """``length=``: None, an int for every input, or one int per input -> (B,) long."""
    if value is None:
        return None
    items = [value] * batch if isinstance(value, int) else list(value)
    if len(items) != batch:
        raise InputError(
            f"generate: mask_predict's length must be one target length, or a list of {batch} (one per input), "
            f"got {len(items)}"
        )
    return torch.tensor(items, dtype=torch.long, device=device)


def parse_options(settings: GenerationSettings, batch: int, device: torch.device) -> Options:
    """Check the options mask-predict reads and refuse the standard ones it cannot honour."""
    extra = dict(settings.extra)
    unsupported = {
        "do_sample": settings.do_sample,
        "num_beams > 1 (use length_beam)": settings.num_beams > 1,
        "repetition_penalty": settings.repetition_penalty != 1.0,
        "no_repeat_ngram_size": settings.no_repeat_ngram_size > 0,
        "min_new_tokens / min_length": settings.min_length > settings.prompt_length,
    }
    refused = [name for name, given in unsupported.items() if given]
    if refused:
        raise InputError(
            f"generate: mask_predict predicts every token at once and does not support {', '.join(refused)}; "
            "drop the option (length=... forces a target length)"
        )
    config = strategy_config(extra)
    length = _forced_lengths(config.length, batch, device)
    length_beam = 1 if length is not None else config.length_beam
    if settings.num_return_sequences > length_beam:
        raise InputError(
            f"generate: num_return_sequences ({settings.num_return_sequences}) cannot exceed mask_predict's "
            f"length_beam ({length_beam}{', as length= forces one length' if length is not None else ''})"
        )
    cap = None
    if any(name in extra for name in _CAPS):
        cap = settings.max_new_tokens - (1 if settings.eos_token_ids else 0)
        if cap < 1:
            raise InputError(f"generate: max_new_tokens leaves no room for a target ({settings.max_new_tokens} tokens)")
    return Options(
        iterations=config.iterations,
        length_beam=length_beam,
        length=length,
        return_history=config.return_history,
        schedule=config.schedule,
        early_stop=config.early_stop,
        length_score=float(config.length_score),
        cap=cap,
    )


# ------------------------------------------------------------------ pieces
def mask_token_id(model: Model) -> int:
    """The id decoding masks with: the objective's ``mask_token_id``, else the model tokenizer's mask role."""
    configured = getattr(model.objective.config, "mask_token_id", None)
    if configured is not None:
        return int(configured)
    tokenizer = model.tokenizer
    if tokenizer is None or not tokenizer.has_role("mask"):
        raise InputError(
            f"mask_predict needs the mask token's id, but model {model.name!r} has no tokenizer with a 'mask' role; "
            "build or load the model with its tokenizer (um.build_model(..., tokenizer=tok)), or set the "
            "objective's mask_token_id"
        )
    return int(tokenizer.special_id("mask"))


def _length_limit(model: Model, options: Options) -> int | None:
    """The longest target the decoder and the caller allow (``None``: no limit)."""
    assert model.decoder is not None  # mask_predict requires an encoder-decoder
    limits = [x for x in (model.decoder.max_positions, options.cap) if x is not None]
    return min(limits) if limits else None


def candidate_lengths(model: Model, inputs: GenerationInputs, options: Options) -> tuple[Tensor, Tensor]:
    """(B, K) target lengths to decode, the forced ones or the length head's K most likely, and (B, K) the
    head's log-probability of each (0 for forced lengths)."""
    limit = _length_limit(model, options)
    if options.length is not None:
        longest = int(options.length.max())
        if limit is not None and longest > limit:
            raise InputError(
                f"generate: length {longest} exceeds what model {model.name!r} and max_new_tokens allow ({limit})"
            )
        forced = options.length[:, None]
        return forced, torch.zeros(forced.shape, device=forced.device)
    head = length_head_of(model)
    if head is None:
        raise InputError(
            f"model {model.name!r} (objective {model.objective_name!r}) has no length head to predict target "
            "lengths; pass length=... to mask_predict, or train the model with objective 'cmlm'"
        )
    encoded = inputs.encoder_output
    assert encoded is not None
    mask = inputs.attention_mask
    hidden = encoded.last_hidden_state
    source_lengths = mask.sum(dim=1) if mask is not None else hidden.new_full((hidden.shape[0],), hidden.shape[1])
    logits = head(hidden, mask).float()  # (B, C)
    classes = torch.arange(head.n_classes, device=logits.device).expand_as(logits)
    lengths = head.lengths(classes, source_lengths.long())  # (B, C)
    valid = lengths >= 1
    if limit is not None:
        valid &= lengths <= limit
    best = logits.masked_fill(~valid, -torch.inf).topk(min(options.length_beam, head.n_classes), dim=1).indices
    # a row with fewer valid lengths than K repeats in-range ones: a duplicate candidate is wasted work, not wrong
    return lengths.gather(1, best).clamp(1, limit), logits.log_softmax(dim=-1).gather(1, best)


def banned_logits(model: Model, settings: GenerationSettings, mask_id: int, vocab: int, device: torch.device) -> Tensor:
    """(V,) 0, or -inf at the ids no target position may hold (mask, pad, eos, the decoder start, bos)."""
    bias = torch.zeros(vocab, device=device)
    ids = {mask_id, settings.pad_token_id, *settings.eos_token_ids}
    for extra in (settings.decoder_start_token_id, model.special_tokens.get("bos")):
        if extra is not None:
            ids.add(extra)
    bias[[i for i in ids if 0 <= i < vocab]] = -torch.inf
    return bias


def check_passes_memory(
    model: Model, inputs: GenerationInputs, batch: int, k: int, width: int, options: Options
) -> None:
    """Refuse, before the first pass, a call whose passes need more memory than is available: N = B * K rows
    of ``width`` positions, each with fp32 logits over the vocabulary (the banned ids added, then the
    log-softmax), the decoder's activations, the repeated encoder memory with its cross-attention keys and
    values, and with ``return_history`` every pass's tokens."""
    from unimodel.bounds import check_memory

    decoder = model.decoder
    assert decoder is not None and inputs.encoder_output is not None  # mask_predict requires an encoder-decoder
    memory = inputs.encoder_output.last_hidden_state  # (B, S, D_mem)
    rows, item = batch * k, memory.element_size()
    d_ff = int(getattr(decoder.config, "d_ff", None) or 4 * decoder.d_model)
    per_position = decoder.vocab_size * 4 * 3 + (6 * decoder.d_model + 2 * d_ff) * item + 8 * 3
    layers = len(getattr(decoder, "blocks", ())) or 1
    nbytes = rows * width * per_position
    nbytes += rows * memory.shape[1] * (memory.shape[2] + 2 * layers * decoder.d_model) * item
    if options.return_history:
        nbytes += options.iterations * rows * width * (8 + 1)
    check_memory(
        nbytes,
        f"generate: mask_predict (batch {batch} x {k} length{'s' if k > 1 else ''}, {width} positions)",
        device=memory.device,
        fix="Lower length_beam or the batch size, or cap the target length with max_new_tokens.",
    )


class _Predictor:
    """The decoder and LM head as refinement's ``predict``: argmax tokens and their log-probabilities.

    ``memory`` (N, S, D) and ``memory_mask`` (N, S) are the encoder's output per row, ``target_mask``
    (N, L) the rows' real positions (``None``: all), ``banned`` (V,) added to the logits. A decoder that
    provides ``memory_cache`` projects the memory into its cross-attention keys/values once, at the first
    pass, and reuses them in every later one; one that provides ``output_positions`` runs its last layer,
    after the first pass, only at the positions being predicted.
    """

    def __init__(
        self, model: Model, memory: Tensor, memory_mask: Tensor | None, target_mask: Tensor | None, banned: Tensor
    ) -> None:
        assert model.decoder is not None  # mask_predict requires an encoder-decoder
        self.decoder: Decoder = model.decoder
        self.head = model.heads["lm"]
        self.memory, self.memory_mask, self.target_mask, self.banned = memory, memory_mask, target_mask, banned
        provides = getattr(self.decoder, "provides", ())
        self.cache = MemoryCache(device=memory.device) if Cap.MEMORY_CACHE in provides else None
        self.pick_inside = Cap.OUTPUT_POSITIONS in provides

    def __call__(self, tokens: Tensor, positions: Tensor | None, step: int) -> tuple[Tensor, Tensor]:
        kw: dict[str, Any] = {} if self.cache is None else {"cache": self.cache}
        if positions is not None and self.pick_inside:  # the last layer runs at the predicted positions alone
            kw["output_positions"] = positions
        hidden = self.decoder(
            tokens, attention_mask=self.target_mask, memory=self.memory, memory_mask=self.memory_mask, **kw
        ).last_hidden_state  # (N, L, D), or (N, K, D) at the positions asked for
        if positions is not None and not self.pick_inside:  # the head runs only where tokens are predicted
            hidden = gather_positions(hidden, positions)  # (N, K, D)
        # one log-softmax, then its max: the argmax and its log-probability (twice as fast as max plus logsumexp)
        best, predicted = (self.head(hidden).float() + self.banned).log_softmax(dim=-1).max(dim=-1)  # (N, K)
        return predicted, best


def _layout(prefix: Tensor, tokens: Tensor, lengths: Tensor, width: int, *, eos: int | None, pad: int) -> Tensor:
    """(R, P + width + [1]): the decoder prefix, the tokens (already padded), EOS after each row's length."""
    rows, p = prefix.shape[0], prefix.shape[1]
    out = tokens.new_full((rows, p + width + (eos is not None)), pad)
    out[:, :p] = prefix
    out[:, p : p + width] = tokens[:, :width]
    if eos is not None:
        out.scatter_(1, (lengths + p)[:, None], eos)
    return out


# ------------------------------------------------------------------ the strategy
def mask_predict(model: Model, inputs: GenerationInputs, settings: GenerationSettings) -> Tensor | MaskPredictOutput:
    """The ``mask_predict`` decoding component; see the module docstring. Returns (R, W), or a
    :class:`MaskPredictOutput` with ``return_history=True``."""
    encoded = inputs.encoder_output
    if encoded is None:
        raise InputError(f"mask_predict decodes encoder-decoder models; model {model.name!r} has no encoder")
    batch = inputs.batch_size
    device = inputs.input_ids.device
    options = parse_options(settings, batch, device)
    mask_id = mask_token_id(model)

    lengths, length_logp = candidate_lengths(model, inputs, options)  # (B, K) each
    k = lengths.shape[1]
    flat = lengths.reshape(-1)  # (N,)
    width = int(flat.max())  # the one host read before the loop: every candidate's row width
    check_passes_memory(model, inputs, batch, k, width, options)
    open_positions = torch.arange(width, device=device)[None, :] < flat[:, None]  # (N, L)
    memory, memory_mask = encoded.last_hidden_state, inputs.attention_mask
    if k > 1:
        memory = memory.repeat_interleave(k, dim=0)
        memory_mask = None if memory_mask is None else memory_mask.repeat_interleave(k, dim=0)
    target_mask = None if bool(open_positions.all()) else open_positions.long()
    assert model.decoder is not None  # mask_predict requires an encoder-decoder
    banned = banned_logits(model, settings, mask_id, model.decoder.vocab_size, device)
    predict = _Predictor(model, memory, memory_mask, target_mask, banned)

    tokens = torch.full((flat.shape[0], width), settings.pad_token_id, dtype=torch.long, device=device)
    result = refine(
        predict,
        tokens,
        open_positions,
        mask_id=mask_id,
        iterations=options.iterations,
        schedule=SCHEDULES[options.schedule],
        early_stop=options.early_stop,
        record_history=options.return_history,
    )
    return _select(result, flat, length_logp.reshape(-1), inputs, settings, options, k)


# Every pass multiplies N * L rows by each weight: the one-row weight copies generate makes would go unused.
mask_predict.uses_decoding_layout = False  # type: ignore[attr-defined]
# its rows are B x length_beam candidates of the predicted width, known after the encoder: it checks its memory there
mask_predict.checks_memory = True  # type: ignore[attr-defined]
# the strategy's own options, for front ends that check them before a model loads (unimodel generate --option)
mask_predict.config_class = MaskPredictConfig  # type: ignore[attr-defined]


def _select(
    result: Refinement,
    lengths: Tensor,
    length_logp: Tensor,
    inputs: GenerationInputs,
    settings: GenerationSettings,
    options: Options,
    k: int,
) -> Tensor | MaskPredictOutput:
    """Each input's best ``num_return_sequences`` candidates, in ``generate``'s layout."""
    batch = inputs.batch_size
    total = result.scores.sum(dim=1) + options.length_score * length_logp  # (N,)
    scores = total / lengths.double().pow(settings.length_penalty).float()
    n_return = settings.num_return_sequences
    best = scores.view(batch, k).topk(n_return, dim=1).indices  # (B, R/B), best first
    rows = (torch.arange(batch, device=best.device)[:, None] * k + best).reshape(-1)  # (R,)
    chosen_lengths = lengths[rows]
    width = int(chosen_lengths.max())
    prefix = inputs.decoder_input_ids.repeat_interleave(n_return, dim=0)
    eos = settings.eos_token_ids[0] if settings.eos_token_ids else None
    pad = settings.pad_token_id
    sequences = _layout(prefix, result.tokens[rows], chosen_lengths, width, eos=eos, pad=pad)
    if settings.streamer is not None:  # nothing is final before the last pass: the result, a position at a time
        for column in sequences[:, prefix.shape[1] :].unbind(dim=1):
            settings.streamer(column)
    if not options.return_history:
        return sequences
    p = prefix.shape[1]
    masked = []
    for m in result.masked:
        aligned = torch.zeros_like(sequences, dtype=torch.bool)
        aligned[:, p : p + width] = m[rows, :width]
        masked.append(aligned)
    return MaskPredictOutput(
        sequences=sequences,
        scores=scores[rows],
        lengths=chosen_lengths,
        iterations=result.iterations,
        history=[_layout(prefix, h[rows], chosen_lengths, width, eos=eos, pad=pad) for h in result.history],
        masked=masked,
    )


__all__ = [
    "MaskPredictConfig",
    "MaskPredictOutput",
    "candidate_lengths",
    "mask_predict",
    "mask_token_id",
    "parse_options",
    "strategy_config",
]
