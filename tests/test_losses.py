"""The GRPO loss against hand computations, and the micro-batch contract of every loss."""

from __future__ import annotations

import math
import typing

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from slipstream.trainer.losses import (_LOSSES, GRPOLossConfig, LossConfig, LossInputs,
                                       LossOutput, compute_loss)
from slipstream.trainer.losses.grpo import grpo_loss, k3_kl

# The hand-computed batch: 2 sequences x 3 positions, the last position of sequence 0 is padding
# (holding -inf, as a padded logprob may, to check it never leaks into the loss or gradient).
#   seq 0, A = +1.0:  ratios 1.1, 1.5         clip(0.2, 0.2): 1.1, 1.2
#   seq 1, A = -0.5:  ratios 0.5, 1.0, 1.3    clip(0.2, 0.2): 0.8, 1.0, 1.2
# per-token loss -min(rA, clip(r)A):
#   seq 0: -min(1.1, 1.1) = -1.1;  -min(1.5, 1.2) = -1.2 (clipped)
#   seq 1: -min(-0.25, -0.4) = 0.4 (clipped);  -min(-0.5, -0.5) = 0.5;  -min(-0.65, -0.6) = 0.65
RATIOS = [[1.1, 1.5, 1.0], [0.5, 1.0, 1.3]]
SAMPLER = [[-1.0, -2.0, 0.0], [-0.5, -1.5, -3.0]]
MASK = [[True, True, False], [True, True, True]]
ADVANTAGES = [1.0, -0.5]
TOKEN_LOSSES = [[-1.1, -1.2], [0.4, 0.5, 0.65]]


def hand_inputs(ref=None, total_tokens=5, total_sequences=2) -> LossInputs:
    logp = [[s + math.log(r) for s, r in zip(srow, rrow)] for srow, rrow in zip(SAMPLER, RATIOS)]
    logp[0][2] = -math.inf
    return LossInputs(
        logprobs_B_T=torch.tensor(logp, requires_grad=True),
        sampler_logprobs_B_T=torch.tensor(SAMPLER), advantages_B=torch.tensor(ADVANTAGES),
        mask_B_T=torch.tensor(MASK), ref_logprobs_B_T=ref, total_tokens=total_tokens,
        total_sequences=total_sequences)


def test_token_mean_matches_the_hand_computation():
    inputs = hand_inputs()
    out = grpo_loss(inputs, GRPOLossConfig())
    expected = (-1.1 - 1.2 + 0.4 + 0.5 + 0.65) / 5  # = -0.15
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["loss/policy"] == pytest.approx(expected, abs=1e-6)
    assert out.metrics["loss/clip_frac"] == pytest.approx(2 / 5)
    assert out.metrics["mismatch/importance_weight_mean"] == pytest.approx(5.4 / 5, abs=1e-6)
    assert out.metrics["mismatch/importance_weight_max"] == pytest.approx(1.5, abs=1e-6)
    assert not {"loss/kl", "kl/ref", "mismatch/tis_truncated_frac"} & set(out.metrics)
    # d loss / d logp = -A r / N where the unclipped branch is taken, 0 where the clip binds.
    out.loss.backward()
    expected_grad = [[-1.0 * 1.1 / 5, 0.0, 0.0], [0.0, 0.5 * 1.0 / 5, 0.5 * 1.3 / 5]]
    torch.testing.assert_close(inputs.logprobs_B_T.grad, torch.tensor(expected_grad))


def test_sequence_mean_matches_the_hand_computation():
    out = grpo_loss(hand_inputs(), GRPOLossConfig(aggregation="sequence_mean"))
    per_sequence = [sum(row) / len(row) for row in TOKEN_LOSSES]  # -1.15, 0.51667
    assert out.loss.item() == pytest.approx(sum(per_sequence) / 2, abs=1e-6)
    # Token-mean metrics keep the total_tokens scaling whatever the aggregation.
    assert out.metrics["loss/clip_frac"] == pytest.approx(2 / 5)


@pytest.mark.parametrize("ratio, advantage, clip_high, expected_loss, clipped", [
    (1.5, 1.0, 0.2, -1.2, True),     # A > 0, ratio above 1 + clip_high: clipped, no gradient
    (1.5, 1.0, 0.28, -1.28, True),   # clip-higher moves the upper bound only
    (0.5, 1.0, 0.2, -0.5, False),    # A > 0, ratio below 1 - clip_low: PPO keeps the worse term
    (0.5, -1.0, 0.2, 0.8, True),     # A < 0, ratio below 1 - clip_low: clipped
    (1.5, -1.0, 0.2, 1.5, False),    # A < 0, ratio above the band: unclipped (pessimistic)
    (1.1, -1.0, 0.2, 1.1, False),    # inside the band: never clipped
])
def test_clipping_on_both_sides(ratio, advantage, clip_high, expected_loss, clipped):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    inputs = LossInputs(logp, torch.zeros(1, 1), torch.tensor([advantage]),
                        torch.ones(1, 1, dtype=torch.bool), None, 1, 1)
    out = grpo_loss(inputs, GRPOLossConfig(clip_low=0.2, clip_high=clip_high))
    assert out.loss.item() == pytest.approx(expected_loss, abs=1e-6)
    assert out.metrics["loss/clip_frac"] == (1.0 if clipped else 0.0)
    out.loss.backward()
    expected_grad = 0.0 if clipped else -advantage * ratio
    assert logp.grad.item() == pytest.approx(expected_grad, abs=1e-6)


