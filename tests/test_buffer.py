"""The replay buffer's policy: tickets, staleness bound, eviction, backpressure, ordering."""

import json

import pytest

from factories import make_group, make_sample
from slipstream.buffer.actor import write_snapshot
from slipstream.buffer.records import Sample, TrainedSample, sample_from_json, to_json_dict
from slipstream.buffer.replay import ReplayBuffer


def test_sample_rejects_misaligned_token_arrays():
    with pytest.raises(ValueError, match="3 tokens but 2 logprobs"):
        make_sample(versions=(0, 0, 0), logprobs=[-1.0, -2.0])


def test_sample_round_trips_through_json_bitwise():
    sample = make_sample(versions=(0, 1, 1), logprobs=[-0.1 / 3, -1e-17, -12.345678901234567])
    data = json.loads(json.dumps(to_json_dict(sample)))
    assert sample_from_json(data) == sample
    assert sample.oldest_version == 0


def test_trained_sample_serialises_nested_sample():
    trained = TrainedSample(make_sample(), step=3, learner_version=3, advantage=0.5,
                            trainer_logprobs_T=(-0.5, -0.5, -0.5))
    data = to_json_dict(trained)
    assert data["sample"]["versions_T"] == [0, 0, 0] and data["step"] == 3


def test_max_lag_zero_issues_exactly_one_step_of_tickets_per_version():
    buf = ReplayBuffer(groups_per_step=2, max_lag=0, capacity_groups=10)
    assert [buf.try_ticket(), buf.try_ticket(), buf.try_ticket()] == [0, 1, None]
    buf.put(0, make_group(0)), buf.put(1, make_group(1))
    assert [g.ticket for g in buf.take_batch(learner_version=0)] == [0, 1]
    assert buf.try_ticket() is None           # step 1 needs version 1 weights
    buf.set_rollout_version(1)
    assert [buf.try_ticket(), buf.try_ticket(), buf.try_ticket()] == [2, 3, None]


def test_max_lag_one_lets_workers_run_one_step_ahead():
    buf = ReplayBuffer(groups_per_step=2, max_lag=1, capacity_groups=10)
    assert [buf.try_ticket() for _ in range(5)] == [0, 1, 2, 3, None]


def test_capacity_applies_backpressure():
    buf = ReplayBuffer(groups_per_step=2, max_lag=5, capacity_groups=3)
    assert [buf.try_ticket() for _ in range(4)] == [0, 1, 2, None]
    buf.put(0, make_group(0)), buf.put(1, make_group(1))
    assert buf.try_ticket() is None           # 2 waiting + 1 in flight = capacity
    buf.take_batch(learner_version=0)
    assert buf.try_ticket() == 3


def test_batches_are_lowest_tickets_first_whatever_the_finish_order():
    buf = ReplayBuffer(groups_per_step=2, max_lag=2, capacity_groups=10)
    tickets = [buf.try_ticket() for _ in range(4)]
    for t in reversed(tickets):
        buf.put(t, make_group(t))
    assert [g.ticket for g in buf.take_batch(0)] == [0, 1]
    assert [g.ticket for g in buf.take_batch(1)] == [2, 3]


def test_stale_groups_are_evicted_counted_and_never_handed_out():
    buf = ReplayBuffer(groups_per_step=1, max_lag=1, capacity_groups=10)
    for version in (0, 3):
        buf.set_rollout_version(version)
        t = buf.try_ticket()
        buf.put(t, make_group(t, versions=(version, version + 1)))
    batch = buf.take_batch(learner_version=3)   # floor 2: the version-0 group is stale
    assert [g.ticket for g in batch] == [1]
    assert buf.eviction_counts["stale"] == 1
    assert buf.evictions[0].oldest_version == 0 and buf.evictions[0].learner_version == 3
    assert buf.stats(3)["buffer/evicted_stale"] == 1


