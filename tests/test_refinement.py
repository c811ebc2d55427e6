"""Iterative refinement by masking (unimodel.generation.refinement): the schedule, what is masked again,
early stop, MaskGIT's keep_revealed, and the history."""

from __future__ import annotations

import math

import pytest
import torch

from unimodel.generation.refinement import cosine_schedule, linear_schedule, mask_counts, refine

MASK = 99


class Scripted:
    """A predictor whose answers are fixed tables: token ``tokens[step]`` and score ``scores[step]`` everywhere.

    Records the positions it was asked for and the tokens it saw.
    """

    def __init__(self, tokens, scores):
        self.tokens, self.scores = tokens, scores
        self.calls: list[tuple[torch.Tensor | None, torch.Tensor]] = []

    def __call__(self, tokens, positions, step):
        self.calls.append((None if positions is None else positions.clone(), tokens.clone()))
        tok, score = self.tokens[step], self.scores[step]
        if positions is None:
            return tok.clone(), score.clone()
        return tok.gather(1, positions), score.gather(1, positions)


def test_schedules_and_counts():
    assert [linear_schedule(t, 4) for t in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert cosine_schedule(0, 10) == 1.0 and cosine_schedule(5, 10) == pytest.approx(math.cos(math.pi / 4))
    lengths = torch.tensor([10, 7, 3, 1])
    # N * (T - t) / T floored, with no float error making 10 * 7/10 land below 7
    for t in range(1, 10):
        expected = [n * (10 - t) // 10 for n in lengths.tolist()]
        assert mask_counts(lengths, linear_schedule(t, 10)).tolist() == expected


def test_single_iteration_is_one_parallel_pass_on_the_open_positions_only():
    open_positions = torch.tensor([[True, True, True], [True, False, False]])
    tokens = torch.tensor([[0, 0, 0], [0, 7, 7]])  # 7: padding, never touched
    predicted = torch.tensor([[1, 2, 3], [4, 5, 6]])
    p = Scripted([predicted], [torch.zeros(2, 3)])
    r = refine(p, tokens, open_positions, mask_id=MASK, iterations=1)
    assert len(p.calls) == 1 and p.calls[0][0] is None
    assert p.calls[0][1].tolist() == [[MASK, MASK, MASK], [MASK, 7, 7]]  # it saw every open position masked
    assert r.tokens.tolist() == [[1, 2, 3], [4, 7, 7]] and r.iterations == 1


def test_each_iteration_remasks_the_scheduled_number_of_least_confident_tokens():
    T = 4
    lengths = [8, 5]
    open_positions = torch.arange(8)[None, :] < torch.tensor(lengths)[:, None]
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(0, 50, (2, 8), generator=g) + 100 * s for s in range(T)]  # every pass differs
    scores = [torch.rand(2, 8, generator=g) for _ in range(T)]
    p = Scripted(tokens, scores)
    r = refine(p, torch.zeros(2, 8, dtype=torch.long), open_positions, mask_id=MASK, iterations=T, record_history=True)
    assert r.iterations == T and len(p.calls) == T
    current = torch.where(open_positions, scores[0], math.inf)
    for t in range(1, T):
        _, seen = p.calls[t]
        masked = seen == MASK
        for row, n in enumerate(lengths):
            count = n * (T - t) // T
            assert int(masked[row].sum()) == count
            assert not masked[row, n:].any()  # padding is never masked
            lowest = current[row].argsort()[:count]  # the least confident positions so far
            assert set(masked[row].nonzero().flatten().tolist()) == set(lowest.tolist())
        assert torch.equal(r.masked[t], masked)
        current = torch.where(masked, scores[t], current)  # only re-predicted positions get new scores
    assert torch.equal(r.scores, torch.where(open_positions, current, 0.0))
    assert torch.equal(r.history[-1], r.tokens)


def test_early_stop_when_an_iteration_changes_nothing():
    open_positions = torch.ones(1, 6, dtype=torch.bool)
    same = torch.arange(6)[None]
    scores = torch.linspace(-3, 0, 6)[None]
    p = Scripted([same] * 10, [scores] * 10)
    r = refine(p, torch.zeros(1, 6, dtype=torch.long), open_positions, mask_id=MASK, iterations=10)
    assert r.iterations == 2 and len(p.calls) == 2  # the second pass changed nothing
    p = Scripted([same] * 10, [scores] * 10)
    r = refine(p, torch.zeros(1, 6, dtype=torch.long), open_positions, mask_id=MASK, iterations=10, early_stop=False)
    # 6 * (10 - t) // 10 reaches 0 at t = 9: that iteration has nothing to do
    assert r.iterations == 9


def test_keep_revealed_never_masks_a_revealed_position_again():
    T = 3
    open_positions = torch.ones(1, 6, dtype=torch.bool)
    # pass 1 makes 0..3 the least confident; after pass 2 re-predicts them, 5 (0.4, revealed) is the least
    scores = [torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.9, 0.4]]), torch.tensor([[0.5, 0.6, 0.7, 0.8, 0.0, 0.0]])]
    scores.append(scores[1])
    tokens = [torch.full((1, 6), s) for s in range(T)]
    p = Scripted(tokens, scores)
    refine(p, torch.zeros(1, 6, dtype=torch.long), open_positions, mask_id=MASK, iterations=T, keep_revealed=True)
    assert (p.calls[1][1] == MASK).nonzero()[:, 1].tolist() == [0, 1, 2, 3]  # 6 * 2/3 = 4 masked
    # 2 masked at t=2, among 0..3 only: 4 and 5 were revealed at t=1
    assert (p.calls[2][1] == MASK).nonzero()[:, 1].tolist() == [0, 1]
    p = Scripted(tokens, scores)
    refine(p, torch.zeros(1, 6, dtype=torch.long), open_positions, mask_id=MASK, iterations=T, early_stop=False)
    assert (p.calls[2][1] == MASK).nonzero()[:, 1].tolist() == [0, 5]  # mask-predict: any position competes


def test_bad_iterations():
    tokens, open_positions = torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="iterations"):
        refine(Scripted([], []), tokens, open_positions, mask_id=0, iterations=0)
