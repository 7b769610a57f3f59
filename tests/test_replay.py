"""The replay pool and the buffer's replay policy, pure (no Ray, no model): priorities,
evictions and their reasons, the ticket plan, the state and snapshots read back exactly."""

from __future__ import annotations

import dataclasses

import pytest

from factories import make_group, make_sample
from slipstream.buffer.config import ReplayConfig
from slipstream.buffer.records import Group, TrainedSample
from slipstream.buffer.replay import ReplayBuffer
from slipstream.buffer.replay_pool import ReplayPool, step_report
from slipstream.buffer.snapshots import load_snapshot, read_snapshot, write_snapshot
from slipstream.errors import SlipstreamError
from slipstream.launch.cli import parse_config


def trained(group: Group, reuse: int = 1, abs_advantage: float = 1.0, version: int = 0) -> Group:
    return dataclasses.replace(
        group, reuse_count=reuse, last_trained_version=version, last_abs_advantage=abs_advantage,
        anchor_logprobs=tuple(tuple([-0.25] * len(s.completion_ids_T)) for s in group.samples))


def group_with(ticket: int, rewards, versions=(0, 0, 0)) -> Group:
    return make_group(ticket, versions=versions, rewards=rewards)


def pool(**fields) -> tuple[ReplayPool, list[tuple[str, str]]]:
    evicted: list[tuple[str, str]] = []
    config = ReplayConfig(**{"passes": 3, **fields})
    return ReplayPool(config, max_age=config.resolved_max_age(0)), evicted


def admit(p: ReplayPool, evicted: list, group: Group, version: int = 1) -> None:
    p.admit(group, version, lambda g, reason, v: evicted.append((g.group_id, reason)))


# ------------------------------------------------------------------------------- priorities

def test_oldest_priority_serves_the_lowest_ticket_first():
    p, evicted = pool(priority="oldest")
    for ticket in (5, 2, 9):
        admit(p, evicted, trained(group_with(ticket, (0.0, 1.0))))
    assert [g.ticket for g in p.take(2)] == [2, 5]
    assert [g.ticket for g in p.take(5)] == [9] and len(p) == 0 and evicted == []


def test_advantage_priority_serves_the_largest_mean_abs_advantage_first():
    p, evicted = pool(priority="advantage")
    for ticket, adv in ((1, 0.2), (2, 0.9), (3, 0.5), (4, 0.9)):
        admit(p, evicted, trained(group_with(ticket, (0.0, 1.0)), abs_advantage=adv))
    assert [g.ticket for g in p.take(4)] == [2, 4, 3, 1]   # ties: the lower ticket


def test_medium_priority_serves_half_solved_groups_first_and_retires_solved_and_unsolved():
    p, evicted = pool(priority="medium")
    rates = {1: (1.0, 0.0, 0.0, 0.0), 2: (1.0, 1.0, 0.0, 0.0), 3: (1.0, 1.0, 1.0, 0.0),
             4: (1.0, 1.0, 1.0, 1.0), 5: (0.0, 0.0, 0.0, 0.0)}
    for ticket, rewards in rates.items():
        admit(p, evicted, trained(group_with(ticket, rewards)))
    assert evicted == [("g4", "solved"), ("g5", "unsolved")]
    assert [g.ticket for g in p.take(3)] == [2, 1, 3]   # p = 1/2, then 1/4 and 3/4 by ticket


def test_success_threshold_decides_what_counts_as_solved():
    p, evicted = pool(priority="medium", success_threshold=0.8)
    admit(p, evicted, trained(group_with(1, (0.5, 0.9))))   # only 0.9 counts: p = 1/2
    admit(p, evicted, trained(group_with(2, (0.5, 0.7))))   # none counts: unsolved
    assert len(p) == 1 and evicted == [("g2", "unsolved")]


# -------------------------------------------------------------------------------- evictions

def test_groups_leave_with_their_reasons():
    p, evicted = pool(passes=2, capacity_groups=2, priority="oldest")
    admit(p, evicted, trained(group_with(1, (0.0, 1.0)), reuse=2))       # served both passes
    admit(p, evicted, trained(group_with(2, (1.0, 1.0)), abs_advantage=0.0))
    for ticket in (3, 4, 5):                                              # capacity 2
        admit(p, evicted, trained(group_with(ticket, (0.0, 1.0))))
    assert evicted == [("g1", "passes_used"), ("g2", "zero_advantage"), ("g5", "capacity")]
    assert sorted(g.ticket for g in p.groups.values()) == [3, 4]


def test_capacity_evicts_the_lowest_priority_not_the_newest():
    p, evicted = pool(capacity_groups=2, priority="advantage")
    admit(p, evicted, trained(group_with(1, (0.0, 1.0)), abs_advantage=0.1))
    admit(p, evicted, trained(group_with(2, (0.0, 1.0)), abs_advantage=0.9))
    admit(p, evicted, trained(group_with(3, (0.0, 1.0)), abs_advantage=0.5))
    assert evicted == [("g1", "capacity")]


