"""Score processing between the LM head and token choice, with Hugging Face semantics.

Two groups, applied in this order:

1. :class:`ScoreProcessors` (every strategy): repetition penalty, no-repeat
   n-grams, minimum length, forced first and last tokens. Greedy and sampling apply them to raw logits,
   beam search to log-probabilities, as Hugging Face does.
2. :func:`warp` (sampling only): temperature, then top-k, then top-p.

Only the processors a call switched on are built, so a plain greedy run does
no per-step work here at all. Shapes: N rows (batch, or batch x beams), V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unimodel.generation.settings import GenerationSettings


class ScoreProcessors:
    """The per-step processors a generation call switched on.

    Args:
        settings: resolved options.
        prompt: (N, P) the decoder prompt of every row.
        prompt_mask: (N, P) 1 for real tokens, or ``None`` when nothing is padded;
            left-padding is not penalised by the repetition penalty.
        vocab_size: V.
    """

    def __init__(
        self, settings: GenerationSettings, prompt: Tensor, prompt_mask: Tensor | None, vocab_size: int
    ) -> None:
        self.penalty = settings.repetition_penalty
        self.ngram = settings.no_repeat_ngram_size
        self.min_length = settings.min_length if settings.eos_token_ids else 0
        self.eos = torch.tensor(settings.eos_token_ids, dtype=torch.long, device=prompt.device)
        self.vocab_size = vocab_size
        self.forced_bos = settings.forced_bos_token_id
        self.forced_eos = settings.forced_eos_token_id
        self.max_length = settings.max_length
        self.seen: Tensor | None = None  # (N, V) bool: tokens present in each row, for the penalty
        if self.penalty != 1.0:
            ids = prompt
            if prompt_mask is not None:
                # Positions before the first real token are left-padding; send them to a spare column.
                first_real = (prompt_mask != 0).int().argmax(dim=1, keepdim=True)
                before = torch.arange(prompt.shape[1], device=prompt.device)[None, :] < first_real
                ids = prompt.masked_fill(before, vocab_size)
            seen = torch.zeros(prompt.shape[0], vocab_size + 1, dtype=torch.bool, device=prompt.device)
            self.seen = seen.scatter_(1, ids, True)[:, :vocab_size]

    @property
    def active(self) -> bool:
        forced = self.forced_bos is not None or self.forced_eos is not None
        return self.seen is not None or self.ngram > 0 or self.min_length > 0 or forced

    def __call__(self, scores: Tensor, sequences: Tensor, length: int) -> Tensor:
        """Return processed scores (N, V).

        ``sequences[:, :length]`` (N, length) holds each row's decoder tokens so far.
        """
        if self.seen is not None:
            p = self.penalty
            penalised = torch.where(scores < 0, scores * p, scores / p)
            scores = torch.where(self.seen, penalised, scores)
        if self.ngram > 0 and length >= self.ngram:
            banned = banned_ngram_tokens(sequences[:, :length], self.ngram, self.vocab_size)
            scores = scores.masked_fill(banned, -float("inf"))
        if length < self.min_length:
            scores = scores.index_fill(1, self.eos, -float("inf"))
        if self.forced_bos is not None and length == 1:
            scores = _force(scores, self.forced_bos)
        if self.forced_eos is not None and length == self.max_length - 1:
            scores = _force(scores, self.forced_eos)
        return scores

    def observe(self, tokens: Tensor) -> None:
        """Record each row's newest token (N,)."""
        if self.seen is not None:
            self.seen[torch.arange(tokens.shape[0], device=tokens.device), tokens] = True

    def reorder(self, index: Tensor) -> None:
        """Rows now descend from rows ``index`` (N,) (beam search)."""
        if self.seen is not None:
            self.seen = self.seen.index_select(0, index)


def _force(scores: Tensor, token: int) -> Tensor:
    """Scores (N, V) that leave ``token`` the only choice: 0 there, -inf elsewhere (Hugging Face's forcing)."""
    forced = torch.full_like(scores, -float("inf"))
    forced[:, token] = 0.0
    return forced


def banned_ngram_tokens(sequences: Tensor, n: int, vocab_size: int) -> Tensor:
    """(N, V) bool: tokens that would complete an n-gram already present in each row.

    sequences (N, L) with L >= n. The last n-1 tokens are matched against the
    first n-1 tokens of every complete n-gram window; a match bans that
    window's last token.
    """
    windows = sequences.unfold(1, n, 1)  # (N, L-n+1, n)
    tail = sequences[:, sequences.shape[1] - n + 1 :]  # (N, n-1)
    hit = (windows[..., : n - 1] == tail[:, None, :]).all(dim=-1)  # (N, L-n+1)
    # Unmatched windows write to a spare column so they cannot clear another window's ban.
    target = torch.where(hit, windows[..., -1], vocab_size)
    banned = torch.zeros(sequences.shape[0], vocab_size + 1, dtype=torch.bool, device=sequences.device)
    return banned.scatter_(1, target, True)[:, :vocab_size]


def warp(scores: Tensor, settings: GenerationSettings, min_keep: int = 1) -> Tensor:
    """Sampling warpers on scores (N, V): temperature, top-k, top-p; removed tokens get -inf.

    ``min_keep`` tokens always survive top-k and top-p (beam sampling keeps
    one more than there are EOS ids).
    """
    if settings.temperature != 1.0:
        scores = scores / settings.temperature
    if settings.top_k is not None:
        k = min(max(settings.top_k, min_keep), scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if settings.top_p is not None and settings.top_p < 1.0:
        ascending, order = torch.sort(scores, dim=-1)
        mass_below = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = mass_below <= 1.0 - settings.top_p  # the low tail holding at most 1 - top_p of the mass
        drop[..., -min_keep:] = False
        scores = scores.masked_fill(drop.scatter(-1, order, drop), -float("inf"))
    return scores
