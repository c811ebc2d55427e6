"""Quantizer maths: straight-through gradients, EMA updates, Laplace smoothing, k-means, dead-code restart,
cosine and low-dimensional codes, FSQ."""

from __future__ import annotations

import pytest
import torch
from unimodel_vqvae.quantizers import FiniteScalarQuantizer, VectorQuantizer, kmeans_plus_plus, laplace_smoothed


def vq_with_codebook(codes: list[list[float]], **kwargs) -> VectorQuantizer:
    """A VQ whose codebook (and EMA state: counts 1, sums = codes) is set by hand; k-means off."""
    vq = VectorQuantizer(len(codes[0]), len(codes), kmeans_init=False, **kwargs)
    with torch.no_grad():
        vq.embed.copy_(torch.tensor(codes))
        vq.embed_sum.copy_(torch.tensor(codes))
        vq.cluster_size.fill_(1.0)
    return vq


def test_forward_picks_the_nearest_code_and_passes_gradients_straight_through():
    vq = vq_with_codebook([[0.0, 0.0], [10.0, 10.0], [-5.0, 5.0]], commitment_weight=0.0).eval()
    x = torch.tensor([[1.0, -1.0], [8.0, 9.0], [-4.0, 6.0], [-1.0, 2.5]], requires_grad=True)
    q = vq(x)
    assert q.codes.tolist() == [0, 1, 2, 0]
    assert torch.equal(q.latents.detach(), vq.embed[q.codes])  # the value is the code ...
    w = torch.randn(4, 2)
    (q.latents * w).sum().backward()
    assert torch.equal(x.grad, w)  # ... the gradient is the identity (no gradient reaches the codebook buffer)


def test_commitment_loss_pulls_inputs_towards_their_codes():
    vq = vq_with_codebook([[0.0, 0.0], [4.0, 0.0]], commitment_weight=0.25).eval()
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]], requires_grad=True)
    q = vq(x)
    # mean over the 4 elements of (x - e)^2 = (1 + 0 + 1 + 4) / 4
    assert q.commitment.item() == pytest.approx(1.5)
    assert q.loss.item() == pytest.approx(0.25 * 1.5)
    q.loss.backward()
    assert torch.allclose(x.grad, 0.25 * 2 * (x.detach() - torch.tensor([[0.0, 0.0], [4.0, 0.0]])) / 4)


def test_ema_update_matches_a_hand_computation():
    vq = vq_with_codebook([[0.0, 0.0], [10.0, 10.0]], decay=0.5, eps=0.0).train()
    x = torch.tensor([[1.0, 1.0], [3.0, 1.0], [9.0, 9.0]])
    q = vq(x)
    assert q.codes.tolist() == [0, 0, 1]
    # counts (2, 1); sums (4, 2) and (9, 9); decay 0.5 from counts (1, 1) and sums = the codes
    assert vq.cluster_size.tolist() == [1.5, 1.0]
    assert vq.embed_sum.tolist() == [[2.0, 1.0], [9.5, 9.5]]
    assert torch.allclose(vq.embed, torch.tensor([[2 / 1.5, 1 / 1.5], [9.5, 9.5]]))
    # the forward used the codebook before the update
    assert q.latents.tolist() == [[0.0, 0.0], [0.0, 0.0], [10.0, 10.0]]


def test_laplace_smoothing_keeps_the_total_and_lifts_empty_codes():
    smoothed = laplace_smoothed(torch.tensor([0.0, 2.0, 2.0]), eps=0.1)
    # (c + 0.1) / (4 + 3 * 0.1) * 4
    assert torch.allclose(smoothed, torch.tensor([0.4 / 4.3, 8.4 / 4.3, 8.4 / 4.3]))
    assert smoothed.sum().item() == pytest.approx(4.0)
    # an EMA count that decayed to 0 does not turn its code into NaN
    vq = vq_with_codebook([[0.0, 0.0], [10.0, 10.0]], decay=0.5, eps=1e-5).train()
    with torch.no_grad():
        vq.cluster_size.copy_(torch.tensor([1.0, 0.0]))
        vq.embed_sum[1] = 0.0
    vq(torch.tensor([[0.5, 0.5]]))
    assert torch.isfinite(vq.embed).all()
    assert vq.embed[1].tolist() == [0.0, 0.0]