def test_a_sample_spanning_versions_is_judged_by_its_oldest_token():
    buf = ReplayBuffer(groups_per_step=1, max_lag=0, capacity_groups=4)
    t = buf.try_ticket()
    buf.put(t, make_group(t, versions=(0, 1, 1)))
    assert buf.take_batch(learner_version=1) is None
    assert buf.eviction_counts["stale"] == 1


def test_eviction_does_not_deadlock_later_tickets():
    buf = ReplayBuffer(groups_per_step=1, max_lag=0, capacity_groups=4)
    t = buf.try_ticket()
    buf.put(t, make_group(t, versions=(0,)))
    buf.set_rollout_version(1)
    assert buf.take_batch(learner_version=1) is None   # evicted
    assert buf.try_ticket() == 1                         # ticket 1 now trains at step 1


def test_unknown_ticket_is_refused():
    buf = ReplayBuffer(groups_per_step=1, max_lag=0, capacity_groups=4)
    with pytest.raises(ValueError, match="unknown ticket"):
        buf.put(7, make_group(7))


def test_capacity_smaller_than_a_batch_is_refused():
    with pytest.raises(ValueError, match="smaller than one step"):
        ReplayBuffer(groups_per_step=8, max_lag=0, capacity_groups=4)


def test_snapshot_is_plain_json_with_ages(tmp_path):
    buf = ReplayBuffer(groups_per_step=2, max_lag=2, capacity_groups=10)
    t = buf.try_ticket()
    buf.put(t, make_group(t, versions=(0, 1)))
    path = write_snapshot(buf, tmp_path, step=2, learner_version=2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 2 and {r["age"] for r in rows} == {2} and rows[0]["max_lag"] == 2
    assert isinstance(sample_from_json(rows[0]["sample"]), Sample)


def test_pinned_schedule_grants_each_step_with_exactly_one_version():
    buf = ReplayBuffer(groups_per_step=2, max_lag=1, capacity_groups=10, pinned=True)
    # Steps 0 and 1 are pinned to version 0; step 2 to version 1, only once version 1 is held.
    assert [buf.try_ticket() for _ in range(5)] == [0, 1, 2, 3, None]
    assert [buf.pinned_version(t) for t in range(8)] == [0, 0, 0, 0, 1, 1, 2, 2]
    for ticket in (0, 1, 2):
        buf.put(ticket, make_group(ticket))
    assert not buf.generated_through(0)          # ticket 3 (version 0) still in flight
    buf.put(3, make_group(3))
    assert buf.generated_through(0) and not buf.generated_through(1)
    buf.take_batch(learner_version=0)
    buf.set_rollout_version(1)
    assert [buf.try_ticket(), buf.try_ticket(), buf.try_ticket()] == [4, 5, None]
    buf.set_rollout_version(2)                   # the free schedule would grant 6 at version 1
    assert buf.try_ticket() == 6


def test_free_schedule_grants_newer_tickets_early():
    buf = ReplayBuffer(groups_per_step=2, max_lag=1, capacity_groups=10)
    buf.set_rollout_version(2)
    assert buf.try_ticket() == 0                 # pinned would wait for version 0 forever


def test_dynamic_sampling_drops_uniform_groups_and_grants_more_tickets():
    buf = ReplayBuffer(groups_per_step=2, max_lag=0, capacity_groups=10, drop_uniform=True,
                       max_uniform_drops=3)
    assert [buf.try_ticket(), buf.try_ticket(), buf.try_ticket()] == [0, 1, None]
    buf.put(0, make_group(0, rewards=(1.0, 1.0)))        # all right: no signal, dropped
    assert buf.try_ticket() == 2                         # the drop moves ticket 2 into step 0
    buf.put(1, make_group(1, rewards=(0.0, 1.0)))
    buf.put(2, make_group(2, rewards=(0.0, 0.0)))        # all wrong: dropped too
    assert buf.try_ticket() == 3
    buf.put(3, make_group(3, rewards=(1.0, 0.5)))
    assert [g.ticket for g in buf.take_batch(learner_version=0)] == [1, 3]
    assert [e.reason for e in buf.evictions] == ["uniform_reward", "uniform_reward"]
    stats = buf.stats(0)
    assert stats["buffer/dropped_uniform"] == 2 and stats["buffer/evicted_stale"] == 0


def test_dynamic_sampling_stops_when_the_reward_never_varies():
    buf = ReplayBuffer(groups_per_step=1, max_lag=0, capacity_groups=10, drop_uniform=True,
                       max_uniform_drops=3)
    for ticket in range(2):
        buf.put(buf.try_ticket(), make_group(ticket, rewards=(0.0, 0.0)))
    buf.put(buf.try_ticket(), make_group(2, rewards=(0.0, 1.0)))    # a kept group resets
    assert [g.ticket for g in buf.take_batch(learner_version=0)] == [2]
    buf.set_rollout_version(1)
    for ticket in range(3, 5):
        buf.put(buf.try_ticket(), make_group(ticket, rewards=(0.0, 0.0)))
    with pytest.raises(ValueError, match="dropped 3 groups in a row"):
        buf.put(buf.try_ticket(), make_group(5, rewards=(0.0, 0.0)))


def test_without_dynamic_sampling_uniform_groups_train():
    buf = ReplayBuffer(groups_per_step=1, max_lag=0, capacity_groups=10)
    buf.put(buf.try_ticket(), make_group(0, rewards=(1.0, 1.0)))
    assert [g.ticket for g in buf.take_batch(learner_version=0)] == [0]


def test_a_restored_buffer_hands_out_the_lost_tickets_again_then_goes_on():
    """A checkpoint's buffer state: waiting groups come back bitwise, tickets that were in
    flight are handed out again (lowest first) before any new one, counts carry over."""
    buf = ReplayBuffer(groups_per_step=2, max_lag=1, capacity_groups=10)
    tickets = [buf.try_ticket() for _ in range(4)]
    waiting = make_group(3, rewards=(-0.1 / 3, 1e-17))
    buf.put(0, make_group(0)), buf.put(1, make_group(1)), buf.put(3, waiting)
    buf.take_batch(learner_version=0)
    state = json.loads(json.dumps(buf.state()))          # through the checkpoint's file
    assert state["reissue"] == [2] and state["next_ticket"] == 4
    resumed = ReplayBuffer(groups_per_step=2, max_lag=1, capacity_groups=10)
    resumed.restore(state)
    assert resumed.waiting == {3: waiting} and resumed.groups_taken == 2
    assert resumed.try_ticket() == 2                      # the lost one first
    resumed.set_rollout_version(1)
    assert [resumed.try_ticket(), resumed.try_ticket()] == [4, 5]
    assert tickets == [0, 1, 2, 3]


def test_pinned_reissued_tickets_wait_for_their_own_version():
    buf = ReplayBuffer(groups_per_step=2, max_lag=0, capacity_groups=10, pinned=True)
    assert [buf.try_ticket(), buf.try_ticket()] == [0, 1]
    buf.reissue_tickets([1])                              # its worker died
    assert not buf.generated_through(0)
    buf.put(0, make_group(0))
    buf.set_rollout_version(1)
    assert buf.try_ticket() is None                       # ticket 1 belongs to version 0
    buf.set_rollout_version(0)
    assert buf.try_ticket() == 1
    buf.put(1, make_group(1))
    assert buf.generated_through(0)


def test_the_idle_clock_counts_only_time_with_no_group_in_flight(monkeypatch):
    from slipstream.buffer import actor

    clock_now = [0.0]
    monkeypatch.setattr(actor.time, "monotonic", lambda: clock_now[0])
    idle = actor.IdleClock()
    idle.idle()                        # before the first ticket: start-up, not idleness
    clock_now[0] = 5.0
    assert idle.seconds() == 0.0
    idle.busy()
    clock_now[0] = 8.0
    idle.idle()
    clock_now[0] = 10.0
    assert idle.seconds() == 2.0       # still idle: counted up to now
    idle.busy()
    clock_now[0] = 30.0
    assert idle.seconds() == 2.0
