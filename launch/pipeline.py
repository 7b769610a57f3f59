"""The controller: starts Ray and the actors, drives the learner, moves weights, stops cleanly.

  envs --prompt(ticket)--> RolloutWorker x N --Group--> ReplayBuffer --batch--> Learner
                           (vLLM AsyncLLM,              (Ray actor: tickets,    (DeepSpeed,
                            reward runner)               max_lag, eviction,      HF causal LM,
                                 ^                       snapshots)              losses)
                                 |                                                  |
                                 +--- weights v+1, loaded in place ----------------+
                                      (tmpfs file, broadcasts, or CUDA IPC: placement.py)

Loops and what unblocks them:
* each worker, `groups_in_flight` times over: waits for a ticket (the buffer grants one when the
  staleness bound and capacity allow), generates and scores a group, puts it in the buffer;
* the learner (driven from here): waits for a batch of `groups_per_step` groups within the
  staleness bound, trains one step, and every `sync_every` steps publishes its weights;
* a publish is the learner's own call (vLLM's trainer-side protocol, trainer/weight_transfer.py):
  it pauses each engine (in-flight requests kept), sends the weights, bumps the version, resumes,
  and checks the fingerprint each engine reads back; only then does the buffer learn the new
  rollout version, which releases the tickets of later steps.

The run stops when `steps` is reached, when any actor fails (the failing actor's error is what
the user sees), or when asked: the first Ctrl-C or SIGTERM lets the step in progress finish, saves
a checkpoint and stops; a second one stops at once. Every actor is shut down and every file
flushed on the way out.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from tqdm import tqdm

from slipstream.buffer.actor import ReplayBufferActor
from slipstream.envs import build_env
from slipstream.errors import RunStopped, SlipstreamError
from slipstream.launch.config import RunConfig
from slipstream.launch.metrics import batch_metrics
from slipstream.launch.placement import Placement, check_hosts, plan
from slipstream.launch.run_dir import RunDirectory, learner_args, resolved_model, reward_summary
from slipstream.model_config import ModelConfig
from slipstream.rewards import build_reward
from slipstream.rollout.sync_client import RayWorkersClient
from slipstream.rollout.worker import RolloutWorker
from slipstream.trainer.learner import Learner
from slipstream.trainer.weight_publish import remove_weights_dir

_POLL_S = 1.0


@dataclass
class Actors:
    buffer: ray.actor.ActorHandle
    learner: ray.actor.ActorHandle
    workers: list[ray.actor.ActorHandle]
    runs: list[ray.ObjectRef]            # each worker's run() call: ready only if it ends
    learner_version: int = 0


def _actor_error(error: Exception) -> SlipstreamError:
    """The failing actor's own error, in one line; its full traceback goes to stderr above it."""
    cause = getattr(error, "cause", None) or error
    print(str(error), file=sys.stderr)
    first_line = (str(cause).strip().splitlines() or [""])[0]
    return SlipstreamError(f"an actor failed: {type(cause).__name__}: {first_line}")


