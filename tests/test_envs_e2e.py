"""Library envs end to end on the real stack: the launch scripts on the tiny model."""

import json

from e2e_helpers import launch, read_metrics


def _samples(run_dir):
    return [json.loads(line)["sample"] for f in sorted((run_dir / "rollouts").glob("step-*.jsonl"))
            for line in f.read_text().splitlines()]


def test_countdown_trains_on_reasoning_gym_scored_by_its_own_scorer(tiny_model, tmp_path):
    out = tmp_path / "run"
    result = launch("countdown.py", tiny_model, out, "--steps", "2",
                    "--reward.kind", "reasoning_gym", "--env.levels", "[0, 1]",
                    "--model.max-model-len", "1024")   # the tiny tokenizer spends many tokens
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_metrics(out)) == 2
    samples = _samples(out)
    assert len(samples) == 2 * 2 * 4
    for sample in samples:
        # A random model's text: countdown's scorer gives 0.01 (no usable answer) or 0.05.
        assert sample["reward_error"] is None and sample["reward"] in (0.01, 0.05, 1.0)
        assert sample["env_metadata"]["task"] == "countdown"
        assert sample["env_metadata"]["level"] in (0, 1)
        assert sample["prompt_id"].startswith("rg-countdown-l")
