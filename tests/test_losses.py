"""Every objective, correction, aggregation and KL estimator against hand computations (values
and gradients), and the micro-batch contract of every recipe."""

from __future__ import annotations

import math
from typing import Literal

import pytest
import torch
from pydantic import Field, TypeAdapter, ValidationError

from slipstream.trainer.losses import (KINDS, CorrectionConfig, GRPOLossConfig, LossConfig,
                                       LossConfigBase, LossInputs, compute_loss, recipe_kind)
from slipstream.trainer.losses.base import MASK_REASONS

ADAPTER = TypeAdapter(LossConfig)


def recipe(**fields) -> LossConfigBase:
    return ADAPTER.validate_python({"kind": "grpo", **fields})


def inputs_for(ratios, advantages, sampler=None, mask=None, ref=None, max_tokens=1,
               filtered=None, values=None, old_values=None, returns=None) -> LossInputs:
    """A batch whose trainer/sampler ratios are `ratios` (rows may be ragged: shorter rows are
    right-padded with -inf logprobs, which must never leak into a loss or gradient)."""
    width = max(len(r) for r in ratios)
    sampler = sampler or [[-1.0 - 0.1 * t for t in range(width)] for _ in ratios]
    mask = mask or [[t < len(r) for t in range(width)] for r in ratios]
    logp = [[s + math.log(r[t]) if t < len(r) else -math.inf for t, s in enumerate(srow)]
            for r, srow in zip(ratios, sampler)]
    adv = [[a] * width if not isinstance(a, list) else a for a in advantages]
    tensor = (lambda x: None if x is None else torch.tensor(x, dtype=torch.float32))
    mask_t = torch.tensor(mask)
    return LossInputs(
        torch.tensor(logp, requires_grad=True), torch.tensor(sampler), tensor(adv), mask_t,
        tensor(ref), total_tokens=int(mask_t.sum()), total_sequences=len(ratios),
        max_tokens=max_tokens, filtered_B=None if filtered is None else torch.tensor(filtered),
        values_B_T=None if values is None else tensor(values).requires_grad_(),
        old_values_B_T=tensor(old_values), returns_B_T=tensor(returns))


def reasons(out, row: int, n: int) -> list[str]:
    return [MASK_REASONS[c] for c in out.mask_reason_B_T[row, :n].tolist()]


# ---------------------------------------------------------------- PPO-clip and aggregations
# seq 0, A = +1.0:  ratios 1.1, 1.5         clip(0.2, 0.2): 1.1, 1.2
# seq 1, A = -0.5:  ratios 0.5, 1.0, 1.3    clip(0.2, 0.2): 0.8, 1.0, 1.2
# per-token loss -min(rA, clip(r)A):
#   seq 0: -1.1;  -1.2 (clipped)       seq 1: 0.4 (clipped);  0.5;  0.65
HAND_RATIOS = [[1.1, 1.5], [0.5, 1.0, 1.3]]
HAND_ADV = [1.0, -0.5]
TOKEN_LOSSES = [[-1.1, -1.2], [0.4, 0.5, 0.65]]


def test_ppo_clip_token_mean_by_hand():
    inputs = inputs_for(HAND_RATIOS, HAND_ADV)
    out = compute_loss(inputs, recipe())
    expected = (-1.1 - 1.2 + 0.4 + 0.5 + 0.65) / 5
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["loss/clip_frac"] == pytest.approx(2 / 5)
    assert out.metrics["mismatch/importance_weight_mean"] == pytest.approx(5.4 / 5, abs=1e-6)
    assert out.metrics["mismatch/importance_weight_max"] == pytest.approx(1.5, abs=1e-6)
    out.loss.backward()
    # d loss / d logp = -A r / N where the unclipped branch is taken, 0 where the clip binds.
    expected_grad = [[-1.0 * 1.1 / 5, 0.0, 0.0], [0.0, 0.5 * 1.0 / 5, 0.5 * 1.3 / 5]]
    torch.testing.assert_close(inputs.logprobs_B_T.grad, torch.tensor(expected_grad))
    assert reasons(out, 0, 2) == ["", "ppo_clip"] and reasons(out, 1, 3) == ["ppo_clip", "", ""]
    # The recorded weight is the ratio, or its clipped value where the clip won.
    torch.testing.assert_close(out.importance_weight_B_T,
                               torch.tensor([[1.1, 1.2, 0.0], [0.8, 1.0, 1.3]]))