def _await(ref: ray.ObjectRef, actors: Actors, timeout_s: float | None = None,
           what: str = "call"):
    """ray.get(ref), but fail fast if a worker's run loop ends meanwhile (its error wins), and
    fail if `timeout_s` passes before the result is there."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        wait_s = _POLL_S if left is None else max(0.0, min(_POLL_S, left))
        ready, _ = ray.wait([ref, *actors.runs], num_returns=1, timeout=wait_s)
        if deadline is not None and time.monotonic() > deadline:
            raise SlipstreamError(f"{what} did not finish within {timeout_s:g}s")
        if ref in ready:
            try:
                return ray.get(ref)
            except (RayTaskError, RayActorError) as error:
                raise _actor_error(error) from error
        for run in ready:
            try:
                ray.get(run)
            except (RayTaskError, RayActorError) as error:
                raise _actor_error(error) from error
            raise SlipstreamError("a rollout worker stopped generating unexpectedly")


def _start_actors(config: RunConfig, model: ModelConfig, run: RunDirectory,
                  learner_kwargs: dict, placement: Placement) -> Actors:
    loss = config.trainer.loss
    max_drops = loss.dynamic_sampling_max_batches * config.trainer.groups_per_step \
        if loss.dynamic_sampling else None
    buffer = ReplayBufferActor.remote(config.buffer, config.trainer.groups_per_step,
                                      str(run.buffer), max_uniform_drops=max_drops)
    learner = ray.remote(Learner).options(
        num_cpus=0, num_gpus=placement.learner_gpus).remote(config.trainer, model,
                                                            **learner_kwargs)
    workers = [RolloutWorker.options(num_cpus=config.rollout.cpus_per_worker,
                                     num_gpus=placement.worker_gpus).remote(
                   model, config.rollout, config.env, config.reward, buffer, seed=config.seed,
                   deterministic=config.deterministic, worker_id=worker_id,
                   weight_transfer=placement.engine_backend)
               for worker_id in range(config.rollout.num_workers)]
    actors = Actors(buffer, learner, workers, runs=[])
    ready = [w.start.remote() for w in workers] + [learner.ready.remote()]
    for ref in ready:
        _await(ref, actors, what="starting the actors")
    check_hosts(placement.transfer, _await(learner.node_id.remote(), actors),
                [_await(w.node_id.remote(), actors) for w in workers])
    client = RayWorkersClient(workers, timeout_s=config.trainer.sync_timeout_s)
    _await(learner.connect.remote(client, placement.transfer), actors,
           what=f"joining the {placement.transfer} weight transfer")
    actors.runs = [w.run.remote() for w in workers]
    return actors


def _sync_weights(actors: Actors, config: RunConfig) -> dict[str, float]:
    """Publish into every worker (the learner checks each fingerprint), then release newer
    tickets. The learner bounds each of its waits by trainer.sync_timeout_s; the backstop here
    only catches a learner that stopped answering altogether."""
    started = time.perf_counter()
    published = _await(actors.learner.publish.remote(), actors,
                       timeout_s=5 * config.trainer.sync_timeout_s,
                       what=f"weight sync to version {actors.learner_version} "
                            "(5 x trainer.sync_timeout_s)")
    _await(actors.buffer.set_rollout_version.remote(published.version), actors)
    sync_s = max(published.engine_seconds)
    return {"timing/weight_sync_s": sync_s,
            "timing/weight_sync_s_per_gb": sync_s / (published.nbytes / 1e9),
            "timing/publish_s": time.perf_counter() - started,
            "rollout/weight_version": published.version}


class GracefulStop:
    """While entered (in the main thread): the first SIGINT or SIGTERM only asks the run to stop
    after the step in progress (`requested` names the signal); a second one stops at once, as
    KeyboardInterrupt. A preempted node gets a checkpoint, not a lost step."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\nslipstream: {self.requested}: stopping after this step, with a checkpoint "
              "(send it again to stop at once)", file=sys.stderr, flush=True)


def _shutdown(actors: Actors | None) -> None:
    """Stop every actor. The groups still waiting in the buffer are written to
    `DIR/buffer/snapshot-final.jsonl` first, so a failed or interrupted run keeps them."""
    if actors is None:
        return
    try:
        ray.get(actors.buffer.snapshot.remote("final", actors.learner_version), timeout=30)
        ray.get(actors.buffer.close.remote(), timeout=10)
        ray.get([w.shutdown.remote() for w in actors.workers], timeout=30)
    except (RayTaskError, RayActorError, GetTimeoutError):
        pass  # the actor is already gone or stuck; ray.shutdown() below kills it either way


