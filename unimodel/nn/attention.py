"""Multi-head attention on ``scaled_dot_product_attention`` with a preallocated KV cache.

Shapes: B batch, T query length, S key length, H heads, hd head size, D model width.
Masks are boolean with True = may attend, broadcast to ``(B, 1, T, S)``, or
additive float biases of the same shape (T5's relative bias).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimodel.nn.linear import Linear
from unimodel.nn.sync import mask_is_trivial


class KVCache:
    """Key/value buffers for every self-attention layer of one decoder stack.

    Buffers are allocated once for ``capacity`` positions and written in place;
    attention reads the filled prefix as a view, so a decoding step copies only
    the new token's keys and values. Cross-attention keys/values (computed once
    from the encoder memory) live in :attr:`cross`.
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
        shape = (n_layers, batch, n_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # positions filled, shared by all layers
        self.cross: list[tuple[Tensor, Tensor] | None] = [None] * n_layers
        self.extra: dict[str, Tensor] = {}  # per-stack state, e.g. a cached position bias
        self.copied_bytes = 0  # bytes :meth:`reorder` has written (rows moved between beams)

    #: keys/values of the decoder's own positions are kept (see :class:`MemoryCache` for one that keeps none)
    holds_self = True

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v`` (B, H, t, hd) after the filled prefix; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.capacity:
            self._grow(end)
        # One layer view, then narrow: fewer indexing ops on the per-token decoding path.
        k_all, v_all = self.k[layer], self.v[layer]
        k_all.narrow(2, start, end - start).copy_(k)
        v_all.narrow(2, start, end - start).copy_(v)
        return k_all.narrow(2, 0, end), v_all.narrow(2, 0, end)

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as filled (the decoder calls this after its layers)."""
        self.length += n

    def _grow(self, needed: int) -> None:
        new_cap = max(needed, 2 * self.capacity)
        pad = new_cap - self.capacity
        self.k = F.pad(self.k, (0, 0, 0, pad))
        self.v = F.pad(self.v, (0, 0, 0, pad))

    def reorder(self, index: Tensor) -> None:
        """Rows now continue rows ``index`` (N,) (beam search), in place.

        Only the rows that changed are copied, and of the self-attention keys and values only the filled
        prefix: a row whose beam kept its place costs nothing, and a step in which no beam moved copies
        nothing. The sources are read before any row is written, so ``index`` may repeat and permute rows.
        Entries of :attr:`extra` whose first dimension is the batch are reordered the same way;
        batch-independent ones (first dimension 1) are kept. :attr:`copied_bytes` counts the bytes written.
        """
        rows = torch.arange(index.shape[0], device=index.device)
        moved = (index != rows).nonzero().flatten()  # (M,) one host sync; beam search syncs each step anyway
        if moved.numel() == 0:
            return
        sources = index.index_select(0, moved)
        batch = self.batch_size
        for buf in (self.k, self.v):  # (L, B, H, capacity, hd): the filled prefix of the moved rows
            filled = buf.narrow(3, 0, self.length)
            self._move(filled, 1, moved, sources)
        for kv in self.cross:
            if kv is not None:
                for t in kv:  # (B, H, S, hd)
                    self._move(t, 0, moved, sources)
        for t in self.extra.values():
            if t.shape[0] == batch:
                self._move(t, 0, moved, sources)

    def _move(self, t: Tensor, dim: int, rows: Tensor, sources: Tensor) -> None:
        """``t[rows] = t[sources]`` along ``dim``, in place, reading every source first."""
        picked = t.index_select(dim, sources)  # (..., M, ...): the only temporary, as large as the moved rows
        t.index_copy_(dim, rows, picked)
        self.copied_bytes += picked.numel() * picked.element_size()


class MemoryCache(KVCache):
    """The encoder memory's cross-attention keys/values, kept across calls of a non-causal decoder.

    A non-causal decoder (mask-predict) runs its whole input again at every call, so it
    has no self-attention state to keep; what repeats from call to call is the projection
    of the same encoder memory into each layer's keys and values. Passed as ``cache`` to
    a decoder that provides ``memory_cache``, this computes them at the first call and
    reuses them after: self-attention sees only the call's own positions
    (:meth:`update` returns them unchanged) and nothing is counted as filled. The
    memory given to later calls is not read again, so a cache belongs to one memory.
    """

    #: a self-attention key/value cache (False: this one keeps cross-attention keys/values only)
    holds_self = False

    def __init__(self, *, device: torch.device | str = "cpu") -> None:
        super().__init__(0, 0, 1, 1, 0, device=device)
        self.cross = _Slots()

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Self-attention keeps nothing: the call's own keys and values, as they are."""
        return k, v

    def advance(self, n: int) -> None:
        """Nothing is filled: every call is a whole input."""

    def reorder(self, index: Tensor) -> None:
        """Rows now read the memory of rows ``index`` (N,)."""
        for layer, kv in enumerate(self.cross):
            if kv is not None:
                self.cross[layer] = (kv[0].index_select(0, index), kv[1].index_select(0, index))


class _Slots(list[tuple[Tensor, Tensor] | None]):
    """One slot per layer, added as layers write to them; an unwritten slot reads ``None``."""

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor] | None:  # type: ignore[override]
        return super().__getitem__(i) if i < len(self) else None

    def __setitem__(self, i: int, value: tuple[Tensor, Tensor] | None) -> None:  # type: ignore[override]
        if i >= len(self):
            self.extend([None] * (i + 1 - len(self)))
        super().__setitem__(i, value)


