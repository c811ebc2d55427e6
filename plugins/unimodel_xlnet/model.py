"""XLNet: a post-LN relative-attention stack with two streams and segment recurrence.

The content stream ``h`` starts from the token embeddings; the query stream ``g``
starts from ``mask_emb`` at the positions ``target_mapping`` names and sees
positions, not contents. Both run through the same layer weights. ``perm_mask``
(B, T, T) says which positions may not be seen (1 = blocked), as in transformers.
The layer inputs of a segment can be kept as memory (``mems``) that the next
segment attends to. With ``attn_type = "bi"`` the backbone is an encoder; with
``"uni"`` (causal attention, Transformer-XL style) it is a causal decoder with a
key/value cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimodel.errors import InputError
from unimodel.interfaces import Backbone, Decoder, DecoderOutput, Encoder, EncoderOutput, ModelFamily
from unimodel.nn import FeedForward, KVCache, Linear, LMHead, get_activation, init_normal_, sinusoids
from unimodel_xlnet import PROVIDES_BI, PROVIDES_UNI
from unimodel_xlnet.attention import AttentionPlan, RelativeAttention, XLNetCache, relative_distances
from unimodel_xlnet.config import XLNetConfig


@dataclass
class StackOutput:
    """The pass's output: the query stream when there were query rows, else the content stream."""

    content: Tensor | None  # (B, T, D) the content stream after the last layer (and output dropout)
    query: Tensor | None  # (B, M, D) the query stream
    mems: tuple[Tensor, ...] | None  # per layer (B, mlen', D): the new memory
    pooled: Tensor | None  # (B, D) the sequence summary (content stream only)


class XLNetLayer(nn.Module):
    """Relative attention then the feed-forward, each ``LN(x + drop(f(x)))``; x (B, T + M, D)."""

    def __init__(self, c: XLNetConfig, biases: tuple[nn.Parameter, nn.Parameter, nn.Parameter] | None) -> None:
        super().__init__()
        head_dim, d_ff = c.dims
        self.attn = RelativeAttention(
            d_model=c.d_model, n_heads=c.n_heads, head_dim=head_dim, dropout=c.attn_dropout, biases=biases
        )
        self.norm_attn = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.ffn = FeedForward(d_model=c.d_model, d_ff=d_ff, activation=c.activation, dropout=c.act_dropout)
        self.norm_ffn = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)

    def _residual(self, x: Tensor, y: Tensor, norm: nn.Module) -> Tensor:
        return norm(x + (self.drop(y) if self.training else y))

    def forward(
        self,
        x: Tensor,
        plan: AttentionPlan,
        rel_keys: Tensor,
        *,
        memory: Tensor | None,
        cache: XLNetCache | None,
        layer: int,
        queries_only: bool = False,
    ) -> Tensor:
        """(B, T + M, D) -> (B, T + M, D), or -> the query rows (B, M, D) with ``queries_only``."""
        y = self.attn(x, plan, rel_keys, memory=memory, cache=cache, layer=layer, queries_only=queries_only)
        x = self._residual(x[:, plan.qlen :] if queries_only else x, y, self.norm_attn)
        return self._residual(x, self.ffn(x), self.norm_ffn)


