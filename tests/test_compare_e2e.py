"""The playground end to end on the tiny random model: two arms (a loss kind, and a user-defined
arm that trains with Muon at another learning rate) x 1 seed x 2 steps, each trained by the real
pipeline and evaluated, then the same command again, which finds every result and trains
nothing. ZeRO 0 for every arm: Muon under ZeRO 1/2 cannot keep gradient clipping."""

import json
import time

import pytest
from e2e_helpers import launch

pytestmark = pytest.mark.e2e
ARGS = ("--recipes", "grpo", "--arm", "fast=--trainer.lr 3e-3 --trainer.optimizer.kind muon",
        "--seeds", "1", "--steps", "2", "--eval-count", "8", "--trainer.zero-stage", "0")


def test_compare_two_arms_then_a_rerun_skips_them(tiny_model, tmp_path):
    out = tmp_path / "cmp"
    started = time.monotonic()
    first = launch("compare.py", tiny_model, out, *ARGS, timeout=1500)
    first_s = time.monotonic() - started
    assert first.returncode == 0, first.stderr[-3000:]

    report = (out / "compare.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith(("| grpo |", "| fast |"))]
    assert len(rows) == 2 and all(" | 1/1 | " in row for row in rows), rows
    assert "Budget: 2 learner steps per run" in report
    assert "--arm 'fast=--trainer.lr 3e-3 --trainer.optimizer.kind muon'" in report  # the command
    assert "grpo vs fast: within noise" in report     # one seed: never called real
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for arm, lr in (("grpo", 1e-3), ("fast", 3e-3)):
        result = json.loads((out / "runs" / f"{arm}-seed0" / "result.json").read_text())
        assert result["status"] == "ok" and result["steps"] == [1, 2]
        assert result["eval_count"] == 8 and 0 <= result["accuracy"] <= 1
        assert result["samples_per_step"] == 2 * 4
        config = json.loads((out / "runs" / f"{arm}-seed0" / "config.json").read_text())
        assert config["trainer"]["lr"] == lr and config["seed"] == 0
        assert config["trainer"]["optimizer"]["kind"] == ("muon" if arm == "fast" else "adamw")
        log = (out / "runs" / f"{arm}-seed0.log").read_text()
        assert "held-out accuracy" in log      # the evaluation's output is appended

    started = time.monotonic()
    again = launch("compare.py", tiny_model, out, *ARGS, timeout=600)
    again_s = time.monotonic() - started
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped grpo-seed0" in again.stdout and "skipped fast-seed0" in again.stdout
    assert again_s < first_s / 3, (again_s, first_s)
    assert (out / "compare.md").read_text() == report
