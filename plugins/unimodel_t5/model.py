"""T5: a pre-norm RMSNorm encoder-decoder with bucketed relative position biases.

What sets T5 apart from the other families, all expressed with the shared
blocks of :mod:`unimodel.nn`:

- no biases anywhere, and attention scores are *not* scaled (``scale=1.0``);
  the head size ``head_dim`` (HF's ``d_kv``) is free, so ``n_heads * head_dim`` may differ from ``d_model``;
- no absolute positions (except when built for a non-causal decoder, see
  :class:`T5Encoder`): each stack owns one learned table of relative
  position biases (HF stores it in the stack's first layer) that is computed
  once per forward and added to every layer's self-attention scores, together
  with the padding/causal mask, as one float additive mask; cross-attention has
  no position bias;
- the feed-forward is ReLU (v1.0) or gated tanh-GELU (v1.1, ``"gated-gelu"``);
- the LM head reads ``d_model ** -0.5``-scaled decoder states when
  ``scale_decoder_outputs`` (v1.0's tied head) and unscaled ones otherwise.

Shapes: B batch, S encoder length, T decoder length (new positions), P cached
positions, H heads, D model width, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimodel.errors import InputError
from unimodel.interfaces import Backbone, Decoder, DecoderOutput, Encoder, EncoderOutput, ModelFamily
from unimodel.nn import Attention, Block, FeedForward, KVCache, LMHead, RMSNorm
from unimodel.nn.positions import log_bucket, sinusoids
from unimodel.nn.sync import mask_is_trivial
from unimodel_t5 import (
    DECODER_PROVIDES,
    ENCODER_PROVIDES,
    NONCAUSAL_DECODER_PROVIDES,
)
from unimodel_t5.config import T5Config, parse_feed_forward


# ------------------------------------------------------------------ position bias
def relative_position_bucket(
    relative_position: Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Tensor:
    """Bucket of each ``key_pos - query_pos`` (any integer shape -> same shape, long).

    Bidirectional (encoder): half the buckets for keys after the query, half for
    keys at or before it. Causal (decoder): every bucket for keys at or before
    the query; later keys fall in bucket 0 (they are masked anyway). In each
    half, distances below half its buckets are exact, then log-spaced up to
    ``max_distance``.
    """
    rel = relative_position.long()
    if bidirectional:
        num_buckets //= 2
        offset = (rel > 0).long() * num_buckets
        distance = rel.abs()
    else:
        offset = torch.zeros_like(rel)
        distance = (-rel).clamp(min=0)
    return offset + log_bucket(distance, num_buckets, max_distance)


class RelativePositionBias(nn.Module):
    """A learned bias per (bucket, head): positions -> additive scores (1, H, T, S)."""

    def __init__(self, *, n_heads: int, num_buckets: int, max_distance: int, bidirectional: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_buckets, n_heads))  # (buckets, H)
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional

    def extra_repr(self) -> str:
        kind = "bidirectional" if self.bidirectional else "causal"
        return f"buckets={self.num_buckets}, heads={self.weight.shape[1]}, max_distance={self.max_distance}, {kind}"

    def forward(self, q_len: int, k_len: int, past: int = 0) -> Tensor:
        """Bias of queries at positions ``past .. past+q_len-1`` over keys ``0 .. k_len-1``: (1, H, q_len, k_len)."""
        device = self.weight.device
        q_pos = torch.arange(past, past + q_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        buckets = relative_position_bucket(
            k_pos - q_pos,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )  # (T, S)
        return F.embedding(buckets, self.weight).permute(2, 0, 1)[None]


def additive_mask(bias: Tensor, allowed: Tensor | None) -> Tensor:
    """``bias`` (1, H, T, S) with disallowed keys at the dtype's minimum; ``allowed`` bool, broadcastable.

    A query row with no allowed key keeps its bias (its output is finite and, being
    padding, ignored), as :func:`unimodel.nn.attention_mask_for` does for boolean masks.
    """
    if allowed is None:
        return bias
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    return bias.masked_fill(~allowed, torch.finfo(bias.dtype).min)


# ------------------------------------------------------------------ stacks
def _blocks(c: T5Config, n: int, *, cross: bool) -> nn.ModuleList:
    activation, gated = parse_feed_forward(c.feed_forward)  # type: ignore[misc]
    return nn.ModuleList(
        Block(
            d_model=c.d_model,
            n_heads=c.n_heads,
            d_ff=c.d_ff,
            head_dim=c.head_dim,
            norm="rmsnorm",
            norm_eps=c.layer_norm_eps,
            prenorm=True,
            bias=False,
            activation=activation,
            gated=gated,
            dropout=c.dropout,
            attn_dropout=c.dropout,
            act_dropout=c.dropout,
            scale=1.0,  # T5 folds the 1/sqrt(head_dim) into its initialisation of q
            cross_attention=cross,
            memory_dim=c.memory_dim,
        )
        for _ in range(n)
    )


def init_t5_(module: nn.Module, c: T5Config) -> None:
    """Mesh-TensorFlow / HF T5 initialisation: per-projection fan-in scaled normals, unit norms."""
    f, d, inner = c.init_factor, c.d_model, c.n_heads * c.head_dim
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, Attention):
                q = m.q.weight if m.cross else m.qkv.weight[:inner]
                q.normal_(0.0, f * (d * c.head_dim) ** -0.5)
                (m.kv.weight if m.cross else m.qkv.weight[inner:]).normal_(0.0, f * d**-0.5)
                m.out.weight.normal_(0.0, f * inner**-0.5)
            elif isinstance(m, FeedForward):
                for lin in (m.gate, m.up):
                    if lin is not None:
                        lin.weight.normal_(0.0, f * d**-0.5)
                m.down.weight.normal_(0.0, f * c.d_ff**-0.5)
            elif isinstance(m, RMSNorm):
                m.weight.fill_(f)
            elif isinstance(m, RelativePositionBias):
                m.weight.normal_(0.0, f * d**-0.5)
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, f)


class _T5Stack(nn.Module):
    """Shared parts of both stacks: the token embedding, the head builder."""

    config: T5Config
    embed_tokens: nn.Embedding

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def build_lm_head(self) -> nn.Module:
        """The T5 LM head: tied to this stack's embedding or its own matrix, input scaled by d_model ** -0.5 or not."""
        c = self.config
        head = LMHead(
            d_model=c.d_model,
            vocab_size=c.vocab_size,
            embedding=self.embed_tokens if c.tie_embeddings else None,
            input_scale=c.d_model**-0.5 if c.scales_outputs else 1.0,
        )
        if not c.tie_embeddings:
            with torch.no_grad():
                head.weight.normal_(0.0, c.init_factor)
        return head


