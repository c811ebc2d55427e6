"""BART: a post-LN encoder-decoder with learned positions (offset 2) and embedding LayerNorms.

Both stacks embed as ``dropout(LayerNorm(tok * embed_scale + pos))``, run
post-LN blocks (``h = LN(h + dropout(f(h)))``) with biased projections and an
exact-GELU feed-forward, and end without a final LayerNorm. The LM head is tied
to the shared token embedding and adds the fixed ``final_logits_bias``.

Decoder inputs are never derived from ``input_ids``: Hugging Face's
``BartModel`` shifts ``input_ids`` right when no ``decoder_input_ids`` are
given, but unimodel's :class:`~unimodel.model.Model` derives decoder inputs only
from ``labels`` (``Model.shift_right``). Pass ``decoder_input_ids`` (for HF's
behaviour, ``model.shift_right(input_ids)``) or ``labels``.

Shapes: B batch, S source length, T target length, D d_model, V vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from unimodel.errors import ConfigError, InputError
from unimodel.interfaces import Backbone, Cap, Decoder, DecoderOutput, Encoder, EncoderOutput, ModelFamily
from unimodel.nn import (
    Block,
    KVCache,
    LearnedPositions,
    LMHead,
    attention_mask_for,
    gather_positions,
    init_normal_,
    shared_uniform,
)
from unimodel.nn.sync import mask_is_trivial
from unimodel_bart import DECODER_PROVIDES, ENCODER_PROVIDES
from unimodel_bart.config import BartConfig

POSITION_OFFSET = 2  # BART's table keeps two rows before position 0 (a fairseq padding legacy)


class _Embeddings:
    """Token + learned-position embeddings, LayerNorm and dropout, shared by both stacks."""

    config: BartConfig
    embed_tokens: nn.Embedding
    embed_positions: LearnedPositions
    layernorm_embedding: nn.LayerNorm
    drop: nn.Dropout
    max_positions: int | None

    def _build_embeddings(self, c: BartConfig) -> None:
        pad = c.pad_token_id
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model, padding_idx=pad)
        self.embed_positions = LearnedPositions(c.max_positions, c.d_model, offset=POSITION_OFFSET)
        self.layernorm_embedding = nn.LayerNorm(c.d_model, eps=1e-5)
        self.drop = nn.Dropout(c.dropout)
        self.embed_scale = math.sqrt(c.d_model) if c.scale_embedding else 1.0
        self.d_model, self.vocab_size, self.max_positions = c.d_model, c.vocab_size, c.max_positions

    def _init_weights(self) -> None:
        c = self.config
        init_normal_(self, std=c.init_std)  # type: ignore[arg-type]
        with torch.no_grad():
            nn.init.normal_(self.embed_positions.weight, std=c.init_std)
            if c.pad_token_id is not None:
                self.embed_tokens.weight[c.pad_token_id].zero_()

    def _embed(self, input_ids: Tensor, position_ids: Tensor | None, past: int) -> Tensor:
        """ids (B, T) -> (B, T, D). Positions count from ``past`` and ignore padding, as in BART."""
        if position_ids is None:
            position_ids = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)
        x = self.embed_tokens(input_ids)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        x = x + self.embed_positions(position_ids)
        return self.drop(self.layernorm_embedding(x))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def build_lm_head(self) -> nn.Module:
        """Tied (or own) output matrix plus the fixed ``final_logits_bias`` buffer."""
        c = self.config
        head = LMHead(
            d_model=c.d_model,
            vocab_size=c.vocab_size,
            embedding=self.embed_tokens if c.tie_embeddings else None,
            logits_bias=True,
        )
        if not c.tie_embeddings:
            nn.init.normal_(head.weight, std=c.init_std)
        return head


def _blocks(
    c: BartConfig, *, n_layers: int, n_heads: int, d_ff: int, cross: bool, memory_dim: int | None
) -> nn.ModuleList:
    """``n_layers`` post-LN blocks (LayerNorm eps 1e-5, biased projections, head_dim ** -0.5 scores)."""
    return nn.ModuleList(
        Block(
            d_model=c.d_model,
            n_heads=n_heads,
            d_ff=d_ff,
            norm_eps=1e-5,
            prenorm=False,
            bias=True,
            activation=c.activation,
            dropout=c.dropout,
            attn_dropout=c.attn_dropout,
            act_dropout=c.act_dropout,
            cross_attention=cross,
            memory_dim=memory_dim,
        )
        for _ in range(n_layers)
    )


def _skip(module: nn.Module, p: float) -> bool:
    """LayerDrop: skip a whole block with probability ``p`` while training.

    The draw comes from :func:`~unimodel.nn.shared_uniform`, so under the trainer every data-parallel
    process skips the same blocks (a pure function of seed, step and micro-batch).
    """
    return module.training and p > 0.0 and shared_uniform() < p


def _skipped(block: nn.Module, x: Tensor, memory: Tensor | None = None) -> Tensor:
    """``x`` unchanged, joined with weight zero to ``block``'s parameters and to the ``memory`` it would have read:
    their gradient is zero rather than missing (with every decoder block skipped, the whole encoder would
    miss it), so a data-parallel wrapper finds every parameter used in every step. Parameters sharded
    across processes (FSDP) are left out: a sharding wrapper skips a block that did not run on any process."""
    tie = [p.reshape(-1)[:1] for p in block.parameters() if p.requires_grad and _local(p)]
    if memory is not None and memory.requires_grad:
        tie.append(memory.reshape(-1)[:1].to(tie[0].dtype if tie else memory.dtype))
    if not tie:
        return x
    return x + torch.cat(tie).sum().to(x.dtype) * 0.0


def _local(p: Tensor) -> bool:
    """Whether ``p`` is a plain tensor, not a distributed tensor sharded over processes."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support has none
        return True
    return not isinstance(p, DTensor)


