"""What a replay pool of N groups costs in the buffer actor's memory.

    python benchmarks/replay_memory.py [--groups 64,256,1024] [--group-size 8] \
        [--prompt-tokens 60] [--completion-tokens 48]

Fills a `ReplayBuffer` with replay on (the buffer actor's own object, without Ray) with N
trained groups of the given shape (the quickstart's by default: 8 samples, ~60 prompt tokens,
48 completion tokens, each token with its id, sampler logprob, version, decoded text and the
stored anchor logprob) and measures the Python heap they hold with tracemalloc, and the bytes
one group takes on the wire (pickle, as Ray sends it). Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import tracemalloc

from slipstream.buffer.config import ReplayConfig
from slipstream.buffer.records import Group, Sample
from slipstream.buffer.replay import ReplayBuffer


def make_group(ticket: int, size: int, prompt_tokens: int, completion_tokens: int) -> Group:
    """A trained group whose every number is distinct (no shared small-int or float objects
    flatter the measurement)."""
    group_id = f"w0-{ticket}"
    samples = []
    for i in range(size):
        base = ticket * 1000 + i * 100
        samples.append(Sample(
            sample_id=f"{group_id}-{i}", group_id=group_id, prompt_id=f"p{ticket}",
            prompt_ids=tuple(range(base, base + prompt_tokens)),
            completion_ids_T=tuple(range(base + 50_000, base + 50_000 + completion_tokens)),
            sampler_logprobs_T=tuple(-0.001 * (base + t + 1) for t in range(completion_tokens)),
            versions_T=tuple(ticket // 4 for _ in range(completion_tokens)),
            prompt_text="What is 123 + 456? " * 3, completion_text="The answer is 579. " * 5,
            finish_reason="stop", reference="579", reward=float(i % 2),
            token_texts_T=tuple(f" t{t}" for t in range(completion_tokens))))
    anchors = tuple(tuple(-0.002 * (ticket + t + 1) for t in range(completion_tokens))
                    for _ in range(size))
    return Group(group_id, ticket, f"p{ticket}", tuple(samples), reuse_count=1,
                 last_trained_version=ticket // 4, anchor_logprobs=anchors, last_abs_advantage=0.8)


def measure(groups: int, args: argparse.Namespace) -> tuple[int, int]:
    """(heap bytes held by a pool of `groups` groups, pickled bytes of one group)."""
    made = [make_group(t, args.group_size, args.prompt_tokens, args.completion_tokens)
            for t in range(groups)]
    wire = len(pickle.dumps(made[0]))
    del made
    tracemalloc.start()
    buffer = ReplayBuffer(4, 1, 64, replay=ReplayConfig(passes=10**6, capacity_groups=groups))
    before = tracemalloc.get_traced_memory()[0]
    for t in range(groups):
        group = make_group(t, args.group_size, args.prompt_tokens, args.completion_tokens)
        buffer.pool.admit(dataclasses.replace(group), 0, lambda *_: None)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(buffer.pool) == groups
    return held, wire


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default="64,256,1024")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=60)
    parser.add_argument("--completion-tokens", type=int, default=48)
    args = parser.parse_args()
    print(f"groups of {args.group_size} samples, {args.prompt_tokens} prompt + "
          f"{args.completion_tokens} completion tokens\n")
    print("| pool capacity (groups) | heap held | per group | one group pickled |")
    print("|---:|---:|---:|---:|")
    for groups in (int(g) for g in args.groups.split(",")):
        held, wire = measure(groups, args)
        print(f"| {groups} | {held / 2**20:.1f} MiB | {held / groups / 1024:.0f} KiB | "
              f"{wire / 1024:.0f} KiB |")


if __name__ == "__main__":
    main()