def attention_mask_for(
    *,
    key_mask: Tensor | None,
    q_len: int,
    k_len: int,
    causal: bool,
    device: torch.device,
) -> tuple[Tensor | None, bool]:
    """The SDPA mask for a step: ``(mask, is_causal)``.

    ``key_mask`` is the (B, S) padding mask (1 = real token) over all keys,
    cached ones included. Returns ``(None, True)`` or ``(None, False)`` when SDPA's
    fast paths apply. A row with no visible key (a left-pad query) is allowed to
    see every key, so its output is finite; such rows are padding and ignored.
    """
    if mask_is_trivial(key_mask):  # read only where reading is free; elsewhere the mask is built
        if not causal or q_len == 1:
            return None, False
        if q_len == k_len:
            return None, True
        key_mask = None
    mask = None
    if causal:
        q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        mask = torch.arange(k_len, device=device)[None, :] <= q_pos  # (T, S)
        mask = mask[None, None]
    if key_mask is not None:
        km = key_mask[:, None, None, :].bool()
        mask = km if mask is None else mask & km
    assert mask is not None
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask, False


def select_queries(q: Tensor, mask: Tensor | None, queries: Tensor) -> tuple[Tensor, Tensor | None, int]:
    """The rows of ``queries`` (B, K) in ``q`` (B, H, T, hd) and in ``mask`` (b, h, T or 1, S), and K."""
    B, H, _T, hd = q.shape
    K = queries.shape[1]
    q = q.gather(2, queries[:, None, :, None].expand(B, H, K, hd))
    if mask is not None and mask.shape[-2] != 1:  # a mask per query row (T5's position bias): keep those rows
        mask = mask.expand(B, -1, -1, -1)
        mask = mask.gather(2, queries[:, None, :, None].expand(B, mask.shape[1], K, mask.shape[-1]))
    return q, mask, K


def gather_positions(x: Tensor, positions: Tensor) -> Tensor:
    """x (B, T, D) at ``positions`` (B, K) -> (B, K, D)."""
    return x.gather(1, positions[:, :, None].expand(-1, -1, x.shape[-1]))


class Attention(nn.Module):
    """Multi-head attention, self or cross.

    Args:
        d_model: width of the query input (and output).
        n_heads: number of heads.
        head_dim: size of each head; ``d_model // n_heads`` by default.
        kv_dim: width of the key/value input for cross-attention (``d_model`` by default).
        bias: whether projections carry biases.
        scale: score scale; ``head_dim ** -0.5`` by default (T5 uses 1.0).
        dropout: dropout on attention probabilities while training.
        cross: keys and values come from a memory, not from the input.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        head_dim: int | None = None,
        kv_dim: int | None = None,
        bias: bool = True,
        scale: float | None = None,
        dropout: float = 0.0,
        cross: bool = False,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim or d_model // n_heads
        self.inner = self.n_heads * self.head_dim
        self.scale = scale
        self.dropout = dropout
        self.cross = cross
        if cross:
            self.q = Linear(d_model, self.inner, bias=bias)
            # applied once per generation, to the whole encoder memory: no decoding copy for it
            self.kv = nn.Linear(kv_dim or d_model, 2 * self.inner, bias=bias)
        else:
            self.qkv = Linear(d_model, 3 * self.inner, bias=bias)
        self.out = Linear(self.inner, d_model, bias=bias)

    def _heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of an encoder memory (B, S, D_kv), each (B, H, S, hd)."""
        k, v = self.kv(memory).split(self.inner, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        layer: int = 0,
        memory: Tensor | None = None,
        queries: Tensor | None = None,
    ) -> Tensor:
        """x (B, T, D) -> (B, T, D). ``memory`` (B, S, D_kv) for cross-attention.

        ``queries`` (B, K) long, self-attention only: the positions whose outputs are wanted. Every position
        still serves as a key and value; only these K ask, so the output is (B, K, D), row ``j`` that of
        position ``queries[:, j]``. A mask with a query axis keeps the rows of those positions.
        """
        B, T, _ = x.shape
        if self.cross:
            q = self._heads(self.q(x))
            kv = cache.cross[layer] if cache is not None else None
            if kv is None:
                if memory is None:
                    raise ValueError("cross-attention needs an encoder memory")
                kv = self.memory_kv(memory)
                if cache is not None:
                    cache.cross[layer] = kv
            k, v = kv
        else:
            # [q | k | v] along the last dim -> three (B, H, T, hd) views in one reshape
            if T == 1:  # one decoding step: each view is already head-major, so SDPA reads it as it is
                q, k, v = self.qkv(x).view(B, 3, self.n_heads, 1, self.head_dim).unbind(1)
            else:
                qkv = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim)
                q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            if cache is not None:
                k, v = cache.update(layer, k, v)
            if queries is not None:
                if is_causal and mask is None:
                    raise ValueError("attention over chosen queries takes an explicit mask, not is_causal")
                q, mask, T = select_queries(q, mask, queries)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None,
            scale=self.scale,
        )  # (B, H, T, hd)
        return self.out(y.view(B, T, self.inner) if T == 1 else y.transpose(1, 2).reshape(B, T, self.inner))
