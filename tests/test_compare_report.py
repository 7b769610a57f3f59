"""The comparison's numbers against hand computations: AUC, throughput, the permutation test,
the noise rule, the table, the verdict sentences and the plot's curves."""

import pytest

from slipstream.launch import compare_report as cr
from slipstream.launch.compare_report import RunResult


def run(arm: str, seed: int, rewards: list[float], wall_s: list[float], accuracy=None,
        status: str = "ok", per_step: int = 8) -> RunResult:
    return RunResult(arm, seed, status, steps=list(range(1, len(rewards) + 1)), rewards=rewards,
                     wall_s=wall_s, samples_per_step=per_step, accuracy=accuracy)


def test_reward_auc_over_steps_is_the_mean_reward():
    assert cr.reward_auc_steps([0.0, 0.5, 1.0]) == pytest.approx(0.5)


def test_reward_auc_over_time_is_the_trapezoid_area_over_the_span():
    # trapezoids: 10 s x (0 + 1)/2 = 5, then 20 s x (1 + 1)/2 = 20; 25 over 30 s
    assert cr.reward_auc_time([10.0, 20.0, 40.0], [0.0, 1.0, 1.0]) == pytest.approx(25 / 30)
    assert cr.reward_auc_time([7.0], [0.3]) == pytest.approx(0.3)


def test_samples_per_second_and_run_metrics():
    r = run("a", 0, [0.0, 1.0, 1.0], [10.0, 20.0, 40.0], accuracy=0.5)
    assert cr.samples_per_second(r) == pytest.approx(8 * 3 / 40)
    by_steps = cr.run_metrics(r, "steps")
    assert by_steps == pytest.approx({"accuracy": 0.5, "reward_auc": 2 / 3,
                                      "samples_per_s": 0.6, "wall_min": 40 / 60, "steps": 3})
    assert cr.run_metrics(r, "time")["reward_auc"] == pytest.approx(25 / 30)
    failed = run("a", 1, [], [], status="train_failed")
    assert cr.run_metrics(failed, "steps") == {}


