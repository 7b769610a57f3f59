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

import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from tqdm import tqdm

from slipstream.buffer.actor import ReplayBufferActor
from slipstream.buffer.replay_pool import step_report
from slipstream.envs import build_env
from slipstream.errors import RunStopped, SlipstreamError, one_line
from slipstream.launch.config import RunConfig
from slipstream.launch.metrics import batch_metrics, teacher_metrics
from slipstream.launch.models import resolve_model
from slipstream.launch.placement import LearnerThreads, Placement, check_hosts, plan
from slipstream.launch.resume import RUN_STATE, ResumePoint, begin_resume
from slipstream.launch.run_dir import RunDirectory, learner_args, resolved_model, reward_summary
from slipstream.launch.teacher_actors import check_teachers, start_judge, start_teachers
from slipstream.model_config import ModelConfig
from slipstream.rewards import build_reward
from slipstream.rollout.sync_client import RayWorkersClient
from slipstream.rollout.worker import RolloutWorker
from slipstream.trainer.checkpoints import complete_checkpoints, read_manifest
from slipstream.trainer.learner import Learner
from slipstream.trainer.weight_publish import remove_weights_dir

_POLL_S = 1.0


@dataclass
class Actors:
    buffer: ray.actor.ActorHandle
    learner: ray.actor.ActorHandle
    workers: list[ray.actor.ActorHandle]
    teachers: list[ray.actor.ActorHandle]     # TeacherActors (distillation, the judge), shared
    runs: list[ray.ObjectRef]            # each worker's run() call: ready only if it ends
    new_worker: Callable[[int], ray.actor.ActorHandle]   # a started worker for slot i
    max_restarts: int = 0
    learner_version: int = 0
    resumed_sync: dict[str, float] | None = None   # the publish a resumed run starts with
    worker_restarts: int = 0
    stats_seen: dict[int, Counter] = field(default_factory=dict)   # per worker, last reported
    retired: Counter = field(default_factory=Counter)   # what replaced workers had reported


def _actor_error(error: Exception) -> SlipstreamError:
    """The failing actor's own error, in one line; its full traceback goes to stderr above it."""
    print(str(error), file=sys.stderr)
    return SlipstreamError(f"an actor failed: {one_line(error, name_own=False)}")