class T5Encoder(_T5Stack, Encoder[T5Config]):
    """Token ids (B, S) -> hidden states (B, S, D) after the final RMSNorm; bidirectional.

    Built for a non-causal decoder (``causal_decoder = false``, ``cmlm``) the
    encoder adds sinusoidal absolute positions to its input, as that decoder
    does: a decoder writing every position at once must find the source tokens
    its position reads, and relative biases alone leave the encoder states
    without their place (a T5 trained for cmlm on ``numbers``: 1% exact match
    without them, 89% with, at 600 steps).
    """

    config_class = T5Config
    provides = ENCODER_PROVIDES

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        c = self.config = config
        self.d_model, self.vocab_size, self.max_positions = c.d_model, c.vocab_size, None
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.relative_bias = RelativePositionBias(
            n_heads=c.n_heads,
            num_buckets=c.relative_attention_num_buckets,
            max_distance=c.relative_attention_max_distance,
            bidirectional=True,
        )
        self.blocks = _blocks(c, c.n_layers, cross=False)
        self.final_norm = RMSNorm(c.d_model, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)
        init_t5_(self, c)

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> EncoderOutput:
        """input_ids (B, S), attention_mask (B, S) 1 = real token. ``position_ids`` are
        ignored: T5 sees only distances between tokens, which padding does not change."""
        if token_type_ids is not None:
            raise InputError("T5 has no token types; drop token_type_ids")
        S = input_ids.shape[1]
        x = self.embed_tokens(input_ids)  # (B, S, D)
        if not self.config.causal_decoder:
            x = x + sinusoids(torch.arange(S, device=x.device), self.d_model).to(x.dtype)
        x = self.drop(x)
        # One bias for every layer, padding folded in: (1 or B, H, S, S).
        allowed = None
        if attention_mask is not None and not mask_is_trivial(attention_mask):
            allowed = attention_mask[:, None, None, :].bool()
        mask = additive_mask(self.relative_bias(S, S).to(x.dtype), allowed)
        for block in self.blocks:
            x = block(x, mask=mask)
        return EncoderOutput(last_hidden_state=self.drop(self.final_norm(x)))


