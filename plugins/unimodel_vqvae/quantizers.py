"""Quantizers: continuous vectors (N, D) -> discrete codes (N,) and their straight-through latents (N, D).

Two kinds, chosen by the model config:

- :class:`VectorQuantizer`: a learned codebook of K vectors, nearest-neighbour
  lookup (Euclidean, or cosine on unit vectors), straight-through gradients, a
  commitment loss, EMA codebook updates with Laplace smoothing, k-means
  initialisation on the first training batch and dead-code restart; optionally
  in a low-dimensional code space reached by linear projections in and out.
- :class:`FiniteScalarQuantizer` (FSQ): each of a few projected dimensions is
  bounded and rounded to one of ``levels[i]`` values; the code is the
  mixed-radix number of the digits. No codebook to learn, no auxiliary loss.

Codebook state (EMA counts and sums, steps since each code was last used, the
initialised flag) is held in buffers, so it is saved and loaded with the
checkpoint; it changes only in training mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Quantized:
    """What a quantizer returns for N input vectors of width D.

    ``latents``: (N, D) the quantised vectors in the input space, carrying the
    straight-through gradient to the input. ``codes``: (N,) long code ids.
    ``loss``: scalar, the weighted auxiliary term to add to the training loss
    (``commitment_weight * commitment`` for VQ, 0 for FSQ). ``commitment``:
    scalar, the unweighted mean squared distance between the (projected) input
    and its code, without gradient to the codebook.
    """

    latents: Tensor
    codes: Tensor
    loss: Tensor
    commitment: Tensor


class Quantizer(nn.Module):
    """Interface of the quantizers: ``num_codes``, :meth:`forward` and :meth:`decode`."""

    num_codes: int

    def forward(self, x: Tensor, *, update: bool = True) -> Quantized:  # pragma: no cover - interface
        """x (N, D) -> :class:`Quantized`. ``update``: allow codebook updates (they happen in training mode only)."""
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:  # pragma: no cover - interface
        """codes (N,) long -> latents (N, D), the vectors :meth:`forward` gives for those codes."""
        raise NotImplementedError


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def laplace_smoothed(counts: Tensor, eps: float) -> Tensor:
    """Counts (K,) with additive smoothing that keeps their total: ``(c + eps) / (n + K * eps) * n``.

    An empty cluster gets a small positive count, so dividing its EMA sum by it never divides by zero.
    """
    n = counts.sum()
    return (counts + eps) / (n + counts.numel() * eps) * n


class VectorQuantizer(Quantizer):
    """A codebook of ``codebook_size`` vectors updated by exponential moving averages.

    Args:
        dim: width D of the vectors to quantise.
        codebook_size: K, the number of codes.
        code_dim: width of the code space; when set and different from ``dim``,
            inputs are projected to it (a linear map) and codes back (another).
        cosine: compare unit vectors by cosine similarity (inputs and codes are
            L2-normalised) instead of Euclidean distance.
        commitment_weight: beta of ``beta * ||z - sg(e)||^2``.
        decay: EMA decay of the per-code counts and sums.
        eps: Laplace smoothing of the counts.
        kmeans_init: initialise the codebook by k-means (k-means++ seeding) on the first training batch.
        kmeans_iters: Lloyd iterations of that k-means.
        dead_code_steps: a code unused for this many consecutive training steps is
            re-seeded from an encoder output of the current batch (one its code fits
            badly, see :meth:`restart_dead_codes_`); 0 disables restarts.

    Buffers: ``embed`` (K, d) the codebook; ``cluster_size`` (K,) EMA of the
    number of vectors assigned per step; ``embed_sum`` (K, d) EMA of their sum;
    ``unused_steps`` (K,) training steps since each code was last assigned;
    ``initialised`` whether k-means has run (always true without k-means).
    """

    embed: Tensor
    cluster_size: Tensor
    embed_sum: Tensor
    unused_steps: Tensor
    initialised: Tensor

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        code_dim: int | None = None,
        cosine: bool = False,
        commitment_weight: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_steps: int = 0,
    ) -> None:
        super().__init__()
        d = code_dim or dim
        self.num_codes = codebook_size
        self.cosine = cosine
        self.commitment_weight = commitment_weight
        self.decay = decay
        self.eps = eps
        self.kmeans_iters = kmeans_iters
        self.dead_code_steps = dead_code_steps
        projected = d != dim
        self.project_in: nn.Module = nn.Linear(dim, d) if projected else nn.Identity()
        self.project_out: nn.Module = nn.Linear(d, dim) if projected else nn.Identity()
        # registered before they are filled, so unimodel's memory bound sees a codebook too large before it is written
        self.register_buffer("embed", torch.empty(codebook_size, d))
        self.register_buffer("embed_sum", torch.empty(codebook_size, d))
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("unused_steps", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initialised", torch.tensor(not kmeans_init))
        with torch.no_grad():
            self.embed.normal_()
            if cosine:
                self.embed.copy_(l2norm(self.embed))
            self.embed_sum.copy_(self.embed)

    # ------------------------------------------------------------------ lookup
    def nearest(self, z: Tensor, embed: Tensor | None = None) -> Tensor:
        """Index (N,) of the code nearest to each row of z (N, d)."""
        e = self.embed if embed is None else embed
        if self.cosine:
            return (z @ e.t()).argmax(dim=-1)
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; the first term does not change the argmin
        scores = torch.addmm(e.pow(2).sum(-1), z, e.t(), beta=1.0, alpha=-2.0)  # (N, K)
        return scores.argmin(dim=-1)

    def forward(self, x: Tensor, *, update: bool = True) -> Quantized:
        z = self.project_in(x).float()  # (N, d); distances and EMA statistics in fp32 under autocast too
        if self.cosine:
            z = l2norm(z)
        learning = self.training and update
        if learning and not bool(self.initialised):
            self.kmeans_init_(z.detach())
        codes = self.nearest(z.detach())
        q = F.embedding(codes, self.embed)  # (N, d), no gradient into the codebook: EMA learns it
        commitment = F.mse_loss(z, q)
        if learning:
            self.ema_update_(z.detach(), codes)
        z_q = z + (q - z).detach()  # straight-through: the gradient of z_q flows to z unchanged
        return Quantized(
            latents=self.project_out(z_q).to(x.dtype),
            codes=codes,
            loss=self.commitment_weight * commitment,
            commitment=commitment.detach(),
        )

    def decode(self, codes: Tensor) -> Tensor:
        return self.project_out(F.embedding(codes, self.embed))

    # ------------------------------------------------------------------ learning
    @torch.no_grad()
    def ema_update_(self, z: Tensor, codes: Tensor) -> None:
        """One EMA step from vectors z (N, d) assigned to ``codes`` (N,); then restart dead codes."""
        counts = torch.bincount(codes, minlength=self.num_codes).to(z.dtype)  # (K,)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, z)  # (K, d)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        embed = self.embed_sum / laplace_smoothed(self.cluster_size, self.eps).unsqueeze(1)
        self.embed.copy_(l2norm(embed) if self.cosine else embed)
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        if self.dead_code_steps > 0:
            self.restart_dead_codes_(z, codes)

    @torch.no_grad()
    def restart_dead_codes_(self, z: Tensor, codes: Tensor) -> int:
        """Re-seed every code unused for ``dead_code_steps`` steps with a row of z (N, d).

        Rows are drawn without replacement (distinct while N allows), with probability
        proportional to their squared distance to their code ``codes`` (N,), as k-means++
        draws its seeds: new codes go where the codebook fits the batch worst. A
        re-seeded code starts with an EMA count of 1 and an EMA sum equal to its new
        vector. Returns the number of codes re-seeded.
        """
        dead = (self.unused_steps >= self.dead_code_steps).nonzero().squeeze(1)
        n_dead = dead.numel()
        if n_dead == 0:
            return 0
        error = (z - self.embed[codes]).pow(2).sum(-1)
        # a floor keeps every row drawable, so n_dead <= N distinct rows always exist
        picks = torch.multinomial(error.clamp_min(1e-12), n_dead, replacement=n_dead > z.shape[0])
        seeds = z[picks]
        self.embed[dead] = seeds
        self.embed_sum[dead] = seeds
        self.cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0
        return n_dead

    @torch.no_grad()
    def kmeans_init_(self, z: Tensor) -> None:
        """Set the codebook to k-means centroids of z (N, d), seeded by k-means++.

        The EMA state starts from the clusters found: counts (at least 1, so an
        empty cluster keeps its vector) and sums = centroid * count.
        """
        k = self.num_codes
        means = kmeans_plus_plus(z, k)
        counts = torch.zeros(k, dtype=z.dtype, device=z.device)
        for _ in range(max(1, self.kmeans_iters)):
            codes = self.nearest(z, means)
            counts = torch.bincount(codes, minlength=k).to(z.dtype)
            sums = torch.zeros_like(means).index_add_(0, codes, z)
            updated = sums / counts.clamp_min(1).unsqueeze(1)
            if self.cosine:
                updated = l2norm(updated)
            means = torch.where((counts > 0).unsqueeze(1), updated, means)
        weight = counts.clamp_min(1)
        self.embed.copy_(means)
        self.cluster_size.copy_(weight)
        self.embed_sum.copy_(means * weight.unsqueeze(1))
        self.unused_steps.zero_()
        self.initialised.fill_(True)


def kmeans_plus_plus(z: Tensor, k: int) -> Tensor:
    """K rows of z (N, d) chosen by k-means++ (Arthur and Vassilvitskii 2007): the first uniformly, each
    next one with probability proportional to its squared distance to the nearest row chosen so far.

    Well-separated clusters each get a seed, which plain random rows often miss.
    Returns (K, d); rows repeat only when z has fewer than K distinct rows.
    """
    n = z.shape[0]
    chosen = torch.empty(k, dtype=torch.long, device=z.device)
    chosen[0] = torch.randint(0, n, (1,), device=z.device)
    nearest = (z - z[chosen[0]]).pow(2).sum(-1)  # (N,) squared distance to the nearest seed
    for i in range(1, k):
        total = nearest.sum()
        if total > 0:
            chosen[i] = torch.multinomial(nearest / total, 1)
        else:  # every row coincides with a seed
            chosen[i] = torch.randint(0, n, (1,), device=z.device)
        torch.minimum(nearest, (z - z[chosen[i]]).pow(2).sum(-1), out=nearest)
    return z[chosen].clone()


class FiniteScalarQuantizer(Quantizer):
    """Finite scalar quantization (Mentzer et al. 2023): project to ``len(levels)`` dims, bound each
    with tanh to ``levels[i]`` values, round with a straight-through gradient, project back.

    The code of a vector is the mixed-radix number of its digits (digit i in
    ``[0, levels[i])``, digit 0 least significant), so there are ``prod(levels)`` codes.
    """

    levels: Tensor
    basis: Tensor

    def __init__(self, dim: int, levels: tuple[int, ...], *, eps: float = 1e-3) -> None:
        super().__init__()
        self.levels_list = tuple(int(n) for n in levels)
        self.num_codes = 1
        for n in self.levels_list:
            self.num_codes *= n
        self.eps = eps
        # derived from the config, so not saved in checkpoints
        self.register_buffer("levels", torch.tensor(self.levels_list, dtype=torch.long), persistent=False)
        basis = torch.cumprod(torch.tensor((1, *self.levels_list[:-1]), dtype=torch.long), dim=0)
        self.register_buffer("basis", basis, persistent=False)
        self.project_in = nn.Linear(dim, len(levels))
        self.project_out = nn.Linear(len(levels), dim)

    def bound(self, z: Tensor) -> Tensor:
        """z (N, L) -> values in an interval that rounds to exactly ``levels[i]`` integers per dimension.

        For an odd level count L the integers are -(L-1)/2 .. (L-1)/2; for an even one
        -L/2 .. L/2 - 1 (the half-step offset keeps the count right).
        """
        levels = self.levels.to(z.dtype)
        half = (levels - 1) * (1 + self.eps) / 2
        offset = (self.levels % 2 == 0).to(z.dtype) * 0.5
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def quantize(self, z: Tensor) -> Tensor:
        """z (N, L) -> rounded values scaled to about [-1, 1], straight-through."""
        bounded = self.bound(z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        half_width: Tensor = self.levels // 2
        return rounded / half_width.to(z.dtype)

    def codes_from_latents(self, zq: Tensor) -> Tensor:
        """Scaled rounded values (N, L) -> code ids (N,)."""
        half: Tensor = self.levels // 2
        digits = torch.round(zq * half).long() + half
        return (digits * self.basis).sum(-1)

    def latents_from_codes(self, codes: Tensor) -> Tensor:
        """Code ids (N,) -> scaled rounded values (N, L)."""
        digits = (codes.unsqueeze(-1) // self.basis) % self.levels
        half: Tensor = self.levels // 2
        return ((digits - half).float() / half.float()).to(self.project_out.weight.dtype)

    def forward(self, x: Tensor, *, update: bool = True) -> Quantized:
        zq = self.quantize(self.project_in(x).float())  # fp32: rounding at the level boundaries
        zero = zq.new_zeros(())
        return Quantized(
            latents=self.project_out(zq).to(x.dtype),
            codes=self.codes_from_latents(zq.detach()),
            loss=zero,
            commitment=zero,
        )

    def decode(self, codes: Tensor) -> Tensor:
        return self.project_out(self.latents_from_codes(codes))
