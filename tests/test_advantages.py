"""Group-relative advantages against hand computations."""

from __future__ import annotations

import math

import pytest

from slipstream.trainer.advantages import group_advantages


def test_normalised_by_hand():
    # rewards 0, 0, 0, 1: mean 0.25, centred -0.25 x3 and 0.75,
    # population variance (3 * 0.0625 + 0.5625) / 4 = 0.1875, std = 0.4330127
    std = math.sqrt(0.1875)
    expected = [-0.25 / (std + 1e-6)] * 3 + [0.75 / (std + 1e-6)]  # -0.57735, 1.73205
    assert group_advantages([0.0, 0.0, 0.0, 1.0]) == pytest.approx(expected, rel=1e-12)
    assert expected[0] == pytest.approx(-0.57735, abs=1e-5)


def test_population_not_sample_std():
    # rewards 0, 1: population std 0.5 gives +-1; the sample std (0.7071) would give +-0.7071.
    assert group_advantages([0.0, 1.0], eps=0.0) == [-1.0, 1.0]


def test_dr_grpo_drops_the_std():
    assert group_advantages([1.0, 0.0, 0.5, 0.5], normalize_std=False) == [0.5, -0.5, 0.0, 0.0]


def test_eps_bounds_tiny_spreads():
    # std 5e-10: without eps the advantages would be +-1; eps keeps them near 0.
    advantages = group_advantages([0.0, 1e-9])
    assert advantages == pytest.approx([-5e-10 / (5e-10 + 1e-6), 5e-10 / (5e-10 + 1e-6)])


@pytest.mark.parametrize("normalize_std", [True, False])
@pytest.mark.parametrize("rewards", [[0.1, 0.1, 0.1], [1.0, 1.0], [0.7]])
def test_zero_variance_group_is_exactly_zero(rewards, normalize_std):
    # 0.1 * 3 / 3 != 0.1 in floats: without the exact check this would give ~1e-11, not 0.
    assert group_advantages(rewards, normalize_std=normalize_std) == [0.0] * len(rewards)


def test_advantages_sum_to_zero():
    assert sum(group_advantages([0.3, 1.0, 0.0, 0.9, 0.2])) == pytest.approx(0.0, abs=1e-12)


def test_empty_group_is_refused():
    with pytest.raises(ValueError, match="empty group"):
        group_advantages([])
