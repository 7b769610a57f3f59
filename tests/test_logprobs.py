"""Trainer-side logprobs and the gap metrics, on a tiny random model (no vLLM, no Ray)."""

import math

import pytest
import torch

from factories import make_sample
from slipstream.launch.models import make_tiny_model
from slipstream.trainer.logprobs import GapAccumulator, collate, forward_tokens, token_logprobs
from slipstream.trainer.losses.kl import kl_estimate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = make_tiny_model(tmp_path_factory.mktemp("m") / "tiny")
    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_logprobs_match_a_plain_forward_and_ignore_padding(tiny):
    short = make_sample(prompt_ids=(5, 6), versions=(0, 0))
    long = make_sample(prompt_ids=(7, 8, 9, 10), versions=(0, 0, 0, 0))
    batch = collate([short, long], pad_id=0)
    with torch.no_grad():
        logprobs = token_logprobs(tiny, batch, temperature=0.7)
        ids = torch.tensor([list(long.prompt_ids + long.completion_ids_T)])
        logits = tiny(input_ids=ids).logits[0].float() / 0.7
        expected = torch.log_softmax(logits, -1)
    p = len(long.prompt_ids)
    for j, token in enumerate(long.completion_ids_T):
        assert logprobs[1, j].item() == pytest.approx(expected[p - 1 + j, token].item(), abs=1e-5)
    assert batch.mask_B_T.tolist() == [[True, True, False, False], [True, True, True, True]]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_only_the_completion_rows_get_logits_and_every_row_is_right(tiny, temperature):
    """The model computes logits from the first completion-predicting position on (the shorter
    prompt's): each sequence's logprobs and entropies still match its own full forward."""
    samples = [make_sample(prompt_ids=(5, 6, 7, 8, 9), versions=(0, 0, 0)),
               make_sample(prompt_ids=(5, 6), versions=(0, 0))]
    batch = collate(samples, pad_id=0)
    with torch.no_grad():
        forward = forward_tokens(tiny, batch, temperature, with_entropy=True)
        for b, sample in enumerate(samples):
            ids = torch.tensor([list(sample.prompt_ids + sample.completion_ids_T)])
            logp = torch.log_softmax(tiny(input_ids=ids).logits[0].float() / temperature, -1)
            rows = logp[len(sample.prompt_ids) - 1:-1]
            n = len(sample.completion_ids_T)
            targets = torch.tensor(sample.completion_ids_T)
            assert torch.allclose(forward.logprobs_B_T[b, :n],
                                  rows.gather(-1, targets[:, None]).squeeze(-1), atol=1e-5)
            entropy = -(rows.exp() * rows).sum(-1)
            assert torch.allclose(forward.entropy_B_T[b, :n], entropy, atol=1e-4)


def test_the_logprobs_of_given_tokens_and_the_argmax_for_distillation(tiny):
    """A teacher's top-k ids per position are gathered from the student's own distribution
    (with grad), and its argmax comes back for distill/agree_frac."""
    samples = [make_sample(prompt_ids=(5, 6, 7), versions=(0, 0, 0)),
               make_sample(prompt_ids=(5, 6), versions=(0, 0))]
    batch = collate(samples, pad_id=0)
    ids_B_T_K = torch.tensor([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 10], [0, 0]]])
    forward = forward_tokens(tiny, batch, 1.0, gather_ids_B_T_K=ids_B_T_K, with_argmax=True)
    assert forward.gathered_B_T_K.requires_grad
    for b, sample in enumerate(samples):
        ids = torch.tensor([list(sample.prompt_ids + sample.completion_ids_T)])
        with torch.no_grad():
            rows = torch.log_softmax(tiny(input_ids=ids).logits[0].float(), -1)[
                len(sample.prompt_ids) - 1:-1]
        n = len(sample.completion_ids_T)
        assert torch.allclose(forward.gathered_B_T_K[b, :n].detach(),
                              rows.gather(-1, ids_B_T_K[b, :n]), atol=1e-5)
        assert forward.argmax_B_T[b, :n].tolist() == rows.argmax(-1).tolist()


def k3(log_ratio: float) -> float:
    """k3 = e^x - x - 1, by hand."""
    return math.exp(log_ratio) - log_ratio - 1


