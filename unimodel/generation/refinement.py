"""Iterative refinement by masking: the loop shared by mask-predict and MaskGIT-style sampling.

A parallel decoder predicts every masked position of a sequence at once. Refinement
starts from a sequence whose open positions are all masked, predicts them, then
repeatedly masks again the positions it is least sure of and predicts those:

- **mask-predict** (Ghazvininejad et al. 2019): ``linear_schedule`` (at iteration
  t of T, ``N * (T - t) / T`` of a row's N positions are masked again), argmax
  predictions scored by their log-probability, any position may be masked again,
  and the loop stops early once an iteration changes no token;
- **MaskGIT** (Chang et al. 2022): ``cosine_schedule``, sampled predictions whose
  confidence carries annealed noise (the ``predict`` callable's business: it gets
  the iteration index), and ``keep_revealed=True``: a position not masked again
  stays as it is.

:func:`refine` owns the bookkeeping (which positions to mask, writing predictions
back, early stop, history); the caller's ``predict`` owns the network. Each
iteration runs ``predict`` once. The only host synchronisation per iteration is the
early-stop test.

Shapes: N rows, L positions (the longest row), K positions predicted in an iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

#: fraction of a row's open positions masked again before iteration ``t`` (1 <= t < T) of ``T``
Schedule = Callable[[int, int], float]


def linear_schedule(t: int, iterations: int) -> float:
    """Mask-predict's ``(T - t) / T``."""
    return (iterations - t) / iterations


def cosine_schedule(t: int, iterations: int) -> float:
    """MaskGIT's ``cos(pi/2 * t / T)``: few positions are revealed early, many late."""
    return math.cos(math.pi / 2 * t / iterations)


SCHEDULES: Mapping[str, Schedule] = {"linear": linear_schedule, "cosine": cosine_schedule}


class Predict(Protocol):
    """The network side of refinement.

    Called with the current ``tokens`` (N, L), masked positions holding the mask
    id, and ``positions``: (N, K) long indices of the positions to predict, or
    ``None`` for every position (the first iteration). Returns ``(tokens, scores)``,
    each (N, K) (or (N, L) for ``None``): the prediction at each asked position and
    its confidence, higher meaning surer (mask-predict: the log-probability).
    Rows may hold fewer than K positions to predict; the extra columns are
    computed and ignored. ``step`` is the iteration index, 0 first.
    """

    def __call__(self, tokens: Tensor, positions: Tensor | None, step: int) -> tuple[Tensor, Tensor]: ...


@dataclass
class Refinement:
    """What :func:`refine` returns.

    Attributes:
        tokens: (N, L) the final tokens; positions that were not open are unchanged.
        scores: (N, L) each open position's score when it was last predicted; 0 elsewhere.
        iterations: how many times ``predict`` ran.
        history: with ``record_history``, the tokens after each iteration, (N, L) each.
        masked: with ``record_history``, the positions predicted at each iteration, (N, L) bool each.
    """

    tokens: Tensor
    scores: Tensor
    iterations: int
    history: list[Tensor] = field(default_factory=list)
    masked: list[Tensor] = field(default_factory=list)


def mask_counts(lengths: Tensor, fraction: float) -> Tensor:
    """``floor(lengths * fraction)`` per row (N,), exact for fractions such as ``(T - t) / T``."""
    # the epsilon keeps a product that is an integer from landing just below it in floating point
    return (lengths.double() * fraction + 1e-9).floor().long()


def refine(
    predict: Predict,
    tokens: Tensor,
    open_positions: Tensor,
    *,
    mask_id: int,
    iterations: int,
    schedule: Schedule = linear_schedule,
    keep_revealed: bool = False,
    early_stop: bool = True,
    record_history: bool = False,
) -> Refinement:
    """Fill the open positions of ``tokens`` (N, L) by ``iterations`` rounds of predict and re-mask.

    Args:
        predict: the network (see :class:`Predict`).
        tokens: (N, L) starting tokens; the open positions are overwritten with ``mask_id``.
            Modified in place and returned as ``Refinement.tokens``.
        open_positions: (N, L) bool, the positions to fill (a row's target, not its padding,
            nor tokens given as conditions).
        mask_id: the token an open position holds while masked.
        iterations: T >= 1; T = 1 is one parallel pass.
        schedule: fraction of each row's open positions masked again before iteration t, non-increasing
            in t; the loop ends early when it masks nothing.
        keep_revealed: a position left unmasked once is final (MaskGIT); otherwise every open
            position competes on its score at every iteration (mask-predict).
        early_stop: stop after an iteration that changed no token (mask-predict).
        record_history: keep every iteration's tokens and masked positions.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    width = tokens.shape[1]
    lengths = open_positions.sum(dim=1)  # (N,)
    # Closed positions score +inf so that they are never the least confident.
    closed = torch.where(open_positions, 0.0, math.inf)

    tokens.masked_fill_(open_positions, mask_id)
    predicted, scores = predict(tokens, None, 0)
    tokens.copy_(torch.where(open_positions, predicted, tokens))
    out = Refinement(tokens=tokens, scores=torch.where(open_positions, scores.float(), 0.0), iterations=1)
    if record_history:
        out.history.append(tokens.clone())
        out.masked.append(open_positions.clone())

    for t in range(1, iterations):
        fraction = schedule(t, iterations)
        k = min(int(width * fraction + 1e-9), width)  # the most any row masks: rows are at most `width` long
        if k == 0:
            break
        counts = mask_counts(lengths, fraction)  # (N,)
        rank = torch.arange(k, device=tokens.device)
        chosen = rank[None, :] < counts[:, None]  # (N, K): which of the K columns a row really masks
        positions = (out.scores + closed).topk(k, dim=1, largest=False).indices  # (N, K) least confident first
        previous = tokens.gather(1, positions)
        tokens.scatter_(1, positions, torch.where(chosen, mask_id, previous))

        new_tokens, new_scores = predict(tokens, positions, t)
        new_tokens = torch.where(chosen, new_tokens, previous)
        tokens.scatter_(1, positions, new_tokens)
        kept_scores = out.scores.gather(1, positions)
        out.scores.scatter_(1, positions, torch.where(chosen, new_scores.float(), kept_scores))
        out.iterations += 1
        if keep_revealed:
            # everything not masked this time is final: it can never be the least confident again
            revealed = torch.ones_like(open_positions).scatter_(1, positions, ~chosen)
            closed = closed.masked_fill(revealed, math.inf)
        if record_history:
            out.history.append(tokens.clone())
            out.masked.append(torch.zeros_like(open_positions).scatter_(1, positions, chosen))
        if early_stop and torch.equal(new_tokens, previous):
            break
    return out


__all__ = [
    "SCHEDULES",
    "Predict",
    "Refinement",
    "Schedule",
    "cosine_schedule",
    "linear_schedule",
    "mask_counts",
    "refine",
]