def _await(ref: ray.ObjectRef, actors: Actors, timeout_s: float | None = None,
           what: str = "call"):
    """ray.get(ref), but watch the workers meanwhile (`_check_workers`: a dead one is replaced,
    a failed one ends the run with its error), and fail if `timeout_s` passes first."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        wait_s = _POLL_S if left is None else max(0.0, min(_POLL_S, left))
        ready, _ = ray.wait([ref, *actors.runs], num_returns=1, timeout=wait_s)
        _check_workers(actors)
        if deadline is not None and time.monotonic() > deadline:
            raise SlipstreamError(f"{what} did not finish within {timeout_s:g}s")
        if ref in ready or ray.wait([ref], timeout=0)[0]:
            try:
                return ray.get(ref)
            except (RayTaskError, RayActorError) as error:
                raise _actor_error(error) from error


def _check_workers(actors: Actors) -> int:
    """A worker's run() only ends by failing. A Python error in it ends the run with that
    error (a bug or bad input: a new worker would fail the same way); a dead process (SIGKILL,
    out of memory) is replaced: its tickets go to whoever asks next, with the same prompts and
    seeds. Returns how many were replaced."""
    if not actors.runs:
        return 0
    done, _ = ray.wait(actors.runs, num_returns=len(actors.runs), timeout=0)
    for run in done:
        index = actors.runs.index(run)
        try:
            ray.get(run)
        except RayTaskError as error:
            raise _actor_error(error) from error
        except RayActorError as error:
            _replace_worker(actors, index, error)
            continue
        raise SlipstreamError("a rollout worker stopped generating unexpectedly")
    return len(done)


def _replace_worker(actors: Actors, index: int, error: RayActorError) -> None:
    if actors.worker_restarts >= actors.max_restarts:
        raise SlipstreamError(f"rollout worker {index} died ({type(error).__name__}) after "
                              f"{actors.worker_restarts} replacements in this run "
                              "(rollout.max_worker_restarts)")
    started = time.monotonic()
    print(f"slipstream: rollout worker {index} died; starting a new one", file=sys.stderr,
          flush=True)
    try:
        lost = ray.get(actors.buffer.reissue_worker.remote(index), timeout=60)
        worker = actors.new_worker(index)
        version = ray.get(actors.learner.replace_engine.remote(index, worker))
    except (RayTaskError, RayActorError) as failure:
        raise _actor_error(failure) from failure
    actors.workers[index], actors.runs[index] = worker, worker.run.remote()
    actors.retired.update(actors.stats_seen.pop(index, Counter()))
    actors.worker_restarts += 1
    print(f"slipstream: rollout worker {index} replaced in {time.monotonic() - started:.0f} s "
          f"with version {version}; its {len(lost)} group(s) in flight are generated again",
          file=sys.stderr, flush=True)


def _worker_stats(actors: Actors) -> Counter:
    """Every worker's counters so far (worker.stats: tokens, reward_restarts), replaced
    workers' included; one that just died counts with its last report (the next wait
    replaces it)."""
    for index, worker in enumerate(actors.workers):
        try:
            actors.stats_seen[index] = Counter(ray.get(worker.stats.remote(), timeout=60))
        except (RayActorError, GetTimeoutError):
            pass
        except RayTaskError as error:
            raise _actor_error(error) from error
    return sum(actors.stats_seen.values(), Counter(actors.retired))


def _start_actors(config: RunConfig, model: ModelConfig, run: RunDirectory,
                  learner_kwargs: dict, placement: Placement,
                  resume: ResumePoint | None) -> Actors:
    """Start every actor and join the weight transfer. Resuming, the learner loads the
    checkpoint and the buffer its state, and the engines get the learner's version before the
    workers' loops start (so no group is generated with the initial weights)."""
    loss = config.trainer.loss
    max_drops = loss.dynamic_sampling_max_batches * config.trainer.groups_per_step \
        if loss.dynamic_sampling else None
    curriculum = None if config.curriculum.kind == "uniform" else \
        {"config": config.curriculum, "env": config.env, "seed": config.seed}
    buffer = ReplayBufferActor.remote(config.buffer, config.trainer.groups_per_step,
                                      str(run.buffer), max_uniform_drops=max_drops,
                                      restore=None if resume is None else resume.state,
                                      curriculum=curriculum)
    learner = ray.remote(Learner).options(
        num_cpus=0, num_gpus=placement.learner_gpus).remote(config.trainer, model,
                                                            **learner_kwargs)
    teacher_handles, teachers = start_teachers(config, model)
    judge, reward = start_judge(config, model)

    def create(worker_id: int) -> ray.actor.ActorHandle:
        return RolloutWorker.options(num_cpus=config.rollout.cpus_per_worker,
                                     num_gpus=placement.worker_gpus).remote(
            model, config.rollout, config.env, reward, buffer, seed=config.seed,
            deterministic=config.deterministic, worker_id=worker_id,
            weight_transfer=placement.engine_backend, teacher=config.teacher,
            teacher_actors=teacher_handles, curriculum=curriculum is not None,
            explore_k=config.curriculum.explore_k, judge=judge)

    def new_worker(worker_id: int) -> ray.actor.ActorHandle:
        worker = create(worker_id)
        ray.get(worker.start.remote())
        return worker

    workers = [create(worker_id) for worker_id in range(config.rollout.num_workers)]
    actors = Actors(buffer, learner, workers, teachers + [judge] * (judge is not None),
                    runs=[], new_worker=new_worker,
                    max_restarts=config.rollout.max_worker_restarts)
    ready = [w.start.remote() for w in workers] + [learner.ready.remote()]
    for ref in ready:
        _await(ref, actors, what="starting the actors")
    check_hosts(placement.transfer, _await(learner.node_id.remote(), actors),
                [_await(w.node_id.remote(), actors) for w in workers])
    if resume is not None:
        actors.learner_version = _await(learner.load_checkpoint.remote(str(resume.folder)),
                                        actors, what="loading the checkpoint")
    client = RayWorkersClient(workers, timeout_s=config.trainer.sync_timeout_s)
    _await(learner.connect.remote(client, placement.transfer), actors,
           what=f"joining the {placement.transfer} weight transfer")
    if resume is not None:
        actors.resumed_sync = _sync_weights(actors, config)
    actors.runs = [w.run.remote() for w in workers]
    return actors


