"""The built-in decoding strategies: greedy, sampling and beam search.

Each is a ``decoding`` component (registered in :mod:`unimodel.builtin`) with
the signature ``strategy(model, inputs, settings) -> LongTensor`` described in
:mod:`unimodel.generation`. They follow Hugging Face ``generate`` (5.x) token
for token: the same processors in the same order, finished rows filled with
the pad id, and HF's vectorised beam search with its length penalty and
early-stopping rules.

Shapes: B input rows, N decoding rows (B x samples or B x beams), P decoder
prompt length, L max_length, V vocabulary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unimodel.errors import InputError
from unimodel.generation.incremental import GenerationInputs, IncrementalDecoder
from unimodel.generation.processors import ScoreProcessors, warp
from unimodel.generation.settings import GenerationSettings

if TYPE_CHECKING:
    from unimodel.model import Model

# Hugging Face's stand-in for minus infinity in beam scores; kept so ties and
# exclusions resolve exactly as there.
_NEG = -1.0e9


def greedy(model: Model, inputs: GenerationInputs, settings: GenerationSettings) -> Tensor:
    """Argmax of the processed logits at every step. Returns (B, P + steps)."""
    return _left_to_right(model, inputs, settings, sample=False)


def sample(model: Model, inputs: GenerationInputs, settings: GenerationSettings) -> Tensor:
    """Multinomial sampling after temperature, top-k and top-p.

    Returns (B * num_return_sequences, P + steps); an input's samples are consecutive rows.
    """
    return _left_to_right(model, inputs, settings, sample=True)


def _left_to_right(model: Model, inputs: GenerationInputs, settings: GenerationSettings, *, sample: bool) -> Tensor:
    expand = settings.num_return_sequences if sample else 1
    run = IncrementalDecoder(model, inputs, capacity=settings.max_length, expand=expand)
    prompt = run.prompt  # (N, P)
    n, p = prompt.shape
    max_length = settings.max_length
    out = prompt.new_full((n, max_length), settings.pad_token_id)
    out[:, :p] = prompt
    processors = ScoreProcessors(settings, prompt, run.prompt_mask, run.decoder.vocab_size)
    process = processors.active
    warped = sample and settings.uses_warpers
    generator, streamer = settings.generator, settings.streamer
    eos = settings.eos_token_ids
    eos_ids = torch.tensor(eos, device=prompt.device) if len(eos) > 1 else None
    pad = settings.pad_token_id
    unfinished = torch.ones(n, dtype=torch.bool, device=prompt.device) if eos else None
    # While EOS is suppressed (min_length) no row can end, so EOS bookkeeping starts after.
    track_from = max(p, settings.min_length)

    logits = run.prefill()  # (N, V)
    length = p
    while True:
        scores = processors(logits, out, length) if process else logits
        if sample:
            if warped:
                scores = warp(scores, settings)
            tokens = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)
        else:
            tokens = scores.argmax(dim=-1)
        # the rows still running, once EOS can occur (the same tensor as unfinished, updated in place)
        tracking = unfinished if unfinished is not None and length >= track_from else None
        if tracking is not None:
            tokens = tokens.masked_fill(~tracking, pad)
        out[:, length] = tokens
        length += 1
        if streamer is not None:
            streamer(tokens)
        if tracking is not None:
            ended = torch.isin(tokens, eos_ids) if eos_ids is not None else tokens == eos[0]
            tracking &= ~ended
            if not bool(tracking.any()):
                break
        if length >= max_length:
            break
        if process:
            processors.observe(tokens)
        logits = run.step(tokens)
    return out[:, :length]


def beam_search(model: Model, inputs: GenerationInputs, settings: GenerationSettings) -> Tensor:
    """Beam search (beam sampling with ``do_sample``), Hugging Face's algorithm.

    Every step keeps the ``max(2, 1 + n_eos) * num_beams`` best continuations
    of all beams, continues the best ``num_beams`` that did not end, and offers
    the top-``num_beams`` that ended to the finished set, scored
    ``sum_logprobs / generated_length ** length_penalty``. ``early_stopping``
    decides when the finished set can no longer improve (True: once it holds
    ``num_beams`` hypotheses; False: when the best running beam at its current
    length cannot beat the worst finished; "never": the same bound at
    ``max_length`` when the length penalty is positive).

    Returns (B * num_return_sequences, P + longest returned generation), best first per input.
    """
    if settings.streamer is not None:
        raise InputError(
            "generate: a streamer cannot be used with beam search, whose earlier tokens change as beams are "
            "re-ranked; use greedy or sampling (num_beams=1) to stream"
        )
    nb = settings.num_beams
    run = IncrementalDecoder(model, inputs, capacity=settings.max_length, expand=nb)
    prompt = inputs.decoder_input_ids  # (B, P)
    batch, p = prompt.shape
    max_length = settings.max_length
    vocab = run.decoder.vocab_size
    device = prompt.device
    eos = settings.eos_token_ids
    eos_ids = torch.tensor(eos, device=device) if eos else None
    keep = max(2, 1 + len(eos)) * nb  # candidates per input: enough to continue nb beams if nb of them end
    candidate_is_top = torch.arange(keep, device=device) < nb  # only the nb best candidates may finish
    lp, early_stopping = settings.length_penalty, settings.early_stopping

    running = prompt.new_full((batch, nb, max_length), _beam_fill(settings))
    running[:, :, :p] = prompt[:, None, :]
    # Only beam 0 is live at first, so the first step does not pick nb copies of one token.
    running_scores = torch.zeros(batch, nb, device=device)
    running_scores[:, 1:] = _NEG
    done = running.clone()  # finished hypotheses, best first
    done_scores = torch.full((batch, nb), _NEG, device=device)
    done_flag = torch.zeros(batch, nb, dtype=torch.bool, device=device)
    done_len = torch.zeros(batch, nb, dtype=torch.long, device=device)  # generated tokens, EOS included
    can_improve = torch.ones(batch, 1, dtype=torch.bool, device=device)
    batch_offset = torch.arange(batch, device=device)[:, None] * nb

    processors = ScoreProcessors(settings, run.prompt, run.prompt_mask, vocab)
    flat_running = running.view(batch * nb, max_length)

    logits = run.prefill()  # (B * nb, V)
    length = p
    while True:
        logprobs = torch.log_softmax(logits, dim=-1)
        if processors.active:
            logprobs = processors(logprobs, flat_running, length)
        if settings.do_sample and settings.uses_warpers:
            logprobs = warp(logprobs, settings, min_keep=len(eos) + 1 if eos else 2)
        totals = (logprobs.view(batch, nb, vocab) + running_scores[:, :, None]).view(batch, nb * vocab)

        # a. the best `keep` continuations over all beams
        if settings.do_sample:
            picked = torch.multinomial(totals.softmax(dim=-1), keep, generator=settings.generator)
            # best first, as after topk: which candidates count among the nb best (step c) depends on it
            cand_scores, order = totals.gather(1, picked).sort(dim=1, descending=True)
            picked = picked.gather(1, order)
        else:
            cand_scores, picked = totals.topk(keep, dim=1)
        cand_beam = picked // vocab  # (B, keep) source beam
        cand_tokens = picked % vocab
        cand = running.gather(1, cand_beam[:, :, None].expand(-1, -1, max_length))  # a copy
        cand[:, :, length] = cand_tokens
        if length + 1 >= max_length:
            ended = torch.ones_like(cand_tokens, dtype=torch.bool)
        elif eos_ids is not None:
            ended = torch.isin(cand_tokens, eos_ids)
        else:
            ended = torch.zeros_like(cand_tokens, dtype=torch.bool)

        # b. the nb best candidates that go on
        live_scores = cand_scores + ended.float() * _NEG
        chosen = live_scores.topk(nb, dim=1).indices  # (B, nb)
        running = cand.gather(1, chosen[:, :, None].expand(-1, -1, max_length))
        running_scores = live_scores.gather(1, chosen)
        running_source = cand_beam.gather(1, chosen)

        # c. offer the candidates that just ended to the finished set
        just_ended = ended & candidate_is_top[None, :]
        offered = cand_scores / ((length + 1 - p) ** lp)
        if early_stopping is True:
            offered += done_flag.all(dim=1, keepdim=True).float() * _NEG
        offered += (~can_improve).float() * _NEG
        offered += (~just_ended).float() * _NEG
        pool_scores = torch.cat((done_scores, offered), dim=1)
        best = pool_scores.topk(nb, dim=1).indices
        done = torch.cat((done, cand), dim=1).gather(1, best[:, :, None].expand(-1, -1, max_length))
        done_scores = pool_scores.gather(1, best)
        done_flag = torch.cat((done_flag, just_ended), dim=1).gather(1, best)
        new_len = torch.full_like(cand_tokens, length + 1 - p)
        done_len = torch.cat((done_len, new_len), dim=1).gather(1, best)

        # d. can anything still change?
        length += 1
        can_improve = _can_improve(
            can_improve,
            running_scores,
            done_scores,
            done_flag,
            generated=length - p,
            max_new=max_length - p,
            length_penalty=lp,
            early_stopping=early_stopping,
        )
        if not bool(can_improve.any()):
            break
        if early_stopping is True and bool(done_flag.all()):
            break
        if bool(ended.all()):
            break

        # e. move the cache and processor state to the surviving beams, feed their new tokens
        flat_source = (running_source + batch_offset).view(-1)
        run.reorder(flat_source)
        flat_running = running.view(batch * nb, max_length)
        new_tokens = flat_running[:, length - 1]
        if processors.active:
            processors.reorder(flat_source)
            processors.observe(new_tokens)
        logits = run.step(new_tokens)

    nr = settings.num_return_sequences
    sequences = done[:, :nr].reshape(batch * nr, max_length)
    return sequences[:, : p + int(done_len[:, :nr].max())]


def _beam_fill(settings: GenerationSettings) -> int:
    """The id after the end of a finished hypothesis: the pad id, or the first EOS id when the pad id is 0.

    Hugging Face's beam search computes its fill as ``pad_token_id or eos_token_id[0]``, so a pad id of 0
    (T5's) gives way to EOS there; matching it keeps T5 outputs identical.
    """
    pad, eos = settings.pad_token_id, settings.eos_token_ids
    return eos[0] if pad == 0 and eos else pad


def _can_improve(
    still: Tensor,
    running_scores: Tensor,
    done_scores: Tensor,
    done_flag: Tensor,
    *,
    generated: int,
    max_new: int,
    length_penalty: float,
    early_stopping: bool | str,
) -> Tensor:
    """(B, 1): whether the best running beam could still beat the worst finished hypothesis.

    Once false for an input it stays false. An input whose finished set is not
    full can always improve.
    """
    hypothetical = max_new if early_stopping == "never" and length_penalty > 0.0 else generated
    best_possible = running_scores[:, :1] / (hypothetical**length_penalty)
    worst_done = torch.where(done_flag, done_scores.min(dim=1, keepdim=True).values, _NEG)
    return still & (best_possible > worst_done).any(dim=1, keepdim=True)