class XLNetStack(nn.Module):
    """The parameters and the pass shared by :class:`XLNetEncoder` and :class:`XLNetDecoder`."""

    config_class: type[XLNetConfig] = XLNetConfig
    max_positions: int | None  # None: relative positions, no length limit

    def __init__(self, config: XLNetConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.d_model, self.vocab_size, self.max_positions = c.d_model, c.vocab_size, None
        head_dim, _ = c.dims
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.mask_emb = nn.Parameter(torch.zeros(1, 1, c.d_model))
        shared = None
        if not c.untie_r:
            shared = tuple(nn.Parameter(torch.zeros(c.n_heads, head_dim)) for _ in range(3))
        self.layers = nn.ModuleList(XLNetLayer(c, shared) for _ in range(c.n_layers))  # type: ignore[arg-type]
        self.drop = nn.Dropout(c.dropout)
        # the sequence summary (a pooler) serves sequence classification, which needs the bidirectional encoder
        self.pooled = c.add_pooler and c.attn_type == "bi"
        self.summary = Linear(c.d_model, c.d_model) if self.pooled and c.summary_use_proj else None
        self.summary_act = None if c.summary_activation == "identity" else get_activation(c.summary_activation)
        init_normal_(self, std=c.init_std)
        for name, p in self.named_parameters():
            if name == "mask_emb" or name.endswith(("_bias", "seg_embed")):
                nn.init.normal_(p, std=c.init_std)

    @property
    def blocks(self) -> list[XLNetLayer]:
        """The layers, typed."""
        return cast(list[XLNetLayer], list(self.layers))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def build_lm_head(self) -> nn.Module:
        """The LM head: a (tied) projection with a bias."""
        c = self.config
        head = LMHead(
            d_model=c.d_model,
            vocab_size=c.vocab_size,
            embedding=self.embed_tokens if c.tie_embeddings else None,
            bias=True,
        )
        if not c.tie_embeddings:
            nn.init.normal_(head.weight, std=c.init_std)
        return head

    def new_cache(self, batch: int, capacity: int, *, dtype: torch.dtype, device: torch.device) -> XLNetCache:
        c = self.config
        return XLNetCache(c.n_layers, batch, c.n_heads, c.dims[0], capacity, dtype=dtype, device=device)

    # ------------------------------------------------------------------ the pass
    def run(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        perm_mask: Tensor | None = None,
        target_mapping: Tensor | None = None,
        targets: Tensor | None = None,
        mems: Sequence[Tensor] | Tensor | None = None,
        cache: XLNetCache | None = None,
        use_mems: bool | None = None,
    ) -> StackOutput:
        """input_ids (B, T). ``targets`` (B, M) long, positions of the query rows, is the index form of a
        one-hot ``target_mapping`` (B, M, T); see :class:`XLNetEncoder` for the other inputs."""
        c = self.config
        B, T = input_ids.shape
        if mems is not None and cache is not None:
            raise InputError("pass either mems or a cache (past_key_values), not both")
        given = mems is not None
        mems = _check_mems(mems, c.n_layers, B, c.d_model) if mems is not None else None
        mlen = mems[0].shape[1] if mems is not None else (cache.length if cache is not None else 0)
        if targets is None and target_mapping is not None:
            targets, valid = _targets_from_mapping(target_mapping, B, T)
        else:
            valid = None
        plan = self._plan(B, T, mlen, attention_mask, token_type_ids, perm_mask, targets, valid)
        rel_keys = self._rel_keys(plan, cache, input_ids.device)
        h = self.embed_tokens(input_ids)
        M = targets.shape[1] if targets is not None else 0
        if M > 0:
            h = torch.cat([h, self.mask_emb.expand(B, M, -1).to(h.dtype)], dim=1)
        x = self.drop(h) if self.training else h  # (B, T + M, D)
        if use_mems is None:  # a caller that passes memory (an empty one too) gets the next one back
            use_mems = given or (c.use_mems_train if self.training else c.use_mems_eval)
        new_mems = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.blocks):
            memory = mems[i] if mems is not None else None
            if use_mems:
                new_mems.append(self._cache_mem(x[:, :T], memory))
            # with query rows, the output is the query stream: the last layer's content rows would go unused
            x = layer(x, plan, rel_keys[i], memory=memory, cache=cache, layer=i, queries_only=i == last and M > 0)
        if cache is not None:
            cache.advance(T)
        if self.training:
            x = self.drop(x)
        if M > 0:
            return StackOutput(None, x, tuple(new_mems) or None, None)
        pooled = self._summary(x, attention_mask) if self.pooled else None
        return StackOutput(x, None, tuple(new_mems) or None, pooled)

    def _cache_mem(self, layer_input: Tensor, memory: Tensor | None) -> Tensor:
        """The next memory of one layer: (the first reuse_len of) this segment's input after the old memory,
        its last mem_len positions, detached."""
        c = self.config
        new = layer_input[:, : c.reuse_len] if c.reuse_len is not None else layer_input
        if memory is not None:
            new = torch.cat([memory, new], dim=1)
        return (new[:, -c.mem_len :] if c.mem_len is not None else new).detach()

    def _summary(self, h: Tensor, attention_mask: Tensor | None) -> Tensor:
        """(B, T, D) -> (B, D): the last or first real token, or the mean over real tokens; projected, activated."""
        c = self.config
        mask = attention_mask[:, -h.shape[1] :] > 0 if attention_mask is not None else None
        if c.summary_type == "mean":
            s = h.mean(1) if mask is None else (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        elif mask is None:
            s = h[:, -1] if c.summary_type == "last" else h[:, 0]
        else:
            pos = torch.arange(h.shape[1], device=h.device).expand_as(mask)
            idx = (
                pos.masked_fill(~mask, -1).amax(1)
                if c.summary_type == "last"
                else pos.masked_fill(~mask, 1 << 30).amin(1)
            )
            s = h[torch.arange(h.shape[0], device=h.device), idx.clamp(0, h.shape[1] - 1)]
        if self.summary is not None:
            s = self.summary(s)
        return self.summary_act(s) if self.summary_act is not None else s

    def _rel_keys(self, plan: AttentionPlan, cache: XLNetCache | None, device: torch.device) -> list[Tensor]:
        """Per layer, the position keys (halves, H, hd, R) of distances klen .. -qlen + 1. A cache keeps them for
        a range of distances, so each step slices instead of projecting encodings again."""
        c = self.config
        klen, qlen = plan.klen, plan.qlen
        if cache is None or self.training:
            dist = relative_distances(klen, qlen, clamp_len=c.clamp_len, halves=plan.halves, device=device)
            pos_emb = sinusoids(dist, c.d_model).to(self.mask_emb.dtype)
            if self.training:
                pos_emb = self.drop(pos_emb)
            return [layer.attn.position_keys(pos_emb) for layer in self.blocks]
        bottom = cache.rel_top - (cache.rel_keys[0].shape[-1] - 1) if cache.rel_keys else 0
        if not cache.rel_keys or cache.rel_top < klen or bottom > 1 - qlen or cache.rel_keys[0].shape[0] != plan.halves:
            top = max(klen, cache.capacity)
            dist = relative_distances(top, max(qlen, 1), clamp_len=c.clamp_len, halves=plan.halves, device=device)
            pos_emb = sinusoids(dist, c.d_model).to(self.mask_emb.dtype)
            cache.rel_keys = [layer.attn.position_keys(pos_emb) for layer in self.blocks]
            cache.rel_top = top
        start = cache.rel_top - klen
        return [keys[..., start : start + klen + qlen] for keys in cache.rel_keys]

    def _plan(
        self,
        B: int,
        T: int,
        mlen: int,
        attention_mask: Tensor | None,
        token_type_ids: Tensor | None,
        perm_mask: Tensor | None,
        targets: Tensor | None,
        valid: Tensor | None,
    ) -> AttentionPlan:
        c = self.config
        halves = 2 if c.bi_data else 1
        if halves == 2 and B % 2:
            raise InputError(f"bi_data splits the batch into two halves; the batch of {B} rows is odd")
        K = mlen + T
        device = self.mask_emb.device
        block = None  # (B or 1, T, K) True: may not attend
        if c.attn_type == "uni":
            i, j = torch.arange(T, device=device)[:, None], torch.arange(K, device=device)[None]
            block = j > mlen + i
            if c.same_length:
                block = block | (j < i)
            block = block[None]
        if attention_mask is not None:
            keys = _key_mask(attention_mask, B, T, mlen)
            if keys is not None:
                block = ~keys[:, None] if block is None else block | ~keys[:, None]
        if perm_mask is not None:
            if tuple(perm_mask.shape) != (B, T, T):
                raise InputError(
                    f"perm_mask must have shape (batch, length, length) = {(B, T, T)}, got {tuple(perm_mask.shape)}"
                )
            blocked = F.pad(perm_mask > 0, (mlen, 0))
            block = blocked if block is None else block | blocked
        plan = AttentionPlan(qlen=T, mlen=mlen, halves=halves, targets=targets)
        if valid is not None and not bool(valid.all()):
            plan.target_valid = valid[:, None, :, None].to(self.mask_emb.dtype)
        if block is not None:
            block = block.expand(B, T, K)
            if targets is not None:
                plan.block_g = block.gather(1, targets[:, :, None].expand(-1, -1, K))[:, None]
            diag = torch.arange(T, device=device)[:, None] + mlen == torch.arange(K, device=device)
            plan.block_h = (block & ~diag)[:, None]  # the content stream always sees its own token
        if token_type_ids is not None:
            if tuple(token_type_ids.shape) != (B, T):
                raise InputError(f"token_type_ids has shape {tuple(token_type_ids.shape)}, expected {(B, T)}")
            # memory positions count as segment 0; only (in)equality of segment ids matters
            other = token_type_ids[:, :, None] != F.pad(token_type_ids, (mlen, 0))[:, None, :]  # (B, T, K)
            plan.seg_h = other[:, None]
            if targets is not None:
                plan.seg_g = other.gather(1, targets[:, :, None].expand(-1, -1, K))[:, None]
        return plan


def _check_mems(mems: Sequence[Tensor] | Tensor, n_layers: int, batch: int, d_model: int) -> Sequence[Tensor] | None:
    """Per-layer memory (B, mlen, D) from a sequence of them or from one stacked (n_layers, B, mlen, D) tensor;
    ``None`` for an empty tensor (no memory yet: a recurrent run's first segment)."""
    if isinstance(mems, Tensor):
        if mems.numel() == 0:
            return None
        if mems.dim() != 4 or mems.shape[0] != n_layers:
            raise InputError(
                f"mems as one tensor must be the per-layer memories stacked, (n_layers = {n_layers}, batch, "
                f"memory length, d_model); got {tuple(mems.shape)}"
            )
        mems = mems.unbind(0)
    if not isinstance(mems, (list, tuple)) or len(mems) != n_layers or not all(isinstance(m, Tensor) for m in mems):
        raise InputError(
            f"mems must be a sequence of {n_layers} tensors (one per layer), as a previous call returned, "
            f"or them stacked into one tensor ({n_layers}, batch, memory length, d_model)"
        )
    shape = tuple(mems[0].shape)
    if len(shape) != 3 or shape[0] != batch or shape[2] != d_model or any(tuple(m.shape) != shape for m in mems):
        raise InputError(
            f"mems must be {n_layers} tensors of shape (batch, memory length, d_model) with batch {batch} and "
            f"d_model {d_model}; got shapes {[tuple(m.shape) for m in mems][:3]}"
        )
    return mems


def _targets_from_mapping(target_mapping: Tensor, B: int, T: int) -> tuple[Tensor, Tensor]:
    """One-hot (B, M, T) -> (positions (B, M) long, which rows are real (B, M) bool)."""
    tm = target_mapping
    if tm.dim() != 3 or tm.shape[0] != B or tm.shape[2] != T:
        raise InputError(
            f"target_mapping must have shape (batch, targets, length) = ({B}, M, {T}), got {tuple(tm.shape)}"
        )
    if not bool(((tm == 0) | (tm == 1)).all()) or bool((tm.sum(-1) > 1).any()):
        raise InputError("target_mapping rows must be one-hot (one target position) or all zero (padding)")
    return tm.argmax(-1), tm.sum(-1) > 0


def _key_mask(attention_mask: Tensor, B: int, T: int, mlen: int) -> Tensor | None:
    """(B, mlen + T) True for keys that may be seen, or None when all may; a (B, T) mask leaves memory visible."""
    if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] not in (T, mlen + T):
        raise InputError(
            f"attention_mask must have shape (batch, length) = {(B, T)} or cover the memory too, {(B, mlen + T)}; "
            f"got {tuple(attention_mask.shape)}"
        )
    keys = attention_mask > 0
    if bool(keys.all()):
        return None
    return F.pad(keys, (mlen + T - keys.shape[1], 0), value=True)


