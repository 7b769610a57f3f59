"""Small builders of records for unit tests (no model, no Ray)."""

from __future__ import annotations

from slipstream.buffer.records import Group, Sample


def make_sample(group_id: str = "g0", index: int = 0, versions=(0, 0, 0), reward: float = 0.0,
                prompt_ids=(1, 2), logprobs=None) -> Sample:
    n = len(versions)
    return Sample(
        sample_id=f"{group_id}-{index}", group_id=group_id, prompt_id="p",
        prompt_ids=tuple(prompt_ids), completion_ids_T=tuple(range(3, 3 + n)),
        sampler_logprobs_T=tuple(logprobs if logprobs is not None else [-0.5] * n),
        versions_T=tuple(versions), prompt_text="q", completion_text="a", finish_reason="stop",
        reference="1", reward=reward)


def make_group(ticket: int, versions=(0, 0, 0), rewards=(0.0, 1.0)) -> Group:
    group_id = f"g{ticket}"
    samples = tuple(make_sample(group_id, i, versions, r) for i, r in enumerate(rewards))
    return Group(group_id=group_id, ticket=ticket, prompt_id="p", samples=samples)


class FileReadingEngine:
    """The engine's half of the `shm` protocol without vLLM, for learner unit tests: it keeps
    the file it was sent and fingerprints what that file holds (the real engine's path is
    tested against vLLM in tests/test_weight_transfer.py)."""

    def __init__(self) -> None:
        self.path = None
        self.version = 0

    async def begin_update(self) -> None:
        self.path = None

    async def receive_weights(self, update_info, version: int) -> None:
        self.path = update_info["path"]

    async def finish_update(self, version: int) -> float:
        self.version = version
        return 0.0

    async def fingerprint(self, names):
        from safetensors.torch import load_file

        from slipstream.weight_fingerprint import fingerprint

        return fingerprint(load_file(self.path).items(), list(names))


def connect_to_file_reader(learner):
    """Connect `learner` (shm transfer) to a FileReadingEngine on a loop in a thread; returns
    the engine and a function that stops the loop."""
    import asyncio
    import threading

    from slipstream.rollout.sync_client import LocalEnginesClient

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    engine = FileReadingEngine()
    learner.connect(LocalEnginesClient([engine], loop), "shm")

    def stop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)

    return engine, stop
