"""XLNet's relative attention, the plan every layer of one pass shares, and the memory cache.

A segment of T tokens attends over K = mlen + T keys: mlen memory positions (earlier
segments, or a cache while generating) in front of its own. Two kinds of query rows use
the same keys: the T content rows (a token sees itself) and the M query rows of the
query stream (a target sees its position, not its content). Scores are

    (q + r_w_bias) . k_j  +  (q + r_r_bias) . r[d]  +  (q + r_s_bias) . seg_embed[s]

scaled by head_dim ** -0.5, with d = (mlen + i) - j the relative distance of query
position i to key j and s whether the two lie in different segments. SDPA cannot add
the distance term, so the scores are formed here: the distance term for all rows is one
product with a table of encodings and a strided view (the relative shift), and the
query stream gathers the rows of its target positions only.

Shapes: B batch, H heads, hd head size, T segment length, M query rows, K keys,
R = K + T relative distances (K down to -T + 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimodel.nn import KVCache, Linear


@dataclass
class AttentionPlan:
    """What every layer's attention shares in one pass, built once by the stack.

    ``block_*`` are True where a query may not attend (broadcast over heads); ``seg_*``
    True where query and key lie in different segments; ``None`` means nothing of the kind.
    """

    qlen: int  # T, content rows
    mlen: int  # memory positions in front of the keys
    halves: int  # 2 with bi_data (forward and backward distances for the two halves of the batch), else 1
    targets: Tensor | None = None  # (B, M) long: the position of each query row
    target_valid: Tensor | None = None  # (B, 1, M, 1): 0 for padding query rows, None when all are real
    block_h: Tensor | None = None  # (B or 1, 1, T, K)
    block_g: Tensor | None = None  # (B, 1, M, K)
    seg_h: Tensor | None = None  # (B, 1, T, K)
    seg_g: Tensor | None = None  # (B, 1, M, K)
    _biases: dict[tuple[int, torch.dtype], Tensor] = field(default_factory=dict, repr=False)

    def block_bias(self, block: Tensor, dtype: torch.dtype) -> Tensor:
        """``block`` as an additive bias, -1e30 where blocked and 0 elsewhere, made once per pass.

        Adding it costs one pass over the scores and nothing in the backward pass (the gradient goes
        through unchanged), where ``masked_fill`` copies the scores forward and masks the gradient back.
        """
        key = (id(block), dtype)
        bias = self._biases.get(key)
        if bias is None:
            bias = torch.zeros(block.shape, dtype=dtype, device=block.device).masked_fill_(block, -1e30)
            self._biases[key] = bias
        return bias

    @property
    def klen(self) -> int:
        return self.mlen + self.qlen

    @property
    def n_queries(self) -> int:
        return 0 if self.targets is None else self.targets.shape[1]


def relative_distances(klen: int, qlen: int, *, clamp_len: int, halves: int, device: torch.device) -> Tensor:
    """(halves, R) distances klen, klen - 1, ..., -qlen + 1 (the backward half negated), clamped to
    ``[-clamp_len, clamp_len]`` when ``clamp_len > 0``."""
    fwd = torch.arange(klen, -qlen, -1, device=device, dtype=torch.float32)
    dist = torch.stack([fwd, -fwd]) if halves == 2 else fwd[None]
    return dist.clamp(-clamp_len, clamp_len) if clamp_len > 0 else dist


class XLNetCache(KVCache):
    """Keys and values of every layer's memory positions, written in place.

    Besides :class:`~unimodel.nn.attention.KVCache` (prefix, append, grow, reorder) it
    can drop positions from the end (:meth:`truncate`) or the front (:meth:`keep_last`,
    a bounded memory), keeps a key mask of its positions in ``extra["key_mask"]`` when
    rows are padded, and holds each layer's relative-position keys for a range of
    distances so that a step does not project the encodings again.
    """

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_heads: int,
        head_dim: int,
        capacity: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(n_layers, batch, n_heads, head_dim, capacity, dtype=dtype, device=device)
        self.rel_keys: list[Tensor] = []  # per layer (halves, H, hd, R): distances rel_top, rel_top - 1, ...
        self.rel_top = -1

    def reserve(self, needed: int) -> None:
        """Make room for ``needed`` positions."""
        if needed > self.capacity:
            self._grow(needed)

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` positions."""
        self.length = max(0, min(length, self.length))

    def keep_last(self, n: int) -> None:
        """Keep the last ``n`` positions (moved to the front)."""
        drop = self.length - n
        if drop <= 0:
            return
        for buf in (self.k, self.v):
            buf[:, :, :, :n] = buf[:, :, :, drop : self.length].clone()
        mask = self.extra.get("key_mask")
        if mask is not None:
            mask[:, :n] = mask[:, drop : self.length].clone()
        self.length = n

    def _grow(self, needed: int) -> None:
        super()._grow(needed)
        mask = self.extra.get("key_mask")
        if mask is not None and mask.shape[1] < self.capacity:
            self.extra["key_mask"] = F.pad(mask, (0, self.capacity - mask.shape[1]), value=True)