def test_gap_splits_numerics_from_staleness():
    # learner at version 2: sample A wholly version 2 (numerics); sample B starts at version 1
    # and continues under 2 after an update, so all of B is staleness (old KV in its prefix).
    a = make_sample(versions=(2, 2), logprobs=[-1.0, -2.0])
    b = make_sample(versions=(1, 2, 2), logprobs=[-1.0, -1.0, -1.0])
    batch = collate([a, b], pad_id=0)
    trainer = torch.tensor([[-1.0, -2.5, 0.0], [-1.25, -1.0, -1.0]])
    gap = GapAccumulator(learner_version=2)
    gap.add(trainer, batch)
    m = gap.metrics()
    assert m["mismatch/tokens"] == 2 and m["mismatch/max_abs_logprob_diff"] == 0.5
    # KL(sampler || trainer): x = trainer - sampler = -0.5 on the one token that differs.
    assert m["mismatch/kl"] == pytest.approx(k3(-0.5) / 2)
    assert m["staleness/tokens"] == 3 and m["staleness/max"] == 1
    assert m["staleness/mean"] == pytest.approx(1 / 5)
    assert m["staleness/kl"] == pytest.approx(k3(-0.25) / 3)


def test_a_gap_over_no_token_is_not_written_as_zero():
    # Every token stale (version 1 under learner version 2) and none rescored: no mismatch
    # figure at all, not a 0.0 that reads as "no gap".
    batch = collate([make_sample(versions=(1, 1), logprobs=[-1.0, -2.0])], pad_id=0)
    gap = GapAccumulator(learner_version=2)
    gap.add(torch.tensor([[-1.1, -2.0]]), batch)
    m = gap.metrics()
    assert m["mismatch/tokens"] == 0
    assert "mismatch/kl" not in m and "mismatch/max_abs_logprob_diff" not in m
    assert m["staleness/tokens"] == 2 and "staleness/kl" in m
    # Rescored under their own version (version_replay), the same tokens are compared.
    gap = GapAccumulator(learner_version=2)
    gap.add(torch.tensor([[-1.1, -2.0]]), batch, torch.tensor([[-1.0, -2.5]]),
            torch.tensor([[True, True]]))
    m = gap.metrics()
    assert m["mismatch/tokens"] == 2 and m["mismatch/max_abs_logprob_diff"] == 0.5
    assert m["mismatch/kl"] == pytest.approx(k3(-0.5) / 2)


def test_kl_estimators_by_hand():
    # x = ref - logp = -ln 2, 0, ln 2
    logp = torch.log(torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64))
    ref = torch.log(torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64))
    x = [-math.log(2), 0.0, math.log(2)]
    torch.testing.assert_close(kl_estimate(logp, ref, "k1"), torch.tensor([-v for v in x],
                                                                        dtype=torch.float64))
    torch.testing.assert_close(kl_estimate(logp, ref, "k2"), torch.tensor([v * v / 2 for v in x],
                                                                        dtype=torch.float64))
    torch.testing.assert_close(kl_estimate(logp, ref, "k3"), torch.tensor([k3(v) for v in x],
                                                                        dtype=torch.float64))
    assert kl_estimate(logp, logp, "k3").eq(0).all()


@pytest.mark.parametrize("recomputed", [False, True])
def test_the_inspectors_banner_rule_is_the_learners(recomputed):
    """buffer/ may not import torch, so the inspector's banner counts the compared tokens with a
    plain-Python twin of `reproducible_by`; on random version patterns both must agree."""
    import dataclasses
    import random

    from slipstream.buffer.records import TrainedSample, to_json_dict
    from slipstream.buffer.rollout_log import deterministic_gap_tokens
    from slipstream.trainer.logprobs import reproducible_by

    rng = random.Random(int(recomputed))
    for _ in range(200):
        learner_version = rng.randint(0, 3)
        versions, v = [], rng.randint(max(0, learner_version - 2), learner_version)
        for _ in range(rng.randint(1, 8)):
            v = min(learner_version, v + (rng.random() < 0.3))
            versions.append(v)
        sample = dataclasses.replace(make_sample(versions=tuple(versions)),
                                     prefix_recomputed=recomputed)
        batch = collate([sample], pad_id=0)
        current = reproducible_by(learner_version, batch)
        every = torch.zeros_like(current)
        for version in set(versions):
            every |= reproducible_by(version, batch)
        logprobs = tuple(sample.sampler_logprobs_T)
        plain = to_json_dict(TrainedSample(sample, 1, learner_version, 0.0, logprobs))
        own = to_json_dict(TrainedSample(sample, 1, learner_version, 0.0, logprobs,
                                         own_version_logprobs_T=logprobs))
        assert deterministic_gap_tokens(plain)[0] == int(current.sum()), versions
        # With own-version logprobs, every token some held version reproduces is compared.
        assert deterministic_gap_tokens(own)[0] == int(every.sum()), versions