def test_codebook_changes_only_in_training_mode():
    vq = VectorQuantizer(4, 8, dead_code_steps=1)
    x = torch.randn(32, 4)
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq.eval()(x)
    vq.train()(x, update=False)
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())
    assert not bool(vq.initialised)
    vq(x)
    assert bool(vq.initialised) and not torch.equal(before["embed"], vq.embed)


def test_dead_codes_are_reseeded_from_the_batch_after_the_configured_steps():
    vq = vq_with_codebook([[0.0, 0.0], [50.0, 50.0], [60.0, 60.0], [70.0, 70.0]], dead_code_steps=2).train()
    x = torch.tensor([[0.1, 0.0], [0.0, 0.2], [0.3, 0.1], [0.2, 0.3], [0.1, 0.1]])
    vq(x)
    assert vq.unused_steps.tolist() == [0, 1, 1, 1]
    assert torch.allclose(vq.embed[1:], torch.tensor([[50.0, 50.0], [60.0, 60.0], [70.0, 70.0]]))  # not yet
    vq(x)
    rows = {tuple(r) for r in x.tolist()}
    seeded = [tuple(r) for r in vq.embed[1:].tolist()]
    assert all(r in rows for r in seeded) and len(set(seeded)) == 3  # distinct rows of the batch
    assert vq.embed_sum[1:].tolist() == [list(r) for r in seeded]
    assert vq.cluster_size[1:].tolist() == [1.0, 1.0, 1.0]
    assert vq.unused_steps.tolist() == [0, 0, 0, 0]
    codes = vq.eval()(x).codes
    assert len(set(codes.tolist())) > 1  # the re-seeded codes now take part


def test_restarts_draw_the_vectors_their_codes_fit_worst():
    vq = vq_with_codebook([[0.0, 0.0], [50.0, 50.0]], dead_code_steps=1, eps=0.0).train()
    with torch.no_grad():
        vq.cluster_size.fill_(1e6)  # the EMA barely moves code 0 away from the origin
    x = torch.tensor([[0.0, 0.0]] * 6 + [[3.0, -4.0]] + [[0.0, 0.0]] * 6)
    for seed in range(5):
        torch.manual_seed(seed)
        vq.unused_steps.fill_(0)
        vq(x)
        assert vq.embed[1].tolist() == [3.0, -4.0]  # the one row far from code 0


def test_without_restart_dead_codes_stay_dead():
    vq = vq_with_codebook([[0.0, 0.0], [50.0, 50.0]], dead_code_steps=0).train()
    x = torch.tensor([[0.1, 0.0], [0.0, 0.2]])
    for _ in range(5):
        vq(x)
    assert vq.unused_steps.tolist() == [0, 5]
    assert torch.allclose(vq.embed[1], torch.tensor([50.0, 50.0]), atol=1e-3)


def test_kmeans_init_on_the_first_training_batch_finds_the_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = (centres.repeat_interleave(40, 0) + 0.3 * torch.randn(120, 2, generator=g))[torch.randperm(120, generator=g)]
    vq = VectorQuantizer(2, 3, kmeans_init=True, kmeans_iters=5).train()
    vq(x)
    assert bool(vq.initialised)
    codes = vq.eval()(x).codes
    found = torch.stack([x[codes == j].mean(0) for j in range(3)])  # the centroid of each code's cluster
    assert torch.allclose(vq.embed, found, atol=1e-5)
    assert sorted(torch.bincount(codes, minlength=3).tolist()) == [40, 40, 40]
    assert sorted(vq.cluster_size.tolist()) == pytest.approx([40.0, 40.0, 40.0])
    assert torch.allclose(vq.embed_sum, vq.embed * vq.cluster_size.unsqueeze(1), atol=1e-4)


