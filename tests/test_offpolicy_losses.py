"""The off-policy objectives against hand computations: TOPR's taper, M2PO's mask, decoupled PPO's
proximal anchor for replayed samples, and the soft Q-learner's TD target on a 3-token example."""

from __future__ import annotations

import math

import pytest
import torch

from slipstream.trainer.losses import (MASK_REASONS, DecoupledPPOLossConfig, LossInputs,
                                       M2POLossConfig, SoftQLossConfig, TOPRLossConfig,
                                       compute_loss)
from slipstream.trainer.losses.corrections import m2_mask
from slipstream.trainer.losses.soft_q import soft_q_values, td_targets


def inputs(logp, sampler, advantages, **extra) -> LossInputs:
    logp_B_T = torch.tensor(logp, dtype=torch.float32).requires_grad_()
    mask = torch.ones(logp_B_T.shape, dtype=torch.bool)
    adv = torch.tensor(advantages, dtype=torch.float32).unsqueeze(-1).expand_as(logp_B_T)
    return LossInputs(logp_B_T, torch.tensor(sampler, dtype=torch.float32), adv.clone(), mask,
                      extra.pop("ref", None), total_tokens=int(mask.sum()),
                      total_sequences=logp_B_T.shape[0], max_tokens=logp_B_T.shape[1], **extra)


def reasons(out, row: int) -> list[str]:
    return [MASK_REASONS[c] for c in out.mask_reason_B_T[row].tolist()]


def test_topr_trains_positives_plainly_and_tapers_stale_negatives():
    # Row 0: A = +1, the policy already more likely than the sampler: weight 1 regardless.
    # Row 1: A = -1, sequence ratio exp(0.3 + 0.2) > 1: truncated to 1.
    # Row 2: A = -1, sequence ratio exp(-0.4 - 0.3) = 0.4966: the gradient is scaled by it.
    logp = [[-0.5, -0.5], [-0.7, -0.8], [-1.4, -1.3]]
    sampler = [[-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]]
    batch = inputs(logp, sampler, [1.0, -1.0, -1.0])
    out = compute_loss(batch, TOPRLossConfig(advantage="group_center"))
    out.loss.backward()
    taper = math.exp(-0.7)
    n = 3 * 2   # constant aggregation: sequences x completion limit
    expected = -(1.0 * (-0.5 - 0.5) + -1.0 * (-0.7 - 0.8) + taper * -1.0 * (-1.4 - 1.3)) / n
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    grad = batch.logprobs_B_T.grad
    assert grad[0].tolist() == pytest.approx([-1 / n] * 2)
    assert grad[1].tolist() == pytest.approx([1 / n] * 2)
    assert grad[2].tolist() == pytest.approx([taper / n] * 2, rel=1e-6)
    assert reasons(out, 2) == ["topr_truncated"] * 2 and reasons(out, 1) == ["", ""]
    assert out.importance_weight_B_T[2].tolist() == pytest.approx([taper] * 2, rel=1e-6)


def test_m2_mask_drops_the_largest_second_moments_until_the_mean_is_below_tau():
    # (log mu - log pi)^2 = 0.0004, 0.01, 0.09, 0.25; means of the k smallest: 0.0004, 0.0052,
    # 0.0335, 0.0876: with tau = 0.04 the three smallest stay, the 0.25 token goes.
    current = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    sampler = torch.tensor([[0.02, -0.1, 0.3, -0.5]])
    keep = torch.ones(1, 4, dtype=torch.bool)
    assert m2_mask(current, sampler, keep, 0.04).tolist() == [[False, False, False, True]]
    assert not m2_mask(current, sampler, keep, 1.0).any()
    assert m2_mask(current, sampler, keep, 1e-4).tolist() == [[True] * 4]
    unkept = keep.clone()
    unkept[0, 3] = False    # tokens already out of the loss are neither counted nor masked
    assert not m2_mask(current, sampler, unkept, 0.04).any()


def test_m2po_is_the_unclipped_ratio_surrogate_over_the_kept_tokens():
    logp, sampler = [[-1.0, -1.0, -1.0, -1.0]], [[-0.98, -1.1, -0.7, -1.5]]
    batch = inputs(logp, sampler, [2.0])
    out = compute_loss(batch, M2POLossConfig())
    out.loss.backward()
    ratios = [math.exp(lp - s) for lp, s in zip(logp[0], sampler[0])]
    assert out.loss.item() == pytest.approx(-sum(r * 2.0 for r in ratios[:3]) / 4, rel=1e-6)
    assert batch.logprobs_B_T.grad[0].tolist() == pytest.approx(
        [-r * 2.0 / 4 for r in ratios[:3]] + [0.0], rel=1e-6)
    assert reasons(out, 0) == ["", "", "", "m2po"]
    assert out.metrics["mismatch/m2po_masked_frac"] == pytest.approx(0.25)


