"""Group-relative advantages (GRPO): each sample's reward against its siblings' for one prompt.

The group's mean reward is the baseline (no value network). GRPO also divides by the group's
std; Dr.GRPO drops that division because it up-weights prompts that are nearly always right or
always wrong (small std) and biases the objective, so `normalize_std=False` gives plain r - mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def group_advantages(rewards_G: Sequence[float], normalize_std: bool = True,
                     eps: float = 1e-6) -> list[float]:
    """Advantages of one group of G samples of the same prompt.

    normalize_std=True:  A_i = (r_i - mean) / (std + eps)
    normalize_std=False: A_i = r_i - mean   (Dr.GRPO)

    std is the population std, sqrt(sum (r_i - mean)^2 / G): the group is the whole set being
    compared, not a sample from which to estimate a wider spread, and dividing by G (not G - 1)
    keeps a group of one defined (its advantage is 0). A group whose rewards are all equal carries
    no learning signal and gets exact zeros.
    """
    if not rewards_G:
        raise ValueError("group_advantages: empty group")
    n = len(rewards_G)
    # Checked exactly, before any arithmetic: the float mean of equal rewards can differ from
    # them by an ulp, which would turn "no signal" into tiny nonzero advantages.
    if max(rewards_G) == min(rewards_G):
        return [0.0] * n
    mean = sum(rewards_G) / n
    centred = [r - mean for r in rewards_G]
    if not normalize_std:
        return centred
    std = math.sqrt(sum(c * c for c in centred) / n)
    return [c / (std + eps) for c in centred]
