"""GPT-2: a pre-LN causal decoder with learned positions, tanh-GELU and a tied LM head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from unimodel.config import Config, param
from unimodel.errors import InputError
from unimodel.interfaces import Backbone, Decoder, DecoderOutput, ModelFamily
from unimodel.nn import ACTIVATIONS, Block, KVCache, LearnedPositions, LMHead, attention_mask_for, init_normal_
from unimodel.nn.ffn import residual_std
from unimodel.nn.sync import mask_is_trivial
from unimodel_gpt import NONCAUSAL_PROVIDES, PROVIDES


@dataclass(frozen=True)
class GPTConfig(Config):
    section = "model 'gpt'"
    renamed: ClassVar[dict[str, str]] = {"n_positions": "max_positions"}

    vocab_size: int = param(50257, "vocabulary size (set from the tokenizer when training)")
    max_positions: int = param(1024, "length of the learned position table: the longest sequence")
    d_model: int = param(768, "hidden width")
    n_layers: int = param(12, "number of transformer blocks")
    n_heads: int = param(12, "attention heads; must divide d_model")
    d_ff: int | None = param(None, "feed-forward width; 4 * d_model when null")
    activation: str = param("gelu_tanh", "feed-forward activation: " + ", ".join(ACTIVATIONS))
    layer_norm_eps: float = param(1e-5, "LayerNorm epsilon")
    dropout: float = param(0.1, "dropout on embeddings and residual branches")
    attn_dropout: float = param(0.1, "dropout on attention probabilities")
    tie_embeddings: bool = param(True, "share the token embedding with the LM head")
    scale_attn_weights: bool = param(True, "scale attention scores by head_dim ** -0.5")
    scale_attn_by_inverse_layer_idx: bool = param(False, "divide layer i's attention scores by i+1 (GPT-2 option)")
    memory_dim: int | None = param(None, "width of an encoder memory to cross-attend to (set when paired)")
    causal_decoder: bool = param(True, "false: every position sees every other one (cmlm when paired), no KV cache")
    init_std: float = param(0.02, "standard deviation of the initial weights")
    bos_token_id: int | None = param(None, "beginning-of-sequence id")
    eos_token_id: int | None = param(None, "end-of-sequence id (generation stops there)")
    pad_token_id: int | None = param(None, "padding id (falls back to eos in generation)")

    def check(self) -> None:
        self.require_positive("vocab_size", "max_positions", "d_model", "n_layers", "n_heads", "d_ff")
        if self.d_model % self.n_heads:
            self.fail(("d_model", "n_heads"), "d_model must be divisible by n_heads")
        if self.activation not in ACTIVATIONS:
            self.fail("activation", f"choose from {', '.join(ACTIVATIONS)}")
        self.require_fraction("dropout", "attn_dropout")
        self.require_positive("layer_norm_eps", "init_std")
        self.require_token_ids("bos_token_id", "eos_token_id", "pad_token_id")


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
        if not c.causal_decoder:
            self.provides = NONCAUSAL_PROVIDES
        self.cross_attention = c.memory_dim is not None
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
    ) -> DecoderOutput:
        _B, T = input_ids.shape
        if cache is not None and not self.is_causal:
            raise InputError("a non-causal GPT decoder sees its whole input at once; it cannot decode with a cache")
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
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, is_causal=is_causal, cache=cache, layer=i, memory=memory, memory_mask=mem_mask)
        if cache is not None:
            cache.advance(T)
        return DecoderOutput(last_hidden_state=self.norm(x), cache=cache)


class GPT(ModelFamily[GPTConfig]):
    """The GPT family: a decoder-only backbone."""

    config_class = GPTConfig

    @classmethod
    def provides_for(cls, config: GPTConfig) -> frozenset[str]:
        return PROVIDES if config.causal_decoder else NONCAUSAL_PROVIDES

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
