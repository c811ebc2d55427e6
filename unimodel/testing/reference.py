"""The reference encoder and decoder: the smallest parts that follow the call contract, built from unimodel.nn.

The conformance kit pairs every registered encoder with :class:`ReferenceDecoder`
and every registered decoder with :class:`ReferenceEncoder` through the
``encoder-decoder`` family, so a part that works alone but breaks in a pairing
fails the kit. They are registered by the core plugin as ``encoder:reference``
and ``decoder:reference`` (``core:reference``), so a failing pairing can be
rebuilt by hand::

    build_model({"name": "encoder-decoder", "vocab_size": 64,
                 "encoder": {"name": "my-encoder"}, "decoder": {"name": "core:reference"}})

The encoder declares only ``attention_mask`` and ``position_ids`` (no token
types): the model passes a part only what its ``forward`` declares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from unimodel.config import Config, param
from unimodel.interfaces import Cap, Decoder, DecoderOutput, Encoder, EncoderOutput
from unimodel.nn import Block, KVCache, LearnedPositions, LMHead, attention_mask_for, init_normal_

ENCODER_PROVIDES = frozenset({Cap.ENCODER_ONLY, Cap.LM_HEAD})
DECODER_PROVIDES = frozenset({Cap.CAUSAL, Cap.LM_HEAD, Cap.KV_CACHE})


@dataclass(frozen=True)
class ReferenceConfig(Config):
    section = "reference part"

    vocab_size: int = param(64, "vocabulary size (the pairing sets it)")
    max_positions: int = param(64, "length of the learned position table")
    d_model: int = param(32, "hidden width")
    n_layers: int = param(1, "transformer blocks")
    n_heads: int = param(4, "attention heads; must divide d_model")
    d_ff: int = param(64, "feed-forward width")
    memory_dim: int | None = param(None, "decoder: width of an encoder memory to cross-attend to (set when paired)")

    def check(self) -> None:
        self.require_positive("vocab_size", "max_positions", "d_model", "n_layers", "n_heads", "d_ff")
        if self.d_model % self.n_heads:
            self.fail(("d_model", "n_heads"), "d_model must be divisible by n_heads")


class _Stack(nn.Module):
    """Embeddings, pre-LN blocks and a final LayerNorm, shared by both parts."""

    d_model: int
    vocab_size: int
    max_positions: int | None

    def __init__(self, c: ReferenceConfig, *, cross_attention: bool) -> None:
        super().__init__()
        self.config = c
        self.d_model, self.vocab_size, self.max_positions = c.d_model, c.vocab_size, c.max_positions
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = LearnedPositions(c.max_positions, c.d_model)
        self.blocks = nn.ModuleList(
            Block(
                d_model=c.d_model,
                n_heads=c.n_heads,
                d_ff=c.d_ff,
                cross_attention=cross_attention,
                memory_dim=c.memory_dim,
            )
            for _ in range(c.n_layers)
        )
        self.norm = nn.LayerNorm(c.d_model)
        init_normal_(self)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def build_lm_head(self) -> nn.Module:
        return LMHead(d_model=self.d_model, vocab_size=self.vocab_size, embedding=self.embed)


class ReferenceEncoder(_Stack, Encoder):
    """Token ids (B, S) -> hidden states (B, S, D); bidirectional, padding masked as keys."""

    config_class = ReferenceConfig
    provides = ENCODER_PROVIDES

    def __init__(self, config: ReferenceConfig) -> None:
        super().__init__(config, cross_attention=False)

    def forward(  # type: ignore[override]  # declares no token_type_ids: the model then passes none
        self, input_ids: Tensor, *, attention_mask: Tensor | None = None, position_ids: Tensor | None = None
    ) -> EncoderOutput:
        """input_ids (B, S); attention_mask (B, S) 1 = token, 0 = padding; position_ids (B, S)."""
        S = input_ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(S, device=input_ids.device)
        x = self.embed(input_ids) + self.pos(position_ids)  # (B, S, D)
        mask, _ = attention_mask_for(key_mask=attention_mask, q_len=S, k_len=S, causal=False, device=x.device)
        for block in self.blocks:
            x = block(x, mask=mask)
        return EncoderOutput(last_hidden_state=self.norm(x))


class ReferenceDecoder(_Stack, Decoder):
    """Target ids (B, T) -> hidden states (B, T, D); causal, KV-cached; cross-attends when ``memory_dim`` is set."""

    config_class = ReferenceConfig
    provides = DECODER_PROVIDES
    is_causal = True

    def __init__(self, config: ReferenceConfig) -> None:
        super().__init__(config, cross_attention=config.memory_dim is not None)
        self.cross_attention = config.memory_dim is not None

    def new_cache(self, batch: int, capacity: int, *, dtype: torch.dtype, device: torch.device) -> KVCache:
        c = self.config
        return KVCache(c.n_layers, batch, c.n_heads, c.d_model // c.n_heads, capacity, dtype=dtype, device=device)

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> DecoderOutput:
        """input_ids (B, T); attention_mask (B, cached + T); position_ids (B, T); memory (B, S, D_mem);
        memory_mask (B, S)."""
        T = input_ids.shape[1]
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device)
        x = self.embed(input_ids) + self.pos(position_ids)  # (B, T, D)
        mask, is_causal = attention_mask_for(
            key_mask=attention_mask, q_len=T, k_len=past + T, causal=True, device=x.device
        )
        mem_mask = None
        if memory_mask is not None and not bool(memory_mask.all()):
            mem_mask = memory_mask[:, None, None, :].bool()  # (B, 1, 1, S)
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, is_causal=is_causal, cache=cache, layer=i, memory=memory, memory_mask=mem_mask)
        if cache is not None:
            cache.advance(T)
        return DecoderOutput(last_hidden_state=self.norm(x), cache=cache)
