"""The replay buffer's files under `DIR/buffer/`, written without Ray (the actor calls these; the
inspector's demo run uses them too). JSON Lines, readable with nothing but `json`:

* `snapshot-stepNNNNNN.jsonl`: one row per sample the buffer holds: its group's ticket, the
  learner version, its age (learner version minus its oldest token's version) against `max_lag`,
  how many steps have trained on it (`reuse_count`), which part holds it (`held`: "waiting" for
  its first step, "replay" in the replay pool), its group's replay fields and the sample;
  `snapshot-final.jsonl` at shutdown, whatever ended the run. `read_snapshot` rebuilds the
  groups from it, exactly (a new buffer can be filled from it: `load_snapshot`);
* `evictions.jsonl`: every evicted group, with the reason, one line appended per eviction.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

from slipstream.buffer.records import Group, group_from_json, to_json_dict
from slipstream.buffer.replay import Eviction, ReplayBuffer

EVICTIONS_NAME = "evictions.jsonl"


def write_snapshot(buffer: ReplayBuffer, directory: Path, step: int | str,
                   learner_version: int) -> Path:
    """Every waiting sample with its age; `step` "final" names the snapshot taken at shutdown."""
    name = f"step{step:06d}" if isinstance(step, int) else str(step)
    path = Path(directory) / f"snapshot-{name}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    held = [("waiting", buffer.waiting[t]) for t in sorted(buffer.waiting)]
    held += [("replay", g) for g in buffer.held_for_replay()]
    with tmp.open("w") as out:
        for part, group in held:
            for index, sample in enumerate(group.samples):
                row = {"ticket": group.ticket, "learner_version": learner_version,
                       "age": learner_version - sample.oldest_version,
                       "max_lag": buffer.max_lag, "reuse_count": group.reuse_count,
                       "held": part, "max_age": (buffer.pool.max_age if part == "replay"
                                                 else None),
                       "group_id": group.group_id, "prompt_id": group.prompt_id,
                       "last_trained_version": group.last_trained_version,
                       "last_abs_advantage": group.last_abs_advantage,
                       "teacher_score_s": group.teacher_score_s,
                       "teacher_tokens": group.teacher_tokens,
                       "debate_tokens": group.debate_tokens,
                       "anchor_logprobs_T": (list(group.anchor_logprobs[index])
                                             if group.anchor_logprobs else None),
                       "sample": to_json_dict(sample)}
                out.write(json.dumps(row) + "\n")
    tmp.rename(path)
    return path


def read_snapshot(path: str | Path) -> dict[str, list[Group]]:
    """The groups a snapshot holds, by part ("waiting", "replay"), exactly as they were."""
    rows: dict[tuple[str, str], list[dict]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            rows.setdefault((row.get("held", "waiting"), row["sample"]["group_id"]), []).append(row)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a snapshot row ({error})") from None
    parts: dict[str, list[Group]] = {"waiting": [], "replay": []}
    for (part, group_id), group_rows in rows.items():
        first = group_rows[0]
        anchors = [r.get("anchor_logprobs_T") for r in group_rows]
        parts.setdefault(part, []).append(group_from_json({
            **first, "group_id": group_id,
            "prompt_id": first.get("prompt_id", first["sample"]["prompt_id"]),
            "samples": [r["sample"] for r in group_rows],
            "anchor_logprobs": anchors if all(a is not None for a in anchors) else ()}))
    return parts


def load_snapshot(buffer: ReplayBuffer, path: str | Path) -> None:
    """Fill a new buffer with a snapshot's groups: waiting ones wait for their first step again
    (under their own tickets), replay ones go back to the replay pool."""
    parts = read_snapshot(path)
    for group in parts["waiting"]:
        buffer.waiting[group.ticket] = group
    buffer.next_ticket = max([buffer.next_ticket, *(t + 1 for t in buffer.waiting)])
    buffer.restore_pool(parts["replay"])


def append_evictions(directory: Path, evictions: Iterable[Eviction]) -> None:
    lines = "".join(json.dumps(dataclasses.asdict(e)) + "\n" for e in evictions)
    if lines:
        with (Path(directory) / EVICTIONS_NAME).open("a") as out:
            out.write(lines)