def random_batch(seed: int, with_ref: bool) -> LossInputs:
    gen = torch.Generator().manual_seed(seed)
    sampler = -torch.rand(4, 5, generator=gen) * 3
    mask = torch.rand(4, 5, generator=gen) < 0.7
    mask[:, 0] = True
    mask[2] = False  # a sequence with no counted token still counts in total_sequences
    logp = sampler + torch.randn(4, 5, generator=gen) * 0.4
    ref = sampler + torch.randn(4, 5, generator=gen) * 0.3 if with_ref else None
    return LossInputs(logp.requires_grad_(), sampler, torch.randn(4, generator=gen), mask, ref,
                      total_tokens=int(mask.sum()), total_sequences=4)


def split(inputs: LossInputs, start: int, stop: int) -> LossInputs:
    ref = inputs.ref_logprobs_B_T
    return LossInputs(inputs.logprobs_B_T[start:stop], inputs.sampler_logprobs_B_T[start:stop],
                      inputs.advantages_B[start:stop], inputs.mask_B_T[start:stop],
                      None if ref is None else ref[start:stop], inputs.total_tokens,
                      inputs.total_sequences)


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
@pytest.mark.parametrize("tis, kl_coef", [(False, 0.0), (True, 0.1), (False, 0.3)])
def test_micro_batches_sum_to_the_batch(aggregation, tis, kl_coef):
    cfg = GRPOLossConfig(aggregation=aggregation, tis=tis, tis_cap=1.2, kl_coef=kl_coef)
    whole_inputs = random_batch(seed=1, with_ref=kl_coef > 0)
    whole = compute_loss(whole_inputs, cfg)
    whole.loss.backward()
    whole_grad = whole_inputs.logprobs_B_T.grad.clone()
    whole_inputs.logprobs_B_T.grad = None

    loss_sum, metrics = 0.0, {}
    for start, stop in [(0, 1), (1, 4)]:  # uneven on purpose, the empty sequence in the second
        out = compute_loss(split(whole_inputs, start, stop), cfg)
        out.loss.backward()  # gradients accumulate on the shared leaf, as in the learner
        loss_sum += out.loss.item()
        for key, value in out.metrics.items():
            metrics[key] = max(metrics.get(key, value), value) if key.endswith("_max") \
                else metrics.get(key, 0.0) + value

    assert loss_sum == pytest.approx(whole.loss.item(), abs=1e-6)
    assert metrics.keys() == whole.metrics.keys()
    for key, value in whole.metrics.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
    torch.testing.assert_close(whole_inputs.logprobs_B_T.grad, whole_grad)
    if kl_coef > 0:
        assert whole.loss.item() == pytest.approx(
            whole.metrics["loss/policy"] + whole.metrics["loss/kl"], abs=1e-6)


def test_tis_truncates_weights_and_gives_the_weighted_policy_gradient():
    # exp(logp - sampler) = 0.5, 1, 3, 5 with cap 2: weights 0.5, 1, 2, 2; two truncated.
    raw = [0.5, 1.0, 3.0, 5.0]
    sampler = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    logp = (sampler + torch.log(torch.tensor([raw]))).requires_grad_()
    advantage = 0.7
    inputs = LossInputs(logp, sampler, torch.tensor([advantage]),
                        torch.ones(1, 4, dtype=torch.bool), None, 4, 1)
    out = grpo_loss(inputs, GRPOLossConfig(tis=True, tis_cap=2.0, clip_low=0.1, clip_high=0.1))
    weights = [0.5, 1.0, 2.0, 2.0]
    assert out.loss.item() == pytest.approx(-advantage * sum(weights) / 4, abs=1e-6)
    assert out.metrics["mismatch/tis_truncated_frac"] == pytest.approx(0.5)
    assert out.metrics["mismatch/importance_weight_mean"] == pytest.approx(sum(raw) / 4, abs=1e-5)
    assert out.metrics["mismatch/importance_weight_max"] == pytest.approx(5.0, abs=1e-5)
    # The ratio to the proximal (detached) policy is 1, so a mismatch this large is not clipped.
    assert out.metrics["loss/clip_frac"] == 0.0
    out.loss.backward()
    expected = torch.tensor([[-advantage * w / 4 for w in weights]])
    torch.testing.assert_close(logp.grad, expected)


