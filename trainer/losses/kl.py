"""KL(policy || reference) per token: Schulman's three estimators, one implementation.

With x = log ref - log pi on a token sampled from pi (so E_pi[e^x] = 1):
    k1 = -x                     unbiased, but negative on some tokens (high variance);
    k2 = x^2 / 2                biased, never negative; its gradient is that of KL(ref || pi)'s
                                second-order expansion, the "k2 as loss" choice of some recipes;
    k3 = e^x - x - 1            unbiased and never negative (a control variate on k1).
(J. Schulman, "Approximating KL divergence", 2020.) `kl/ref` always reports k3, whatever the
estimator the loss uses, so the curve means the same thing in every run (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor,
                estimator: Literal["k1", "k2", "k3"]) -> Tensor:
    """Per-token estimate of KL(policy || ref); gradients flow through `logprobs`."""
    x = ref_logprobs - logprobs
    if estimator == "k1":
        return -x
    if estimator == "k2":
        return 0.5 * x * x
    if estimator == "k3":
        return torch.exp(x) - x - 1
    raise ValueError(f"unknown KL estimator {estimator!r} (expected k1, k2 or k3)")
