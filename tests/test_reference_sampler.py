"""The reference sampler against the learner's numerics, on a tiny random model (no Ray).

Every sampled token's logprob must be bitwise the learner's `token_logprobs` under
`batch_invariant()`, whatever else was being decoded, and across an in-place weight update in
the middle of generation (each token against the weights of its own version)."""

import asyncio

import pytest
import torch
from transformers import AutoModelForCausalLM

import slipstream  # noqa: F401
from slipstream.buffer.records import Sample
from slipstream.launch.models import make_tiny_model
from slipstream.model_config import ModelConfig
from slipstream.rollout.config import RolloutConfig
from slipstream.rollout.engine_api import SamplingSettings, build_engine
from slipstream.trainer.logprobs import collate, token_logprobs
from slipstream.trainer.numerics import batch_invariant
from slipstream.trainer.weight_publish import write_weights_file


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def tiny(request, tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", arch="llama")
    return str(path), request.param


def as_sample(prompt, completion) -> Sample:
    n = len(completion.token_ids)
    return Sample(sample_id="s-0", group_id="s", prompt_id="p", prompt_ids=tuple(prompt),
                  completion_ids_T=completion.token_ids, sampler_logprobs_T=completion.logprobs,
                  versions_T=completion.versions, prompt_text="", completion_text="",
                  finish_reason=completion.finish_reason, reference="", reward=0.0,
                  prefix_recomputed=True) if n else None


def reference_engine(path, dtype, max_model_len=1024):
    return build_engine(ModelConfig(path=path, dtype=dtype, max_model_len=max_model_len),
                        RolloutConfig(), seed=0, deterministic=True)


def learner_logprobs(model, prompt, completion, temperature):
    with torch.no_grad(), batch_invariant():
        values = token_logprobs(model, collate([as_sample(prompt, completion)], pad_id=0),
                                temperature)
    return tuple(values[0].tolist())


PROMPTS = [[5, 9, 17, 3], [5, 9, 17, 3], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52],
           [7], [100, 101, 102, 103, 104, 105, 106]]


def test_logprobs_equal_the_learners_and_samples_do_not_depend_on_the_batch(tiny):
    path, dtype = tiny
    sampling = SamplingSettings(temperature=0.8, max_tokens=20, ignore_eos=True)

    async def run():
        engine = reference_engine(path, dtype, 256)
        await engine.start()
        together = await asyncio.gather(*(engine.generate(p, sampling, seed=i, request_id=str(i))
                                          for i, p in enumerate(PROMPTS)))
        alone = [await engine.generate(PROMPTS[2], sampling, seed=2, request_id="alone")]
        await engine.shutdown()
        return together, alone

    together, alone = asyncio.run(run())
    assert together[2] == alone[0]                       # same seed, other batch: same sample
    assert together[0].token_ids != together[1].token_ids   # same prompt, other seeds
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    for prompt, completion in zip(PROMPTS, together):
        assert len(completion.token_ids) == 20 and completion.finish_reason == "length"
        assert completion.versions == (0,) * 20
        assert learner_logprobs(model, prompt, completion, 0.8) == completion.logprobs


def test_an_update_mid_generation_recomputes_the_cache(tiny, tmp_path):
    path, dtype = tiny
    old = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    new = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    weights = write_weights_file(new.named_parameters(), tmp_path, version=1)
    sampling = SamplingSettings(temperature=1.0, max_tokens=40, ignore_eos=True)

    async def run():
        engine = reference_engine(path, dtype, 256)
        await engine.start()
        tasks = [asyncio.create_task(engine.generate(p, sampling, seed=i, request_id=str(i)))
                 for i, p in enumerate(PROMPTS)]
        while engine.tokens_generated < 30:
            await asyncio.sleep(0.001)
        await engine.update_weights(weights.path, 1)
        landed = await engine.fingerprint(weights.fingerprint_names)
        results = await asyncio.gather(*tasks)
        await engine.shutdown()
        return results, landed

    results, landed = asyncio.run(run())
    assert landed == weights.fingerprint
    spanning = [c for c in results if 0 in c.versions and 1 in c.versions]
    assert spanning, "the update should have landed mid-generation"
    for prompt, completion in zip(PROMPTS, results):
        by_old = learner_logprobs(old, prompt, completion, 1.0)
        by_new = learner_logprobs(new, prompt, completion, 1.0)
        for t, version in enumerate(completion.versions):
            expected = by_old[t] if version == 0 else by_new[t]
            assert completion.logprobs[t] == expected, (t, version)


def test_bad_requests_and_weights_fail_with_a_clear_error(tiny, tmp_path):
    path, dtype = tiny

    async def run():
        engine = reference_engine(path, dtype, 64)
        await engine.start()
        with pytest.raises(ValueError, match="top_p must be 1"):
            await engine.generate([1, 2], SamplingSettings(top_p=0.9), seed=0, request_id="a")
        with pytest.raises(ValueError, match="does not fit max_model_len"):
            await engine.generate(list(range(64)), SamplingSettings(), seed=0, request_id="b")
        bad = write_weights_file([("model.norm.weight", torch.ones(3))], tmp_path, version=1)
        with pytest.raises(ValueError, match="lacks"):
            await engine.update_weights(bad.path, 1)
        assert engine.weight_version == 0
        ok = await engine.generate([1, 2], SamplingSettings(max_tokens=3, ignore_eos=True),
                                   seed=0, request_id="c")
        await engine.shutdown()
        return ok

    assert len(asyncio.run(run()).token_ids) == 3


def test_a_failing_step_fails_every_waiting_request_and_later_ones(tiny, monkeypatch):
    path, dtype = tiny
    from slipstream.rollout.reference_sampler import ReferenceEngine

    def broken_decode(self):
        raise MemoryError("out of memory in decode")

    monkeypatch.setattr(ReferenceEngine, "_decode", broken_decode)
    sampling = SamplingSettings(max_tokens=5, ignore_eos=True)

    async def run():
        engine = reference_engine(path, dtype)
        await engine.start()
        results = await asyncio.gather(*(engine.generate([1, 2, 3], sampling, seed=i,
                                                         request_id=str(i)) for i in range(3)),
                                       return_exceptions=True)
        with pytest.raises(RuntimeError, match="failed earlier: out of memory"):
            await engine.generate([1, 2], sampling, seed=9, request_id="late")
        await engine.shutdown()
        return results

    results = asyncio.run(run())
    assert all(isinstance(r, MemoryError) for r in results)
