"""Position-wise feed-forward networks, plain and gated."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimodel.nn.linear import Linear


def gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,  # exact (erf)
    "gelu_tanh": gelu_tanh,  # GPT-2's "gelu_new"
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
}


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}") from None


class FeedForward(nn.Module):
    """``out(act(up(x)))``, or gated ``out(act(gate(x)) * up(x))`` when ``gated``.

    x (B, T, D) -> (B, T, D).
    """

    def __init__(
        self,
        *,
        d_model: int,
        d_ff: int,
        activation: str = "gelu",
        gated: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.act_name = activation
        self.act = get_activation(activation)
        self.gate = Linear(d_model, d_ff, bias=bias) if gated else None
        self.up = Linear(d_model, d_ff, bias=bias)
        self.down = Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is not None:
            h = self.act(self.gate(x)) * self.up(x)
        else:
            h = self.act(self.up(x))
        return self.down(self.dropout(h) if self.training else h)


def init_normal_(module: nn.Module, std: float = 0.02, residual_std: float | None = None) -> None:
    """GPT-2 style initialisation: N(0, std) weights, zero biases, unit norms.

    Output projections of residual branches (``.out``, ``.down``) get
    ``residual_std`` when given (GPT-2 scales them by 1/sqrt(2 * n_layers)).
    """
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            s = residual_std if residual_std is not None and name.endswith((".out", ".down")) else std
            nn.init.normal_(m.weight, mean=0.0, std=s)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def residual_std(std: float, n_layers: int) -> float:
    return std / math.sqrt(2 * n_layers)
