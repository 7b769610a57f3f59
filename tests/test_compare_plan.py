"""The comparison's command line and bookkeeping, without running anything: arms, refusals in
one line, each run's flags, the output directory's claim, and reading a growing metrics.jsonl."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slipstream.errors import SlipstreamError
from slipstream.launch.compare_plan import PRESETS, parse_args, run_flags

ROOT = Path(__file__).resolve().parents[1]


def test_arms_come_from_user_definitions_presets_and_loss_kinds():
    plan = parse_args(["--recipes", "cispo,muon,fast", "--arm", "fast=--trainer.lr 3e-3",
                       "--arm", "slow=--trainer.lr 1e-6", "--seeds", "2", "--steps", "5",
                       "--trainer.groups-per-step", "2", "--model.dtype", "float32"])
    assert [(a.name, a.flags) for a in plan.arms] == [
        ("cispo", ["--trainer.loss.kind", "cispo"]), ("muon", PRESETS["muon"]),
        ("fast", ["--trainer.lr", "3e-3"]), ("slow", ["--trainer.lr", "1e-6"])]
    assert plan.common == ["--trainer.groups-per-step", "2", "--model.dtype", "float32"]
    flags = run_flags(plan, plan.arms[2], 1)
    assert flags[:6] == ["--output-dir", str(Path("runs/compare/runs/fast-seed1")), "--seed",
                         "1", "--progress", "false"]
    # the budget, then the common overrides, then the arm's (last, so they win)
    assert flags[6:] == ["--steps", "5", *plan.common, "--trainer.lr", "3e-3"]


def test_a_clock_budget_lifts_the_step_limit_unless_steps_are_given():
    plan = parse_args(["--recipes", "grpo", "--minutes", "2.5"])
    assert plan.budget_flags() == ["--steps", "1000000", "--time-budget-min", "2.5"]
    assert plan.budget_text() == "2.5 minutes of wall time (`--time-budget-min`) per run on " \
                                 "1 seed(s) per arm"
    both = parse_args(["--recipes", "grpo", "--minutes", "3", "--steps", "9"])
    assert both.budget_flags() == ["--steps", "9", "--time-budget-min", "3"]
    assert "whichever comes first" in both.budget_text()


def test_a_sample_budget_lifts_the_step_limit_and_arms_may_replay_and_change_max_lag():
    plan = parse_args(["--arm", "r2=--buffer.replay.passes 2 --trainer.loss.kind decoupled_ppo",
                       "--arm", "lag4=--buffer.max-lag 4", "--samples", "512"])
    assert plan.budget_flags() == ["--steps", "1000000", "--sample-budget", "512"]
    assert plan.budget_text().startswith("512 generated samples")
    assert plan.footing()["samples"] == 512
    assert run_flags(plan, plan.arms[1], 0)[-2:] == ["--buffer.max-lag", "4"]


def test_a_distillation_arm_may_choose_its_teacher():
    members = '[{"source": "model", "path": "runs/quickstart/final"}, {"source": "self"}]'
    plan = parse_args(["--recipes", "grpo", "--arm", "ens=--trainer.loss.kind distill "
                       f"--teacher.kind ensemble --teacher.members '{members}'"])
    assert run_flags(plan, plan.arms[1], 0)[-2:] == ["--teacher.members", members]


def test_a_curriculum_arm_may_choose_its_prompts_but_not_its_env():
    plan = parse_args(["--recipes", "grpo", "--arm", "edge=--curriculum.kind edge"])
    assert run_flags(plan, plan.arms[1], 0)[-2:] == ["--curriculum.kind", "edge"]
    with pytest.raises(SlipstreamError, match="sets env.levels"):
        parse_args(["--recipes", "grpo", "--arm", "easy=--env.levels [0]"])


@pytest.mark.parametrize("argv, fragment", [
    (["--recipes", "grpo", "--arm", "big=--model.path other"],
     "arm 'big' sets model.path: an arm may change only the algorithm"),
    (["--arm", "hot=--rollout.temperature 2"], "arm 'hot' sets rollout.temperature"),
    (["--arm", "long=--steps 80"], "arm 'long' sets steps"),
    (["--arm", "seedy=--seed=3"], "arm 'seedy' sets seed"),
    (["--arm", "more=--trainer.groups-per-step 8"], "changes the samples per step"),
    (["--recipes", "grpo", "--seeds", "0"], "--seeds must be at least 1"),
    (["--recipes", "grpo", "--seed", "3"], "--seed is set by compare"),
    (["--recipes", "grpo", "--time-budget-min", "3"], "use --minutes"),
    (["--recipes", "grpo", "--sample-budget", "3"], "use --samples"),
    (["--recipes", "grpo", "--samples", "0"], "must be positive"),
    (["--arm", "cap=--buffer.capacity-groups 8"], "arm 'cap' sets buffer.capacity_groups"),
    (["--recipes", "grpo,grpo"], "listed twice"),
    (["--recipes", "../x"], "arm name '../x'"),
    (["--arm", "nothing"], "expected NAME="),
    ([], "no arms"),
    (["--recipes", "grpo", "--steps", "many"], "invalid arguments: argument --steps"),
])
def test_bad_input_is_one_line(argv, fragment):
    with pytest.raises(SlipstreamError) as error:
        parse_args(argv)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_output_dir_claim_refuses_another_comparison(tmp_path):
    from slipstream.launch.compare import claim_output_dir

    out = str(tmp_path / "cmp")
    claim_output_dir(parse_args(["--recipes", "grpo", "--steps", "3", "--output-dir", out]))
    stored = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert stored["footing"]["steps"] == 3 and stored["arms"] == {"grpo": ["--trainer.loss.kind",
                                                                           "grpo"]}
    # same footing, an extra arm: fine, and remembered
    claim_output_dir(parse_args(["--recipes", "grpo", "--arm", "f=--trainer.lr 1e-3",
                                 "--steps", "3", "--output-dir", out]))
    base = ["--recipes", "grpo", "--output-dir", out]
    for argv, fragment in [(["--steps", "4"], "steps = 3, not 4"),
                           (["--steps", "3", "--trainer.lr", "1"],
                            "common = [], not ['--trainer.lr', '1']"),
                           (["--steps", "3", "--arm", "f=--trainer.lr 1e-2"], "arm 'f' ran in")]:
        with pytest.raises(SlipstreamError) as error:
            claim_output_dir(parse_args(base + argv))
        assert fragment in str(error.value)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SlipstreamError, match="not empty and holds no compare.json"):
        claim_output_dir(parse_args(["--recipes", "grpo", "--output-dir",
                                     str(tmp_path / "other")]))


def test_step_watcher_waits_for_a_half_written_line(tmp_path):
    from slipstream.launch.compare import StepWatcher

    path = tmp_path / "metrics.jsonl"
    watcher = StepWatcher(path)
    assert watcher.poll() == []
    path.write_text('{"step": 1, "reward/mean": 0.5}\n{"step": 2, "rew')
    assert [r["step"] for r in watcher.poll()] == [1]
    with path.open("a") as f:
        f.write('ard/mean": 0.25}\n')
    assert [r["reward/mean"] for r in watcher.poll()] == [0.5, 0.25]


def test_unknown_loss_kind_is_refused_before_any_run(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "compare.py"), "--recipes", "grpo,no_such_loss",
         "--steps", "2", "--output-dir", str(tmp_path / "cmp")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("slipstream: arm 'no_such_loss': invalid config: trainer.loss")
    assert "Traceback" not in result.stderr and not (tmp_path / "cmp").exists()


def test_evaluation_gets_the_runs_own_config_but_not_its_seed():
    from slipstream.launch.cli import parse_config
    from slipstream.launch.compare import eval_flags

    trained = parse_config(["--seed", "3", "--steps", "7", "--env.digits", "1",
                            "--rollout.max-new-tokens", "16", "--model.dtype", "float32",
                            "--deterministic", "true", "--trainer.lr", "3e-3"],
                           env={"kind": "arithmetic", "digits": 2})
    config = json.loads(trained.model_dump_json())
    # evaluate.py's own defaults (2-digit arithmetic) lose to the run's config
    evaluated = parse_config(eval_flags(config), env={"kind": "arithmetic", "digits": 2})
    assert evaluated.seed == 0 and evaluated.steps != 7
    assert evaluated.model_dump(exclude={"seed", "steps", "output_dir"}) == \
        trained.model_dump(exclude={"seed", "steps", "output_dir"})


# Parses only the flags it needs and imports nothing heavy, so each run takes a moment.
FAKE_SCRIPT = '''
import argparse
import json
import sys
from pathlib import Path

DEFAULTS = {"rollout": {"group_size": 4}, "trainer": {"groups_per_step": 2}}

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for flag in ("--output-dir", "--seed", "--steps"):
        parser.add_argument(flag)
    parser.add_argument("--trainer.lr", dest="lr")
    args, _ = parser.parse_known_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(DEFAULTS))
    if float(args.lr) == 0.5:
        sys.exit("slipstream: boom")
    with (out / "metrics.jsonl").open("w") as f:
        for step in range(1, int(args.steps) + 1):
            reward = float(args.lr) * step + int(args.seed) / 10
            f.write(json.dumps({"step": step, "reward/mean": reward,
                                "timing/wall_s": 2.0 * step}) + "\\n")
    (out / "final").mkdir()
'''


def test_runs_failures_report_and_skips_with_a_stand_in_script(tmp_path, capsys):
    """The orchestration without the real stack: a stand-in launch script that writes a run
    directory in no time (and fails for lr 0.5); no evaluation."""
    from slipstream.launch.compare import main

    script = tmp_path / "fake.py"
    script.write_text(FAKE_SCRIPT)
    out = tmp_path / "cmp"
    argv = ["--script", str(script), "--steps", "3", "--seeds", "2", "--eval-count", "0",
            "--output-dir", str(out), "--arm", "a=--trainer.lr 0.1"]
    with pytest.raises(SlipstreamError, match=r"^2 of 4 runs failed \(bad-seed0, bad-seed1\)"):
        main(argv + ["--arm", "bad=--trainer.lr 0.5"])
    report = (out / "compare.md").read_text()
    # a: AUC = mean reward over steps = 0.2 + seed / 10; samples/s = 8 x 3 / 6 s = 4
    assert "| a | 2/2 | n/a | 0.250 (0.200–0.300) | 4.00 (4.00–4.00) |" in report
    assert "| bad | 0/2 (seed0 train failed, seed1 train failed) | n/a | n/a |" in report
    assert "- bad-seed1: train failed: slipstream: boom" in report
    assert "a vs bad: no reward AUC to compare" in report
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    result = json.loads((out / "runs" / "a-seed1" / "result.json").read_text())
    assert result["rewards"] == pytest.approx([0.2, 0.3, 0.4]) and result["status"] == "ok"
    assert "slipstream: boom" in (out / "runs" / "bad-seed0.log").read_text()

    capsys.readouterr()
    log_before = (out / "runs" / "a-seed0.log").stat().st_mtime_ns
    main(argv)   # the same comparison without the failing arm: nothing left to run
    printed = capsys.readouterr().out
    assert "skipped a-seed0" in printed and "skipped a-seed1" in printed
    assert (out / "runs" / "a-seed0.log").stat().st_mtime_ns == log_before
    assert "| bad |" not in (out / "compare.md").read_text()
