"""Output heads shared by families and objectives."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unimodel.nn.ffn import get_activation
from unimodel.nn.linear import DecodingLayout


class LMHead(DecodingLayout, nn.Module):
    """Hidden states (B, T, D) -> vocabulary logits (B, T, V).

    Args:
        d_model, vocab_size: widths.
        embedding: when given, the output matrix is tied to its weight.
        bias: a learned output bias (BERT, XLNet).
        transform: ``dense -> activation -> LayerNorm`` before the projection
            (BERT's prediction head); the value names the activation.
        transform_eps: that LayerNorm's epsilon.
        input_scale: multiply hidden states first (T5's ``d_model ** -0.5``).
        logits_bias: a fixed (non-learned) bias buffer (BART's ``final_logits_bias``).
    """

    def __init__(
        self,
        *,
        d_model: int,
        vocab_size: int,
        embedding: nn.Embedding | None = None,
        bias: bool = False,
        transform: str | None = None,
        transform_eps: float = 1e-12,
        input_scale: float = 1.0,
        logits_bias: bool = False,
    ) -> None:
        super().__init__()
        if transform is not None:
            self.dense = nn.Linear(d_model, d_model)
            self.act = get_activation(transform)
            self.norm = nn.LayerNorm(d_model, eps=transform_eps)
        else:
            self.dense = None
        self.input_scale = input_scale
        if embedding is not None:
            self.weight = embedding.weight
        else:
            self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
            nn.init.normal_(self.weight, std=0.02)
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None
        if logits_bias:
            self.register_buffer("logits_bias", torch.zeros(1, vocab_size))
        else:
            self.logits_bias = None

    def forward(self, h: Tensor) -> Tensor:
        if self.dense is not None:
            h = self.norm(self.act(self.dense(h)))
        if self.input_scale != 1.0:
            h = h * self.input_scale
        logits = self.project(h)
        if self.logits_bias is not None:
            logits = logits + self.logits_bias
        return logits