def test_kmeans_plus_plus_seeds_every_separated_cluster():
    x = torch.cat([torch.zeros(50, 2), torch.full((3, 2), 100.0), torch.full((2, 2), -100.0)])
    for seed in range(5):
        torch.manual_seed(seed)
        seeds = kmeans_plus_plus(x, 3)
        assert sorted(seeds[:, 0].tolist()) == [-100.0, 0.0, 100.0]


def test_cosine_codes_compare_directions_and_stay_unit_vectors():
    vq = VectorQuantizer(2, 2, cosine=True, kmeans_init=False, commitment_weight=0.0)
    with torch.no_grad():
        vq.embed.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        vq.embed_sum.copy_(vq.embed)
    # far from [1, 0] in Euclidean distance, but pointing its way
    q = vq.eval()(torch.tensor([[30.0, 1.0], [0.2, 0.3]]))
    assert q.codes.tolist() == [0, 1]
    assert q.latents.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    vq.train()(torch.randn(64, 2) * 5)
    assert torch.allclose(vq.embed.norm(dim=1), torch.ones(2))


def test_low_dimensional_code_space_projects_in_and_out():
    vq = VectorQuantizer(16, 8, code_dim=4, cosine=True)
    assert vq.embed.shape == (8, 4)
    x = torch.randn(40, 16, requires_grad=True)
    q = vq.train()(x)
    assert q.latents.shape == (40, 16)
    q.latents.sum().backward()
    assert x.grad is not None and vq.project_in.weight.grad is not None and vq.project_out.weight.grad is not None
    vq.eval()
    q = vq(x)
    assert torch.allclose(vq.decode(q.codes), q.latents)


# ------------------------------------------------------------------ FSQ
def test_fsq_has_the_product_of_its_levels_as_codes_and_round_trips_every_code():
    fsq = FiniteScalarQuantizer(6, (8, 5, 5, 5))
    assert fsq.num_codes == 1000
    codes = torch.arange(1000)
    latents = fsq.latents_from_codes(codes)
    assert torch.equal(fsq.codes_from_latents(latents), codes)
    assert len({tuple(r) for r in latents.tolist()}) == 1000
    assert latents.min() >= -1 and latents.max() <= 1


def test_fsq_bound_rounds_to_exactly_the_level_count_per_dimension():
    fsq = FiniteScalarQuantizer(4, (8, 5, 3, 2))
    z = torch.linspace(-20, 20, 4001).unsqueeze(1).expand(-1, 4)
    values = torch.round(fsq.bound(z))
    assert [len(values[:, i].unique()) for i in range(4)] == [8, 5, 3, 2]
    assert values[:, 0].unique().tolist() == [-4, -3, -2, -1, 0, 1, 2, 3]
    assert values[:, 1].unique().tolist() == [-2, -1, 0, 1, 2]


def test_fsq_gradient_is_straight_through_the_rounding():
    fsq = FiniteScalarQuantizer(4, (8, 5, 5, 5))
    z = torch.randn(10, 4, requires_grad=True)
    (grad_q,) = torch.autograd.grad(fsq.quantize(z).sum(), z)
    half = (fsq.levels // 2).float()
    (grad_bound,) = torch.autograd.grad((fsq.bound(z) / half).sum(), z)  # the same map without rounding
    assert torch.allclose(grad_q, grad_bound) and bool((grad_q > 0).all())


def test_fsq_forward_codes_decode_to_its_latents():
    fsq = FiniteScalarQuantizer(6, (8, 5, 5, 5)).eval()
    x = torch.randn(50, 6) * 3
    q = fsq(x)
    assert q.codes.dtype == torch.long and q.codes.min() >= 0 and q.codes.max() < 1000
    assert torch.allclose(fsq.decode(q.codes), q.latents, atol=1e-6)
    assert q.loss.item() == 0.0