def test_sequence_mean_and_constant_aggregations_by_hand():
    per_sequence = [sum(row) / len(row) for row in TOKEN_LOSSES]
    out = compute_loss(inputs_for(HAND_RATIOS, HAND_ADV), recipe(aggregation="sequence_mean"))
    assert out.loss.item() == pytest.approx(sum(per_sequence) / 2, abs=1e-6)
    assert out.metrics["loss/clip_frac"] == pytest.approx(2 / 5)   # token means stay token means
    inputs = inputs_for(HAND_RATIOS, HAND_ADV, max_tokens=8)
    out = compute_loss(inputs, recipe(aggregation="constant"))
    total = sum(sum(row) for row in TOKEN_LOSSES)
    assert out.loss.item() == pytest.approx(total / (2 * 8), abs=1e-6)   # sequences x L
    out.loss.backward()
    assert inputs.logprobs_B_T.grad[1, 2].item() == pytest.approx(0.5 * 1.3 / 16, abs=1e-7)


@pytest.mark.parametrize("ratio, advantage, clip_high, expected_loss, clipped", [
    (1.5, 1.0, 0.2, -1.2, True),     # A > 0, ratio above 1 + clip_high: clipped, no gradient
    (1.5, 1.0, 0.28, -1.28, True),   # clip-higher moves the upper bound only
    (0.5, 1.0, 0.2, -0.5, False),    # A > 0, ratio below 1 - clip_low: PPO keeps the worse term
    (0.5, -1.0, 0.2, 0.8, True),     # A < 0, ratio below 1 - clip_low: clipped
    (1.5, -1.0, 0.2, 1.5, False),    # A < 0, ratio above the band: unclipped (pessimistic)
    (1.1, -1.0, 0.2, 1.1, False),    # inside the band: never clipped
])
def test_clipping_on_both_sides(ratio, advantage, clip_high, expected_loss, clipped):
    inputs = inputs_for([[ratio]], [advantage])
    out = compute_loss(inputs, recipe(clip_low=0.2, clip_high=clip_high))
    assert out.loss.item() == pytest.approx(expected_loss, abs=1e-6)
    assert out.metrics["loss/clip_frac"] == (1.0 if clipped else 0.0)
    out.loss.backward()
    expected_grad = 0.0 if clipped else -advantage * ratio
    assert inputs.logprobs_B_T.grad[0, 0].item() == pytest.approx(expected_grad, abs=1e-6)


# ---------------------------------------------------------------- GSPO and CISPO

def test_gspo_clips_the_length_normalised_sequence_ratio():
    # seq 0: ratios 1.2 and 0.75 -> s = sqrt(0.9) = 0.948683 (inside [0.9, 1.1]), A = 2
    # seq 1: ratios 1.5, 1.5, 1.5 -> s = 1.5 (above 1.1, A = 1 > 0: clipped to 1.1, no grad)
    inputs = inputs_for([[1.2, 0.75], [1.5, 1.5, 1.5]], [2.0, 1.0])
    cfg = ADAPTER.validate_python({"kind": "gspo", "clip_low": 0.1, "clip_high": 0.1})
    out = compute_loss(inputs, cfg)
    s0 = math.sqrt(0.9)
    assert out.loss.item() == pytest.approx((-s0 * 2.0 - 1.1 * 1.0) / 2, abs=1e-6)
    out.loss.backward()
    # d/dlogp_t of -(s A) averaged within the sequence, then over 2 sequences: -s A / |o| / 2.
    expected = [[-s0 * 2.0 / 2 / 2] * 2 + [0.0], [0.0, 0.0, 0.0]]
    torch.testing.assert_close(inputs.logprobs_B_T.grad, torch.tensor(expected))
    assert reasons(out, 1, 3) == ["ppo_clip"] * 3 and reasons(out, 0, 2) == ["", ""]
    assert out.importance_weight_B_T[0, 0].item() == pytest.approx(s0, abs=1e-6)
    assert out.importance_weight_B_T[1, 2].item() == pytest.approx(1.1, abs=1e-6)


