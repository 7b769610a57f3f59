"""The inspector's store: index build and follow, half-written lines, legacy runs, and reading
nothing outside the run directory."""

import json
import os

import pytest
from inspector_helpers import (  # noqa: F401  (teacher_run is a fixture)
    FAILED_TEACHER_ID, HOSTILE_MEMBER, HOSTILE_TEACHER, NO_TEACHER_ID, TEACHER_GAPS,
    TEACHER_ID, TEACHER_LOGPROBS, TEACHER_PARTS, TEACHER_STEP, TRAINER_LOGPROBS,
    scored_teacher_fields, teacher_run, teacher_trained)

from slipstream.buffer.records import to_json_dict
from slipstream.inspector import demo
from slipstream.inspector.store import RunStore
from slipstream.inspector.teacher import teacher_view
from slipstream.errors import SlipstreamError


@pytest.fixture()
def run(tmp_path):
    return demo.make_demo_run(tmp_path / "run")


def test_the_demo_run_opens_with_its_known_contents(run):
    store = RunStore(run)
    expected = demo.DEMO_STEPS * demo.DEMO_GROUPS_PER_STEP * demo.DEMO_GROUP_SIZE
    assert len(store.rows) == expected and len(store.metrics) == demo.DEMO_STEPS
    largest = max(store.rows, key=lambda r: r["max_gap"])
    assert largest["id"] == demo.DEMO_LARGEST_GAP_ID
    record = store.sample(demo.DEMO_LARGEST_GAP_ID, largest["step"])
    gaps = [t - s for t, s in zip(record["trainer_logprobs_T"],
                                  record["sample"]["sampler_logprobs_T"])]
    assert max(range(len(gaps)), key=lambda i: abs(gaps[i])) == demo.DEMO_LARGEST_GAP_TOKEN
    two = store.find_row(demo.DEMO_TWO_VERSION_ID)
    assert two["versions"] == 2 and two["version_max"] - two["version_min"] == 1
    assert all(r["advantage"] == 0 for r in store.group(demo.DEMO_ZERO_VARIANCE_GROUP))
    assert not store.group(demo.DEMO_EVICTED_GROUP)
    assert store.buffer_info(None)["eviction_counts"] == {"stale": 1}
    hostile = store.sample(demo.DEMO_HOSTILE_ID, store.find_row(demo.DEMO_HOSTILE_ID)["step"])
    assert hostile["sample"]["completion_text"] == demo.DEMO_HOSTILE_TEXT


def test_deterministic_demo_banner_counts_the_planted_tokens(tmp_path):
    store = RunStore(demo.make_demo_run(tmp_path / "det", deterministic=True))
    banner = store.deterministic_banner()
    assert banner["nonzero"] == demo.DEMO_DETERMINISTIC_NONZERO and banner["tokens"] > 100
    assert RunStore(demo.make_demo_run(tmp_path / "nondet")).deterministic_banner() is None


def test_follow_picks_up_new_steps_and_skips_a_half_written_line(run):
    store = RunStore(run)
    before = len(store.rows)
    index = run / "rollouts" / "index.jsonl"
    complete = index.read_bytes()
    demo.append_demo_step(run, demo.DEMO_STEPS + 1)
    appended = index.read_bytes()[len(complete):]
    index.write_bytes(complete + appended[:-40])          # the last line half written
    store.refresh(force=True)
    assert len(store.rows) == before + 7 and store.skipped_lines == 0
    assert len(store.index_lines) == before + 7
    index.write_bytes(complete + appended)                # the writer finishes the line
    store.refresh(force=True)
    assert len(store.rows) == before + 8
    assert {r["step"] for r in store.rows[before:]} == {demo.DEMO_STEPS + 1}
    assert len(store.metrics) == demo.DEMO_STEPS + 1
    with (run / "metrics.jsonl").open("a") as out:
        out.write('{"step": 99, "reward/me')               # half a metrics line
    store.refresh(force=True)
    assert len(store.metrics) == demo.DEMO_STEPS + 1