def test_groups_older_than_max_age_expire():
    p, evicted = pool(max_age=3)
    admit(p, evicted, trained(group_with(1, (0.0, 1.0), versions=(0, 1, 1))))
    admit(p, evicted, trained(group_with(2, (0.0, 1.0), versions=(2, 2, 2))))
    p.expire(3, lambda g, reason, v: evicted.append((g.group_id, reason)))
    assert evicted == []                                    # age 3 = max_age: still served
    p.expire(4, lambda g, reason, v: evicted.append((g.group_id, reason)))
    assert evicted == [("g1", "replay_age")] and list(p.groups) == ["g2"]


# ------------------------------------------------------------------- the buffer's replay plan

def replay_buffer(groups_per_step=4, max_lag=0, **replay) -> ReplayBuffer:
    return ReplayBuffer(groups_per_step, max_lag, 64, replay=ReplayConfig(passes=2, **replay))


def fill(buffer: ReplayBuffer, count: int, versions=(0, 0, 0)) -> list[int]:
    tickets = []
    for _ in range(count):
        ticket = buffer.try_ticket()
        assert ticket is not None
        buffer.put(ticket, group_with(ticket, (0.0, 1.0), versions))
        tickets.append(ticket)
    return tickets


def report(groups: list[Group], abs_advantage: float = 1.0) -> dict:
    return {g.group_id: {"anchor_logprobs": [[-0.5] * len(s.completion_ids_T)
                                             for s in g.samples],
                         "abs_advantage": abs_advantage} for g in groups}


def test_a_group_trains_twice_and_fresh_tickets_follow_the_plan():
    buffer = replay_buffer()                       # 4 groups a step, half replayed, max_lag 0
    assert fill(buffer, 4) == [0, 1, 2, 3]
    assert buffer.try_ticket() is None             # step 1's tickets wait for version 1
    first = buffer.take_batch(0)
    assert [g.reuse_count for g in first] == [0, 0, 0, 0]
    buffer.after_step(report(first), learner_version=0)
    buffer.set_rollout_version(1)
    # The step-1 plan is not fixed yet: the fewest fresh groups a step takes (2) are granted.
    assert fill(buffer, 2, versions=(1, 1, 1)) == [4, 5] and buffer.try_ticket() is None
    second = buffer.take_batch(1)
    assert [g.ticket for g in second] == [4, 5, 0, 1]   # fresh first, then oldest replayed
    assert [g.reuse_count for g in second] == [0, 0, 1, 1]
    assert second[2].anchor_logprobs == ((-0.5, -0.5, -0.5), (-0.5, -0.5, -0.5))
    buffer.after_step(report(second), learner_version=1)
    assert buffer.eviction_counts["passes_used"] == 2     # groups 0 and 1 served both passes
    assert sorted(buffer.pool.groups) == ["g2", "g3", "g4", "g5"]
    stats = buffer.stats(2)
    assert stats["replay/pool_groups"] == 4 and stats["replay/groups_taken"] == 2
    assert stats["replay/evicted_passes_used"] == 2


def test_a_short_pool_is_filled_with_fresh_groups_and_the_tickets_move_up():
    buffer = replay_buffer(share=0.75, max_age=8)     # 3 of 4 replayed: the pool runs short
    fill(buffer, 4)
    buffer.after_step(report(buffer.take_batch(0)), 0)
    buffer.set_rollout_version(1)
    fill(buffer, 1, versions=(1, 1, 1))
    step1 = buffer.take_batch(1)
    assert [g.reuse_count for g in step1] == [0, 1, 1, 1]
    buffer.after_step(report(step1), 1)             # 3 retired; g3 and g4 each have a pass left
    buffer.set_rollout_version(2)
    assert buffer.take_batch(2) is None             # the plan: 2 replayed, so 2 fresh needed
    assert buffer.plan == (2, 2)
    assert fill(buffer, 2, versions=(2, 2, 2)) == [5, 6]    # both belong to step 2
    assert buffer.try_ticket() is None
    step2 = buffer.take_batch(2)
    assert [(g.ticket, g.reuse_count) for g in step2] == [(5, 0), (6, 0), (3, 1), (4, 1)]


def test_replay_respects_max_age_not_max_lag():
    buffer = replay_buffer(max_lag=0, max_age=1)
    fill(buffer, 4)
    buffer.after_step(report(buffer.take_batch(0)), 0)
    buffer.set_rollout_version(1)
    fill(buffer, 2, versions=(1, 1, 1))
    assert [g.reuse_count for g in buffer.take_batch(1)][2:] == [1, 1]   # age 1: allowed
    buffer2 = replay_buffer(max_lag=0, max_age=1)
    fill(buffer2, 4)
    buffer2.after_step(report(buffer2.take_batch(0)), 0)
    assert buffer2.take_batch(2) is None             # at version 2 all are 2 old: expired
    assert buffer2.eviction_counts["replay_age"] == 4 and buffer2.plan == (1, 0)


