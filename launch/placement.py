"""Where the learner and the engines run, and how weights move between them.

`plan(config, cluster_gpus)` turns the run config and the GPUs Ray sees into a `Placement`:
the `num_gpus` each actor asks Ray for and the weight transfer (`trainer.weight_transfer`).
Pure, so every rule below is unit-tested without a GPU.

GPUs, when `trainer.num_gpus` and `rollout.gpus_per_worker` are left unset:
* no GPU: everything on the CPU;
* at least 1 + num_workers GPUs: one for the learner, one per engine;
* one GPU and one worker: colocated, half each in Ray's books (vLLM takes
  `rollout.gpu_memory_utilization` of the memory, the learner the rest).
Anything else must be set explicitly; a request that does not fit the cluster stops the run.

Weight transfer, when `trainer.weight_transfer` is auto:
* the CPU: `CPU_DEFAULT` (the faster one in `benchmarks/weight_sync.py` on this kind of machine);
* learner and engine colocated on one GPU: `ipc` (no copy);
* otherwise: `collective` (NCCL between GPUs; any node).
Deterministic mode's reference sampler takes weights by file only: `shm`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from slipstream.errors import SlipstreamError
from slipstream.rollout.weight_transfer import BACKEND as SHM_BACKEND
from slipstream.rollout.weight_transfer import COLLECTIVE_BACKEND

# Measured on the CPU (2 cores, SmolLM2-135M, bf16): see the README's weight-transfer table.
CPU_DEFAULT = "shm"

# The vLLM weight-transfer backend each engine is built for.
ENGINE_BACKENDS = {"shm": SHM_BACKEND, "collective": COLLECTIVE_BACKEND, "ipc": "ipc"}
# Transfers that need the engines on the learner's host.
ONE_HOST = {"shm": "the published file lives on the learner's tmpfs",
            "ipc": "CUDA IPC handles are only valid on one GPU"}


@dataclass(frozen=True)
class Placement:
    learner_gpus: float
    worker_gpus: float
    transfer: str              # shm | collective | ipc

    @property
    def colocated(self) -> bool:
        """The learner and the (one) engine share a GPU."""
        return 0 < self.learner_gpus < 1 and 0 < self.worker_gpus < 1

    @property
    def engine_backend(self) -> str:
        return ENGINE_BACKENDS[self.transfer]

    def describe(self, workers: int) -> str:
        """One line for the run's log."""
        def where(gpus: float) -> str:
            return "CPU" if gpus == 0 else f"{gpus:g} GPU"
        group = {"collective": " (gloo)" if self.learner_gpus == 0 else " (NCCL)"}
        return (f"learner on {where(self.learner_gpus)}, {workers} engine(s) on "
                f"{where(self.worker_gpus)} each; weights move by {self.transfer}"
                f"{group.get(self.transfer, '')}")


def _gpus(learner: float | None, worker: float | None, workers: int,
          cluster_gpus: float) -> tuple[float, float]:
    if learner is None and worker is None:
        if cluster_gpus == 0:
            return 0.0, 0.0
        if cluster_gpus >= 1 + workers:
            return 1.0, 1.0
        if workers == 1:
            return 0.5, 0.5
        raise SlipstreamError(
            f"{workers} rollout workers need {workers + 1} GPUs (one each and one for the "
            f"learner), or 1 GPU shared by one worker and the learner; Ray sees "
            f"{cluster_gpus:g}: set rollout.num_workers, or trainer.num_gpus and "
            "rollout.gpus_per_worker")
    learner, worker = learner or 0.0, worker or 0.0
    asked = learner + workers * worker
    if asked > cluster_gpus + 1e-9:
        raise SlipstreamError(
            f"the run asks Ray for {asked:g} GPUs (trainer.num_gpus {learner:g} + {workers} x "
            f"rollout.gpus_per_worker {worker:g}) but the cluster has {cluster_gpus:g}")
    return learner, worker


def _transfer(asked: str, learner: float, worker: float, workers: int,
              deterministic: bool) -> str:
    colocated = 0 < learner < 1 and 0 < worker < 1 and workers == 1
    if deterministic:
        if asked not in ("auto", "shm"):
            raise SlipstreamError(f"trainer.weight_transfer {asked}: deterministic mode's "
                                  "reference sampler takes weights by file only (shm)")
        return "shm"
    if asked == "auto":
        if learner == 0 and worker == 0:
            return CPU_DEFAULT
        return "ipc" if colocated else "collective"
    if asked == "ipc" and not colocated:
        raise SlipstreamError(
            "trainer.weight_transfer ipc needs the learner and one engine on the same GPU "
            f"(fractional trainer.num_gpus and rollout.gpus_per_worker, one worker); this run "
            f"has trainer.num_gpus {learner:g}, {workers} x rollout.gpus_per_worker {worker:g}")
    return asked


