"""The run directory refuses to mix two runs (launch/run_dir.py `claim_run_dir`)."""

import subprocess
import sys
from pathlib import Path

import pytest

from slipstream.errors import SlipstreamError
from slipstream.launch.cli import parse_config
from slipstream.launch.run_dir import RUN_FILES, RunDirectory, claim_run_dir

ROOT = Path(__file__).resolve().parents[1]


def test_a_new_or_empty_directory_is_claimed(tmp_path):
    claim_run_dir(tmp_path / "a" / "b", overwrite=False)
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "empty").mkdir()
    claim_run_dir(tmp_path / "empty", overwrite=False)


def test_a_directory_holding_a_run_is_refused_unless_overwritten(tmp_path):
    run = RunDirectory(parse_config(["--output-dir", str(tmp_path / "run")]))
    run.close()
    (tmp_path / "run" / "notes.txt").write_text("mine")       # not the run's: kept
    with pytest.raises(SlipstreamError, match=r"already holds a run \(config\.json, "
                                              r"metrics\.jsonl, tb, rollouts, buffer, "
                                              r"checkpoints\): choose another --output-dir, "
                                              r"or pass --overwrite true"):
        RunDirectory(parse_config(["--output-dir", str(tmp_path / "run")]))
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    again = RunDirectory(parse_config(["--output-dir", str(tmp_path / "run"),
                                       "--overwrite", "true"]))
    again.close()
    assert not (tmp_path / "run" / "metrics.jsonl").read_text()   # a fresh file, not appended
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        ["notes.txt", "config.json", "metrics.jsonl", "tb", "rollouts", "buffer",
         "checkpoints"])
    assert set(RUN_FILES) >= {"final", "checkpoints", "metrics.jsonl"}


def test_a_file_an_unwritable_place_or_nothing_is_refused_in_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SlipstreamError, match="is a file, not a directory"):
        claim_run_dir(tmp_path / "file", overwrite=True)
    with pytest.raises(SlipstreamError, match="cannot be written"):
        claim_run_dir(Path("/sys/slipstream-run"), overwrite=False)   # sysfs: even root fails
    with pytest.raises(SlipstreamError, match="output_dir"):
        parse_config(["--output-dir", ""])


def test_a_launch_into_an_existing_run_stops_before_anything_starts(tiny_model, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    result = subprocess.run([sys.executable, str(ROOT / "launch" / "quickstart.py"),
                             "--output-dir", str(tmp_path / "run"), "--model.path",
                             str(tiny_model)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "already holds a run (config.json)" in last and "Traceback" not in result.stderr
    assert (tmp_path / "run" / "config.json").read_text() == "{}"     # untouched
