"""Advantage estimators against hand computations: group statistics, leave-one-out, batch
normalisation, GAE, a KL penalty in the reward, and DAPO's overlong shaping."""

from __future__ import annotations

import math

import pytest
import torch

from slipstream.trainer.advantages import (estimate_advantages, gae, group_advantages,
                                           overlong_penalty, whiten)


def test_group_std_by_hand():
    # rewards 0, 0, 0, 1: mean 0.25, centred -0.25 x3 and 0.75,
    # population variance (3 * 0.0625 + 0.5625) / 4 = 0.1875, std = 0.4330127
    std = math.sqrt(0.1875)
    expected = [-0.25 / (std + 1e-6)] * 3 + [0.75 / (std + 1e-6)]  # -0.57735, 1.73205
    assert group_advantages([0.0, 0.0, 0.0, 1.0], "group_std") == pytest.approx(expected,
                                                                                 rel=1e-12)


def test_population_not_sample_std():
    # rewards 0, 1: population std 0.5 gives +-1; the sample std (0.7071) would give +-0.7071.
    assert group_advantages([0.0, 1.0], "group_std", eps=0.0) == [-1.0, 1.0]


def test_group_center_drops_the_std():   # Dr.GRPO
    assert group_advantages([1.0, 0.0, 0.5, 0.5], "group_center") == [0.5, -0.5, 0.0, 0.0]


def test_leave_one_out_by_hand():         # RLOO
    # rewards 1, 0, 0, 0: A_0 = 1 - 0 = 1; A_1 = 0 - (1 + 0 + 0) / 3 = -1/3
    assert group_advantages([1.0, 0.0, 0.0, 0.0], "leave_one_out") == \
        pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3])
    # = G / (G - 1) times the centred reward
    centred = group_advantages([0.3, 0.9, 0.0], "group_center")
    assert group_advantages([0.3, 0.9, 0.0], "leave_one_out") == \
        pytest.approx([1.5 * c for c in centred])


@pytest.mark.parametrize("kind", ["group_std", "group_center", "leave_one_out"])
@pytest.mark.parametrize("rewards", [[0.1, 0.1, 0.1], [1.0, 1.0], [0.7]])
def test_zero_variance_group_is_exactly_zero(rewards, kind):
    # 0.1 * 3 / 3 != 0.1 in floats: without the exact check this would give ~1e-11, not 0.
    assert group_advantages(rewards, kind) == [0.0] * len(rewards)


def test_eps_bounds_tiny_spreads_and_empty_groups_are_refused():
    advantages = group_advantages([0.0, 1e-9], "group_std")
    assert advantages == pytest.approx([-5e-10 / (5e-10 + 1e-6), 5e-10 / (5e-10 + 1e-6)])
    with pytest.raises(ValueError, match="empty group"):
        group_advantages([], "group_std")


def test_sequence_advantages_are_broadcast_to_their_tokens_only():
    mask = torch.tensor([[True, True, False], [True, True, True]])
    out = estimate_advantages("group_center", torch.tensor([1.0, 0.0], dtype=torch.float64),
                              [range(0, 2)], mask, mask)
    assert out.tolist() == [[0.5, 0.5, 0.0], [-0.5, -0.5, -0.5]]


def test_a_kl_penalty_in_the_reward_lowers_the_return():
    # rewards 1 and 1 (no signal), penalties sum to 0.3 and 0.1: returns 0.7 and 0.9,
    # so the group now prefers the sample that stayed closer to the reference.
    mask = torch.ones(2, 2, dtype=torch.bool)
    penalty = torch.tensor([[0.1, 0.2], [0.05, 0.05]])
    out = estimate_advantages("group_center", torch.tensor([1.0, 1.0], dtype=torch.float64),
                              [range(0, 2)], mask, mask, penalty)
    assert out[:, 0].tolist() == pytest.approx([-0.1, 0.1])


def test_group_batch_norm_by_hand():   # REINFORCE++-baseline
    # group A: rewards 1, 0 (mean 0.5); group B: rewards 1, 1 (mean 1); one token each:
    # centred 0.5, -0.5, 0, 0; batch mean 0, population std sqrt(0.125) = 0.353553
    mask = torch.ones(4, 1, dtype=torch.bool)
    out = estimate_advantages("group_batch_norm",
                              torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64),
                              [range(0, 2), range(2, 4)], mask, mask)
    std = math.sqrt(0.125)
    assert out[:, 0].tolist() == pytest.approx([0.5 / (std + 1e-6), -0.5 / (std + 1e-6), 0, 0],
                                               abs=1e-6)


def test_group_batch_norm_returns_to_go_with_a_penalty():
    # one sequence of two tokens, reward 1, penalties 0.2 and 0.4: returns-to-go 0.4 and 0.6;
    # the group of one has baseline R = 1 - 0.6 = 0.4; centred 0 and 0.2; whitened: -1, +1
    mask = torch.ones(1, 2, dtype=torch.bool)
    out = estimate_advantages("group_batch_norm", torch.tensor([1.0], dtype=torch.float64),
                              [range(0, 1)], mask, mask, torch.tensor([[0.2, 0.4]]))
    assert out[0].tolist() == pytest.approx([-0.1 / (0.1 + 1e-6), 0.1 / (0.1 + 1e-6)], abs=1e-6)


def test_gae_by_hand():
    # One sequence of 3 tokens, reward 1 on the last; V = 0.5, 0.2, 0.4; gamma 0.9, lambda 0.8.
    # deltas: t2: 1 + 0 - 0.4 = 0.6;  t1: 0 + 0.9*0.4 - 0.2 = 0.16;  t0: 0 + 0.9*0.2 - 0.5 = -0.32
    # A2 = 0.6;  A1 = 0.16 + 0.72*0.6 = 0.592;  A0 = -0.32 + 0.72*0.592 = 0.10624
    values = torch.tensor([[0.5, 0.2, 0.4, 9.0]])        # 9.0 sits on padding and must not count
    mask = torch.tensor([[True, True, True, False]])
    advantages, returns = gae(torch.tensor([1.0]), values, mask, gamma=0.9, lam=0.8)
    assert advantages[0].tolist() == pytest.approx([0.10624, 0.592, 0.6, 0.0], abs=1e-6)
    assert returns[0].tolist() == pytest.approx([0.60624, 0.792, 1.0, 0.0], abs=1e-6)


def test_gae_with_gamma_and_lambda_one_is_the_monte_carlo_return_minus_the_value():
    values = torch.tensor([[0.3, -0.2]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    penalty = torch.tensor([[0.1, 0.05]])
    advantages, returns = gae(torch.tensor([2.0]), values, mask, 1.0, 1.0, penalty)
    # returns-to-go: t0 = 2 - 0.15 = 1.85, t1 = 2 - 0.05 = 1.95
    assert returns[0].tolist() == pytest.approx([1.85, 1.95])
    assert advantages[0].tolist() == pytest.approx([1.85 - 0.3, 1.95 + 0.2])


def test_whiten_uses_only_masked_tokens():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, False]])
    assert whiten(values, mask)[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-5)


@pytest.mark.parametrize("length, expected", [(10, 0.0), (12, 0.0), (14, -0.5), (16, -1.0)])
def test_overlong_penalty_by_hand(length, expected):
    # limit 16, buffer 4: free up to 12, then falling linearly to -1 at 16
    assert overlong_penalty(length, 16, 4, 1.0) == pytest.approx(expected)
