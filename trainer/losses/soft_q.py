"""Soft Q-learning on the token MDP with the policy's own logits as soft Q-values: the
value-based learner, trained from replayed data with no importance weights.

The token MDP: the state s_t is the prompt and the tokens so far, the action the next token, the
transition deterministic, the reward r_t = 0 except on the last token (the sequence's reward).
For the KL-regularised objective max E[sum r] - beta KL(pi || pi_ref) the optimal soft values
satisfy, for EVERY state and action, whichever policy produced them,

    Q(s_t, a_t) = r_t + V(s_{t+1}),     V(s) = beta log sum_a pi_ref(a|s) exp(Q(s, a) / beta),
    V(after the last token) = 0,

and the optimal policy is pi(a|s) = pi_ref(a|s) exp((Q(s, a) - V(s)) / beta). We parameterise Q
with the logits z (temperature-scaled) of the policy and of the frozen reference:

    Q_t = beta (z_t(a_t) - z_ref,t(a_t))          V_t = beta (LSE z_t - LSE z_ref,t)

so that beta log(pi / pi_ref)(a_t) = Q_t - V_t holds exactly, the policy IS the greedy soft
policy of its Q (no separate actor), and at the start (policy = reference) Q = V = 0 everywhere:
the logits' free per-state offset, which a policy never sees, carries the value. The loss is the
squared soft TD residual against an n-step target, a semi-gradient (the target is computed from
the same forward and not differentiated; there is no separate target network):

    y_t   = sum_{k=t}^{e-1} r_k - beta sum_{k=t+1}^{e-1} log(pi / pi_ref)(a_k) + V_e,
            e = min(t + n, T), V_T = 0
    loss  = token_mean( (Q_t - y_t)^2 / (2 beta^2) )       (the residual in logits)

n = 1 (`td_steps`) is one-step soft Q-learning: the TD target is the reward plus the next
position's soft value. n >= the completion length is path consistency over the whole completion
(PCL, Nachum et al. 2017; the trajectory form is TBRM's, Yuan et al. 2025, arXiv 2505.15311).
The reward is R_i - group mean: a constant per prompt added to every return from that prompt
shifts every V of it by the same amount and leaves the optimal policy unchanged, and centring
gives failures a push down from the start.

Why this one rather than an actor-critic with a TD-trained value head: the consistency above
holds along any path, so replayed and stale tokens need no importance weights at all (the
actor-critic's policy gradient would), and it needs no critic network: one backbone, one
extra no-grad forward of the reference. What it costs: reward reaches early tokens one position
per update with n = 1 (TD's slow propagation over 48 tokens), and the reference must be held.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from slipstream.trainer.losses.base import LossInputs, LossOutput, aggregate, masked, token_mean
from slipstream.trainer.losses.config import GroupAdvantage, LossConfigBase, recipe_default
from slipstream.trainer.losses.kl import kl_estimate


class SoftQLossConfig(LossConfigBase):
    kind: Literal["soft_q"] = Field("soft_q", description="Selects this loss.")
    advantage: GroupAdvantage = recipe_default("advantage", "group_center")
    beta: float = Field(0.1, gt=0, description=(
        "KL strength: the optimal policy is pi_ref exp((Q - V) / beta)."))
    td_steps: int = Field(1, ge=1, description=(
        "n of the n-step TD target: 1 is one-step soft Q-learning; at least the completion "
        "length is path consistency over the whole completion."))

    @property
    def needs_reference(self) -> bool:
        return True

    @property
    def needs_logits(self) -> bool:
        return True


def terminal_rewards(advantages_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """r_t: the sequence's (centred) reward on its last real token, 0 elsewhere."""
    lengths_B = mask_B_T.sum(-1)
    last_B_T = torch.arange(mask_B_T.shape[1]).unsqueeze(0) == (lengths_B - 1).unsqueeze(-1)
    return masked(advantages_B_T, last_B_T & mask_B_T)


def soft_q_values(logp_B_T: Tensor, z_B_T: Tensor, ref_logp_B_T: Tensor, ref_z_B_T: Tensor,
                  beta: float) -> tuple[Tensor, Tensor]:
    """(Q_t, V_t) as the module docstring defines them (LSE = z - log p)."""
    q = beta * (z_B_T - ref_z_B_T)
    v = beta * ((z_B_T - logp_B_T) - (ref_z_B_T - ref_logp_B_T))
    return q, v


def td_targets(rewards_B_T: Tensor, log_ratio_B_T: Tensor, values_B_T: Tensor, mask_B_T: Tensor,
               beta: float, steps: int) -> Tensor:
    """y_t, the n-step soft TD target (no gradient): prefix sums of r - beta log(pi/pi_ref),
    the first step's KL term left out, plus V at t + n where that is inside the sequence."""
    with torch.no_grad():
        batch, width = mask_B_T.shape
        soft_B_T = masked(rewards_B_T - beta * log_ratio_B_T.detach(), mask_B_T)
        prefix = torch.cat([torch.zeros(batch, 1), soft_B_T.cumsum(-1)], dim=-1)  # S[j]=sum_{k<j}
        t = torch.arange(width).unsqueeze(0).expand(batch, width)
        lengths = mask_B_T.sum(-1, keepdim=True)
        end = torch.minimum(t + steps, lengths).clamp(min=0)
        after_first = (prefix.gather(1, end) - prefix.gather(1, (t + 1).clamp(max=width)))
        after_first = torch.where(end > t + 1, after_first, torch.zeros_like(after_first))
        bootstrap = values_B_T.detach().gather(1, end.clamp(max=width - 1))
        bootstrap = torch.where(end < lengths, bootstrap, torch.zeros_like(bootstrap))
        return masked(rewards_B_T + after_first + bootstrap, mask_B_T)


def soft_q_loss(inputs: LossInputs, cfg: SoftQLossConfig) -> LossOutput:
    if inputs.target_logits_B_T is None or inputs.ref_target_logits_B_T is None \
            or inputs.ref_logprobs_B_T is None:
        raise ValueError("soft_q needs the policy's and the reference's logits of the sampled "
                         "tokens (trainer.reference_model=true)")
    real, trained = inputs.mask_B_T, inputs.trained_B_T
    logp = masked(inputs.logprobs_B_T, real)
    ref = masked(inputs.ref_logprobs_B_T, real)
    q, v = soft_q_values(logp, masked(inputs.target_logits_B_T.float(), real), ref,
                         masked(inputs.ref_target_logits_B_T.float(), real), cfg.beta)
    rewards = terminal_rewards(masked(inputs.advantages_B_T, real), real)
    targets = td_targets(rewards, logp - ref, v, real, cfg.beta, cfg.td_steps)
    residual = masked(q - targets, real)
    loss = aggregate(0.5 * (residual / cfg.beta) ** 2, trained, inputs, cfg.aggregation)
    with torch.no_grad():
        stats = {"loss/td": loss.detach(),
                 "softq/td_abs_mean": token_mean(residual.abs(), inputs),
                 "softq/q_mean": token_mean(q.detach(), inputs),
                 "softq/v_mean": token_mean(v.detach(), inputs),
                 "kl/ref": token_mean(kl_estimate(logp.detach(), ref, "k3"), inputs)}
    values = torch.stack([s.float() for s in stats.values()]).tolist()
    return LossOutput(loss=loss, metrics=dict(zip(stats, values)))
