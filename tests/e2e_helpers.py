"""What the end-to-end tests share: starting a launch script on the tiny model, reading its run.

Start a run with `launch` rather than with `subprocess`: it also kills what a timed-out run
started and fails a run that leaves a process behind. The `tiny_model` fixture (a path to a
2-layer random Qwen2) is in conftest.py, so every test file gets it without importing it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model.dtype", "float32", "--model.max-model-len", "256",
         "--rollout.group-size", "4", "--rollout.groups-in-flight", "2",
         "--rollout.max-new-tokens", "16", "--trainer.groups-per-step", "2",
         "--trainer.micro-batch-size", "4", "--trainer.lr", "1e-3", "--progress", "false",
         # A random model never answers right; this reward varies anyway, so advantages and
         # losses are not all zero.
         "--reward.kind", "python", "--reward.function", "rewards_for_tests:digit_share"]
POLL_S = 0.3             # how often the launched process tree is listed while it runs
EXIT_GRACE_S = 15.0      # Ray's workers may still be exiting a moment after the driver has
MARK = "SLIPSTREAM_E2E_LAUNCH"   # set in each launch's environment; its processes inherit it


class Launched(subprocess.CompletedProcess):
    """A finished launch: `returncode`, `stdout`, `stderr` (text), as from `subprocess.run`, and
    `processes`: every descendant seen while it ran, as (pid, parent pid, command line)."""

    def __init__(self, args, returncode, stdout, stderr, processes):
        super().__init__(args, returncode, stdout, stderr)
        self.processes = processes


def launch(script: str, model: str, out: Path, *extra: str, timeout: int = 400,
           while_running=None) -> Launched:
    """Run `launch/<script>` on `model`, writing its run directory to `out`, and wait for it.

    The command line is `--model.path model --output-dir out`, then `SMALL` (a small run: fp32,
    2 groups of 4, 16 new tokens, the `digit_share` test reward), then `--env.digits 1` (not for
    gsm8k.py, countdown.py, tools.py or an `--env.kind` in `extra`), then `extra`; a later flag
    overrides an earlier one, so `extra` can change any of them (a `--reward.kind` there drops
    the test reward's flags). tests/ is on PYTHONPATH, so `--reward.function
    rewards_for_tests:...` imports.

    Returns the finished process like `subprocess.run(..., capture_output=True, text=True)`:
    `returncode`, `stdout`, `stderr`, plus `processes` (see `Launched`). A failing run is not an
    error here: assert on `returncode` yourself (`assert result.returncode == 0, result.stderr`).

    `while_running(proc)`, if given, is called at every poll while the script runs (to send it
    a signal once the run reaches some point, say).

    Raises `subprocess.TimeoutExpired` after `timeout` seconds. Whenever it raises (the timeout,
    pytest-timeout's alarm, Ctrl-C) it first kills the script and every process it started.
    pytest-timeout also bounds the whole test (`timeout` in pyproject.toml's pytest options): a
    test whose launches' timeouts add up to more needs its own `@pytest.mark.timeout(seconds)`.

    Orphan check: while the script runs, its process tree (Ray's gcs_server, raylet, dashboard
    and workers, vLLM's EngineCore, the reward process, compiler calls) is listed every `POLL_S`
    seconds and each process remembered by pid and start time (so a reused pid is not mistaken
    for it). Once the script has exited, every remembered process, and any other process that
    carries this launch's `MARK` environment variable (one reparented before it was seen), must
    be gone within `EXIT_GRACE_S` seconds, else an AssertionError names them (pid and command
    line) after they have been killed. Only this launch's processes are looked at: runs started
    elsewhere on the machine at the same time do not matter.
    """
    mark = uuid.uuid4().hex
    env = {**os.environ, MARK: mark,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    env_args = [] if script in ("gsm8k.py", "countdown.py", "tools.py") or "--env.kind" in extra \
        else ["--env.digits", "1"]
    # A reward kind in `extra` replaces the test reward whole (its function flag included).
    small = SMALL[:SMALL.index("--reward.kind")] if "--reward.kind" in extra else SMALL
    args = [sys.executable, str(ROOT / "launch" / script), "--model.path", model,
            "--output-dir", str(out), *small, *env_args, *extra]
    seen: dict[tuple[int, float], list] = {}       # (pid, start) -> [process, ppid, command]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    # Both pipes are drained all along (a full pipe would block the script).
    captured = {"stdout": [], "stderr": []}
    readers = [threading.Thread(target=_drain, args=(stream, captured[name]), daemon=True)
               for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            _remember(proc.pid, seen)
            try:
                proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                if while_running is not None:
                    while_running(proc)
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(args, timeout, "".join(captured["stdout"]),
                                                    "".join(captured["stderr"])) from None
    except BaseException:
        _kill([process for process, *_ in seen.values()] + _carrying(mark))
        proc.kill()
        proc.wait()
        raise

    processes = [(process.pid, ppid, command) for process, ppid, command in seen.values()]
    commands = {pid: f"(parent {ppid}) {command}" for pid, ppid, command in processes}
    grace = time.monotonic() + EXIT_GRACE_S
    for reader in readers:      # an orphan holding the pipes keeps them open: wait no longer
        reader.join(timeout=max(0.0, grace - time.monotonic()))
    while (left := _alive(seen.values()) + _carrying(mark)) and time.monotonic() < grace:
        time.sleep(0.5)
    if left:
        named = {}
        for process in left:
            try:
                command = f"(parent {process.ppid()}) {_cmdline(process)}"
            except psutil.Error:
                command = commands.get(process.pid, "?")
            named[process.pid] = f"{process.pid} {command[:200]}"
        _kill(left)
        raise AssertionError(f"{script} left {len(named)} process(es) running "
                             f"{EXIT_GRACE_S:.0f} s after it exited:\n  "
                             + "\n  ".join(named.values()))
    return Launched(args, proc.returncode, "".join(captured["stdout"]),
                    "".join(captured["stderr"]), processes)


def _drain(stream, chunks: list[str]) -> None:
    for line in stream:
        chunks.append(line)
    stream.close()


def _remember(pid: int, seen: dict[tuple[int, float], list]) -> None:
    """Add the current descendants of `pid` to `seen`: (pid, start) -> [process, ppid, command]."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:          # it has just exited
        return
    for child in children:
        try:
            key = (child.pid, child.create_time())
            # Kept up to date: a Ray worker renames itself (ray::Learner) once it has started.
            seen.setdefault(key, [child, child.ppid(), ""])[2] = _cmdline(child)
        except psutil.Error:      # gone already
            continue


def _alive(seen_values) -> list[psutil.Process]:
    """Those still running. psutil.Process checks its pid still names the same process."""
    alive = []
    for process, *_ in seen_values:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.Error:
            pass
    return alive


def _carrying(mark: str) -> list[psutil.Process]:
    """Live processes anywhere whose environment holds this launch's mark."""
    found = []
    for process in psutil.process_iter():
        try:
            if (process.environ().get(MARK) == mark
                    and process.status() != psutil.STATUS_ZOMBIE):
                found.append(process)
        except psutil.Error:      # gone, or not ours to read
            pass
    return found


def _cmdline(process: psutil.Process) -> str:
    return " ".join(process.cmdline()) or process.name()


def _kill(processes) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl: one dict per learner step."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_tensorboard(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The run's TensorBoard scalars: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}