def test_a_run_without_index_is_summarised_from_its_step_files(run):
    rows = RunStore(run).rows
    (run / "rollouts" / "index.jsonl").unlink()
    assert RunStore(run).rows == []           # a step file just written may get its index yet
    for path in (run / "rollouts").iterdir():
        os.utime(path, (path.stat().st_mtime - 60,) * 2)
    legacy = RunStore(run)
    assert [(r["id"], r["step"], r["max_gap"]) for r in legacy.rows] == \
        [(r["id"], r["step"], r["max_gap"]) for r in rows]
    assert legacy.sample(rows[5]["id"], rows[5]["step"])["sample"]["sample_id"] == rows[5]["id"]


def test_symlinks_leaving_the_run_directory_are_ignored(run, tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "step-000099.jsonl").write_text((run / "rollouts" / "step-000001.jsonl").read_text())
    (secret / "snapshot-final.jsonl").write_text('{"ticket": 1, "sample": {}}\n')
    os.symlink(secret / "step-000099.jsonl", run / "rollouts" / "step-000099.jsonl")
    (run / "buffer" / "snapshot-final.jsonl").unlink()
    os.symlink(secret / "snapshot-final.jsonl", run / "buffer" / "snapshot-final.jsonl")
    os.symlink(secret, run / "buffer" / "escape")
    store = RunStore(run)
    assert 99 not in {r["step"] for r in store.rows}
    assert "snapshot-final.jsonl" not in store.snapshot_names()
    assert store.snapshot("snapshot-final.jsonl") == []
    assert store.safe_path("buffer/escape/snapshot-final.jsonl") is None
    assert store.safe_path("../secret/step-000099.jsonl") is None
    assert store.safe_path("/etc/passwd") is None


def test_a_whole_rollouts_folder_linked_outside_is_ignored(tmp_path):
    outside = demo.make_demo_run(tmp_path / "outside")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"deterministic": False, "trainer": {},
                                                "rollout": {}}))
    os.symlink(outside / "rollouts", run / "rollouts")
    assert RunStore(run).rows == []


def test_an_index_line_cannot_point_the_store_at_another_file(run):
    index = run / "rollouts" / "index.jsonl"
    row = json.loads(index.read_text().splitlines()[0])
    for target in ("../config.json", "/etc/passwd", "step-000001.jsonl/../../config.json"):
        with index.open("a") as out:
            out.write(json.dumps({**row, "id": "evil", "file": target, "offset": 0,
                                  "bytes": 100}) + "\n")
    store = RunStore(run)
    assert store.find_row("evil") is None and store.sample("evil") is None
    assert store.skipped_lines == 3 and "evil" not in {r["id"] for r in store.rows}


@pytest.mark.parametrize("kind, message", [("missing", "does not exist"),
                                           ("file", "is not a directory"),
                                           ("empty", "is not a run directory"),
                                           ("model", "is not a run directory")])
def test_bad_directories_are_one_line_errors(tmp_path, kind, message):
    path = tmp_path / kind
    if kind == "file":
        path.write_text("x")
    elif kind in ("empty", "model"):
        path.mkdir()
    if kind == "model":        # a model's folder: a config.json that is not a run's
        (path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(SlipstreamError, match=message):
        RunStore(path)


def test_a_run_that_has_not_logged_a_step_opens(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"trainer": {}, "rollout": {}}))
    assert RunStore(tmp_path).rows == []


def test_a_garbled_index_line_is_skipped_and_counted(run):
    with (run / "rollouts" / "index.jsonl").open("a") as out:
        out.write('{"id": "half\n')                       # a crash mid-line, then more lines
    demo.append_demo_step(run, demo.DEMO_STEPS + 1)
    store = RunStore(run)
    assert len(store.rows) == 56 and store.skipped_lines == 1


