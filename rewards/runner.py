"""Running a reward safely: in another process, each item bounded by a timeout.

Failure policy (the one place it is decided):
- a reward that raises scores 0.0 and keeps its error ("ValueError: boom") in
  `RewardResult.error`, which the pipeline records per sample;
- a reward that returns something other than a finite number is an error the same way;
- a reward that runs past `timeout_s` scores 0.0 with "timeout after 2.0s", and its process is
  killed and replaced, so a hang costs one item and `timeout_s` seconds, never the run;
- a process that dies under a reward (killed from outside, the OOM killer, a crash, os._exit)
  is replaced and the item scored again on the new one: a death from outside says nothing about
  the item. If the item kills that process too, it is the item's doing: it scores 0.0 with
  "reward process died twice (exit code N)", and the next items go on in a third process.
  `restarts` counts every replacement (deaths and timeouts: the pipeline's
  `faults/reward_restarts`).

Choices:
- The worker process is started with "spawn": the caller is a Ray actor running vLLM threads,
  which a fork would copy in an undefined state. So `fn` crosses by pickle, by reference: it must
  be a module-level function of an importable module (checked when the runner is made).
- One persistent worker serves all items; starting an interpreter per item would cost about a
  second each. Its start-up (importing `fn`'s modules) does not count against any timeout.
- A list of items goes over in one message and the results come back one by one, so each item
  gets its own `timeout_s` from the moment the previous one finished, at one round trip per list.
- `score` may be called from several threads at once (rollout workers score groups from
  `asyncio.to_thread`); a lock keeps each call's items and results together on the one pipe.
- A reward takes (completion, reference) or (completion, reference, metadata): the prompt's
  metadata goes only to a function with a third parameter (decided once, from its signature), so
  a task whose scorer needs what the generator made (reasoning-gym) gets it, and items may always
  carry it.
- Written with multiprocessing rather than concurrent.futures: a process pool can neither bound
  one call's time nor kill the one stuck worker and go on.
"""

from __future__ import annotations

import inspect
import math
import multiprocessing
import numbers
import pickle
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from slipstream.errors import SlipstreamError, one_line

RewardFn = Callable[..., float]     # (completion, reference[, metadata]) -> score
# An item to score: (completion, reference) or (completion, reference, the prompt's metadata).
RewardItem = tuple[str, str] | tuple[str, str, Mapping]
_STARTUP_TIMEOUT_S = 300.0     # a fresh interpreter importing sympy on a loaded machine
_CLOSE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class RewardResult:
    """The score of one (completion, reference) pair."""

    score: float                   # 0.0 whenever `error` is set
    error: str | None = None       # None when the reward ran normally, else one line
    parts: Mapping[str, float] = field(default_factory=dict)   # a rubric's verdicts (judge.py)


def takes_metadata(fn: RewardFn) -> bool:
    """Whether `fn` has a third parameter, for the prompt's metadata."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):      # a builtin without a signature: the two-argument form
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


def _score_one(fn: RewardFn, with_metadata: bool, item: RewardItem) -> tuple[float, str | None]:
    completion, reference = item[0], item[1]
    try:
        score = fn(completion, reference, item[2] if len(item) > 2 else {}) if with_metadata \
            else fn(completion, reference)
    except Exception as error:  # noqa: BLE001 - any failure of a reward is that item's failure
        return 0.0, one_line(error)
    # bool and numpy floats are numbers.Real; strings, None and tensors are not.
    if not isinstance(score, numbers.Real) or not math.isfinite(score):
        return 0.0, f"reward returned {score!r}, not a finite number"
    return float(score), None


def _serve(connection, fn: RewardFn) -> None:
    """Worker loop: receive a list of items, send one (score, error) per item."""
    with_metadata = takes_metadata(fn)
    connection.send("ready")  # `fn` is unpickled, its imports done: time limits start now
    while True:
        try:
            items = connection.recv()
        except EOFError:
            return  # the parent is gone
        if items is None:
            return
        for item in items:
            connection.send(_score_one(fn, with_metadata, item))


class RewardRunner:
    """Scores items with `fn` in a worker process; see the module doc."""

    def __init__(self, fn: RewardFn, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        try:
            pickle.dumps(fn)
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            raise TypeError(f"the reward {fn!r} cannot be sent to a worker process; use a "
                            f"module-level function of an importable module ({error})") from None
        self.fn = fn
        self.timeout_s = float(timeout_s)
        self._context = multiprocessing.get_context("spawn")
        self._process = None
        self._connection = None
        self.restarts = 0      # processes replaced after a death or a timeout
        # A worker scores several groups from several threads; the child serves one at a time.
        self._lock = threading.Lock()

    def score(self, items: Sequence[RewardItem], messages: Sequence[Mapping] = ()
              ) -> list[RewardResult]:
        """One result per item, in order. `messages` (the prompt's chat) is for the judge
        (rewards/judge.py); a reward function sees what its signature takes, never the chat."""
        with self._lock:
            try:
                return self._score_locked(list(items))
            except BaseException:
                # Interrupted mid-list, the pipe may hold results of this call: never reuse it.
                self._kill()
                raise

    def _score_locked(self, items: list[RewardItem]) -> list[RewardResult]:
        results: list[RewardResult] = []
        died_once = False           # the item at len(results) already killed one process
        while len(results) < len(items):
            if self._process is None:
                self._start()
            pending = items[len(results):]
            self._connection.send(pending)
            for _ in pending:
                result, lost, died = self._receive()
                if lost:
                    self._kill()  # a fresh worker takes the rest of the list
                    self.restarts += 1
                    if died and not died_once:
                        died_once = True      # scored again, on the fresh process
                        break
                    if died:
                        result = RewardResult(0.0, result.error.replace("died", "died twice"))
                died_once = False
                results.append(result)
                if lost:
                    break
        return results

    def _receive(self) -> tuple[RewardResult, bool, bool]:
        """The worker's next result, or a failed one saying why none came; then whether the
        worker is lost (stuck or dead) and whether it died."""
        if not self._connection.poll(self.timeout_s):
            return RewardResult(0.0, f"timeout after {self.timeout_s}s"), True, False
        try:
            return RewardResult(*self._connection.recv()), False, False
        except EOFError:  # the worker died: a crash, os._exit, the OOM killer
            self._process.join(timeout=_CLOSE_TIMEOUT_S)
            code = self._process.exitcode
            return RewardResult(0.0, f"reward process died (exit code {code})"), True, True

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_serve, args=(child, self.fn), daemon=True,
                                              name="slipstream-reward")
        self._process.start()
        child.close()  # so that the worker's death reads as EOF here
        self._connection = parent
        try:
            ready = parent.poll(_STARTUP_TIMEOUT_S) and parent.recv() == "ready"
        except EOFError:
            ready = False
        if not ready:
            self._process.join(timeout=_CLOSE_TIMEOUT_S)
            code = self._process.exitcode
            self._kill()
            raise SlipstreamError(f"the reward process failed to start (exit code {code}); its "
                                  "traceback, if any, is on stderr above")

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._connection.close()
        self._process = self._connection = None

    def close(self) -> None:
        """Stop the worker process. The runner starts a new one if used again."""
        with self._lock:
            if self._process is not None and self._process.is_alive():
                try:
                    self._connection.send(None)
                    self._process.join(timeout=_CLOSE_TIMEOUT_S)
                except (BrokenPipeError, EOFError, OSError):
                    pass  # the worker is already gone; _kill reaps it
            self._kill()

    def __enter__(self) -> RewardRunner:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
