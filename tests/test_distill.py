"""Distillation: the teacher's terms (trainer/losses/distill.py) against hand computations, the
teacher = student invariant through `compute_loss`, the advantage mix, the teacher metrics, the
pure parts of rollout/teachers.py and the teacher section's validation. Pure torch/python."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from factories import make_group, make_sample
from slipstream.buffer.records import Group
from slipstream.envs import Prompt
from slipstream.errors import SlipstreamError
from slipstream.rollout.engine_api import TokenScores
from slipstream.rollout.teacher_config import TeacherConfig, TeacherMember
from slipstream.rollout.teachers import (NoContext, combine_poe, combined_fields,
                                         confidence_weights, context_function, route_choice,
                                         teacher_prompt)
from slipstream.trainer.losses import (DistillConfig, DistillLossConfig, GRPOLossConfig,
                                       LossConfig, LossInputs, compute_loss)
from slipstream.trainer.losses.distill import (mixed_advantages, reverse_kl_advantage,
                                               topk_divergence)

ADAPTER = TypeAdapter(LossConfig)
ln = math.log

# The hand example: K = 2 top tokens and a tail bucket.
#   teacher q = [0.5, 0.3 | tail 0.2]     student p = [0.4, 0.4 | tail 0.2]
Q, P = [0.5, 0.3], [0.4, 0.4]
FORWARD = 0.5 * ln(0.5 / 0.4) + 0.3 * ln(0.3 / 0.4) + 0.2 * ln(0.2 / 0.2)
REVERSE = 0.4 * ln(0.4 / 0.5) + 0.4 * ln(0.4 / 0.3) + 0.2 * ln(0.2 / 0.2)


def logs(*probs: float) -> list[float]:
    return [ln(x) for x in probs]


def divergence(share: float, student=P, teacher=Q):
    """topk_divergence of one token; returns (value, gradient on the student's top-k)."""
    s = torch.tensor([[logs(*student)]], requires_grad=True)
    d = topk_divergence(s, torch.tensor([[logs(*teacher)]]), share)
    d.sum().backward()
    return d.item(), s.grad[0, 0].tolist()


# ------------------------------------------------------------------------ distill.py pieces
def test_distill_config_switches_and_bounds():
    assert not DistillConfig().enabled and not DistillConfig().needs_topk
    assert DistillConfig(coef=0.5).enabled and not DistillConfig(coef=0.5).needs_topk
    assert DistillConfig(coef=0.5, objective="jsd_topk").needs_topk
    assert not DistillConfig(coef=0.0, objective="forward_kl_topk").needs_topk
    for bad in ({"reverse_share": 1.5}, {"reverse_share": -0.1}, {"clamp": 0.0},
                {"coef": -1.0}, {"objective": "kl"}, {"beta": 0.5}):
        with pytest.raises(ValidationError):
            DistillConfig(**bad)


def test_distill_recipe_defaults():
    cfg = ADAPTER.validate_python({"kind": "distill"})
    assert isinstance(cfg, DistillLossConfig)
    assert (cfg.distill.coef, cfg.distill.reward_weight, cfg.distill.objective) == \
        (1.0, 0.0, "reverse_kl")
    assert cfg.correction.tis == "token"
    # A section given on the command line merges over the recipe's defaults.
    cfg = ADAPTER.validate_python({"kind": "distill", "distill": {"objective": "jsd_topk"}})
    assert (cfg.distill.coef, cfg.distill.reward_weight) == (1.0, 0.0)
    assert GRPOLossConfig(distill={"coef": 0.5}).distill.reward_weight == 1.0


def test_reverse_kl_advantage_clamps_and_ignores_unscored_tokens():
    student = torch.tensor([[-1.0, -2.0, -15.0, -1.0, -1.0]], requires_grad=True)
    teacher = torch.tensor([[-0.5, -30.0, -0.2, -4.0, float("nan")]])
    known = torch.tensor([[True, True, True, False, False]])
    a = reverse_kl_advantage(student, teacher, known, clamp=10.0)
    # gaps: 0.5; -28 -> -10; 14.8 -> 10; unscored (even with a nan score) -> 0.
    torch.testing.assert_close(a, torch.tensor([[0.5, -10.0, 10.0, 0.0, 0.0]]))
    assert not a.requires_grad            # a stop-gradient advantage
    a = reverse_kl_advantage(student, teacher, known, clamp=0.25)
    torch.testing.assert_close(a, torch.tensor([[0.25, -0.25, 0.25, 0.0, 0.0]]))


def test_topk_forward_and_reverse_kl_by_hand():
    value, grad = divergence(0.0)
    assert value == pytest.approx(FORWARD, abs=1e-6)
    # d KL(q||p) / d log p_i = -q_i + p_i * q_tail / p_tail
    assert grad == pytest.approx([-0.5 + 0.4, -0.3 + 0.4], abs=1e-6)
    value, grad = divergence(1.0)
    assert value == pytest.approx(REVERSE, abs=1e-6)
    # d KL(p||q) / d log p_i = p_i * (log(p_i / q_i) - log(p_tail / q_tail))
    assert grad == pytest.approx([0.4 * ln(0.4 / 0.5), 0.4 * ln(0.4 / 0.3)], abs=1e-6)
    assert FORWARD != pytest.approx(REVERSE, abs=1e-4)   # the directions are distinguishable


def test_topk_jsd_half_is_the_textbook_jsd():
    m = [0.45, 0.35, 0.2]
    p, q = P + [0.2], Q + [0.2]
    jsd = 0.5 * sum(a * ln(a / b) for a, b in zip(p, m)) + \
        0.5 * sum(a * ln(a / b) for a, b in zip(q, m))
    value, grad = divergence(0.5)
    assert value == pytest.approx(jsd, abs=1e-6)
    # d JSD / d p_i = 0.5 log(p_i / m_i); the tail's term is 0 here (p_tail = m_tail).
    assert grad == pytest.approx([0.4 * 0.5 * ln(0.4 / 0.45), 0.4 * 0.5 * ln(0.4 / 0.35)],
                                 abs=1e-6)
    assert value == pytest.approx(divergence(0.5, student=Q, teacher=P)[0], abs=1e-6)  # symmetric


def test_topk_generalised_jsd_by_hand_and_its_ends():
    # share 0.25: m = 0.25 q + 0.75 p = [0.425, 0.375, 0.2]
    expected = 0.25 * (0.4 * ln(0.4 / 0.425) + 0.4 * ln(0.4 / 0.375)) + \
        0.75 * (0.5 * ln(0.5 / 0.425) + 0.3 * ln(0.3 / 0.375))
    assert divergence(0.25)[0] == pytest.approx(expected, abs=1e-6)
    # Continuous into the special-cased ends: share -> 0 is the forward KL, -> 1 the reverse.
    assert divergence(1e-4)[0] == pytest.approx(FORWARD, abs=1e-3)
    assert divergence(1 - 1e-4)[0] == pytest.approx(REVERSE, abs=1e-3)


@pytest.mark.parametrize("share", [0.0, 0.3, 0.5, 1.0])
def test_topk_divergence_is_finite_where_a_bucket_is_empty(share):
    # Token 0: the student gives a teacher token no mass; token 1: padding (-inf everywhere).
    s = torch.tensor([[[ln(0.4), -math.inf], [-math.inf, -math.inf]]], requires_grad=True)
    t = torch.tensor([[[ln(0.5), ln(0.3)], [-math.inf, -math.inf]]])
    d = topk_divergence(s, t, share)
    d.sum().backward()
    assert torch.isfinite(d).all() and torch.isfinite(s.grad).all()
    assert d[0, 1].item() == pytest.approx(0.0, abs=1e-9)   # both all-tail: no divergence


def test_mixed_advantages_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    inputs = LossInputs(logp, logp, torch.tensor([[2.0, 2.0, 2.0]]),
                        torch.tensor([[True, True, False]]), None, 2, 1,
                        teacher_logprobs_B_T=torch.tensor([[-0.5, -20.0, -1.0]]),
                        teacher_known_B_T=torch.tensor([[True, True, True]]))
    cfg = DistillConfig(coef=0.5, reward_weight=0.25, clamp=10.0)
    # 0.25 * 2 + 0.5 * clamp(gap): 0.5 + 0.25;  0.5 + 0.5 * -10;  padding: 0
    torch.testing.assert_close(mixed_advantages(inputs, cfg, logp),
                               torch.tensor([[0.75, -4.5, 0.0]]))
    top = cfg.model_copy(update={"objective": "forward_kl_topk"})
    torch.testing.assert_close(mixed_advantages(inputs, top, logp),
                               torch.tensor([[0.5, 0.5, 0.0]]))


# --------------------------------------------- teacher = student: zero loss, zero gradient
def self_taught_batch(seed: int = 0, vocab: int = 6, k: int = 3):
    """3 sequences x 4 positions: row 1 right-padded, row 2 unscored; teacher = student."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True] * 4])
    logp_all = torch.log_softmax(torch.randn(3, 4, vocab, generator=gen) * 2, -1)
    tokens = torch.randint(0, vocab, (3, 4), generator=gen)
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    logp = torch.where(mask, logp, torch.full_like(logp, -math.inf))
    top = logp_all.topk(k, -1).values                 # a real softmax's top-k: tail > 0
    known = mask.clone()
    known[2] = False
    sampler = logp + torch.tensor([0.3, -0.2, -1.5, 0.1]) * torch.tensor([[1.0], [-1.0], [1.0]])
    inputs = LossInputs(
        logp.clone().requires_grad_(), sampler, torch.tensor([[1.5], [-2.0], [0.7]]).expand(3, 4),
        mask, None, total_tokens=int(mask.sum()), total_sequences=3,
        teacher_logprobs_B_T=torch.where(known, logp, torch.zeros_like(logp)),
        teacher_known_B_T=known, teacher_topk_logprobs_B_T_K=top.clone(),
        student_topk_logprobs_B_T_K=top.clone().requires_grad_(),
        total_teacher_tokens=int(known.sum()))
    return inputs


@pytest.mark.parametrize("objective, share", [("reverse_kl", 0.5), ("forward_kl_topk", 0.5),
                                              ("jsd_topk", 0.5), ("jsd_topk", 1.0)])
def test_teacher_equal_to_student_gives_zero_loss_and_gradient(objective, share):
    inputs = self_taught_batch()
    cfg = ADAPTER.validate_python({"kind": "distill", "distill": {"objective": objective,
                                                                   "reverse_share": share}})
    out = compute_loss(inputs, cfg)
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert out.metrics["kl/teacher"] == 0.0
    assert out.metrics["loss/distill"] == 0.0
    assert inputs.logprobs_B_T.grad.abs().max().item() < 1e-7
    top_grad = inputs.student_topk_logprobs_B_T_K.grad
    if objective == "reverse_kl":
        assert top_grad is None
    else:
        assert top_grad.abs().max().item() < 1e-7
    # The task advantages are nonzero but weigh 0 here; the same batch at reward_weight 1
    # does train, so the zero above is the invariant and not a dead loss.
    live = ADAPTER.validate_python({"kind": "distill",
                                    "distill": {"objective": objective, "reward_weight": 1.0}})
    fresh = self_taught_batch()
    compute_loss(fresh, live).loss.backward()
    assert fresh.logprobs_B_T.grad.abs().max().item() > 1e-3


def test_reverse_kl_pushes_toward_the_teacher_by_hand():
    inputs = self_taught_batch()
    gap = torch.tensor([[0.5, -0.3, 20.0, 0.0], [-2.0, 1.0, 0.0, 0.0], [3.0, 3.0, 3.0, 3.0]])
    inputs = dataclasses.replace(
        inputs, sampler_logprobs_B_T=inputs.logprobs_B_T.detach().clone(),   # TIS weight 1
        teacher_logprobs_B_T=inputs.teacher_logprobs_B_T + gap)
    out = compute_loss(inputs, ADAPTER.validate_python({"kind": "distill"}))
    out.loss.backward()
    # d loss / d logp_t = -coef * clamp(log q - log p) / N (N = 10 tokens); the unscored row
    # and padding get nothing, whatever their (task) advantages say.
    expected = -torch.tensor([[0.5, -0.3, 10.0, 0.0], [-2.0, 1.0, 0, 0], [0, 0, 0, 0]]) / 10
    torch.testing.assert_close(inputs.logprobs_B_T.grad, expected)
    assert inputs.logprobs_B_T.grad[0, 0] < 0   # the teacher likes it more: pushed up
    assert out.metrics["loss/distill"] == pytest.approx(-(0.5 - 0.3 + 10 - 2 + 1) / 10, abs=1e-6)


def one_token_topk_batch():
    """1 x 2 tokens, K = 2: token 0 the hand example, token 1 teacher = student."""
    student = torch.tensor([[logs(*P), logs(0.6, 0.1)]], requires_grad=True)
    teacher = torch.tensor([[logs(*Q), logs(0.6, 0.1)]])
    logp = torch.tensor([[ln(0.4), ln(0.6)]], requires_grad=True)
    return LossInputs(logp, logp.detach().clone(), torch.zeros(1, 2), torch.ones(1, 2, dtype=bool),
                      None, total_tokens=2, total_sequences=1, teacher_logprobs_B_T=logp.detach(),
                      teacher_known_B_T=torch.ones(1, 2, dtype=bool),
                      teacher_topk_logprobs_B_T_K=teacher, student_topk_logprobs_B_T_K=student,
                      total_teacher_tokens=2)


@pytest.mark.parametrize("objective, share, value, grad", [
    ("forward_kl_topk", 0.0, FORWARD, [-0.5 + 0.4, -0.3 + 0.4]),
    ("jsd_topk", 1.0, REVERSE, [0.4 * ln(0.4 / 0.5), 0.4 * ln(0.4 / 0.3)]),
    ("jsd_topk", 0.5, None, [0.2 * ln(0.4 / 0.45), 0.2 * ln(0.4 / 0.35)]),
])
def test_topk_objectives_through_compute_loss_by_hand(objective, share, value, grad):
    inputs = one_token_topk_batch()
    cfg = ADAPTER.validate_python({"kind": "distill", "distill": {"objective": objective,
                                                                   "reverse_share": share}})
    out = compute_loss(inputs, cfg)
    out.loss.backward()
    if value is not None:   # token_mean over N = 2 tokens; the second adds 0
        assert out.loss.item() == pytest.approx(value / 2, abs=1e-6)
    top_grad = inputs.student_topk_logprobs_B_T_K.grad
    assert top_grad[0, 0].tolist() == pytest.approx([g / 2 for g in grad], abs=1e-6)
    assert top_grad[0, 0, 0] < 0 < top_grad[0, 0, 1]  # toward the teacher's preferred token
    assert top_grad[0, 1].abs().max().item() < 1e-7
    assert out.metrics["distill/teacher_mass"] == pytest.approx((0.8 + 0.7) / 2, abs=1e-6)
    assert out.metrics["distill/student_mass"] == pytest.approx((0.8 + 0.7) / 2, abs=1e-6)


# ------------------------------------------------------------------------ the advantage mix
def test_grpo_with_distill_is_grpo_on_mixed_advantages():
    mask = torch.tensor([[True, True, True], [True, True, False]])
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -math.inf]])
    sampler = torch.tensor([[-1.1, -1.6, -0.5], [-0.4, -1.0, -1.0]])   # ratios ~1.1, 0.67, ...
    task = torch.tensor([[1.0, 1.0, 1.0], [-0.5, -0.5, -0.5]])
    teacher = torch.tensor([[-0.6, -27.0, 0.0], [-1.3, -1.0, 0.0]])
    known = torch.tensor([[True, True, False], [True, True, False]])
    # A + 0.5 * clamp(q - p): row 0: 1 + 0.2; 1 + 0.5 * -10; 1 (unscored)
    #                         row 1: -0.5 + 0.5 * -1; -0.5 + 0.5 * 0.2; padding
    mixed = torch.tensor([[1.2, -4.0, 1.0], [-1.0, -0.4, 0.0]])

    def run(advantages, cfg, **teacher_fields):
        leaf = logp.clone().requires_grad_()
        out = compute_loss(LossInputs(leaf, sampler, advantages, mask, None, 5, 2,
                                      **teacher_fields), cfg)
        out.loss.backward()
        return out, leaf.grad

    with_teacher = dict(teacher_logprobs_B_T=teacher, teacher_known_B_T=known,
                        total_teacher_tokens=4)
    distilled, grad = run(task, GRPOLossConfig(distill={"coef": 0.5}), **with_teacher)
    plain, plain_grad = run(mixed, GRPOLossConfig())
    assert distilled.loss.item() == pytest.approx(plain.loss.item(), abs=1e-6)
    torch.testing.assert_close(grad, plain_grad)
    # loss/rl is the recipe on the task advantages alone.
    task_only, _ = run(task, GRPOLossConfig())
    assert distilled.metrics["loss/rl"] == pytest.approx(task_only.loss.item(), abs=1e-6)
    assert distilled.loss.item() != pytest.approx(task_only.loss.item(), abs=1e-3)
    # coef 0 is no distillation at all; coef > 0 without teacher scores is refused.
    off, _ = run(task, GRPOLossConfig(distill={"coef": 0.0}), **with_teacher)
    assert off.loss.item() == pytest.approx(task_only.loss.item(), abs=1e-7)
    with pytest.raises(ValueError, match="teacher"):
        run(task, GRPOLossConfig(distill={"coef": 0.5}))


# ------------------------------------------------------------------------------- metrics
def metrics_batch(rows=slice(0, 2), filtered=None, total_teacher=4, total_top1=3):
    """2 x 3: row 1 padded at t = 2, t = 2 of row 0 unscored; teacher top-1 unknown at (0, 1)."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -3.0, -math.inf]])
    fields = dict(
        logprobs_B_T=logp.requires_grad_(), sampler_logprobs_B_T=logp.detach(),
        advantages_B_T=torch.zeros(2, 3), mask_B_T=torch.tensor([[True] * 3, [True, True, False]]),
        teacher_logprobs_B_T=torch.tensor([[-1.5, -1.0, 0.0], [-0.7, -2.0, 0.0]]),
        teacher_known_B_T=torch.tensor([[True, True, False], [True, True, False]]),
        teacher_top1_B_T=torch.tensor([[5, -1, 7], [2, 3, 0]]),
        student_argmax_B_T=torch.tensor([[5, 4, 7], [2, 9, 0]]),
        filtered_B=filtered)
    fields = {k: None if v is None else v[rows] for k, v in fields.items()}
    return LossInputs(**fields, ref_logprobs_B_T=None, total_tokens=5, total_sequences=2,
                      total_teacher_tokens=total_teacher, total_top1_tokens=total_top1)


def test_teacher_metrics_by_hand():
    cfg = ADAPTER.validate_python({"kind": "distill"})
    out = compute_loss(metrics_batch(), cfg)
    # Scored tokens: (0,0) (0,1) (1,0) (1,1). log p - log q: 0.5, -1.0, 0.5, -1.0.
    assert out.metrics["kl/teacher"] == pytest.approx(-1.0 / 4, abs=1e-6)
    assert out.metrics["distill/teacher_logprob"] == pytest.approx(-5.2 / 4, abs=1e-6)
    # Top-1 known on (0,0) agree, (1,0) agree, (1,1) disagree; (0,1) is -1, (0,2) unscored
    # and (1,2) padding are left out although two of them "agree".
    assert out.metrics["distill/agree_frac"] == pytest.approx(2 / 3, abs=1e-6)
    # Micro-batches of one row each are shares of the step's figures, not their own means.
    parts = [compute_loss(metrics_batch(slice(r, r + 1)), cfg).metrics for r in (0, 1)]
    assert [p["distill/agree_frac"] for p in parts] == pytest.approx([1 / 3, 1 / 3], abs=1e-6)
    assert [p["kl/teacher"] for p in parts] == pytest.approx([-0.125, -0.125], abs=1e-6)
    # A filtered sequence (DAPO's overlong filter) is out of both figures.
    out = compute_loss(metrics_batch(filtered=torch.tensor([False, True]), total_teacher=2,
                                     total_top1=1), cfg)
    assert out.metrics["kl/teacher"] == pytest.approx((0.5 - 1.0) / 2, abs=1e-6)
    assert out.metrics["distill/agree_frac"] == pytest.approx(1.0, abs=1e-6)
    # Figures over no token are left out, not written as 0: no teacher top-1 anywhere (a product
    # of experts), and no token scored at all (every member failed).
    no_top1 = compute_loss(metrics_batch(total_top1=0), cfg).metrics
    assert "distill/agree_frac" not in no_top1 and "kl/teacher" in no_top1
    nothing = compute_loss(metrics_batch(total_teacher=0, total_top1=0), cfg).metrics
    assert not {"kl/teacher", "kl/teacher_k3", "distill/agree_frac"} & nothing.keys()
    assert "loss/distill" in nothing


# ------------------------------------------------------------- rollout/teachers.py, pure parts
def scores(logprobs, top1_probs, version=0) -> TokenScores:
    return TokenScores(tuple(logprobs), tuple((7,) for _ in top1_probs),
                       tuple((ln(p),) for p in top1_probs), version)


def ensemble(combine: str, **fields) -> TeacherConfig:
    return TeacherConfig(kind="ensemble", combine=combine, members=[
        {"source": "model", "path": "x", "name": "a"},
        {"source": "self", "context": "answer", "name": "b"}], **fields)


def test_combine_poe_weights_and_renormalises():
    parts = {"a": (-1.0, -2.0), "b": (-3.0, -4.0)}
    assert combine_poe(parts, {"a": 0.25, "b": 0.75}) == pytest.approx((-2.5, -3.5))
    # Weights renormalised over the members present: c is absent.
    assert combine_poe(parts, {"a": 0.2, "b": 0.2, "c": 0.6}) == pytest.approx((-2.0, -3.0))
    assert combine_poe({"a": (-1.0, -2.0)}, {"a": 0.25, "b": 0.75}) == pytest.approx((-1.0, -2.0))
    with pytest.raises(ValueError, match="zero total weight"):
        combine_poe(parts, {"a": 0.0, "b": 0.0})
    with pytest.raises(ValueError):   # members that scored different lengths
        combine_poe({"a": (-1.0, -2.0), "b": (-3.0,)}, {"a": 0.5, "b": 0.5})


def test_confidence_weights_follow_mean_top1_probability():
    parts = {"a": scores([-1.0, -1.0], [0.8, 0.4]), "b": scores([-2.0, -2.0], [0.2, 0.2])}
    # mean top-1 probability: a 0.6, b 0.2 -> 0.75, 0.25
    assert confidence_weights(parts) == pytest.approx({"a": 0.75, "b": 0.25})
    same = {"a": scores([-1.0], [0.5]), "b": scores([-1.0], [0.5])}
    assert confidence_weights(same) == pytest.approx({"a": 0.5, "b": 0.5})


def test_route_choice_by_name_else_stable_and_spread():
    names = ["a", "b", "c"]
    assert route_choice("b", names) == "b" and route_choice("c", names) == "c"
    keys = [f"arith-d2-s0-{i:06d}" for i in range(60)]
    first = [route_choice(k, names) for k in keys]
    assert first == [route_choice(k, list(names)) for k in keys]   # same key, same member
    assert set(first) == set(names)                                 # keys spread over them


def test_combined_fields_route_takes_one_member_whole():
    a = TokenScores((-1.0, -2.0), ((3,), (4,)), ((-0.1,), (-0.2,)), 0)
    b = TokenScores((-5.0, -6.0), ((8,), (9,)), ((-0.3,), (-0.4,)), 4)
    fields = combined_fields(ensemble("route"), {"a": a, "b": b}, route_key="b")
    assert fields["teacher_logprobs_T"] == (-5.0, -6.0)
    assert fields["teacher_topk_ids_T_K"] == ((8,), (9,))
    assert fields["teacher_topk_logprobs_T_K"] == ((-0.3,), (-0.4,))
    assert fields["teacher_weights"] == {"a": 0.0, "b": 1.0}
    assert fields["teacher_version"] == 4
    assert fields["teacher_parts"] == {"a": (-1.0, -2.0), "b": (-5.0, -6.0)}


def test_combined_fields_poe_and_confidence():
    a = scores([-1.0, -2.0], [0.9, 0.9], version=0)
    b = scores([-3.0, -4.0], [0.3, 0.3], version=6)
    fields = combined_fields(ensemble("poe", member_weights=[0.25, 0.75]), {"a": a, "b": b}, "p")
    assert fields["teacher_logprobs_T"] == pytest.approx((-2.5, -3.5))
    assert fields["teacher_weights"] == pytest.approx({"a": 0.25, "b": 0.75})
    assert fields["teacher_parts"] == {"a": (-1.0, -2.0), "b": (-3.0, -4.0)}
    assert fields["teacher_version"] == 6
    equal = combined_fields(ensemble("poe"), {"a": a, "b": b}, "p")   # default: equal weights
    assert equal["teacher_logprobs_T"] == pytest.approx((-2.0, -3.0))
    conf = combined_fields(ensemble("confidence"), {"a": a, "b": b}, "p")
    assert conf["teacher_weights"] == pytest.approx({"a": 0.75, "b": 0.25})
    assert conf["teacher_logprobs_T"] == pytest.approx((-1.5, -2.5))
    # A member that failed: the other stands alone, with all the weight.
    alone = combined_fields(ensemble("poe", member_weights=[0.25, 0.75]), {"a": a}, "p")
    assert alone["teacher_logprobs_T"] == (-1.0, -2.0)
    assert alone["teacher_weights"] == {"a": 1.0}


def test_a_member_weighted_zero_is_refused():
    """A zero weight would leave the renormalised product dividing by zero whenever the other
    members failed, and costs its scoring for nothing: refused in the config."""
    with pytest.raises(ValidationError, match="each be > 0"):
        TeacherConfig(kind="ensemble", combine="poe", member_weights=[1.0, 0.0, 0.0],
                      members=[{"source": "model", "path": "x", "name": "a"},
                               {"source": "self", "name": "b"},
                               {"source": "self", "name": "c", "context": "answer"}])


def test_teacher_prompt_appends_context_to_the_last_user_message():
    prompt = Prompt("p1", ({"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
                           {"role": "assistant", "content": "A1"},
                           {"role": "user", "content": "Q2"}), reference="57")
    seen = teacher_prompt(prompt, "(Hint: 57)")
    assert [m["content"] for m in seen.messages] == ["S", "Q1", "A1", "Q2\n\n(Hint: 57)"]
    assert [m["role"] for m in seen.messages] == ["system", "user", "assistant", "user"]
    assert (seen.prompt_id, seen.reference) == ("p1", "57")
    assert prompt.messages[3]["content"] == "Q2"          # the student's prompt untouched
    assert teacher_prompt(prompt, "") == prompt


def group_of(rewards, texts) -> Group:
    group = make_group(0, rewards=rewards)
    samples = tuple(dataclasses.replace(s, completion_text=t)
                    for s, t in zip(group.samples, texts))
    return dataclasses.replace(group, samples=samples)


def test_built_in_contexts():
    prompt = Prompt("p", ({"role": "user", "content": "1+1?"},), reference="2")
    group = group_of((0.0, 1.0, 1.0), ("wrong", " right one ", "right two"))
    s0, s1, s2 = group.samples
    assert context_function("none")(s0, group, prompt) == ""
    assert "2" in context_function("answer")(s0, group, prompt)
    sibling = context_function("sibling")
    assert "right one" in sibling(s0, group, prompt)
    assert "right two" in sibling(s1, group, prompt)      # never its own completion
    assert "right one" in sibling(s2, group, prompt)
    lonely = group_of((1.0, 0.0), ("only right", "wrong"))
    with pytest.raises(NoContext):
        sibling(lonely.samples[0], lonely, prompt)
    failed = group_of((0.0, 0.0), ("x", "y"))
    with pytest.raises(NoContext):
        sibling(failed.samples[0], failed, prompt)
    sample = dataclasses.replace(make_sample(reward=0.5), reward_error="timed out")
    text = context_function("feedback")(sample, group, prompt)
    assert "0.5" in text and "timed out" in text


def test_imported_context_functions():
    assert context_function("json:dumps") is json.dumps
    with pytest.raises(SlipstreamError, match="no_such_module_xyz:fn.*cannot be imported"):
        context_function("no_such_module_xyz:fn")
    with pytest.raises(SlipstreamError, match="cannot be imported"):
        context_function("json:no_such_function")
    with pytest.raises(SlipstreamError, match="not callable"):
        context_function("math:pi")


# ------------------------------------------------------------- rollout/teacher_config.py
@pytest.mark.parametrize("fields, message", [
    ({"kind": "ensemble", "members": [{"source": "model", "path": "x"}, {"source": "self"}],
      "member_weights": [0.5, 0.6]}, "member_weights"),
    ({"kind": "ensemble", "members": [{"source": "model", "path": "x"}, {"source": "self"}],
      "member_weights": [1.0]}, "member_weights"),
    ({"kind": "model"}, "needs a path"),
    ({"kind": "ensemble", "members": [{"source": "model"}, {"source": "self"}]}, "needs a path"),
    ({"kind": "ensemble", "members": [{"source": "model", "path": "x", "name": "a"},
                                      {"source": "self", "name": "a"}]}, "distinct names"),
    ({"kind": "ensemble", "members": [{"source": "self"}]}, "at least two members"),
    ({"kind": "debate", "members": []}, "at least two members"),
    ({"kind": "self", "context": "gossip"}, "context 'gossip'"),
    ({"kind": "self", "path": "x"}, "drop its path"),
    ({"kind": "model", "members": [{"source": "self"}, {"source": "self"}]}, "members are for"),
])
def test_teacher_config_refusals(fields, message):
    with pytest.raises(ValidationError, match=message):
        TeacherConfig(**fields)


def test_teacher_config_accepts_and_names_members():
    assert TeacherMember(source="self", context="my_pkg.hints:give").context == "my_pkg.hints:give"
    cfg = TeacherConfig(kind="ensemble", members=[{"source": "model", "path": "x"},
                                                  {"source": "self"}],
                        member_weights=[0.3, 0.7])
    assert [m.name for m in cfg.resolved_members] == ["model0", "self1"]
    assert cfg.weights_of_members == [0.3, 0.7]
    assert ensemble("poe").weights_of_members == [0.5, 0.5]
    single = TeacherConfig(kind="model", path="runs/x/final")
    assert [(m.source, m.path) for m in single.resolved_members] == [("model", "runs/x/final")]
    assert not TeacherConfig().enabled and TeacherConfig().resolved_members == []


# ------------------------------------------------------- launch/config.py cross-checks
def run_config(loss: dict, teacher: dict, trainer: dict | None = None, **fields):
    from slipstream.launch.config import RunConfig

    if not hasattr(RunConfig, "_check_teacher"):
        pytest.skip("RunConfig has no teacher cross-checks yet")
    return RunConfig.model_validate({"trainer": {"loss": loss, **(trainer or {})},
                                     "teacher": teacher, **fields})


TWO = [{"source": "model", "path": "x", "name": "a"}, {"source": "self", "name": "b"}]


@pytest.mark.parametrize("loss, teacher, fields, message", [
    ({"kind": "distill"}, {}, {}, "needs a teacher"),
    ({"kind": "grpo"}, {"kind": "model", "path": "x"}, {}, "no loss uses"),
    ({"kind": "distill"}, {"kind": "model", "path": "x"}, {"rollout": {"temperature": 0.7}},
     "temperature"),
    ({"kind": "distill", "distill": {"objective": "forward_kl_topk"}},
     {"kind": "model", "path": "x"}, {}, "teacher.topk"),
    ({"kind": "distill", "distill": {"objective": "jsd_topk"}},
     {"kind": "ensemble", "members": TWO, "topk": 4}, {}, "combine=route"),
    ({"kind": "soft_q", "distill": {"coef": 1.0}}, {"kind": "self"},
     {"trainer": {"reference_model": True}}, "soft_q has no advantage"),
])
def test_run_config_refuses_mismatched_teacher_and_loss(loss, teacher, fields, message):
    with pytest.raises(ValidationError, match=message):
        run_config(loss, teacher, **fields)


def test_run_config_accepts_matched_teacher_and_loss():
    assert run_config({"kind": "distill"}, {"kind": "model", "path": "x"}).teacher.enabled
    cfg = run_config({"kind": "distill", "distill": {"objective": "forward_kl_topk"}},
                     {"kind": "ensemble", "members": TWO, "combine": "route", "topk": 4})
    assert cfg.trainer.loss.distill.needs_topk
    assert run_config({"kind": "grpo", "distill": {"coef": 0.5}},
                      {"kind": "self", "context": "answer"}).teacher.kind == "self"
    assert not run_config({"kind": "grpo"}, {}).teacher.enabled
