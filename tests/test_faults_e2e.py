"""Faults during a run, on the real stack with the tiny model: a rollout worker's process killed
mid-run is replaced, its groups in flight are generated again, the run finishes its steps; a
disk that fills stops the run in one line with its checkpoints intact, and it resumes."""

import json
import subprocess

import psutil
import pytest
from e2e_helpers import launch, read_metrics

from slipstream.trainer.checkpoints import complete_checkpoints, is_complete

pytestmark = pytest.mark.e2e


def kill_rollout_worker_after(run_dir, rows: int, killed: list):
    """A `while_running` hook: SIGKILL the rollout worker's process (Ray's `ray::RolloutWorker`)
    once, when metrics.jsonl holds `rows` steps; its pid goes to `killed`, then the processes
    it had started (vLLM's engine core and model worker)."""
    def hook(proc) -> None:
        metrics = run_dir / "metrics.jsonl"
        if killed or not metrics.exists() or len(metrics.read_text().splitlines()) < rows:
            return
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if "RolloutWorker" in " ".join(child.cmdline()):
                    orphans = child.children(recursive=True)
                    names = [p.name() for p in orphans]
                    child.kill()
                    killed.extend([child, *zip(orphans, names)])
                    return
            except psutil.Error:
                continue
    return hook


@pytest.mark.timeout(900)
def test_a_killed_rollout_worker_is_replaced_and_the_run_finishes(tiny_model, tmp_path):
    out, killed = tmp_path / "run", []
    result = launch("quickstart.py", tiny_model, out, "--steps", "4", "--buffer.max-lag", "1",
                    while_running=kill_rollout_worker_after(out, rows=1, killed=killed))
    assert killed, "the rollout worker was never found to kill"
    assert result.returncode == 0, result.stderr[-3000:]
    # Its engine processes died with it (slipstream/__init__.py), not left running as orphans.
    orphans = dict(killed[1:])
    assert any("VLLM" in name for name in orphans.values()), orphans
    _, alive = psutil.wait_procs([killed[0], *orphans], timeout=10)
    assert not alive, [p.name() for p in alive]
    assert "rollout worker 0 replaced" in result.stderr
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[-1]["faults/worker_restarts"] == 1
    assert metrics[0]["faults/worker_restarts"] == 0
    ids = [json.loads(x)["id"] for x in (out / "rollouts" / "index.jsonl").read_text()
           .splitlines()]
    assert len(ids) == len(set(ids)) == 4 * 8       # every step full, no sample twice
    assert (out / "final" / "model.safetensors").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MiB tmpfs (room for two checkpoints of the tiny model, not three), unmounted after."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.timeout(900)
def test_a_full_disk_stops_the_run_in_one_line_and_a_resume_goes_on(tiny_model, small_disk):
    out = small_disk / "run"
    flags = ("--steps", "6", "--trainer.checkpoint-every", "1")
    full = launch("quickstart.py", tiny_model, out, *flags)
    assert full.returncode == 1, full.stderr[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("slipstream: ") and "--resume" in last, last
    assert "No space left on device" in last or "MiB free" in last, last
    saved = complete_checkpoints(out / "checkpoints")
    assert saved and all(is_complete(folder) for folder in saved)
    assert not list((out / "checkpoints").glob(".partial-*"))   # the half-written one freed
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = launch("quickstart.py", tiny_model, out, *flags, "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4, 5, 6]
