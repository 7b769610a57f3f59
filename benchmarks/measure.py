"""What the whole-run benchmarks share: run a command as a user would, sample its memory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class MeasuredRun:
    metrics: list[dict]       # metrics.jsonl, one dict per learner step
    peak_pss_gib: float       # summed PSS of the process tree (shared pages split among mappers)
    peak_rss_gib: float       # summed RSS (torch's libraries counted once per process)
    wall_s: float             # from the launch to the process's exit, as a user waits


def run_measured(command: list[str], out: Path) -> MeasuredRun:
    """Run `command` (which writes out/metrics.jsonl), sampling the memory of its process tree
    once a second. Its stderr goes to a file beside `out` (a pipe nobody reads while it runs
    would fill and stall it); exit with the file's tail if the command fails."""
    log = out.parent / f"{out.name}.stderr.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    peak_pss = peak_rss = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        pss = rss = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                info = p.memory_full_info()
                pss, rss = pss + info.pss, rss + info.rss
            except psutil.Error:
                pass  # a process that ended between listing and reading
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(1.0)
    wall_s = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"{Path(command[1]).name} failed (log: {log}):\n{log.read_text()[-3000:]}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return MeasuredRun(metrics, peak_pss / 2**30, peak_rss / 2**30, wall_s)


def run_script(script: str, out: Path, args: list[str]) -> MeasuredRun:
    """Run launch/`script` into `out` without its progress bar."""
    return run_measured([sys.executable, str(ROOT / "launch" / script), "--output-dir", str(out),
                         "--progress", "false", *args], out)


def quickstart_flags() -> list[str]:
    """The quickstart's settings as command-line flags, so every run here uses them."""
    from slipstream.launch.quickstart import DEFAULTS

    def flatten(prefix: str, value) -> list[str]:
        if isinstance(value, dict):
            return [f for k, v in value.items() for f in flatten(f"{prefix}.{k}", v)]
        return [f"--{prefix.lstrip('.').replace('_', '-')}", str(value)]

    return [f for k, v in DEFAULTS.items() if k not in ("steps", "output_dir")
            for f in flatten(k, v)]