def test_decoupled_ppo_clips_a_replayed_sample_around_the_policy_that_last_trained_it():
    # Both rows: sampler -1.2, current policy -1.0. Row 0 is fresh: the anchor is the current
    # policy (u = 1, nothing clipped). Row 1 is replayed with stored logprobs -1.5: u = e^0.5 >
    # 1.2, A > 0, so PPO's clip masks it. The staleness weight is pi_prox / mu: e^0.2 for the
    # fresh row, e^-0.3 for the replayed one (stored -1.5 against the sampler's -1.2).
    logp, sampler = [[-1.0, -1.0], [-1.0, -1.0]], [[-1.2, -1.2], [-1.2, -1.2]]
    batch = inputs(logp, sampler, [1.0, 1.0],
                   proximal_logprobs_B_T=torch.tensor([[0.0, 0.0], [-1.5, -1.5]]),
                   proximal_known_B=torch.tensor([False, True]))
    out = compute_loss(batch, DecoupledPPOLossConfig())
    out.loss.backward()
    grad = batch.logprobs_B_T.grad
    assert grad[0].tolist() == pytest.approx([-math.exp(0.2) / 4] * 2, rel=1e-6)
    assert grad[1].tolist() == [0.0, 0.0]
    assert reasons(out, 1) == ["ppo_clip"] * 2 and reasons(out, 0) == ["", ""]
    clipped = 1.2 * math.exp(-0.3)
    assert out.importance_weight_B_T[1].tolist() == pytest.approx([clipped] * 2, rel=1e-6)
    expected = -(2 * math.exp(0.2) + 2 * clipped) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------- the soft Q-learner's TD target

# One sequence of 3 tokens, beta = 0.5: policy logits z and log-probs of the sampled tokens (so
# LSE = z - log p = 2.5, 2.0, 3.2) and the reference's (LSE 2.2, 2.2, 2.4); reward 1 at the end.
Z, LOGP = [[2.0, 1.0, 3.0]], [[-0.5, -1.0, -0.2]]
REF_Z, REF_LOGP = [[1.5, 1.0, 2.0]], [[-0.7, -1.2, -0.4]]
BETA = 0.5
Q = [0.25, 0.0, 0.5]          # beta (z - z_ref)
V = [0.15, -0.1, 0.4]         # beta (LSE - LSE_ref); Q - V = beta log(pi/pi_ref) = 0.1 each


def soft_q_parts():
    t = torch.tensor
    q, v = soft_q_values(t(LOGP), t(Z), t(REF_LOGP), t(REF_Z), BETA)
    return q, v


def test_soft_q_values_are_the_logit_differences_and_their_log_partitions():
    q, v = soft_q_parts()
    assert q[0].tolist() == pytest.approx(Q) and v[0].tolist() == pytest.approx(V)
    assert (q - v)[0].tolist() == pytest.approx([BETA * 0.2] * 3)


@pytest.mark.parametrize("steps, expected", [
    (1, [-0.1, 0.4, 1.0]),    # y_t = r_t + V_{t+1}; V after the last token is 0
    (2, [0.3, 0.9, 1.0]),     # y_0 = r_0 + (r_1 - beta l_1) + V_2 = -0.1 + 0.4
    (3, [0.8, 0.9, 1.0]),     # path consistency: sum of r - beta l after the first step
    (9, [0.8, 0.9, 1.0]),
])
def test_td_target_on_a_three_token_example(steps, expected):
    q, v = soft_q_parts()
    mask = torch.ones(1, 3, dtype=torch.bool)
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    log_ratio = torch.tensor(LOGP) - torch.tensor(REF_LOGP)
    targets = td_targets(rewards, log_ratio, v, mask, BETA, steps)
    assert targets[0].tolist() == pytest.approx(expected)


def test_soft_q_loss_is_the_squared_residual_in_logits_and_moves_only_q():
    z = torch.tensor(Z, requires_grad=True)
    batch = inputs(LOGP, [[-0.6, -1.1, -0.3]], [1.0], ref=torch.tensor(REF_LOGP),
                   target_logits_B_T=z, ref_target_logits_B_T=torch.tensor(REF_Z))
    out = compute_loss(batch, SoftQLossConfig(beta=BETA, td_steps=1))
    residual = [q - y for q, y in zip(Q, [-0.1, 0.4, 1.0])]     # 0.35, -0.4, -0.5
    assert out.loss.item() == pytest.approx(sum(0.5 * (d / BETA) ** 2 for d in residual) / 3)
    out.loss.backward()
    assert z.grad[0].tolist() == pytest.approx([d / BETA / 3 for d in residual], rel=1e-5)
    assert batch.logprobs_B_T.grad is None or not batch.logprobs_B_T.grad.any()
    assert out.metrics["softq/td_abs_mean"] == pytest.approx(sum(map(abs, residual)) / 3)
    assert out.mask_reason_B_T is None      # no importance weights to record


def test_age_buckets_are_powers_of_two():
    from slipstream.trainer.step_record import age_bucket

    assert [age_bucket(a) for a in (0, 1, 2, 3, 4, 7, 8, 15, 16, 64)] == \
        ["0", "1", "2-3", "2-3", "4-7", "4-7", "8-15", "8-15", "16-31", "64-127"]


def test_a_correction_flag_adds_to_a_recipes_own_corrections_instead_of_replacing_them():
    from slipstream.launch.cli import parse_config

    config = parse_config(["--trainer.loss.kind", "decoupled_ppo",
                           "--trainer.loss.correction.icepop", "true"])
    correction = config.trainer.loss.correction
    assert (correction.tis, correction.tis_cap, correction.icepop) == ("token", 5.0, True)
    off = parse_config(["--trainer.loss.kind", "m2po", "--trainer.loss.correction.m2-threshold",
                        "0.5", "--trainer.loss.correction.tis", "token"]).trainer.loss.correction
    assert (off.m2_threshold, off.tis) == (0.5, "token")
