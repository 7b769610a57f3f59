"""`DIR/rollouts/`: every trained-on sample, one JSON Lines file per learner step.

Each line is a `TrainedSample` as plain JSON: the sample (prompt and completion text and ids,
sampler logprobs, per-token weight versions, reward, env metadata) with the step, the learner
version that recomputed it, the advantage and the trainer's logprobs. Floats are written with
Python's shortest round-trip repr, so a value read back is bitwise the one computed. A file is
written to a temporary name and renamed, so a reader never sees half a step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from slipstream.buffer.records import TrainedSample, to_json_dict


def write_step(directory: str | Path, step: int, trained: Iterable[TrainedSample]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:06d}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w") as out:
        for record in trained:
            out.write(json.dumps(to_json_dict(record)) + "\n")
    tmp.rename(path)
    return path


def read_rollouts(directory: str | Path) -> Iterator[dict]:
    """Every record of every finished step, in step order."""
    for path in sorted(Path(directory).glob("step-*.jsonl")):
        with path.open() as lines:
            for line in lines:
                yield json.loads(line)