def _sync_weights(actors: Actors, config: RunConfig) -> dict[str, float]:
    """Publish into every worker (the learner checks each fingerprint), then release newer
    tickets. The learner bounds each of its waits by trainer.sync_timeout_s; the backstop here
    only catches a learner that stopped answering altogether."""
    started = time.perf_counter()
    what = f"weight sync to version {actors.learner_version} (5 x trainer.sync_timeout_s)"
    restarts = actors.worker_restarts
    try:
        published = _await(actors.learner.publish.remote(), actors,
                           timeout_s=5 * config.trainer.sync_timeout_s, what=what)
    except SlipstreamError:
        # A worker that died during the sync failed it (every other engine went back to its
        # old version): once it is replaced, the sync is made again.
        _check_workers(actors)
        if actors.worker_restarts == restarts:
            raise
        published = _await(actors.learner.publish.remote(), actors,
                           timeout_s=5 * config.trainer.sync_timeout_s, what=what)
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
        ray.get([w.shutdown.remote() for w in actors.workers + actors.teachers], timeout=30)
    except (RayTaskError, RayActorError, GetTimeoutError):
        pass  # the actor is already gone or stuck; ray.shutdown() below kills it either way


def _checkpoint(config: RunConfig, actors: Actors, run: RunDirectory,
                counts: Counter) -> str:
    """A checkpoint `--resume` continues from: the learner's state and, inside the same
    checkpoint, the buffer's and the controller's (launch/resume.py RUN_STATE). Under the
    pinned schedule it is taken once every ticket of the version in use is back (the wait the
    next publish makes anyway), so none is in flight and the resumed run generates exactly the
    same groups."""
    if config.buffer.schedule == "pinned":
        _await(actors.buffer.wait_generated.remote(actors.learner_version - 1), actors)
    state = _await(actors.buffer.export_state.remote(), actors)
    state |= {"writer": "pipeline", "counts": dict(counts)}
    return _await(actors.learner.save_checkpoint.remote(
        str(run.checkpoints), {RUN_STATE: json.dumps(state)}), actors, what="checkpoint")


def _share_cores(threads: LearnerThreads, idle_s: float, now: float,
                 actors: Actors) -> dict[str, float]:
    """The step's core-sharing figures; the learner's threads for the next step."""
    ran_with = threads.current
    idle_share = threads.observe(idle_s, now)
    if threads.current != ran_with:
        _await(actors.learner.set_threads.remote(threads.current), actors)
    figures = {"trainer/threads": ran_with}
    if idle_share is not None:       # the first step has no window to measure over
        figures["rollout/engine_idle_frac"] = idle_share
    return figures


