"""The transformer block shared by every family: self-attention, optional cross-attention, FFN.

Pre-norm (GPT-2, T5) or post-norm (BERT, BART) is a flag, not a copied class.

Gradient checkpointing is a flag of the block too (:attr:`Block.gradient_checkpointing`,
set for a whole model by :meth:`unimodel.model.Model.gradient_checkpointing_enable`):
while training with gradients, the block keeps only its input and recomputes its
activations during the backward pass, trading about one more forward pass for the
memory of every intermediate activation of the layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from unimodel.nn.attention import Attention, KVCache, gather_positions
from unimodel.nn.ffn import FeedForward
from unimodel.nn.norms import make_norm


class Block(nn.Module):
    """One transformer layer. x (B, T, D) -> (B, T, D).

    Args:
        d_model, n_heads, d_ff: widths.
        head_dim: per-head size (``d_model // n_heads`` by default).
        norm: ``"layernorm"`` or ``"rmsnorm"``; ``norm_eps`` its epsilon.
        prenorm: ``x + f(norm(x))`` when true, ``norm(x + f(x))`` when false.
        bias: biases on every projection.
        activation, gated: the feed-forward's non-linearity and gating.
        dropout: on each sublayer's output; ``attn_dropout`` on attention
            probabilities; ``act_dropout`` inside the feed-forward.
        scale: attention score scale (``None``: ``head_dim ** -0.5``).
        cross_attention: add a cross-attention sublayer reading an encoder memory
            of width ``memory_dim`` (``d_model`` by default).
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        d_ff: int,
        head_dim: int | None = None,
        norm: str = "layernorm",
        norm_eps: float = 1e-5,
        prenorm: bool = True,
        bias: bool = True,
        activation: str = "gelu",
        gated: bool = False,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        act_dropout: float = 0.0,
        scale: float | None = None,
        cross_attention: bool = False,
        memory_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.prenorm = prenorm
        attn_kw: dict[str, Any] = dict(
            d_model=d_model, n_heads=n_heads, head_dim=head_dim, bias=bias, scale=scale, dropout=attn_dropout
        )
        self.norm_attn = make_norm(norm, d_model, norm_eps)
        self.attn = Attention(**attn_kw)
        self.norm_cross: nn.Module | None
        self.cross: Attention | None
        if cross_attention:
            self.norm_cross = make_norm(norm, d_model, norm_eps)
            self.cross = Attention(**attn_kw, cross=True, kv_dim=memory_dim or d_model)
        else:
            self.norm_cross = self.cross = None
        self.norm_ffn = make_norm(norm, d_model, norm_eps)
        self.ffn = FeedForward(
            d_model=d_model, d_ff=d_ff, activation=activation, gated=gated, bias=bias, dropout=act_dropout
        )
        self.drop = nn.Dropout(dropout)
        #: recompute this block's activations in the backward pass instead of keeping them (training only)
        self.gradient_checkpointing = False

    def _sublayer(
        self, x: Tensor, norm: nn.Module, fn: Callable[..., Tensor], residual: Tensor | None = None, **kw: Any
    ) -> Tensor:
        """``fn``'s output added to ``residual`` (``x`` by default), normed before or after."""
        y = fn(norm(x), **kw) if self.prenorm else fn(x, **kw)
        if self.training:  # dropout is the identity in eval; skipping the call helps per-token decoding
            y = self.drop(y)
        r = x if residual is None else residual
        return r + y if self.prenorm else norm(r + y)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        layer: int = 0,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        queries: Tensor | None = None,
    ) -> Tensor:
        """x (B, T, D) -> (B, T, D), or (B, K, D) with ``queries`` (B, K): the outputs of those positions alone
        (every position is still a key and value of self-attention; the rest of the layer runs on K rows)."""
        kw: dict[str, Any] = dict(
            mask=mask,
            is_causal=is_causal,
            cache=cache,
            layer=layer,
            memory=memory,
            memory_mask=memory_mask,
            queries=queries,
        )
        if self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled():
            # Non-reentrant: gradients reach every input (the memory, T5's position bias in ``mask``) and
            # parameters without requiring the input to need a gradient. The RNG state is saved and restored
            # for the recomputation, so dropout draws the same masks and the gradients equal a plain run's.
            y: Tensor = checkpoint(self._layers, x, use_reentrant=False, preserve_rng_state=True, **kw)
            return y
        return self._layers(x, **kw)

    def _layers(
        self,
        x: Tensor,
        *,
        mask: Tensor | None,
        is_causal: bool,
        cache: KVCache | None,
        layer: int,
        memory: Tensor | None,
        memory_mask: Tensor | None,
        queries: Tensor | None,
    ) -> Tensor:
        """The three sublayers; x (B, T, D) -> (B, T, D), or (B, K, D) at ``queries``."""
        attn_kw: dict[str, Any] = dict(mask=mask, is_causal=is_causal, cache=cache, layer=layer)
        if queries is not None:
            attn_kw.update(queries=queries, residual=gather_positions(x, queries))
        x = self._sublayer(x, self.norm_attn, self.attn, **attn_kw)
        if self.cross is not None and self.norm_cross is not None:
            x = self._sublayer(
                x, self.norm_cross, self.cross, mask=memory_mask, cache=cache, layer=layer, memory=memory
            )
        return self._sublayer(x, self.norm_ffn, self.ffn)