class XLNetEncoder(XLNetStack, Encoder[XLNetConfig]):
    """Bidirectional XLNet (``attn_type = "bi"``): ids (B, T) -> content states (B, T, D), or the query
    stream (B, M, D) when ``target_mapping`` is given."""

    provides = PROVIDES_BI

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        perm_mask: Tensor | None = None,
        target_mapping: Tensor | None = None,
        mems: Sequence[Tensor] | Tensor | None = None,
        use_mems: bool | None = None,
    ) -> EncoderOutput:
        """Args, as in transformers:
            attention_mask: (B, T) 1 = token, 0 = padding (memory stays visible), or (B, mlen + T).
            token_type_ids: (B, T) segment ids; only whether two tokens share a segment matters.
            perm_mask: (B, T, T) 1 where position i may not see position j.
            target_mapping: (B, M, T) one-hot rows: query row m predicts position j (an all-zero row is padding).
            mems: per layer (B, mlen, D), the memory a previous call returned in ``extra["mems"]``, or them
                stacked (n_layers, B, mlen, D); an empty tensor is no memory yet.
            use_mems: return the new memory (default: when ``mems`` is given, else the config's
                use_mems_eval / use_mems_train).
            position_ids: not used; XLNet's positions are relative.

        ``last_hidden_state`` is the query stream (B, M, D) when ``target_mapping`` is given (its last
        layer then skips the content rows, which nothing reads), else the content stream (B, T, D) with
        the sequence summary in ``pooler_output``; ``extra["mems"]`` holds the new memory when returned.
        """
        if position_ids is not None:
            raise InputError("XLNet's positions are relative: it takes no position_ids")
        out = self.run(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            perm_mask=perm_mask,
            target_mapping=target_mapping,
            mems=mems,
            use_mems=use_mems,
        )
        hidden = out.query if out.query is not None else out.content
        assert hidden is not None
        return EncoderOutput(last_hidden_state=hidden, pooler_output=out.pooled, extra=_extra(out))