class RelativeAttention(nn.Module):
    """One layer's relative multi-head attention over memory and segment, for both streams.

    Projections carry no bias (as in XLNet); ``q`` serves both streams, ``kv`` reads the
    content stream and the memory, ``r`` maps relative encodings to position keys.

    Args:
        d_model, n_heads, head_dim: widths.
        dropout: on the attention probabilities while training.
        biases: the ``r_w_bias``, ``r_r_bias``, ``r_s_bias`` parameters (H, hd) to use
            (shared by every layer when XLNet's ``untie_r`` is false); own ones when ``None``.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        head_dim: int,
        dropout: float = 0.0,
        biases: tuple[nn.Parameter, nn.Parameter, nn.Parameter] | None = None,
    ) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.inner = n_heads * head_dim
        self.dropout = dropout
        self.q = Linear(d_model, self.inner, bias=False)
        self.kv = Linear(d_model, 2 * self.inner, bias=False)
        self.r = Linear(d_model, self.inner, bias=False)
        self.o = Linear(self.inner, d_model, bias=False)
        if biases is None:
            biases = tuple(nn.Parameter(torch.zeros(n_heads, head_dim)) for _ in range(3))  # type: ignore[assignment]
        assert biases is not None
        self.r_w_bias, self.r_r_bias, self.r_s_bias = biases
        self.seg_embed = nn.Parameter(torch.zeros(2, n_heads, head_dim))

    def position_keys(self, pos_emb: Tensor) -> Tensor:
        """Relative encodings (halves, R, D) -> position keys (halves, H, hd, R)."""
        P, R, _ = pos_emb.shape
        return self.r(pos_emb).view(P, R, self.n_heads, self.head_dim).permute(0, 2, 3, 1)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, H, mlen, hd) of memory states (B, mlen, D)."""
        B, L, _ = memory.shape
        k, v = self.kv(memory).view(B, L, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def forward(
        self,
        x: Tensor,
        plan: AttentionPlan,
        rel_keys: Tensor,
        *,
        memory: Tensor | None = None,
        cache: XLNetCache | None = None,
        layer: int = 0,
        queries_only: bool = False,
    ) -> Tensor:
        """x (B, T + M, D): the content rows, then the query rows. Returns ``o(attention)`` of every row,
        (B, T + M, D), or of the query rows only, (B, M, D), with ``queries_only`` (the content rows then
        serve as keys and values alone).

        ``rel_keys`` (halves, H, hd, R) from :meth:`position_keys`; ``memory`` (B, mlen, D)
        this layer's memory states, or ``cache`` holding their keys and values.
        """
        B, N, _ = x.shape
        T, H, hd = plan.qlen, self.n_heads, self.head_dim
        rows = x[:, T:] if queries_only else x
        q = self.q(rows).view(B, rows.shape[1], H, hd).transpose(1, 2)  # (B, H, rows, hd)
        k, v = self.memory_kv(x if N == T else x[:, :T])  # (B, H, T, hd) each
        if memory is not None:
            k_mem, v_mem = self.memory_kv(memory)
            k, v = torch.cat([k_mem, k], dim=2), torch.cat([v_mem, v], dim=2)
        elif cache is not None:
            k, v = cache.update(layer, k, v)
        parts = []
        if not queries_only:
            q_h = q if N == T else q[:, :, :T]
            parts.append(self._attend(q_h, k, v, rel_keys, plan, None, plan.block_h, plan.seg_h))
        if N > T:
            q_g = q if queries_only else q[:, :, T:]
            out_g = self._attend(q_g, k, v, rel_keys, plan, plan.targets, plan.block_g, plan.seg_g)
            parts.append(out_g if plan.target_valid is None else out_g * plan.target_valid)
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        return self.o(out.transpose(1, 2).reshape(B, out.shape[2], self.inner))

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        rel_keys: Tensor,
        plan: AttentionPlan,
        rows: Tensor | None,
        block: Tensor | None,
        seg: Tensor | None,
    ) -> Tensor:
        """q (B, H, n, hd) at the content positions (``rows`` None) or at ``rows`` (B, n); k, v (B, H, K, hd)."""
        B, H, n, hd = q.shape
        K = k.shape[2]
        scale = hd**-0.5
        q_pos = (q + self.r_r_bias[:, None]) * scale
        if rows is None:
            position = _relative_scores(q_pos, rel_keys, plan.qlen, K)
        else:
            position = _gathered_relative_scores(q_pos, rel_keys, plan.qlen, rows, K)
        q_content = ((q + self.r_w_bias[:, None]) * scale).reshape(B * H, n, hd)
        scores = torch.baddbmm(position.reshape(B * H, n, K), q_content, k.transpose(-1, -2).reshape(B * H, hd, K))
        # Out of place from here on: an in-place update of this view would make autograd copy the whole
        # score tensor twice more in the backward pass (to rebuild the view's base).
        scores = scores.view(B, H, n, K)
        if seg is not None:
            e = ((q + self.r_s_bias[:, None]) * scale) @ self.seg_embed.permute(1, 2, 0)  # (B, H, n, 2)
            scores = scores + torch.where(seg, e[..., 1:], e[..., :1])
        if block is not None:
            if scores.dtype == torch.float16:  # a bias could overflow to -inf; masked_fill stays finite
                scores = scores.masked_fill(block, -65500.0)
            else:
                scores = scores + plan.block_bias(block, scores.dtype)
        probs = scores.softmax(dim=-1)
        if self.training and self.dropout > 0:
            probs = F.dropout(probs, self.dropout)
        return probs @ v  # (B, H, n, hd)


