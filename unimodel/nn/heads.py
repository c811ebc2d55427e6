"""Output heads shared by families and objectives."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unimodel.nn.ffn import get_activation
from unimodel.nn.linear import DecodingLayout
from unimodel.nn.losses import IGNORE_INDEX, linear_cross_entropy
from unimodel.nn.sync import host_reads_free


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
        self.dense: nn.Linear | None
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

    def _features(self, h: Tensor) -> Tensor:
        if self.dense is not None:
            h = self.norm(self.act(self.dense(h)))
        if self.input_scale != 1.0:
            h = h * self.input_scale
        return h

    def forward(self, h: Tensor) -> Tensor:
        logits = self.project(self._features(h))
        if self.logits_bias is not None:
            logits = logits + self.logits_bias
        return logits

    def token_loss(self, h: Tensor, labels: Tensor, *, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
        """Mean cross-entropy of the logits ``self(h)`` against ``labels`` (-100 ignored) without forming
        the logits (:func:`~unimodel.nn.losses.linear_cross_entropy`); and how many predictions are right.

        h (..., D), labels (...). Returns ``(loss, correct)``.
        """
        h, labels = h.reshape(-1, h.shape[-1]), labels.reshape(-1).long()
        if host_reads_free(labels):  # dropping the ignored rows saves their work; on a device it costs a sync
            keep = labels != IGNORE_INDEX
            if not bool(keep.all()):
                h, labels = h[keep], labels[keep]
        bias = self.bias
        if self.logits_bias is not None:
            bias = self.logits_bias[0] if bias is None else bias + self.logits_bias[0]
        return linear_cross_entropy(self._features(h), self.weight, bias, labels, label_smoothing=label_smoothing)