class XLNetDecoder(XLNetStack, Decoder[XLNetConfig]):
    """Causal XLNet (``attn_type = "uni"``): ids (B, T) -> states (B, T, D) with a key/value cache;
    the two-stream and memory inputs as for :class:`XLNetEncoder`."""

    provides = PROVIDES_UNI
    is_causal = True
    cross_attention = False

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cache: KVCache | None = None,
        token_type_ids: Tensor | None = None,
        perm_mask: Tensor | None = None,
        target_mapping: Tensor | None = None,
        mems: Sequence[Tensor] | Tensor | None = None,
        use_mems: bool | None = None,
    ) -> DecoderOutput:
        """``attention_mask`` covers the cached and new positions (or the new ones only); ``position_ids`` are
        not used (the positions are relative, so a left-padded row decodes as it would alone)."""
        if memory is not None:
            raise InputError("the XLNet decoder has no cross-attention; it cannot read an encoder memory")
        if cache is not None and not isinstance(cache, XLNetCache):
            raise InputError("the XLNet decoder needs the cache its new_cache() makes (past_key_values of a call)")
        out = self.run(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            perm_mask=perm_mask,
            target_mapping=target_mapping,
            mems=mems,
            cache=cache,
            use_mems=use_mems,
        )
        hidden = out.query if out.query is not None else out.content
        assert hidden is not None
        return DecoderOutput(last_hidden_state=hidden, cache=cache, extra=_extra(out))


def _extra(out: StackOutput) -> dict[str, object]:
    return {"mems": out.mems} if out.mems is not None else {}


class XLNet(ModelFamily[XLNetConfig]):
    """The XLNet family: an encoder (``attn_type = "bi"``) or a causal decoder (``"uni"``) with XLNet's LM head."""

    config_class = XLNetConfig

    @classmethod
    def provides_for(cls, config: XLNetConfig) -> frozenset[str]:
        return config.provides()

    @classmethod
    def build_backbone(cls, config: XLNetConfig) -> Backbone:
        stack: XLNetStack = XLNetDecoder(config) if config.attn_type == "uni" else XLNetEncoder(config)
        return Backbone(
            encoder=stack if isinstance(stack, XLNetEncoder) else None,
            decoder=stack if isinstance(stack, XLNetDecoder) else None,
            lm_head=stack.build_lm_head(),
            provides=cls.provides_for(config),
            special_tokens={"bos": config.bos_token_id, "eos": config.eos_token_id, "pad": config.pad_token_id},
            decoding="xlnet_plm",
        )