def plan(config, cluster_gpus: float) -> Placement:
    """The run's placement on a Ray cluster with `cluster_gpus` GPUs (raises one line)."""
    workers = config.rollout.num_workers
    learner, worker = _gpus(config.trainer.num_gpus, config.rollout.gpus_per_worker, workers,
                            cluster_gpus)
    transfer = _transfer(config.trainer.weight_transfer, learner, worker, workers,
                         config.deterministic)
    return Placement(learner, worker, transfer)


def check_hosts(transfer: str, learner_node: str, worker_nodes: list[str]) -> None:
    """A one-host transfer with an engine on another node stops the run in one line."""
    if transfer not in ONE_HOST:
        return
    for worker_id, node in enumerate(worker_nodes):
        if node != learner_node:
            raise SlipstreamError(
                f"trainer.weight_transfer {transfer} needs every engine on the learner's host "
                f"({ONE_HOST[transfer]}), but rollout worker {worker_id} runs on node {node}: "
                "use trainer.weight_transfer collective")


def machine_memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def check_machine(config, model_dir: str, cores: int | None = None,
                  memory_gib: float | None = None) -> None:
    """Numbers this machine or this model cannot honour stop the run in one line, before
    anything starts: learner threads beyond the cores, KV caches beyond the memory (CPU), a
    context longer than the model's own."""
    cores = cores or os.cpu_count() or 1
    memory_gib = memory_gib or machine_memory_gib()
    if isinstance(config.trainer.threads, int) and config.trainer.threads > cores:
        raise SlipstreamError(f"trainer.threads {config.trainer.threads} exceeds this "
                              f"machine's {cores} CPU cores")
    kv = config.rollout.kv_cache_gb * config.rollout.num_workers
    if kv >= memory_gib:
        raise SlipstreamError(
            f"rollout.kv_cache_gb {config.rollout.kv_cache_gb} x {config.rollout.num_workers} "
            f"workers = {kv:g} GiB of KV cache; this machine has {memory_gib:.0f} GiB in all")
    config_file = Path(model_dir) / "config.json"
    if config_file.is_file():
        own = json.loads(config_file.read_text()).get("max_position_embeddings")
        if isinstance(own, int) and config.model.max_model_len > own:
            raise SlipstreamError(f"model.max_model_len {config.model.max_model_len} exceeds "
                                  f"the model's own context ({own}, max_position_embeddings "
                                  f"in {config_file})")


class LearnerThreads:
    """The learner's torch threads, step by step: `fixed`, or (`trainer.threads=auto`) every
    core the engines left idle during the last step.

    On a small CPU machine the learner and the engines share the cores. While the learner is the
    bottleneck the engines spend most of a step waiting behind max_lag, and a core they do not
    use is one the learner could. So each step gets every core less those the engines kept busy
    during the last one (measured by the buffer: buffer/actor.py `IdleClock`); an engine core
    counts as busy from 75% of the step on, since sharing a core costs less than leaving it
    idle. Measured on 2 cores (quickstart, 6 steps, two pairs): one learner thread 31.6-31.9 s
    a step with the engine idle 68-79% of it; auto (two threads) 27.8-30.3 s with the engine
    still idle 48-69%. The first step, unmeasured, gets every core."""

    def __init__(self, cores: int, engine_cores: int, fixed: int | None = None) -> None:
        self.cores, self.engine_cores, self.fixed = cores, engine_cores, fixed
        self.current = fixed or cores
        self._last: tuple[float, float] | None = None     # (idle seconds, clock) last seen

    @classmethod
    def for_run(cls, config) -> LearnerThreads:
        from slipstream.trainer.config import initial_threads

        threads = config.trainer.threads
        engine_cores = -(-config.rollout.cpus_per_worker // 1) * config.rollout.num_workers
        fixed = None if threads == "auto" and not config.deterministic else \
            initial_threads(threads, config.deterministic)
        return cls(os.cpu_count() or 1, int(engine_cores), fixed)

    def observe(self, idle_s: float, now: float) -> float | None:
        """The engines' idle share since the last call (None at the first), from the
        buffer's cumulative idle seconds; sets `current` for the next step."""
        last, self._last = self._last, (idle_s, now)
        if last is None or now <= last[1]:
            return None
        share = min(1.0, max(0.0, (idle_s - last[0]) / (now - last[1])))
        if self.fixed is None:
            busy_cores = int((1.0 - share) * self.engine_cores + 0.25)
            self.current = min(self.cores, max(1, self.cores - busy_cores))
        return share
