"""The replay buffer's files under `DIR/buffer/`, written without Ray (the actor calls these; the
inspector's demo run uses them too). JSON Lines, readable with nothing but `json`:

* `snapshot-stepNNNNNN.jsonl`: one row per waiting sample: its group's ticket, the learner
  version, its age (learner version minus its oldest token's version) against `max_lag`, how
  many steps have trained on it (`reuse_count`, 0 until the buffer reuses samples) and the
  sample; `snapshot-final.jsonl` at shutdown, whatever ended the run;
* `evictions.jsonl`: every evicted group, with the reason, one line appended per eviction.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

from slipstream.buffer.records import to_json_dict
from slipstream.buffer.replay import Eviction, ReplayBuffer

EVICTIONS_NAME = "evictions.jsonl"


def write_snapshot(buffer: ReplayBuffer, directory: Path, step: int | str,
                   learner_version: int) -> Path:
    """Every waiting sample with its age; `step` "final" names the snapshot taken at shutdown."""
    name = f"step{step:06d}" if isinstance(step, int) else str(step)
    path = Path(directory) / f"snapshot-{name}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w") as out:
        for ticket in sorted(buffer.waiting):
            group = buffer.waiting[ticket]
            for sample in group.samples:
                row = {"ticket": ticket, "learner_version": learner_version,
                       "age": learner_version - sample.oldest_version,
                       "max_lag": buffer.max_lag, "reuse_count": 0,
                       "sample": to_json_dict(sample)}
                out.write(json.dumps(row) + "\n")
    tmp.rename(path)
    return path


def append_evictions(directory: Path, evictions: Iterable[Eviction]) -> None:
    lines = "".join(json.dumps(dataclasses.asdict(e)) + "\n" for e in evictions)
    if lines:
        with (Path(directory) / EVICTIONS_NAME).open("a") as out:
            out.write(lines)