def test_state_and_snapshot_read_back_into_a_new_buffer_exactly(tmp_path):
    buffer = replay_buffer()
    fill(buffer, 4)
    buffer.after_step(report(buffer.take_batch(0)), 0)
    buffer.set_rollout_version(1)
    fill(buffer, 2, versions=(1, 1, 1))
    restored = replay_buffer()
    restored.restore(buffer.state())
    assert restored.pool.groups == buffer.pool.groups and restored.waiting == buffer.waiting
    assert (restored.batches_taken, restored.fresh_taken) == (1, 4)
    assert [g.ticket for g in restored.take_batch(1)] == [4, 5, 0, 1]

    path = write_snapshot(buffer, tmp_path, 1, 1)
    parts = read_snapshot(path)
    assert sorted(parts["replay"], key=lambda g: g.ticket) == \
        sorted(buffer.pool.groups.values(), key=lambda g: g.ticket)
    assert parts["waiting"] == [buffer.waiting[4], buffer.waiting[5]]
    fresh = replay_buffer()
    load_snapshot(fresh, path)
    assert fresh.pool.groups == buffer.pool.groups and fresh.waiting == buffer.waiting
    assert fresh.next_ticket == 6


def test_a_report_for_a_group_never_handed_out_is_refused():
    buffer = replay_buffer()
    with pytest.raises(ValueError, match="was not handed out"):
        buffer.after_step(report([group_with(7, (0.0, 1.0))]), 0)


def test_step_report_carries_each_samples_logprobs_and_the_groups_mean_abs_advantage():
    records = [TrainedSample(make_sample("g1", i), 1, 0, advantage=a, trainer_logprobs_T=lp)
               for i, (a, lp) in enumerate([(1.0, (-0.1, -0.2, -0.3)),
                                            (-0.5, (-1.0, -2.0, -3.0))])]
    assert step_report(records) == {"g1": {"anchor_logprobs": [[-0.1, -0.2, -0.3],
                                                               [-1.0, -2.0, -3.0]],
                                           "abs_advantage": 0.75}}


# ------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("flags, message", [
    (["--buffer.replay.share", "0.5"], "needs buffer.replay.passes >= 2"),
    (["--buffer.replay.passes", "2", "--buffer.replay.share", "0"], "never replays"),
    (["--buffer.replay.passes", "2", "--buffer.replay.share", "0.05"], "rounds to 0"),
    (["--buffer.replay.passes", "2", "--buffer.replay.share", "0.95"], "leaves no fresh group"),
    (["--buffer.replay.passes", "2", "--buffer.max-lag", "4", "--buffer.replay.max-age", "2"],
     "below buffer.max_lag"),
    (["--buffer.replay.passes", "2", "--buffer.schedule", "pinned"], "pinned"),
    (["--buffer.replay.share", "1"], "less than 1"),
])
def test_replay_settings_that_cannot_be_satisfied_fail_in_one_line(flags, message):
    with pytest.raises(SlipstreamError, match=message) as caught:
        parse_config(flags)
    assert "\n" not in str(caught.value)


def test_default_share_serves_every_pass_and_default_age_covers_them():
    config = parse_config(["--buffer.replay.passes", "4", "--trainer.groups-per-step", "4"])
    replay = config.buffer.replay
    assert replay.resolved_share() == 0.75 and replay.replay_groups(4) == 3
    assert replay.resolved_max_age(config.buffer.max_lag) == config.buffer.max_lag + 16


def test_a_teacher_scored_group_reads_back_from_a_snapshot_exactly(tmp_path):
    """Distillation's fields (per-token teacher scores, top-k, members, costs) survive the
    snapshot, so a replayed or resumed group still has its teacher."""
    buffer = replay_buffer()
    ticket = buffer.try_ticket()
    plain = group_with(ticket, (0.0, 1.0))
    samples = tuple(dataclasses.replace(
        s, teacher_logprobs_T=tuple(-0.5 - i for i in range(len(s.completion_ids_T))),
        teacher_topk_ids_T_K=tuple((7, 8) for _ in s.completion_ids_T),
        teacher_topk_logprobs_T_K=tuple((-0.1, -2.5) for _ in s.completion_ids_T),
        teacher_id="ensemble-poe(a,b)", teacher_version=0,
        teacher_parts={"a": tuple(-1.0 for _ in s.completion_ids_T),
                       "b": tuple(-0.25 for _ in s.completion_ids_T)},
        teacher_weights={"a": 0.25, "b": 0.75}, teacher_context_hash="abc123")
        for s in plain.samples)
    scored = dataclasses.replace(plain, samples=samples, teacher_score_s=0.5, teacher_tokens=42,
                                 debate_tokens=3)
    buffer.put(ticket, scored)
    parts = read_snapshot(write_snapshot(buffer, tmp_path, 1, 0))
    assert parts["waiting"] == [scored]