def test_non_finite_numbers_survive_the_index(tmp_path):
    from factories import make_sample

    from slipstream.buffer.records import TrainedSample
    from slipstream.buffer.rollout_log import write_step

    run = tmp_path / "run"
    sample = make_sample(versions=(0, 0), logprobs=[-1.0, float("-inf")])
    write_step(run / "rollouts", 1, [TrainedSample(sample, 1, 0, 0.0, (-1.0, -2.0))])
    line = (run / "rollouts" / "index.jsonl").read_text()
    assert "Infinity" in line and "NaN" not in line.replace('"NaN"', "")
    [row] = RunStore(run).rows
    assert row["max_gap"] == float("inf")


# -- the teacher-student gap (inspector/teacher.py), as the store serves it ---------------------
def test_the_teacher_gap_is_teacher_minus_trainer_logprob(teacher_run):
    view = RunStore(teacher_run).sample(TEACHER_ID, TEACHER_STEP)["teacher_view"]
    assert view["available"] and view["student"] == "trainer" and view["reason"] == ""
    # By hand: -0.25 - -1.25, -2.0 - -0.5, -0.5 - -0.5, -1.0 - -3.0.
    assert view["gap_T"] == list(TEACHER_GAPS) == [1.0, -1.5, 0.0, 2.0]
    assert view["teacher_T"] == list(TEACHER_LOGPROBS)
    assert view["student_T"] == list(TRAINER_LOGPROBS)
    assert view["mean_gap"] == 0.375 and view["max_abs_gap"] == 2.0     # 1.5 / 4
    assert view["top1_T"] == [3, 8, 5, 6] and view["top1_logprob_T"] == [-0.25, -0.1, -0.5, -1.0]
    assert view["members"] == [
        {"name": "alpha", "weight": 0.75, "logprobs_T": list(TEACHER_PARTS["alpha"])},
        {"name": HOSTILE_MEMBER, "weight": 0.25,
         "logprobs_T": list(TEACHER_PARTS[HOSTILE_MEMBER])}]
    assert view["members_left_out"] == 0
    assert (view["id"], view["version"], view["error"]) == (HOSTILE_TEACHER, 0, None)


def test_without_trainer_logprobs_the_student_is_the_sampler():
    record = to_json_dict(teacher_trained(0, **scored_teacher_fields()))
    record["trainer_logprobs_T"] = []
    for name in ("teacher_topk_ids_T_K", "teacher_topk_logprobs_T_K", "teacher_parts"):
        del record["sample"][name]                  # a teacher that recorded only its logprobs
    view = teacher_view(record)
    # The sampler's logprob is -0.5 at every token (factories.make_sample).
    assert view["student"] == "sampler" and view["gap_T"] == [0.25, -1.5, 0.0, -0.5]
    assert view["top1_T"] is None and view["top1_logprob_T"] is None and view["members"] == []


def test_a_sample_without_teacher_scores_has_no_teacher_view_and_says_why(teacher_run):
    store = RunStore(teacher_run)
    unscored = store.sample(NO_TEACHER_ID, TEACHER_STEP)["teacher_view"]
    assert unscored["available"] is False and unscored["malformed"] is False
    assert "gap_T" not in unscored and "no teacher scored it" in unscored["reason"]
    assert (unscored["id"], unscored["version"], unscored["error"]) == ("", None, None)
    failed = store.sample(FAILED_TEACHER_ID, TEACHER_STEP)["teacher_view"]
    assert failed["available"] is False and "gap_T" not in failed
    assert (failed["id"], failed["error"]) == ("tutor", "context function raised")
    assert "the teacher failed (context function raised)" in failed["reason"]
    demo_rows = [r for r in store.rows if r["step"] != TEACHER_STEP]    # an RL run's samples
    assert demo_rows and not any(store.sample(r["id"], r["step"])["teacher_view"]["available"]
                                 for r in demo_rows)