def test_cispo_keeps_every_tokens_gradient_with_a_clipped_weight():
    # Ratios 0.5, 1.0, 7.0 with the cap at 1 + 4 = 5 and no lower bound: weights 0.5, 1, 5.
    inputs = inputs_for([[0.5, 1.0, 7.0]], [0.8])
    out = compute_loss(inputs, ADAPTER.validate_python({"kind": "cispo"}))
    logp = inputs.logprobs_B_T.detach()[0]
    weights = [0.5, 1.0, 5.0]
    assert out.loss.item() == pytest.approx(
        sum(-w * 0.8 * lp for w, lp in zip(weights, logp.tolist())) / 3, rel=1e-6)
    out.loss.backward()
    torch.testing.assert_close(inputs.logprobs_B_T.grad,
                               torch.tensor([[-w * 0.8 / 3 for w in weights]]))
    assert reasons(out, 0, 3) == ["", "", "cispo_clip"]
    assert out.metrics["loss/clip_frac"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- corrections

def test_token_tis_truncates_weights_and_gives_the_weighted_policy_gradient():
    # rho = 0.5, 1, 3, 5 with cap 2: weights 0.5, 1, 2, 2; the ratio to pi_prox is 1.
    raw = [0.5, 1.0, 3.0, 5.0]
    inputs = inputs_for([raw], [0.7])
    cfg = recipe(clip_low=0.1, clip_high=0.1, correction={"tis": "token", "tis_cap": 2.0})
    out = compute_loss(inputs, cfg)
    weights = [0.5, 1.0, 2.0, 2.0]
    assert out.loss.item() == pytest.approx(-0.7 * sum(weights) / 4, abs=1e-6)
    assert out.metrics["mismatch/tis_truncated_frac"] == pytest.approx(0.5)
    assert out.metrics["loss/clip_frac"] == 0.0     # decoupled: the clip acts on pi / pi_prox
    out.loss.backward()
    torch.testing.assert_close(inputs.logprobs_B_T.grad,
                               torch.tensor([[-0.7 * w / 4 for w in weights]]))
    assert reasons(out, 0, 4) == ["", "", "tis_truncated", "tis_truncated"]
    torch.testing.assert_close(out.importance_weight_B_T, torch.tensor([weights]))


def test_sequence_and_geometric_tis_weigh_whole_sequences():
    # seq 0: rho 2, 2 -> product 4 -> capped at 3;  geometric mean 2.
    # seq 1: rho 0.5, 1, 1 -> product 0.5;          geometric mean 0.5^(1/3) = 0.793701.
    inputs = inputs_for([[2.0, 2.0], [0.5, 1.0, 1.0]], [1.0, 1.0])
    out = compute_loss(inputs, recipe(correction={"tis": "sequence", "tis_cap": 3.0}))
    assert out.loss.item() == pytest.approx(-(2 * 3.0 + 3 * 0.5) / 5, abs=1e-6)
    assert reasons(out, 0, 2) == ["tis_truncated"] * 2 and reasons(out, 1, 3) == [""] * 3
    inputs = inputs_for([[2.0, 2.0], [0.5, 1.0, 1.0]], [1.0, 1.0])
    out = compute_loss(inputs, recipe(correction={"tis": "geometric", "tis_cap": 3.0}))
    g1 = 0.5 ** (1 / 3)
    assert out.loss.item() == pytest.approx(-(2 * 2.0 + 3 * g1) / 5, abs=1e-6)
    out.loss.backward()
    torch.testing.assert_close(inputs.logprobs_B_T.grad,
                               torch.tensor([[-2 / 5, -2 / 5, 0.0], [-g1 / 5] * 3]))


@pytest.mark.parametrize("level, masked_tokens", [
    # rho: seq 0 = 1.0, 3.0 (product 3, geometric 1.732); seq 1 = 0.9, 1.1 (product 0.99)
    ("token", [[False, True], [False, False]]),
    ("sequence", [[True, True], [False, False]]),
    ("geometric", [[False, False], [False, False]]),
])
def test_mis_masks_tokens_or_sequences_outside_the_band(level, masked_tokens):
    inputs = inputs_for([[1.0, 3.0], [0.9, 1.1]], [1.0, -1.0])
    out = compute_loss(inputs, recipe(correction={"mis": level, "mis_low": 0.5,
                                                  "mis_high": 2.0}))
    out.loss.backward()
    grad = inputs.logprobs_B_T.grad
    for b in range(2):
        for t in range(2):
            if masked_tokens[b][t]:
                assert grad[b, t].item() == 0.0
                assert MASK_REASONS[out.mask_reason_B_T[b, t]] == (
                    "mis" if level == "token" else "mis_sequence")
            else:
                assert grad[b, t].item() != 0.0
    dropped = sum(map(sum, masked_tokens))
    assert out.metrics["mismatch/mis_masked_frac"] == pytest.approx(dropped / 4)
    assert out.metrics["mismatch/masked_frac"] == pytest.approx(dropped / 4)
    # Masked tokens stay in the normaliser: kept tokens' gradient is -A / total_tokens.
    assert grad[1, 0].item() == pytest.approx(1.0 / 4)


def test_icepop_masks_tokens_outside_one_over_beta_to_beta():
    inputs = inputs_for([[0.4, 0.6, 1.0, 1.6, 2.5]], [1.0])
    out = compute_loss(inputs, recipe(correction={"icepop": True, "icepop_beta": 2.0}))
    out.loss.backward()
    assert reasons(out, 0, 5) == ["icepop", "", "", "", "icepop"]
    assert inputs.logprobs_B_T.grad[0].tolist() == pytest.approx([0.0, -0.2, -0.2, -0.2, 0.0])
    assert out.metrics["mismatch/icepop_masked_frac"] == pytest.approx(2 / 5)


def test_corrections_compose_and_the_most_drastic_reason_wins():
    # rho 5 is truncated by TIS (cap 2) and dropped by IcePop (beta 3): it is masked.
    inputs = inputs_for([[5.0, 2.5, 1.0]], [1.0])
    out = compute_loss(inputs, recipe(correction={"tis": "token", "tis_cap": 2.0,
                                                  "icepop": True, "icepop_beta": 3.0}))
    assert reasons(out, 0, 3) == ["icepop", "tis_truncated", ""]
    out.loss.backward()
    assert inputs.logprobs_B_T.grad[0].tolist() == pytest.approx([0.0, -2.0 / 3, -1.0 / 3])


@pytest.mark.parametrize("bad, message", [
    ({"mis_low": 2.0, "mis_high": 0.5}, "inverted"),
    ({"mis_low": 1.0, "mis_high": 1.0}, "inverted"),
    ({"icepop_beta": 1.0}, "greater than 1"),
    ({"tis_cap": 0.0}, "greater than 0"),
    ({"tis": "per_token"}, "token"),
])
def test_bad_corrections_are_refused_with_a_readable_line(bad, message):
    with pytest.raises(ValidationError, match=message):
        CorrectionConfig(**bad)


# ---------------------------------------------------------------- KL

@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_in_the_loss_by_hand(estimator):
    # logp = ln 0.5 everywhere (ratios 1 to the sampler), ref = ln 0.25, ln 0.5, ln 1:
    # x = ref - logp = -ln 2, 0, ln 2; A = 0 so only the KL term remains.
    sampler = [[math.log(0.5)] * 3]
    ref = [[math.log(0.25), math.log(0.5), math.log(1.0)]]
    inputs = inputs_for([[1.0, 1.0, 1.0]], [0.0], sampler=sampler, ref=ref)
    out = compute_loss(inputs, recipe(kl={"coef": 0.5, "estimator": estimator}))
    x = [-math.log(2), 0.0, math.log(2)]
    value = {"k1": [-v for v in x], "k2": [v * v / 2 for v in x],
             "k3": [math.exp(v) - v - 1 for v in x]}[estimator]
    slope = {"k1": [1.0] * 3, "k2": [-v for v in x], "k3": [1 - math.exp(v) for v in x]}[estimator]
    assert out.loss.item() == pytest.approx(0.5 * sum(value) / 3, abs=1e-6)
    assert out.metrics["loss/kl"] == pytest.approx(0.5 * sum(value) / 3, abs=1e-6)
    k3 = [math.exp(v) - v - 1 for v in x]
    assert out.metrics["kl/ref"] == pytest.approx(sum(k3) / 3, abs=1e-6)   # always k3
    out.loss.backward()
    torch.testing.assert_close(inputs.logprobs_B_T.grad, torch.tensor([[0.5 * d / 3
                                                                        for d in slope]]))


def test_kl_in_the_reward_leaves_the_loss_alone_and_kl_needs_a_reference():
    ref = [[-1.0, -1.5]]
    inputs = inputs_for([[1.0, 1.0]], [0.0], ref=ref)
    out = compute_loss(inputs, recipe(kl={"coef": 0.5, "placement": "reward"}))
    assert out.loss.item() == 0.0 and "loss/kl" not in out.metrics and "kl/ref" in out.metrics
    with pytest.raises(ValueError, match="needs reference logprobs"):
        compute_loss(inputs_for([[1.0]], [1.0]), recipe(kl={"coef": 0.1}))


# ---------------------------------------------------------------- PPO's value loss

def test_value_loss_by_hand_clipped_and_unclipped():
    # V_old 0.0 and 0.0; V 0.5 and -0.1; returns 1.0 and 1.0; clip 0.2:
    # token 0: unclipped (0.5-1)^2 = 0.25, clipped (0.2-1)^2 = 0.64 -> max 0.64 (clip binds)
    # token 1: unclipped (-0.1-1)^2 = 1.21, clipped (-0.1-1)^2 = 1.21 -> 1.21
    inputs = inputs_for([[1.0, 1.0]], [0.0], values=[[0.5, -0.1]], old_values=[[0.0, 0.0]],
                        returns=[[1.0, 1.0]])
    cfg = ADAPTER.validate_python({"kind": "ppo", "value_clip": 0.2, "value_coef": 0.5})
    out = compute_loss(inputs, cfg)
    value_loss = 0.5 * (0.64 + 1.21) / 2
    assert out.metrics["loss/value"] == pytest.approx(value_loss, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.5 * value_loss, abs=1e-6)
    assert out.metrics["value/clip_frac"] == pytest.approx(0.5)
    out.loss.backward()
    # token 0: the clipped branch won and V moved past the clip: no gradient. token 1:
    # d/dV [coef * 0.5 * (V - R)^2 / N] = coef * (V - R) / N = 0.5 * (-1.1) / 2.
    assert inputs.values_B_T.grad[0, 0].item() == 0.0
    assert inputs.values_B_T.grad[0, 1].item() == pytest.approx(0.5 * -1.1 / 2)


# ---------------------------------------------------------------- the micro-batch contract

def random_batch(seed: int, with_ref: bool, with_values: bool,
                 with_logits: bool = False, with_teacher: bool = False) -> LossInputs:
    gen = torch.Generator().manual_seed(seed)
    sampler = -torch.rand(4, 5, generator=gen) * 3
    mask = torch.rand(4, 5, generator=gen) < 0.7
    mask[:, 0] = True
    mask[2] = False  # a sequence with no counted token still counts in total_sequences
    logp = sampler + torch.randn(4, 5, generator=gen) * 0.4
    ref = sampler + torch.randn(4, 5, generator=gen) * 0.3 if with_ref else None
    advantages = torch.randn(4, 1, generator=gen).expand(4, 5).clone()
    values = old = returns = None
    if with_values:
        values = torch.randn(4, 5, generator=gen).requires_grad_()
        old = values.detach() + torch.randn(4, 5, generator=gen) * 0.3
        returns = torch.randn(4, 5, generator=gen)
    logits = ref_logits = None
    if with_logits:   # soft_q: the sampled tokens' logits = logprob + a per-position LSE
        logits = (logp.detach() + 5 + torch.rand(4, 5, generator=gen)).requires_grad_()
        ref_logits = ref + 5 + torch.rand(4, 5, generator=gen)
    teacher = dict(teacher_logprobs_B_T=None)
    if with_teacher:   # sample 3 had no teacher score; top-k with K = 3, top-1 unknown on row 0
        known = mask.clone()
        known[3] = False
        top = torch.log_softmax(torch.randn(4, 5, 6, generator=gen), -1).topk(3, -1).values
        student_top = (top + torch.randn(4, 5, 3, generator=gen) * 0.2).clamp(max=-0.2)
        top1 = torch.randint(0, 4, (4, 5), generator=gen)
        top1[0] = -1
        trained = known & ~torch.tensor([False, True, False, False]).unsqueeze(-1)
        teacher = dict(teacher_logprobs_B_T=sampler + torch.randn(4, 5, generator=gen) * 0.5,
                       teacher_known_B_T=known, teacher_topk_logprobs_B_T_K=top,
                       student_topk_logprobs_B_T_K=student_top.requires_grad_(),
                       teacher_top1_B_T=top1, student_argmax_B_T=torch.randint(0, 4, (4, 5)),
                       total_teacher_tokens=int(trained.sum()),
                       total_top1_tokens=int((trained & (top1 >= 0)).sum()))
    return LossInputs(logp.requires_grad_(), sampler, advantages, mask, ref,
                      total_tokens=int(mask.sum()), total_sequences=4, max_tokens=5,
                      filtered_B=torch.tensor([False, True, False, False]), values_B_T=values,
                      old_values_B_T=old, returns_B_T=returns, target_logits_B_T=logits,
                      ref_target_logits_B_T=ref_logits, **teacher)


def split(inputs: LossInputs, start: int, stop: int) -> LossInputs:
    def cut(t):
        return None if t is None else t[start:stop]
    return LossInputs(cut(inputs.logprobs_B_T), cut(inputs.sampler_logprobs_B_T),
                      cut(inputs.advantages_B_T), cut(inputs.mask_B_T),
                      cut(inputs.ref_logprobs_B_T), inputs.total_tokens, inputs.total_sequences,
                      inputs.max_tokens, cut(inputs.filtered_B), cut(inputs.values_B_T),
                      cut(inputs.old_values_B_T), cut(inputs.returns_B_T),
                      target_logits_B_T=cut(inputs.target_logits_B_T),
                      ref_target_logits_B_T=cut(inputs.ref_target_logits_B_T),
                      teacher_logprobs_B_T=cut(inputs.teacher_logprobs_B_T),
                      teacher_known_B_T=cut(inputs.teacher_known_B_T),
                      teacher_topk_logprobs_B_T_K=cut(inputs.teacher_topk_logprobs_B_T_K),
                      student_topk_logprobs_B_T_K=cut(inputs.student_topk_logprobs_B_T_K),
                      teacher_top1_B_T=cut(inputs.teacher_top1_B_T),
                      student_argmax_B_T=cut(inputs.student_argmax_B_T),
                      total_teacher_tokens=inputs.total_teacher_tokens,
                      total_top1_tokens=inputs.total_top1_tokens)


# M2PO's mask is taken per micro-batch (as AReaL's), so only a threshold that masks nothing adds
# up across micro-batches; its mask has tests of its own below.
CONFIGS = [{"kind": k} for k in KINDS if k != "m2po"] + [
    {"kind": "m2po", "correction": {"m2_threshold": 100.0}},
    {"kind": "grpo", "aggregation": "sequence_mean", "kl": {"coef": 0.3}},
    {"kind": "grpo", "correction": {"tis": "token", "tis_cap": 1.2}, "kl": {"coef": 0.1,
                                                                            "estimator": "k2"}},
    {"kind": "dr_grpo", "correction": {"tis": "sequence", "mis": "geometric", "mis_low": 0.9,
                                       "mis_high": 1.1}},
    {"kind": "cispo", "correction": {"icepop": True, "icepop_beta": 1.3},
     "kl": {"coef": 0.2, "estimator": "k1"}},
    {"kind": "gspo", "correction": {"mis": "token", "mis_low": 0.8, "mis_high": 1.25}},
    {"kind": "distill", "distill": {"objective": "forward_kl_topk"}},
    {"kind": "distill", "distill": {"objective": "jsd_topk", "reward_weight": 1.0,
                                    "reverse_share": 0.3}},
    {"kind": "grpo", "distill": {"coef": 0.5}},
]


@pytest.mark.parametrize("fields", CONFIGS, ids=lambda f: str(f))
def test_micro_batches_sum_to_the_batch(fields):
    cfg = ADAPTER.validate_python(fields)
    with_values = cfg.needs_values
    whole_inputs = random_batch(seed=1, with_ref=cfg.needs_reference, with_values=with_values,
                                with_logits=cfg.needs_logits, with_teacher=cfg.distill.enabled)
    # soft_q's gradient reaches the model through the sampled tokens' logits (its Q).
    leaf = whole_inputs.target_logits_B_T if cfg.needs_logits else whole_inputs.logprobs_B_T
    whole = compute_loss(whole_inputs, cfg)
    whole.loss.backward()
    whole_grad = leaf.grad.clone()
    leaf.grad = None
    if with_values:
        whole_value_grad = whole_inputs.values_B_T.grad.clone()
        whole_inputs.values_B_T.grad = None

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
    torch.testing.assert_close(leaf.grad, whole_grad)
    if with_values:
        torch.testing.assert_close(whole_inputs.values_B_T.grad, whole_value_grad)
    if cfg.distill.needs_topk:   # the top-k objectives' gradient reaches the student's top-k
        assert whole_inputs.student_topk_logprobs_B_T_K.grad is not None
    # The filtered sequence (DAPO's overlong filter) gives no gradient and says why.
    assert whole_grad[1].abs().sum().item() == 0.0
    if whole.mask_reason_B_T is None:    # soft_q: no importance weights, nothing to record
        return
    assert {MASK_REASONS[c] for c in whole.mask_reason_B_T[1][whole_inputs.mask_B_T[1]].tolist()
            } == {"overlong"}


def test_identical_logprobs_give_ratio_one_and_no_clipping():
    for fields in ({}, {"correction": {"tis": "token"}}):
        inputs = inputs_for([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], [2.0, -1.0])
        out = compute_loss(inputs, recipe(clip_low=0.0, clip_high=0.0, **fields))
        assert out.metrics["loss/clip_frac"] == 0.0
        assert out.metrics["mismatch/importance_weight_mean"] == pytest.approx(1.0, abs=1e-6)
        assert out.loss.item() == pytest.approx(-(3 * 2.0 + 3 * -1.0) / 6, abs=1e-6)


def test_inputs_with_mismatched_shapes_are_refused():
    good = inputs_for(HAND_RATIOS, HAND_ADV)
    with pytest.raises(ValueError, match="advantages_B_T"):
        LossInputs(good.logprobs_B_T, good.sampler_logprobs_B_T, good.advantages_B_T[:, :1],
                   good.mask_B_T, None, 5, 2)
    with pytest.raises(ValueError, match="mask_B_T must be bool"):
        LossInputs(good.logprobs_B_T, good.sampler_logprobs_B_T, good.advantages_B_T,
                   good.mask_B_T.float(), None, 5, 2)


# ---------------------------------------------------------------- configs and registration

@pytest.mark.parametrize("bad", [{"clip_low": 1.5}, {"clip_low": -0.1}, {"aggregation": "sum"},
                                 {"clip": 0.2}, {"advantage": "gae"}, {"objective": "dpo"}])
def test_config_rejects_bad_values_and_unknown_fields(bad):
    with pytest.raises(ValidationError):
        GRPOLossConfig(**bad)


def test_every_kind_validates_and_an_unknown_kind_lists_the_valid_ones():
    assert set(KINDS) == {"grpo", "dr_grpo", "dapo", "gspo", "cispo", "rloo", "reinforce_pp",
                          "ppo", "decoupled_ppo", "m2po", "topr", "soft_q", "distill"}
    for kind in KINDS:
        assert ADAPTER.validate_python({"kind": kind}).kind == kind
    with pytest.raises(ValidationError, match="'grpo', 'dr_grpo'"):
        ADAPTER.validate_python({"kind": "vanilla"})


def test_recipes_set_their_papers_pieces():
    get = ADAPTER.validate_python
    assert (get({"kind": "dr_grpo"}).advantage, get({"kind": "dr_grpo"}).aggregation) == \
        ("group_center", "constant")
    dapo = get({"kind": "dapo"})
    assert (dapo.clip_high, dapo.dynamic_sampling, dapo.overlong) == (0.28, True, "shape")
    gspo = get({"kind": "gspo"})
    assert (gspo.objective, gspo.aggregation, gspo.clip_high) == ("gspo", "sequence_mean", 4e-4)
    assert get({"kind": "cispo"}).objective == "cispo"
    assert get({"kind": "rloo"}).advantage == "leave_one_out"
    assert get({"kind": "reinforce_pp"}).advantage == "group_batch_norm"
    assert get({"kind": "ppo"}).needs_values and not get({"kind": "grpo"}).needs_values
    assert get({"kind": "grpo", "kl": {"coef": 0.1}}).needs_reference


def test_a_malformed_recipe_fails_with_a_readable_error():
    class NoBase:
        pass

    class NoKind(LossConfigBase):
        kind: str = "mine"

    class Good(LossConfigBase):
        kind: Literal["mine"] = Field("mine", description="Selects this loss.")

    with pytest.raises(TypeError, match="must subclass LossConfigBase"):
        recipe_kind(NoBase)
    with pytest.raises(TypeError, match="needs `kind: Literal"):
        recipe_kind(NoKind)
    assert recipe_kind(Good) == "mine"
