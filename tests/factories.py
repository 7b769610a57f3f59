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