def _train(config: RunConfig, actors: Actors, run: RunDirectory, stop: GracefulStop) -> None:
    progress = tqdm(total=config.steps, desc="slipstream", disable=not config.progress,
                    unit="step", dynamic_ncols=True)
    started = last_time = time.monotonic()
    last_tokens, last_step = 0, 0
    last_sync: dict[str, float] = {"rollout/weight_version": 0}
    while last_step < config.steps:
        groups = None
        while groups is None:   # None: nothing within 30 s; the workers are still alive
            batch = actors.buffer.take_batch.remote(actors.learner_version, 30.0)
            groups = _await(batch, actors)
        result = _await(actors.learner.train_step.remote(groups), actors, what="learner step")
        actors.learner_version, last_step = result.version, result.step
        stats = [_await(w.stats.remote(), actors) for w in actors.workers]
        tokens, now = sum(s["tokens"] for s in stats), time.monotonic()
        extra = {**batch_metrics(groups), **last_sync, "rollout/tokens_total": tokens,
                 "throughput/rollout_tokens_per_s": (tokens - last_tokens) / (now - last_time)}
        last_tokens, last_time = tokens, now
        extra |= _await(actors.buffer.stats.remote(result.version), actors)
        # Recorded before the publish, so a failing sync loses nothing; each step's record holds
        # the last publish completed before it.
        metrics = run.record(result, extra)
        budget = config.time_budget_min
        if budget is not None and now - started > budget * 60:
            last_step = config.steps    # the wall-clock budget is spent: this step is the last
        if result.step % config.buffer.snapshot_every == 0:
            _await(actors.buffer.snapshot.remote(result.step, result.version), actors)
        if config.trainer.checkpoint_every and result.step % config.trainer.checkpoint_every == 0:
            _await(actors.learner.save_checkpoint.remote(str(run.checkpoints)), actors)
        if stop.requested is not None:
            path = _await(actors.learner.save_checkpoint.remote(str(run.checkpoints)), actors)
            raise RunStopped(f"stopped by {stop.requested} after step {result.step}: "
                             f"checkpoint {path}")
        if result.step % config.trainer.sync_every == 0 and last_step < config.steps:
            if config.buffer.schedule == "pinned":   # the groups of the version in use first
                _await(actors.buffer.wait_generated.remote(result.version - 1), actors)
            last_sync = _sync_weights(actors, config)
        progress.set_postfix(reward=f"{metrics['reward/mean']:.3f}",
                             lag=f"{metrics['staleness/mean']:.2f}",
                             tok_s=f"{metrics['throughput/rollout_tokens_per_s']:.0f}")
        progress.update(1)
    progress.close()
    _await(actors.buffer.snapshot.remote(actors.learner_version, actors.learner_version), actors)
    _await(actors.learner.save_checkpoint.remote(str(run.checkpoints)), actors)
    _await(actors.learner.save_final.remote(str(run.final)), actors)


def _init_ray(config: RunConfig, env_vars: dict[str, str]) -> None:
    """A Ray cluster of this machine alone, or the running cluster named by RAY_ADDRESS (a run
    spanning nodes: docs/ARCHITECTURE.md, "Across nodes")."""
    common = {"log_to_driver": True, "configure_logging": False,
              "runtime_env": {"env_vars": env_vars}}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **common)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, 2) + config.rollout.num_workers,
                 include_dashboard=False, **common)


def run(config: RunConfig) -> RunDirectory:
    """Run the asynchronous pipeline to `config.steps` learner steps (or its wall-clock
    budget); returns the run directory (its `history` holds every step's metrics)."""
    model = resolved_model(config)
    build_reward(config.reward)         # a reward that cannot be imported fails here, in one line
    build_env(config.env, config.seed)  # so does a missing or malformed dataset
    run_dir = RunDirectory(config)
    # vLLM's INFO and WARNING lines would drown the progress bar; its errors still show.
    env_vars = {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
                "TOKENIZERS_PARALLELISM": "false"}
    _init_ray(config, env_vars)
    learner_kwargs = learner_args(config, run_dir.path)
    actors = None
    try:
        placement = plan(config, ray.cluster_resources().get("GPU", 0))
        print(f"slipstream: {placement.describe(config.rollout.num_workers)}", flush=True)
        actors = _start_actors(config, model, run_dir, learner_kwargs, placement)
        with GracefulStop() as stop:
            _train(config, actors, run_dir, stop)
    finally:
        _shutdown(actors)
        ray.shutdown()
        run_dir.close()
        remove_weights_dir(learner_kwargs["weights_dir"])
    print(f"slipstream: {reward_summary(run_dir.history)}; run directory {run_dir.path}")
    return run_dir