class BartEncoder(_Embeddings, Encoder[BartConfig]):
    """Token ids (B, S) -> hidden states (B, S, D); bidirectional, padding masked as keys."""

    config_class = BartConfig
    provides = ENCODER_PROVIDES

    def __init__(self, config: BartConfig) -> None:
        super().__init__()
        self.config = c = config
        self._build_embeddings(c)
        self.blocks = _blocks(c, n_layers=c.n_layers, n_heads=c.n_heads, d_ff=c.d_ff, cross=False, memory_dim=None)
        self._init_weights()

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> EncoderOutput:
        """input_ids (B, S); attention_mask (B, S) 1 = token, 0 = padding."""
        if token_type_ids is not None:
            raise InputError("BART has no token types (segment embeddings); do not pass token_type_ids")
        x = self._embed(input_ids, position_ids, 0)  # (B, S, D)
        mask, _ = attention_mask_for(
            key_mask=attention_mask, q_len=x.shape[1], k_len=x.shape[1], causal=False, device=x.device
        )
        for block in self.blocks:
            x = _skipped(block, x) if _skip(self, self.config.layerdrop) else block(x, mask=mask)
        return EncoderOutput(last_hidden_state=x)


class BartDecoder(_Embeddings, Decoder[BartConfig]):
    """Target ids (B, T) -> hidden states (B, T, D), cross-attending to an encoder memory.

    Causal by default, with incremental decoding on a :class:`KVCache` whose
    ``cross`` slots hold each layer's memory keys/values after the first call.
    Cross-attention exists when ``memory_dim`` is set (the family sets it to
    ``d_model``; pairing sets it to the encoder's width).
    """

    config_class = BartConfig
    provides = DECODER_PROVIDES

    def __init__(self, config: BartConfig) -> None:
        super().__init__()
        self.config = c = config
        self._build_embeddings(c)
        self.is_causal = c.causal_decoder
        self.cross_attention = c.memory_dim is not None
        if not c.causal_decoder:
            self.provides = DECODER_PROVIDES - {Cap.CAUSAL, Cap.KV_CACHE} | {
                Cap.NONCAUSAL_DECODER,
                Cap.OUTPUT_POSITIONS,
            }
            if self.cross_attention:  # a MemoryCache keeps the memory's keys/values from call to call
                self.provides |= {Cap.MEMORY_CACHE}
        self.blocks = _blocks(
            c,
            n_layers=c.dec_layers,
            n_heads=c.dec_heads,
            d_ff=c.dec_ff,
            cross=self.cross_attention,
            memory_dim=c.memory_dim,
        )
        self._init_weights()

    def new_cache(self, batch: int, capacity: int, *, dtype: torch.dtype, device: torch.device) -> KVCache:
        c = self.config
        return KVCache(c.dec_layers, batch, c.dec_heads, c.d_model // c.dec_heads, capacity, dtype=dtype, device=device)

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
                "a non-causal BART decoder sees its whole input at once; it cannot decode with a key/value cache "
                "(a MemoryCache keeps the memory's cross-attention keys/values across calls)"
            )
        have_cached_memory = cache is not None and cache.cross[0] is not None
        if self.cross_attention and memory is None and not have_cached_memory:
            raise InputError("the BART decoder cross-attends to an encoder memory: pass memory (the encoder output)")
        past = cache.length if cache is not None else 0
        x = self._embed(input_ids, position_ids, past)  # (B, T, D)
        mask, is_causal = attention_mask_for(
            key_mask=attention_mask, q_len=T, k_len=past + T, causal=self.is_causal, device=x.device
        )
        mem_mask = None
        if memory_mask is not None and not mask_is_trivial(memory_mask):
            mem_mask = memory_mask[:, None, None, :].bool()  # (B, 1, 1, S): padded memory positions are keys never seen
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            q = queries if i == last else None
            if cache is None and _skip(self, self.config.decoder_layerdrop):
                x = _skipped(block, x, memory if self.cross_attention else None)
                x = x if q is None else gather_positions(x, q)
                continue
            x = block(
                x, mask=mask, is_causal=is_causal, cache=cache, layer=i, memory=memory, memory_mask=mem_mask, queries=q
            )
        if cache is not None:
            cache.advance(T)
        return DecoderOutput(last_hidden_state=x, cache=cache)


class BART(ModelFamily[BartConfig]):
    """The BART family: encoder and decoder sharing one embedding, tied LM head with a logits bias."""

    config_class = BartConfig

    @classmethod
    def provides_for(cls, config: BartConfig) -> frozenset[str]:
        return config.provides()

    @classmethod
    def build_backbone(cls, config: BartConfig) -> Backbone:
        if config.memory_dim not in (None, config.d_model):
            raise ConfigError(
                f"model 'bart': memory_dim={config.memory_dim} differs from d_model={config.d_model}, but the BART "
                "decoder reads the BART encoder (width d_model); leave memory_dim unset"
            )
        encoder = BartEncoder(config)
        decoder = BartDecoder(config.replace(memory_dim=config.d_model))
        if config.tie_embeddings:
            decoder.embed_tokens.weight = encoder.embed_tokens.weight  # BART's model.shared
        return Backbone(
            encoder=encoder,
            decoder=decoder,
            lm_head=decoder.build_lm_head(),
            provides=cls.provides_for(config),
            special_tokens={
                "bos": config.bos_token_id,
                "eos": config.eos_token_id,
                "pad": config.pad_token_id,
                "decoder_start": config.decoder_start_token_id,
            },
        )
