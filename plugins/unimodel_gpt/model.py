"""GPT-2: a pre-LN causal decoder with learned positions, tanh-GELU and a tied LM head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unimodel.capabilities import Cap
from unimodel.errors import InputError
from unimodel.interfaces import Backbone, Decoder, DecoderOutput, ModelFamily
from unimodel.nn import Block, KVCache, LearnedPositions, LMHead, attention_mask_for, init_normal_
from unimodel.nn.ffn import residual_std
from unimodel.nn.sync import mask_is_trivial
from unimodel_gpt import NONCAUSAL_PROVIDES, PROVIDES
from unimodel_gpt.config import GPTConfig


class GPTDecoder(Decoder[GPTConfig]):
    """Token ids (B, T) -> final-norm hidden states (B, T, D); causal, cached."""

    config_class = GPTConfig
    provides = PROVIDES
    is_causal = True

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.d_model, self.vocab_size, self.max_positions = c.d_model, c.vocab_size, c.max_positions
        self.is_causal = c.causal_decoder
        self.cross_attention = c.memory_dim is not None
        if not c.causal_decoder:
            # with cross-attention, a MemoryCache keeps the memory's keys/values from call to call
            self.provides = (
                NONCAUSAL_PROVIDES | {Cap.OUTPUT_POSITIONS} | ({Cap.MEMORY_CACHE} if self.cross_attention else set())
            )
        self.wte = nn.Embedding(c.vocab_size, c.d_model)
        self.wpe = LearnedPositions(c.max_positions, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        head_dim = c.d_model // c.n_heads
        self.blocks = nn.ModuleList(
            Block(
                d_model=c.d_model,
                n_heads=c.n_heads,
                d_ff=c.d_ff or 4 * c.d_model,
                norm_eps=c.layer_norm_eps,
                prenorm=True,
                activation=c.activation,
                dropout=c.dropout,
                attn_dropout=c.attn_dropout,
                scale=(head_dim**-0.5 if c.scale_attn_weights else 1.0)
                / ((i + 1) if c.scale_attn_by_inverse_layer_idx else 1),
                cross_attention=self.cross_attention,
                memory_dim=c.memory_dim,
            )
            for i in range(c.n_layers)
        )
        self.norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        init_normal_(self, std=c.init_std, residual_std=residual_std(c.init_std, c.n_layers))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def build_lm_head(self) -> nn.Module:
        c = self.config
        return LMHead(d_model=c.d_model, vocab_size=c.vocab_size, embedding=self.wte if c.tie_embeddings else None)

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
        output_positions: Tensor | None = None,
    ) -> DecoderOutput:
        """input_ids (B, T); attention_mask (B, cached + T); memory (B, S, D_mem); memory_mask (B, S).
        ``output_positions`` (B, K), for a non-causal decoder: return the hidden states of those positions alone,
        (B, K, D); the last layer runs its queries, cross-attention and feed-forward on those K rows only."""
        B, T = input_ids.shape
        queries = self.output_queries(output_positions, B, T)
        if cache is not None and not self.is_causal and cache.holds_self:
            raise InputError(
                "a non-causal GPT decoder sees its whole input at once; it cannot decode with a key/value cache "
                "(a MemoryCache keeps the memory's cross-attention keys/values across calls)"
            )
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))  # (B, T, D)
        mask, is_causal = attention_mask_for(
            key_mask=attention_mask, q_len=T, k_len=past + T, causal=self.is_causal, device=input_ids.device
        )
        mem_mask = None
        if memory_mask is not None and not mask_is_trivial(memory_mask):
            mem_mask = memory_mask[:, None, None, :].bool()
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            q = queries if i == last else None
            x = block(
                x, mask=mask, is_causal=is_causal, cache=cache, layer=i, memory=memory, memory_mask=mem_mask, queries=q
            )
        if cache is not None:
            cache.advance(T)
        return DecoderOutput(last_hidden_state=self.norm(x), cache=cache)


class GPT(ModelFamily[GPTConfig]):
    """The GPT family: a decoder-only backbone."""

    config_class = GPTConfig

    @classmethod
    def provides_for(cls, config: GPTConfig) -> frozenset[str]:
        return config.provides()

    @classmethod
    def build_backbone(cls, config: GPTConfig) -> Backbone:
        decoder = GPTDecoder(config)
        return Backbone(
            encoder=None,
            decoder=decoder,
            lm_head=decoder.build_lm_head(),
            provides=cls.provides_for(config),
            special_tokens={
                "bos": config.bos_token_id,
                "eos": config.eos_token_id,
                "pad": config.pad_token_id,
            },
        )
