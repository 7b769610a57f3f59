"""Library envs end to end on the real stack: the launch scripts on the tiny model."""

import json
import re
import subprocess
import sys

import pytest

from e2e_helpers import ROOT, launch, read_metrics


def _samples(run_dir):
    return [json.loads(line)["sample"] for f in sorted((run_dir / "rollouts").glob("step-*.jsonl"))
            for line in f.read_text().splitlines()]


def test_countdown_trains_on_reasoning_gym_scored_by_its_own_scorer(tiny_model, tmp_path):
    out = tmp_path / "run"
    result = launch("countdown.py", tiny_model, out, "--steps", "2",
                    "--reward.kind", "reasoning_gym", "--env.levels", "[0, 1]",
                    "--curriculum.kind", "edge", "--curriculum.min-groups", "1",
                    "--curriculum.explore-k", "8",
                    "--model.max-model-len", "1024")   # the tiny tokenizer spends many tokens
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(out)
    assert len(metrics) == 2
    # The curriculum saw the groups: a random model solves nothing, so every level it measured
    # is unsolved (pass@k 0).
    last = metrics[-1]
    assert last["curriculum/0/picks"] + last["curriculum/1/picks"] >= 4
    measured = [last[k] for k in ("curriculum/0/passk", "curriculum/1/passk") if k in last]
    assert measured and set(measured) == {0.0}
    # While the workers waited for the learner they explored unsolved levels at k = 8, and
    # kept nothing (no sample succeeds); exploration samples never reach the learner.
    assert last["curriculum/explore/groups"] >= 1 and last["curriculum/explore/kept"] == 0
    samples = _samples(out)
    assert len(samples) == 2 * 2 * 4
    for sample in samples:
        # A random model's text: countdown's scorer gives 0.01 (no usable answer) or 0.05.
        assert sample["reward_error"] is None and sample["reward"] in (0.01, 0.05, 1.0)
        assert sample["env_metadata"]["task"] == "countdown"
        assert sample["env_metadata"]["level"] in (0, 1)
        assert sample["prompt_id"].startswith("rg-countdown-l")
    # Held-out accuracy per difficulty, a level only evaluation sees (2) included.
    evaluation = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "evaluate.py"), str(out / "final"), "--count", "6",
         "--by", "level", "--env.kind", "reasoning_gym", "--env.task", "countdown",
         "--env.config", '{"min_numbers": 3, "max_numbers": 3, "min_value": 1, "max_value": 20, '
         '"min_target": 10, "max_target": 60}',
         "--env.levels", "[0, 1]", "--env.held-out-levels", "[2]", "--reward.kind",
         "reasoning_gym", "--model.max-model-len", "1024", "--rollout.max-new-tokens", "8",
         "--model.dtype", "float32"], capture_output=True, text=True, timeout=300)
    assert evaluation.returncode == 0, evaluation.stderr[-2000:]
    lines = evaluation.stdout.splitlines()        # vLLM logs to stdout too: ours come last
    first = next(i for i, line in enumerate(lines) if "held-out accuracy" in line)
    assert re.fullmatch(r".*: held-out accuracy [0-9.]+ on 6 problems", lines[first])
    per_level = [re.fullmatch(r"  level=(\d): accuracy [0-9.]+ on (\d+)", line)
                 for line in lines[first + 1:]]
    assert all(per_level) and {m.group(1) for m in per_level} <= {"0", "1", "2"}
    assert sum(int(m.group(2)) for m in per_level) == 6


def test_multi_turn_episodes_through_the_pipeline_env_tokens_never_trained(tiny_model, tmp_path):
    out = tmp_path / "run"
    result = launch("quickstart.py", tiny_model, out, "--steps", "2",
                    "--env.kind", "python", "--env.factory", "turn_envs_for_tests:make_env",
                    "--env.options", '{"turns": 3, "max_turn_tokens": 12}',
                    "--rollout.max-new-tokens", "160", "--model.max-model-len", "512",
                    "--deterministic", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(out)
    assert [m["env/turns_mean"] > 1 and m["env/tool_calls"] > 0 for m in metrics] == [True, True]
    rows = [json.loads(line) for f in sorted((out / "rollouts").glob("step-*.jsonl"))
            for line in f.read_text().splitlines()]
    multi = [r for r in rows if r["sample"]["turns"] > 1]
    assert multi
    for row in multi:
        env_T = row["sample"]["env_tokens_T"]
        assert any(env_T) and not env_T[0]
        # Env tokens are masked out of the loss with their own reason; policy tokens are not.
        assert all(reason == "env" for reason, e in zip(row["mask_reasons_T"], env_T) if e)
        assert all(w == 0.0 for w, e in zip(row["importance_weights_T"], env_T) if e)
    # Deterministic mode: every policy token's own-version logprob equals the sampler's.
    assert all(m["mismatch/max_abs_logprob_diff"] == 0.0 for m in metrics)
    for row in multi:
        own, sample = row["own_version_logprobs_T"], row["sample"]
        assert own is not None
        assert all(a == b for a, b, e in zip(own, sample["sampler_logprobs_T"],
                                               sample["env_tokens_T"]) if not e)


def test_tools_script_runs_on_the_real_stack(tiny_model, tmp_path):
    out = tmp_path / "run"
    result = launch("tools.py", tiny_model, out, "--steps", "1", "--reward.kind", "math_verify",
                    "--model.max-model-len", "1024", "--rollout.max-new-tokens", "32")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = _samples(out)
    assert len(samples) == 2 * 4 and all(s["turns"] >= 1 for s in samples)


def test_a_rubric_judged_by_smollm2_scores_every_sample_with_its_parts(tiny_model, tmp_path):
    """Mechanics, not quality: the shipped SmolLM2 judges in its own engine actor, held to the
    allowed verdicts by vLLM's structured outputs; every sample's reward is the weighted mean
    of its verdicts. (Unparseable verdicts, time-outs and a dead judge: tests/test_judge.py.)"""
    out = tmp_path / "run"
    rubric = [{"name": "number", "question": "Does the response contain a number?",
               "weight": 3}, {"name": "clarity", "question": "How clear is it?", "points": 3}]
    result = launch("quickstart.py", tiny_model, out, "--steps", "2", "--reward.kind", "judge",
                    "--reward.criteria", json.dumps(rubric), "--reward.timeout-s", "300")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = _samples(out)
    assert len(samples) == 2 * 2 * 4
    for sample in samples:
        parts = sample["reward_parts"]
        assert sample["reward_error"] is None and set(parts) == {"number", "clarity"}
        assert sample["reward"] == pytest.approx((3 * parts["number"] + parts["clarity"]) / 4)
        assert parts["number"] in (0.0, 1.0) and parts["clarity"] * 3 in (0, 1, 2, 3)
    assert sum(m["reward/errors"] for m in read_metrics(out)) == 0
