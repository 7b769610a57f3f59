"""`--resume` without running anything: what may change, the one-line refusals, rewinding a run
directory to its checkpoint's step, TensorBoard continuing with no duplicate step. The real
kill-and-resume runs are in tests/test_resume_e2e.py."""

import json

import pytest
from e2e_helpers import read_tensorboard

from slipstream.errors import SlipstreamError
from slipstream.launch.cli import parse_config
from slipstream.launch.config import RunConfig
from slipstream.launch.metrics import TensorBoardLogger
from slipstream.launch.resume import (ResumePoint, begin_resume, changed_fields,
                                      rewind_run_files)


@pytest.fixture
def run_dir(tmp_path):
    """A run directory as a run leaves it: its config.json (output_dir is the directory)."""
    path = tmp_path / "run"
    path.mkdir()
    config = RunConfig(output_dir=str(path), steps=4, trainer={"lr": 3e-5})
    (path / "config.json").write_text(config.model_dump_json(indent=2))
    return path


def test_a_resume_takes_the_runs_own_config_not_the_scripts_defaults(run_dir):
    config = parse_config(["--resume", str(run_dir), "--steps", "9"],
                          trainer={"lr": 1.0})               # a script default, ignored
    assert config.trainer.lr == 3e-5 and config.steps == 9
    assert changed_fields(RunConfig.model_validate_json((run_dir / "config.json").read_text()),
                          config) == {"resume": [None, str(run_dir)], "steps": [4, 9]}


def test_a_changed_setting_that_is_not_safe_is_refused_in_one_line(run_dir):
    config = parse_config(["--resume", str(run_dir), "--trainer.lr", "1e-4",
                           "--rollout.group-size", "4"])
    with pytest.raises(SlipstreamError) as error:
        begin_resume(config)
    message = str(error.value)
    assert "\n" not in message
    assert "rollout.group_size was 8 in that run, not 4 (and 1 more)" in message
    assert "may change only" in message and "steps" in message


def test_a_resume_with_safe_changes_only_needs_a_checkpoint(run_dir):
    config = parse_config(["--resume", str(run_dir), "--steps", "6", "--progress", "false"])
    with pytest.raises(SlipstreamError, match="no complete checkpoint in .*checkpoints"):
        begin_resume(config)


@pytest.mark.parametrize("argv, message", [
    (["--resume", "{missing}"], "no config.json there, so no run to resume"),
    (["--resume", "{run}", "--output-dir", "{other}"], "drop --output-dir"),
    (["--resume", "{run}", "--overwrite", "true"], "give one of them"),
])
def test_bad_resume_arguments_are_one_line(run_dir, tmp_path, argv, message):
    argv = [a.format(missing=tmp_path / "none", run=run_dir, other=tmp_path / "other")
            for a in argv]
    with pytest.raises(SlipstreamError, match=message):
        begin_resume(parse_config(argv))


def test_a_run_directory_is_rewound_to_the_checkpoints_step(tmp_path):
    run = tmp_path / "run"
    (run / "rollouts").mkdir(parents=True)
    (run / "buffer").mkdir()
    lines = [json.dumps({"step": s, "loss/total": s / 10}) for s in range(1, 6)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "loss/to')
    for step in range(1, 6):
        (run / "rollouts" / f"step-{step:06d}.jsonl").write_text("{}\n")
        (run / "buffer" / f"snapshot-step{step:06d}.jsonl").write_text("")
    (run / "rollouts" / "index.jsonl").write_text(
        "".join(json.dumps({"id": f"s{s}", "step": s}) + "\n" for s in range(1, 6)))
    (run / "buffer" / "snapshot-final.jsonl").write_text("")
    (run / "buffer" / "evictions.jsonl").write_text('{"a": 1}\n{"a": 2}\n{"a": 3}\n')
    history = rewind_run_files(run, ResumePoint(run / "checkpoints" / "step-000003", 3,
                                                {"evictions_logged": 2}))
    assert history == [{"loss/total": 0.1}, {"loss/total": 0.2}, {"loss/total": 0.3}]
    assert (run / "metrics.jsonl").read_text() == "\n".join(lines[:3]) + "\n"
    assert sorted(p.name for p in (run / "rollouts").glob("step-*")) == [
        "step-000001.jsonl", "step-000002.jsonl", "step-000003.jsonl"]
    assert len(list((run / "buffer").glob("snapshot-*"))) == 3        # final one gone too
    assert [json.loads(x)["step"] for x in
            (run / "rollouts" / "index.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (run / "buffer" / "evictions.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n'


def test_tensorboard_continues_after_the_checkpoint_with_no_step_twice(tmp_path):
    first = TensorBoardLogger(tmp_path / "tb")
    for step in range(1, 6):                 # steps 4 and 5 logged after the last checkpoint
        first.log({"loss/total": float(step)}, step)
    first.close()
    resumed = TensorBoardLogger(tmp_path / "tb", purge_step=4)
    for step in range(4, 7):
        resumed.log({"loss/total": 10.0 * step}, step)
    resumed.close()
    assert read_tensorboard(tmp_path)["loss/total"] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]


def test_compare_resumes_an_arm_stopped_after_a_checkpoint_and_restarts_one_without(tmp_path):
    from slipstream.launch.compare import resumable
    from slipstream.trainer.checkpoints import MANIFEST

    out = tmp_path / "arm-seed0"
    assert not resumable(out, 10)                           # nothing there: a fresh run
    folder = out / "checkpoints" / "step-000004"
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(json.dumps({"tag": folder.name, "files": {},
                                               "client_state": {"step": 4}}))
    assert not resumable(out, 10)                           # no config.json: not a run
    (out / "config.json").write_text("{}")
    assert resumable(out, 10)
    assert not resumable(out, 4)                            # trained through: nothing to resume
