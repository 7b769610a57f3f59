"""`--resume` end to end on the real stack (Ray, vLLM or the reference sampler, DeepSpeed) with
the tiny model: a run SIGKILLed as a whole process tree, or stopped by SIGTERM, continues from
its last complete checkpoint with nothing lost, nothing duplicated, and (deterministic, pinned)
bit for bit the run that was never stopped."""

import json

import psutil
import pytest
from e2e_helpers import launch, read_metrics, read_tensorboard
from safetensors.torch import load_file

from slipstream.trainer.checkpoints import complete_checkpoints

pytestmark = pytest.mark.e2e
SAMPLES_PER_STEP = 8         # e2e_helpers.SMALL: 2 groups of 4


def trained_rows(run_dir):
    return [json.loads(line) for f in sorted((run_dir / "rollouts").glob("step-*.jsonl"))
            for line in f.read_text().splitlines()]


def kill_tree_after(run_dir, rows: int):
    """A `while_running` hook: SIGKILL the script and every process under it (Ray's included:
    no clean-up runs) once metrics.jsonl holds `rows` steps."""
    def hook(proc) -> None:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= rows:
            tree = [proc.pid]
            try:
                tree += [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
            except psutil.Error:
                return
            for pid in tree:
                try:
                    psutil.Process(pid).kill()
                except psutil.Error:
                    pass
    return hook


def assert_steps_continue(run_dir, steps: int) -> None:
    """Every step once, in order, in metrics.jsonl, TensorBoard and the rollouts and index."""
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, steps + 1))
    tb_steps = [s for s, _ in read_tensorboard(run_dir)["loss/total"]]
    assert tb_steps == list(range(1, steps + 1))
    rows = trained_rows(run_dir)
    assert [r["step"] for r in rows] == [s for s in range(1, steps + 1)
                                         for _ in range(SAMPLES_PER_STEP)]
    index = [json.loads(x) for x in (run_dir / "rollouts" / "index.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in index) == sorted(r["sample"]["sample_id"] for r in rows)


@pytest.mark.timeout(1500)
def test_a_killed_pinned_run_resumes_bit_for_bit(tiny_model, tmp_path):
    common = ("--deterministic", "true", "--buffer.schedule", "pinned", "--steps", "4",
              "--buffer.max-lag", "1", "--seed", "3", "--model.dtype", "bfloat16",
              "--trainer.checkpoint-every", "1")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    result = launch("quickstart.py", tiny_model, whole, *common)
    assert result.returncode == 0, result.stderr[-3000:]
    killed = launch("quickstart.py", tiny_model, cut, *common,
                    while_running=kill_tree_after(cut, rows=3))
    assert killed.returncode == -9
    assert not (cut / "final").exists()
    resumed = launch("quickstart.py", tiny_model, cut, *common, "--resume", str(cut))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((cut / "config.json").read_text())["resumes"]
    assert len(record) == 1 and record[0]["from_step"] in (2, 3)   # 3 unless killed mid-write
    assert f"resumed from step {record[0]['from_step']}" in resumed.stdout

    a, b = read_metrics(whole), read_metrics(cut)
    assert [m["loss/total"] for m in a] == [m["loss/total"] for m in b]
    assert_steps_continue(cut, 4)
    # Every trained token, stale ones too, still matches its sampler bitwise after the resume:
    # the checkpoint kept the weights of the versions within max_lag.
    assert all(m["mismatch/max_abs_logprob_diff"] == 0.0 for m in a + b)
    assert [m["mismatch/tokens"] for m in a] == [m["mismatch/tokens"] for m in b]
    # Steps 1 and 2 are generated with version 0, then each step with the version before last.
    assert [m["staleness/max"] for m in b] == [0, 1, 1, 1]
    rows_a, rows_b = trained_rows(whole), trained_rows(cut)
    assert [r["sample"]["completion_ids_T"] for r in rows_a] == \
        [r["sample"]["completion_ids_T"] for r in rows_b]
    for row in rows_b:
        assert set(row["sample"]["versions_T"]) == {max(0, row["step"] - 2)}
    weights_a = load_file(str(whole / "final" / "model.safetensors"))
    weights_b = load_file(str(cut / "final" / "model.safetensors"))
    for name, tensor in weights_a.items():
        assert tensor.equal(weights_b[name]), name


@pytest.mark.timeout(1200)
def test_a_stopped_run_resumes_past_a_truncated_checkpoint(tiny_model, tmp_path):
    """SIGTERM checkpoints at the step boundary and exits 130; a checkpoint then damaged by
    hand is passed over with a warning; the resumed run (asynchronous, vLLM) fills the steps
    in between with nothing duplicated, and a safe change (more steps) is recorded."""
    out = tmp_path / "run"
    common = ("--buffer.max-lag", "1", "--trainer.checkpoint-every", "1")

    sent = []

    def terminate_at_step_2(proc) -> None:     # once: a second SIGTERM stops at once
        metrics = out / "metrics.jsonl"
        if not sent and metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            proc.terminate()
            sent.append(True)

    stopped = launch("quickstart.py", tiny_model, out, *common, "--steps", "4",
                     while_running=terminate_at_step_2)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "--resume" in stopped.stderr.strip().splitlines()[-1]
    saved = complete_checkpoints(out / "checkpoints")
    assert len(saved) == 2               # trainer.keep_checkpoints
    newest, older = saved[-1], saved[-2]
    victim = max(newest.rglob("*.pt"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    from_step = int(older.name.split("-")[1])

    resumed = launch("quickstart.py", tiny_model, out, *common, "--steps", "5",
                     "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint {newest} is incomplete" in resumed.stderr
    record = json.loads((out / "config.json").read_text())["resumes"]
    assert [(r["from_step"], r["changed"]) for r in record] == [(from_step, {"steps": [4, 5]})]
    assert_steps_continue(out, 5)
    metrics = read_metrics(out)
    totals = [m["rollout/tokens_total"] for m in metrics]
    assert totals == sorted(totals)      # the token count goes on from the checkpoint's
    versions = [m["rollout/weight_version"] for m in metrics]
    assert versions[from_step] == from_step   # the first new step's weights: the checkpoint's
    assert (out / "final" / "model.safetensors").exists()