#: content rows whose distance term is formed in one product: a block of rows needs only the
#: K + rows - 1 distances its rows reach, not all K + T of the segment
ROW_BLOCK = 32


def _position_product(q_pos: Tensor, rel_keys: Tensor) -> Tensor:
    """q_pos (B, H, n, hd) times the position keys (1, H, hd, w): (H, B, n, w), head-major, so that each
    head is one product over all rows of the batch (the keys are shared by the batch)."""
    B, H, n, hd = q_pos.shape
    rows = q_pos.transpose(0, 1).reshape(H, B * n, hd)
    return torch.bmm(rows, rel_keys[0]).view(H, B, n, rel_keys.shape[-1])


def _relative_scores(q_pos: Tensor, rel_keys: Tensor, qlen: int, K: int) -> Tensor:
    """The distance term (B, H, T, K) of the content rows.

    Row i's score for key j uses the key of distance (mlen + i) - j, entry ``qlen - i + j`` of the
    distances klen, klen - 1, ... (the relative shift). Rows a..b-1 reach only entries ``qlen - b + 1``
    to ``qlen - a + K - 1``, so the rows go in blocks: a block's product with those keys, read through
    a strided view (row r starts one entry before row r - 1), is its term.
    """
    B, H, T, _ = q_pos.shape
    P = rel_keys.shape[0]
    if P == 2:  # bi_data: the first half of the batch reads forward distances, the second backward ones
        half = B // 2
        return torch.cat(
            [_relative_scores(q_pos[p * half : (p + 1) * half], rel_keys[p : p + 1], qlen, K) for p in (0, 1)]
        )
    blocks = []
    for a in range(0, T, ROW_BLOCK):
        b = min(a + ROW_BLOCK, T)
        c, lo = b - a, qlen - b + 1
        part = _position_product(q_pos[:, :, a:b], rel_keys[..., lo : lo + K + c - 1])  # (H, B, c, K + c - 1)
        w = part.shape[-1]
        blocks.append(part.as_strided((B, H, c, K), (c * w, B * c * w, w - 1, 1), part.storage_offset() + c - 1))
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2)


def _gathered_relative_scores(q_pos: Tensor, rel_keys: Tensor, qlen: int, rows: Tensor, K: int) -> Tensor:
    """The distance term (B, H, n, K) of query rows at positions ``rows`` (B, n): each gathers its entries."""
    B, H, n, _ = q_pos.shape
    P = rel_keys.shape[0]
    if P == 2:
        half = B // 2
        parts = [
            _gathered_relative_scores(
                q_pos[p * half : (p + 1) * half], rel_keys[p : p + 1], qlen, rows[p * half : (p + 1) * half], K
            )
            for p in (0, 1)
        ]
        return torch.cat(parts)
    index = (qlen - rows)[:, None, :, None] + torch.arange(K, device=rows.device)
    return _position_product(q_pos, rel_keys).transpose(0, 1).gather(3, index.expand(B, H, n, K))