def _train(config: RunConfig, actors: Actors, run: RunDirectory, stop: GracefulStop,
           resume: ResumePoint | None) -> None:
    first_step = 0 if resume is None else resume.step
    progress = tqdm(total=config.steps, initial=first_step, desc="slipstream",
                    disable=not config.progress, unit="step", dynamic_ncols=True)
    last_time = time.monotonic()
    # Counts go on across resumes: tokens, worker and reward-process replacements.
    base = Counter(resume.state.get("counts", {}) if resume is not None else {})
    last_step, counts = first_step, Counter(base)
    last_tokens, fresh_samples = counts["tokens"], counts["fresh_samples"]
    last_sync = actors.resumed_sync or {"rollout/weight_version": 0}
    threads = LearnerThreads.for_run(config)
    _await(actors.learner.set_threads.remote(threads.current), actors)
    while last_step < config.steps:
        groups = None
        while groups is None:   # None: nothing within 30 s; the workers are still alive
            batch = actors.buffer.take_batch.remote(actors.learner_version, 30.0)
            groups = _await(batch, actors)
        result = _await(actors.learner.train_step.remote(groups), actors, what="learner step")
        actors.learner_version, last_step = result.version, result.step
        if config.buffer.replay.enabled:
            _await(actors.buffer.after_step.remote(step_report(result.trained),
                                                   result.version - 1), actors)
        fresh_samples += sum(len(g.samples) for g in groups if g.reuse_count == 0)
        counts = base + _worker_stats(actors) + Counter(worker_restarts=actors.worker_restarts)
        counts["fresh_samples"] = fresh_samples
        tokens, now = counts["tokens"], time.monotonic()
        extra = {**batch_metrics(groups, config.buffer.replay.enabled), **last_sync,
                 "rollout/tokens_total": tokens, "rollout/fresh_samples_total": fresh_samples,
                 "throughput/rollout_tokens_per_s": (tokens - last_tokens) / (now - last_time),
                 "faults/worker_restarts": counts["worker_restarts"],
                 "faults/reward_restarts": counts["reward_restarts"],
                 **teacher_metrics(groups, result.trained)}
        if config.teacher.enabled:
            extra["faults/teacher_errors"] = counts["teacher_errors"]
        last_tokens, last_time = tokens, now
        extra |= _await(actors.buffer.stats.remote(result.version), actors)
        extra |= _share_cores(threads, extra.pop("rollout/engine_idle_s"), now, actors)
        # Recorded before the publish, so a failing sync loses nothing; each step's record holds
        # the last publish completed before it.
        metrics = run.record(result, extra)
        if resume is not None and result.step == resume.step + 1:
            print(f"slipstream: resumed from step {resume.step}; first new step done "
                  f"{time.monotonic() - run.opened:.1f} s after start", flush=True)
        budget = config.time_budget_min
        if budget is not None and metrics["timing/wall_s"] > budget * 60:
            last_step = config.steps    # the wall-clock budget is spent: this step is the last
        if config.sample_budget is not None and fresh_samples >= config.sample_budget:
            last_step = config.steps    # so is the budget of generated samples
        if result.step % config.buffer.snapshot_every == 0:
            _await(actors.buffer.snapshot.remote(result.step, result.version), actors)
        if stop.requested is not None:
            path = _checkpoint(config, actors, run, counts)
            raise RunStopped(f"stopped by {stop.requested} after step {result.step}: "
                             f"checkpoint {path}; --resume {run.path} goes on from there")
        every = config.trainer.checkpoint_every
        if every and result.step % every == 0 and last_step < config.steps:
            _checkpoint(config, actors, run, counts)
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
    _checkpoint(config, actors, run, counts)
    _await(actors.learner.save_final.remote(str(run.final)), actors)


def _failure(error: SlipstreamError | OSError, run_dir: RunDirectory) -> SlipstreamError:
    """What ended the run, in one line (a file that could not be written, a full disk: which
    file and why), and where `--resume` would go on from."""
    if isinstance(error, OSError):
        error = SlipstreamError(f"writing {error.filename or 'the run directory'} failed: "
                                f"{error.strerror or error}")
    saved = complete_checkpoints(run_dir.checkpoints)
    if not saved:
        return error
    step = read_manifest(saved[-1])["client_state"]["step"]
    return SlipstreamError(f"{error} (--resume {run_dir.path} continues from step {step})")


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
    resume = None
    if config.resume is not None:
        config, resume = begin_resume(config)    # refuses in one line before anything starts
        if resume.state.get("writer") != "pipeline":
            raise SlipstreamError(f"--resume {config.resume}: that run is the reference "
                                  "loop's; resume it with launch/reference_loop.py")
    model = resolved_model(config)
    if config.reward.kind == "judge":   # a judge model that is not there fails here, in one line
        resolve_model(config.reward.model)
    else:                               # a reward that cannot be imported fails here, in one line
        build_reward(config.reward)
    build_env(config.env, config.seed)  # so does a missing or malformed dataset
    check_teachers(config, model)       # and a missing teacher or context function
    run_dir = RunDirectory(config, resume)
    # vLLM's INFO and WARNING lines would drown the progress bar; its errors still show.
    env_vars = {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
                "TOKENIZERS_PARALLELISM": "false"}
    _init_ray(config, env_vars)
    learner_kwargs = learner_args(config, run_dir.path)
    actors = None
    try:
        placement = plan(config, ray.cluster_resources().get("GPU", 0))
        print(f"slipstream: {placement.describe(config.rollout.num_workers)}", flush=True)
        actors = _start_actors(config, model, run_dir, learner_kwargs, placement, resume)
        with GracefulStop() as stop:
            _train(config, actors, run_dir, stop, resume)
    except RunStopped:
        raise
    except (SlipstreamError, OSError) as error:
        raise _failure(error, run_dir) from error
    finally:
        _shutdown(actors)
        ray.shutdown()
        run_dir.close()
        remove_weights_dir(learner_kwargs["weights_dir"])
    print(f"slipstream: {reward_summary(run_dir.history)}; run directory {run_dir.path}")
    return run_dir
