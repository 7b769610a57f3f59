"""Replay end to end on the real stack (Ray, the buffer actor, DeepSpeed, a tiny model): groups
train more than once, their reuse counts and versions are in DIR/rollouts/, the snapshots and the
inspector's buffer view, and deterministic mode still has exactly 0 mismatch on every token,
replayed ones included (recomputed under their own version)."""

from __future__ import annotations

import json

import pytest
from e2e_helpers import launch, read_metrics, read_tensorboard

from slipstream.buffer.snapshots import read_snapshot
from slipstream.inspector.store import RunStore

pytestmark = pytest.mark.e2e


def trained_rows(run_dir):
    return [json.loads(line) for f in sorted((run_dir / "rollouts").glob("step-*.jsonl"))
            for line in f.read_text().splitlines()]


@pytest.mark.timeout(900)
def test_replayed_groups_train_twice_with_zero_mismatch_in_deterministic_mode(tiny_model,
                                                                            tmp_path):
    out = tmp_path / "run"
    # The budget is 24 generated samples (steps are no limit): 8 at step 1, then 4 fresh and
    # 4 replayed a step (more fresh when the pool runs short), so the run ends after step 5 or
    # sooner.
    result = launch("quickstart.py", tiny_model, out, "--deterministic", "true", "--steps", "50",
                    "--sample-budget", "24",
                    "--buffer.max-lag", "1", "--buffer.replay.passes", "2",
                    "--buffer.snapshot-every", "2", "--trainer.loss.kind", "decoupled_ppo",
                    timeout=800)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = trained_rows(out)
    by_sample: dict[str, list[dict]] = {}
    for row in rows:
        by_sample.setdefault(row["sample"]["sample_id"], []).append(row)
    twice = {sid: r for sid, r in by_sample.items() if len(r) == 2}
    assert twice, "no sample was trained twice"
    assert all(len(r) <= 2 for r in by_sample.values())         # passes = 2
    for first, second in twice.values():
        assert (first["reuse_count"], second["reuse_count"]) == (0, 1)
        assert second["step"] > first["step"]
        assert second["sample"]["versions_T"] == first["sample"]["versions_T"]
        # Replayed tokens are checked too: the trainer recomputed each under its own version.
        assert second["own_version_logprobs_T"] == second["sample"]["sampler_logprobs_T"]
    ages = [row["learner_version"] - min(row["sample"]["versions_T"]) for row in rows
            if row["reuse_count"] == 1]
    assert max(ages) > 1, "no replayed token older than max_lag: replay's age bound untested"

    metrics = read_metrics(out)
    steps = list(range(1, len(metrics) + 1))
    tags = read_tensorboard(out)
    assert [s for s, _ in tags["mismatch/max_abs_logprob_diff"]] == steps
    assert all(v == 0.0 for _, v in tags["mismatch/max_abs_logprob_diff"])
    tokens = {}
    for row in rows:
        tokens[row["step"]] = tokens.get(row["step"], 0) + len(row["sample"]["completion_ids_T"])
    assert [v for _, v in tags["mismatch/tokens"]] == [tokens[s] for s in steps]
    # Each step's fresh samples are its groups that were not replayed; the run stopped at the
    # first step that reached the budget.
    fresh = [m["rollout/fresh_samples_total"] for m in metrics]
    assert metrics[0]["replay/share"] == 0.0 and fresh[0] == 8
    for before, now, m in zip(fresh, fresh[1:], metrics[1:]):
        assert now - before == 4 * (2 - m["replay/groups"])
    assert fresh[-1] >= 24 > fresh[-2]
    assert any(m["replay/share"] == 0.5 for m in metrics)
    assert any(k.startswith("staleness/tokens_age_") for k in metrics[-1])

    evictions = [json.loads(line) for line in
                 (out / "buffer" / "evictions.jsonl").read_text().splitlines()]
    assert {e["reason"] for e in evictions} <= {"passes_used", "zero_advantage", "replay_age",
                                                "stale"}
    assert any(e["reason"] == "passes_used" for e in evictions)
    name = "snapshot-step000002.jsonl"          # after step 2: the pool holds step 2's groups
    snapshot = read_snapshot(out / "buffer" / name)
    assert snapshot["replay"] and all(g.reuse_count == 1 and g.anchor_logprobs
                                      for g in snapshot["replay"])

    store = RunStore(out)
    buffer_view = store.buffer_info(name)
    held = {r["held"] for r in buffer_view["rows"]}
    assert "replay" in held
    assert all(r["reuse"] == 1 for r in buffer_view["rows"] if r["held"] == "replay")
    assert "passes_used" in buffer_view["eviction_counts"]


@pytest.mark.timeout(900)
def test_the_replay_pool_resumes_with_the_run(tiny_model, tmp_path):
    """A run stopped after step 3 and resumed to step 5 replays, at step 4, a group trained
    before the stop: the pool came back from the checkpoint, with its anchors."""
    out = tmp_path / "run"
    common = ("--buffer.replay.passes", "2", "--trainer.loss.kind", "decoupled_ppo")
    first = launch("quickstart.py", tiny_model, out, *common, "--steps", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {row["sample"]["sample_id"]: row for row in trained_rows(out)}
    resumed = launch("quickstart.py", tiny_model, out, *common, "--steps", "5",
                     "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = trained_rows(out)
    replayed_after = [r for r in rows if r["step"] > 3 and r["reuse_count"] == 1]
    assert replayed_after, "nothing was replayed after the resume"
    assert any(r["sample"]["sample_id"] in before for r in replayed_after), \
        "no group trained before the stop was replayed after it"
    metrics = read_metrics(out)
    fresh = [m["rollout/fresh_samples_total"] for m in metrics]
    for before, now, m in zip(fresh, fresh[1:], metrics[1:]):   # the count went on across it
        assert now - before == 4 * (2 - m["replay/groups"])