class T5Decoder(_T5Stack, Decoder[T5Config]):
    """Decoder ids (B, T) attending to an encoder memory (B, S, D_mem) -> (B, T, D); causal, cached.

    The causal self-attention bias for the new queries (positions P .. P+T-1,
    P = ``cache.length``) is rebuilt from the bias table on every call: it is a
    function of positions only, so the cache needs nothing beyond its keys and
    values and the cross-attention keys/values it keeps in ``cache.cross``.

    With ``causal_decoder = false`` every position sees every other one, with
    the encoder's bidirectional position buckets, and there is no cache. Such a
    decoder also adds sinusoidal absolute positions to its input: with relative
    positions alone, identical inputs (an all-masked target, mask-predict's first
    pass) would give every position the same state.
    """

    config_class = T5Config
    provides = DECODER_PROVIDES
    is_causal = True
    cross_attention = True

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        c = self.config = config
        self.d_model, self.vocab_size, self.max_positions = c.d_model, c.vocab_size, None
        self.is_causal = c.causal_decoder
        if not c.causal_decoder:
            self.provides = NONCAUSAL_DECODER_PROVIDES
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.relative_bias = RelativePositionBias(
            n_heads=c.n_heads,
            num_buckets=c.relative_attention_num_buckets,
            max_distance=c.relative_attention_max_distance,
            bidirectional=not c.causal_decoder,
        )
        self.blocks = _blocks(c, c.dec_layers, cross=True)
        self.final_norm = RMSNorm(c.d_model, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)
        init_t5_(self, c)

    def new_cache(self, batch: int, capacity: int, *, dtype: torch.dtype, device: torch.device) -> KVCache:
        c = self.config
        return KVCache(c.dec_layers, batch, c.n_heads, c.head_dim, capacity, dtype=dtype, device=device)

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
        """input_ids (B, T); attention_mask (B, P+T) over cached and new tokens; memory (B, S, D_mem);
        memory_mask (B, S). ``position_ids`` are ignored (relative positions only).
        ``output_positions`` (B, K), for a non-causal decoder: return the hidden states of those positions alone,
        (B, K, D); the last layer runs its queries, cross-attention and feed-forward on those K rows only."""
        B, T = input_ids.shape
        queries = self.output_queries(output_positions, B, T)
        if cache is not None and not self.is_causal and cache.holds_self:
            raise InputError(
                "a non-causal T5 decoder sees its whole input at once; it cannot decode with a key/value cache "
                "(a MemoryCache keeps the memory's cross-attention keys/values across calls)"
            )
        past = cache.length if cache is not None else 0
        if memory is None and (cache is None or cache.cross[0] is None):
            raise InputError("the T5 decoder cross-attends to an encoder memory: pass memory (the encoder output)")
        x = self.embed_tokens(input_ids)  # (B, T, D)
        if not self.is_causal:
            x = x + sinusoids(torch.arange(T, device=x.device), self.d_model).to(x.dtype)
        x = self.drop(x)
        key_mask = None  # (B, 1, 1, P+T) when some key is padding
        if attention_mask is not None and not mask_is_trivial(attention_mask):
            key_mask = attention_mask[:, None, None, :].bool()
        if not self.is_causal:
            mask = additive_mask(self.relative_bias(T, T).to(x.dtype), key_mask)  # (1 or B, H, T, T)
        elif cache is not None and T == 1:
            # One new token sees every earlier key: its bias is a slice of a per-distance table.
            allowed = key_mask
            mask = additive_mask(self._step_bias(cache, past, x.dtype), allowed)  # (1 or B, H, 1, P+1)
        else:
            q_pos = torch.arange(past, past + T, device=x.device)[:, None]
            allowed = torch.arange(past + T, device=x.device)[None, :] <= q_pos  # causal (T, P+T)
            allowed = allowed[None, None]
            if key_mask is not None:
                allowed = allowed & key_mask
            mask = additive_mask(self.relative_bias(T, past + T, past).to(x.dtype), allowed)  # (1 or B, H, T, P+T)
        mem_mask = None
        if memory_mask is not None and not mask_is_trivial(memory_mask):
            mem_mask = memory_mask[:, None, None, :].bool()  # (B, 1, 1, S)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            q = queries if i == last else None
            x = block(x, mask=mask, cache=cache, layer=i, memory=memory, memory_mask=mem_mask, queries=q)
        if cache is not None:
            cache.advance(T)
        return DecoderOutput(last_hidden_state=self.drop(self.final_norm(x)), cache=cache)

    def _step_bias(self, cache: KVCache, past: int, dtype: torch.dtype) -> Tensor:
        """Bias of the query at position ``past`` over keys ``0 .. past``: (1, H, 1, past + 1).

        The causal bias depends on the distance ``key - query`` alone, so the bias of
        distances ``-(capacity - 1) .. 0`` is computed once per cache and sliced per step.
        """
        table = cache.extra.get("t5_step_bias")
        if table is None or table.shape[-1] <= past or table.dtype != dtype:
            n = max(cache.capacity, past + 1)
            # query n-1 over keys 0..n-1; contiguous, so each step's slice has unit stride over keys
            table = self.relative_bias(1, n, n - 1).to(dtype).contiguous()
            cache.extra["t5_step_bias"] = table
        n = table.shape[-1]
        return table[..., n - 1 - past :]


class T5(ModelFamily[T5Config]):
    """The T5 family: encoder and decoder sharing one token embedding, and the T5 LM head."""

    config_class = T5Config

    @classmethod
    def provides_for(cls, config: T5Config) -> frozenset[str]:
        return config.provides()

    @classmethod
    def build_backbone(cls, config: T5Config) -> Backbone:
        encoder = T5Encoder(config)
        decoder = T5Decoder(config)
        decoder.embed_tokens = encoder.embed_tokens  # T5's "shared" embedding
        return Backbone(
            encoder=encoder,
            decoder=decoder,
            lm_head=decoder.build_lm_head(),
            provides=cls.provides_for(config),
            special_tokens={
                "eos": config.eos_token_id,
                "pad": config.pad_token_id,
                "decoder_start": config.start_token_id,
            },
        )


__all__ = [
    "T5",
    "RelativePositionBias",
    "T5Config",
    "T5Decoder",
    "T5Encoder",
    "init_t5_",
    "parse_feed_forward",
    "relative_position_bucket",
]