def test_permutation_p_by_hand():
    # pooled 1..4 split 2 + 2: |diff| is 2, 1, 0, 0, 1, 2 over the 6 splits; 2 reach 2
    assert cr.permutation_p([1, 2], [3, 4]) == pytest.approx(2 / 6)
    # 4 + 4, fully separated: only the observed split and its mirror of the 70
    assert cr.permutation_p([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(2 / 70)
    # a = [0, 0, 1], b = [1, 1]: observed |1/3 - 1| = 2/3. Of the 10 ways to pick a's three,
    # 3 take both zeros (|diff| 2/3), 6 take one zero (1/6), 1 takes no zero (1): 4 hits
    assert cr.permutation_p([0, 0, 1], [1, 1]) == pytest.approx(4 / 10)
    assert cr.permutation_p([0.5, 0.5], [0.5, 0.5]) == 1.0


def test_smallest_p():
    assert cr.smallest_p(2, 2) == pytest.approx(1 / 3)
    assert cr.smallest_p(3, 3) == pytest.approx(0.1)
    assert cr.smallest_p(4, 4) == pytest.approx(2 / 70)
    assert cr.smallest_p(3, 4) == pytest.approx(1 / 35)


@pytest.mark.parametrize("a, b, real, fragment", [
    ([0.5], [0.9], False, "one seed"),
    ([0.50, 0.60], [0.55, 0.70], False, "overlap"),
    ([0.50, 0.52], [0.55, 0.57], False, "less than 2 x the wider range"),   # gap .03 < .04
    ([0.50, 0.52], [0.60, 0.61], True, "at least 2 x the wider range"),     # gap .08 >= .04
    ([1, 2, 3, 4], [5, 6, 7, 8], True, "permutation test p = 0.029"),
    ([1, 3, 5, 7], [2, 4, 6, 8], False, "permutation test p ="),
])
def test_verdict_rules(a, b, real, fragment):
    v = cr.verdict(a, b)
    assert v.real is real and fragment in v.reason


def arms() -> list[cr.ArmSummary]:
    grpo = [run("grpo", 0, [0.0, 1.0], [10.0, 20.0], accuracy=0.40),
            run("grpo", 1, [0.0, 0.5], [10.0, 30.0], accuracy=0.60)]
    fast = [run("fast", 0, [1.0, 1.0], [5.0, 10.0], accuracy=0.90),
            run("fast", 1, [], [], status="train_failed")]
    fast[1].error = "slipstream: an actor failed: boom"
    return [cr.summarise("grpo", ["--trainer.loss.kind", "grpo"], grpo, "steps"),
            cr.summarise("fast", ["--trainer.lr", "3e-3"], fast, "steps")]


def test_table_rows_by_hand():
    lines = cr.table(arms()).splitlines()
    assert lines[0].startswith("| arm | runs ok | held-out accuracy | reward AUC | samples/s")
    # grpo: accuracy 0.4, 0.6; AUC 0.5, 0.25; samples/s 16/20 = 0.8, 16/30 = 0.533;
    # wall 20 s and 30 s = 0.33 and 0.5 min; 2 steps each
    assert lines[2] == ("| grpo | 2/2 | 0.500 (0.400–0.600) | 0.375 (0.250–0.500) | "
                        "0.67 (0.53–0.80) | 0.4 (0.3–0.5) | 2 (2–2) |")
    # fast: one seed left, no range; the failed seed is named
    assert lines[3] == "| fast | 1/2 (seed1 train failed) | 0.900 | 1.000 | 1.60 | 0.2 | 2 |"


def test_pair_sentences():
    grpo, fast = arms()
    sentence = cr.pair_sentence("accuracy", grpo, fast)
    assert sentence.startswith("grpo vs fast: within noise: held-out accuracy 0.500 vs 0.900")
    assert "2 vs 1 seeds" in sentence and "one seed" in sentence
    sure = cr.summarise("b", [], [run("b", s, [1.0], [1.0], accuracy=a)
                                  for s, a in enumerate([0.9, 0.91])], "steps")
    grpo.values["accuracy"] = [0.40, 0.42]
    assert cr.pair_sentence("accuracy", grpo, sure).startswith(
        "grpo vs b: a real difference: held-out accuracy 0.410 vs 0.905 (difference -0.495")


def test_report_names_budget_command_rule_and_failures():
    text = cr.report(arms(), budget="2 learner steps per run on 2 seed(s) per arm",
                     command="python launch/compare.py --recipes grpo", common=["--x", "1"],
                     auc_over="steps")
    for fragment in ("Budget: 2 learner steps", "python launch/compare.py --recipes grpo",
                     "`--x 1`", "min–max over seeds", "mean reward over steps", "## Noise",
                     "exact two-sided permutation test", "2 x the wider range",
                     "- grpo: 0.400, 0.600 (range 0.2, std 0.1414)",
                     "## Failed runs", "fast-seed1: train failed: slipstream: an actor failed"):
        assert fragment in text, fragment


def test_band_by_step_averages_the_seeds_that_reached_each_step():
    x, mean, low, high = cr.band_by_step([run("a", 0, [0.0, 1.0], [1.0, 2.0]),
                                          run("a", 1, [1.0, 0.0, 0.5], [1.0, 2.0, 3.0])])
    assert x == [1, 2, 3]
    assert mean == [0.5, 0.5, 0.5] and low == [0.0, 0.0, 0.5] and high == [1.0, 1.0, 0.5]


def test_band_by_time_interpolates_on_the_shared_stretch():
    runs = [run("a", 0, [0.0, 1.0], [0.0, 60.0]), run("a", 1, [1.0, 1.0, 1.0], [0.0, 30.0, 90.0])]
    x, mean, low, high = cr.band_by_time(runs, points=3)
    assert x == pytest.approx([0.0, 0.5, 1.0])        # minutes, 0 to 60 s
    assert mean == pytest.approx([0.5, 0.75, 1.0])
    assert low == pytest.approx([0.0, 0.5, 1.0]) and high == [1.0, 1.0, 1.0]


def test_interpolate_holds_the_ends():
    assert cr.interpolate([0, 10], [0, 1], 5) == pytest.approx(0.5)
    assert cr.interpolate([0, 10], [0, 1], -1) == 0 and cr.interpolate([0, 10], [0, 1], 11) == 1
