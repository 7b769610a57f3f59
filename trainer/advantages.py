"""Advantage estimation: from a step's rewards (and values, for PPO) to one advantage per token.

Notation: group g holds the G samples of one prompt; r_i is sample i's reward (after any reward
shaping: DAPO's overlong penalty); p_{i,t} >= 0 is a per-token penalty when the KL is placed in
the reward (p = kl.coef * KL_t, else 0); R_i = r_i - sum_t p_{i,t} is the sequence's return.

    group_std         A_i = (R_i - mean_g R) / (std_g R + eps)       GRPO (Shao et al. 2024,
                                                                     arXiv 2402.03300)
    group_center      A_i = R_i - mean_g R                           Dr.GRPO (Liu et al. 2025,
                                                                     arXiv 2503.20783): the std
                                                                     division up-weights nearly
                                                                     solved or unsolved prompts
    leave_one_out     A_i = R_i - (sum_g R - R_i) / (G - 1)          RLOO (Kool et al. 2019;
                                                                     Ahmadian et al. 2024)
    group_batch_norm  A_{i,t} = G_{i,t} - mean_g R, then whitened over the batch's trained
                      tokens, with G_{i,t} = r_i - sum_{k>=t} p_{i,k} (the return from t on)
                                                                     REINFORCE++-baseline (Hu
                                                                     2025, arXiv 2501.03262)
    gae               delta_t = rw_t + gamma V_{t+1} - V_t,  A_t = sum_k (gamma lam)^k delta_{t+k},
                      rw_t = -p_t + r_i [t = last],  V after the last token = 0,
                      returns_t = A_t + V_t (the value target), A whitened over the batch
                                                                     PPO with GAE (Schulman et al.
                                                                     2016, 2017)

Group statistics use the population std (the group is the whole set compared; a group of one
is defined and gets 0). A group whose returns are all exactly equal carries no signal and gets
exact zeros, checked before any arithmetic (the float mean of equal numbers can differ from
them by an ulp). Sequence-level advantages are broadcast to every token of the sequence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_EPS = 1e-6


def group_advantages(returns_G: Sequence[float], kind: str, eps: float = _EPS) -> list[float]:
    """Sequence-level advantages of one group (group_std, group_center, leave_one_out)."""
    if not returns_G:
        raise ValueError("group_advantages: empty group")
    n = len(returns_G)
    if max(returns_G) == min(returns_G):
        return [0.0] * n
    mean = sum(returns_G) / n
    centred = [r - mean for r in returns_G]
    if kind == "group_center":
        return centred
    if kind == "group_std":
        std = math.sqrt(sum(c * c for c in centred) / n)
        return [c / (std + eps) for c in centred]
    if kind == "leave_one_out":
        total = sum(returns_G)
        return [r - (total - r) / (n - 1) for r in returns_G]
    raise ValueError(f"unknown group advantage {kind!r}")


def overlong_penalty(length: int, max_tokens: int, buffer_tokens: int, penalty: float) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476): 0 up to
    max_tokens - buffer_tokens, then falling linearly to -penalty at max_tokens."""
    start = max_tokens - buffer_tokens
    if length <= start:
        return 0.0
    return -penalty * min(length - start, buffer_tokens) / buffer_tokens


def whiten(values_B_T: Tensor, mask_B_T: Tensor, eps: float = _EPS) -> Tensor:
    """(v - mean) / (std + eps) over the masked tokens (population std), 0 elsewhere."""
    count = mask_B_T.sum().clamp(min=1)
    mean = torch.where(mask_B_T, values_B_T, 0.0).sum() / count
    var = torch.where(mask_B_T, (values_B_T - mean) ** 2, 0.0).sum() / count
    return torch.where(mask_B_T, (values_B_T - mean) / (var.sqrt() + eps), 0.0)


def reverse_cumsum(values_B_T: Tensor) -> Tensor:
    """out[t] = sum_{k >= t} values[k] along the last dim."""
    return values_B_T.flip(-1).cumsum(-1).flip(-1)


def estimate_advantages(kind: str, rewards_B: Tensor, groups: Sequence[range], mask_B_T: Tensor,
                        trained_B_T: Tensor, penalty_B_T: Tensor | None = None
                        ) -> Tensor:
    """(B, T) advantages for the group estimators. `groups` are the rows of each group,
    `mask_B_T` the real tokens, `trained_B_T` the tokens the loss trains (whitening statistics)."""
    penalty = torch.zeros_like(mask_B_T, dtype=torch.float32) if penalty_B_T is None else \
        torch.where(mask_B_T, penalty_B_T.float(), 0.0)
    returns_B = rewards_B.double() - penalty.double().sum(-1)
    if kind == "group_batch_norm":
        baseline_B = torch.empty_like(returns_B)
        for rows in groups:
            group = returns_B[rows.start:rows.stop]
            # Equal returns: the baseline is that value exactly, so the centred returns are 0.
            baseline_B[rows.start:rows.stop] = group[0] if bool((group == group[0]).all()) \
                else group.mean()
        to_go_B_T = rewards_B.double().unsqueeze(-1) - reverse_cumsum(penalty.double())
        return whiten((to_go_B_T - baseline_B.unsqueeze(-1)).float(), trained_B_T)
    per_sequence: list[float] = []
    for rows in groups:
        per_sequence += group_advantages(returns_B[rows.start:rows.stop].tolist(), kind)
    advantages_B = torch.tensor(per_sequence, dtype=torch.float32)
    return torch.where(mask_B_T, advantages_B.unsqueeze(-1), 0.0)


def gae(rewards_B: Tensor, values_B_T: Tensor, mask_B_T: Tensor, gamma: float, lam: float,
        penalty_B_T: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(advantages_B_T, returns_B_T) by generalised advantage estimation, unwhitened; the reward
    sits on each sequence's last real token and the value after it is 0 (the episode ends)."""
    values = torch.where(mask_B_T, values_B_T.float(), 0.0)
    token_rewards = torch.zeros_like(values)
    if penalty_B_T is not None:
        token_rewards = torch.where(mask_B_T, -penalty_B_T.float(), 0.0)
    last = (mask_B_T.sum(-1) - 1).clamp(min=0)
    rows = torch.arange(len(last))
    has_tokens = mask_B_T.any(-1)
    token_rewards[rows[has_tokens], last[has_tokens]] += rewards_B.float()[has_tokens]
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=-1)
    deltas = token_rewards + gamma * next_values - values
    advantages = torch.zeros_like(values)
    running = torch.zeros(values.shape[0])
    for t in reversed(range(values.shape[1])):
        running = deltas[:, t] + gamma * lam * running
        advantages[:, t] = running
    advantages = torch.where(mask_B_T, advantages, 0.0)
    return advantages, torch.where(mask_B_T, advantages + values, 0.0)