@pytest.mark.parametrize("tis", [False, True])
def test_identical_logprobs_give_ratio_one_and_no_clipping(tis):
    sampler = torch.tensor([[-0.3, -2.0, -7.0], [-1.0, -0.1, -4.0]])
    inputs = LossInputs(sampler.clone().requires_grad_(), sampler, torch.tensor([2.0, -1.0]),
                        torch.ones(2, 3, dtype=torch.bool), None, 6, 2)
    out = grpo_loss(inputs, GRPOLossConfig(tis=tis, clip_low=0.0, clip_high=0.0))
    assert out.metrics["loss/clip_frac"] == 0.0
    assert out.metrics["mismatch/importance_weight_mean"] == 1.0  # exactly: exp(0) summed / 6
    assert out.metrics["mismatch/importance_weight_max"] == 1.0
    assert out.loss.item() == pytest.approx(-(3 * 2.0 + 3 * -1.0) / 6)


def test_kl_coef_without_reference_logprobs_raises():
    with pytest.raises(ValueError, match="kl_coef > 0 needs reference logprobs"):
        grpo_loss(hand_inputs(), GRPOLossConfig(kl_coef=0.1))


def test_k3_by_hand():
    # x = ref - logp;  k3 = e^x - x - 1
    logp = torch.log(torch.tensor([0.5, 0.5, 0.5]))
    ref = torch.log(torch.tensor([0.25, 0.5, 1.0]))  # x = -ln 2, 0, +ln 2
    expected = [0.5 + math.log(2) - 1, 0.0, 2 - math.log(2) - 1]  # 0.19315, 0, 0.30685
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor(expected))


def test_kl_term_in_the_loss():
    sampler = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 1.0]]))
    k3 = [0.5 + math.log(2) - 1, 0.0, 2 - math.log(2) - 1]
    logp = sampler.clone().requires_grad_()
    inputs = LossInputs(logp, sampler, torch.tensor([0.0]),  # A = 0: only the KL term remains
                        torch.ones(1, 3, dtype=torch.bool), ref, 3, 1)
    out = grpo_loss(inputs, GRPOLossConfig(kl_coef=0.5))
    assert out.metrics["kl/ref"] == pytest.approx(sum(k3) / 3, abs=1e-6)
    assert out.metrics["loss/kl"] == pytest.approx(0.5 * sum(k3) / 3, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.5 * sum(k3) / 3, abs=1e-6)
    out.loss.backward()
    # d k3 / d logp = 1 - e^x: pulls logp down where ref is lower, up where it is higher.
    expected = torch.tensor([[0.5 * (1 - ratio) / 3 for ratio in (0.5, 1.0, 2.0)]])
    torch.testing.assert_close(logp.grad, expected)
    # kl_coef = 0 with a reference: kl/ref is still reported, the loss is untouched.
    out = grpo_loss(inputs, GRPOLossConfig(kl_coef=0.0))
    assert out.loss.item() == 0.0 and out.metrics["loss/kl"] == 0.0
    assert out.metrics["kl/ref"] == pytest.approx(sum(k3) / 3, abs=1e-6)


def test_inputs_with_mismatched_shapes_are_refused():
    good = hand_inputs()
    with pytest.raises(ValueError, match="advantages_B"):
        LossInputs(good.logprobs_B_T, good.sampler_logprobs_B_T, good.advantages_B[:, None],
                   good.mask_B_T, None, 5, 2)
    with pytest.raises(ValueError, match="mask_B_T must be bool"):
        LossInputs(good.logprobs_B_T, good.sampler_logprobs_B_T, good.advantages_B,
                   good.mask_B_T.float(), None, 5, 2)


@pytest.mark.parametrize("bad", [{"clip_low": 1.5}, {"clip_low": -0.1}, {"tis_cap": 0.0},
                                 {"kl_coef": -1.0}, {"aggregation": "sum"}, {"clip": 0.2}])
def test_config_rejects_bad_values_and_unknown_fields(bad):
    with pytest.raises(ValidationError):
        GRPOLossConfig(**bad)


def test_loss_union_dispatches_on_kind():
    adapter = TypeAdapter(LossConfig)
    cfg = adapter.validate_python({"kind": "grpo", "clip_high": 0.28})
    assert isinstance(cfg, GRPOLossConfig) and cfg.clip_high == 0.28
    with pytest.raises(ValidationError, match="grpo"):
        adapter.validate_python({"kind": "ppo"})
    out = compute_loss(hand_inputs(), cfg)
    assert isinstance(out, LossOutput)
    assert out.loss.item() == grpo_loss(hand_inputs(), cfg).loss.item()


def test_every_config_kind_has_a_registered_loss():
    union = typing.get_args(LossConfig)[0]
    members = typing.get_args(union) or (union,)  # a one-member Union collapses to the member
    kinds = {typing.get_args(m.model_fields["kind"].annotation)[0] for m in members}
    assert kinds == set(_LOSSES)
