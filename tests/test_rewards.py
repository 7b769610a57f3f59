"""Rewards: math-verify scoring (real math-verify) and the process-isolated runner.

The runner pickles its function by reference into a spawned process, so the helper rewards below
are module-level functions of this module, importable there as `test_rewards` (conftest.py puts
tests/ on sys.path, and a spawned process inherits sys.path).
"""

import math
import os
import signal
import threading
import time

import pytest
from pydantic import TypeAdapter, ValidationError

from slipstream.errors import SlipstreamError
from slipstream.rewards import (MathVerifyRewardConfig, PythonRewardConfig, RewardConfig,
                                RewardResult, RewardRunner, build_reward, math_verify_reward)


def scripted_reward(completion: str, reference: str) -> float:
    """A reward whose completion says what to do: "raise", "sleep", "exit", "pid", "nan", ..."""
    command, _, argument = completion.partition(":")
    if command == "raise":
        raise ValueError("boom")
    if command == "sleep":
        time.sleep(60)
    if command == "exit":
        os._exit(3)
    if command == "pid":
        return float(os.getpid())
    if command == "echo":
        return float(argument)
    if command == "slow":
        time.sleep(float(argument))
        return float(argument)
    if command == "nan":
        return math.nan
    if command == "text":
        return "1.0"
    if command == "none":
        return None
    if command == "bool":
        return True
    return math_verify_reward(completion, reference)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def runner():
    with RewardRunner(scripted_reward, timeout_s=1.0) as runner:
        yield runner


# ---- math_verify_reward -------------------------------------------------------------------------

@pytest.mark.parametrize("completion, reference", [
    ("36 + 21 = 57, so the answer is 57.", "57"),
    ("The answer is $\\boxed{57}$.", "57"),
    ("Total: 1,234 dollars. \\boxed{1234}", "1234"),
    ("It drops by 3, so the change is -3.", "-3"),
    ("Half of it: $\\frac{1}{2}$", "\\frac{1}{2}"),
    ("So the probability is 0.5", "\\frac{1}{2}"),
    ("The interval is $(1, 2)$", "(1, 2)"),
    ("Expanding gives $x^2+1$", "x^2+1"),
])
def test_math_verify_accepts_equal_answers(completion, reference):
    assert math_verify_reward(completion, reference) == 1.0


@pytest.mark.parametrize("completion, reference", [
    ("36 + 21 = 56", "57"),
    ("\\boxed{56} though some say 57", "57"),        # the boxed answer is the answer
    ("The answer is 3.", "-3"),
    ("I do not know.", "57"),                        # nothing to parse
    ("", "57"),
    ("The interval is $(1, 3)$", "(1, 2)"),
])
def test_math_verify_rejects_wrong_or_missing_answers(completion, reference):
    assert math_verify_reward(completion, reference) == 0.0


def test_math_verify_raises_on_an_unparseable_reference():
    with pytest.raises(ValueError, match="cannot parse the reference"):
        math_verify_reward("57", "")


def test_math_verify_runs_outside_the_main_thread():
    # math-verify's own timeouts (signal.alarm) would raise here; ours are switched off.
    scores = []
    thread = threading.Thread(target=lambda: scores.append(math_verify_reward("so 57", "57")))
    thread.start()
    thread.join()
    assert scores == [1.0]


def test_reward_config_builds_the_named_function_and_validates():
    adapter = TypeAdapter(RewardConfig)
    verified = adapter.validate_python({"kind": "math_verify", "timeout_s": 0.5})
    assert verified == MathVerifyRewardConfig(timeout_s=0.5)
    assert build_reward(verified) is math_verify_reward
    python = adapter.validate_python({"kind": "python",
                                      "function": "test_rewards:scripted_reward"})
    assert build_reward(python) is scripted_reward
    with pytest.raises(SlipstreamError, match="cannot be imported"):
        build_reward(PythonRewardConfig(function="test_rewards:no_such_reward"))
    with pytest.raises(ValidationError, match="timeout_s"):
        MathVerifyRewardConfig(timeout_s=0)
    with pytest.raises(ValidationError, match="extra"):
        MathVerifyRewardConfig(timeot_s=1.0)


# ---- RewardRunner -------------------------------------------------------------------------------

def test_runner_scores_the_configured_reward():
    config = MathVerifyRewardConfig()
    with RewardRunner(build_reward(config), timeout_s=config.timeout_s) as runner:
        results = runner.score([("so 57", "57"), ("so 56", "57"), ("no idea", "57")])
    assert results == [RewardResult(1.0), RewardResult(0.0), RewardResult(0.0)]


def test_runner_records_a_raising_reward_and_goes_on(runner):
    results = runner.score([("raise", "1"), ("so 7", "7")])
    assert results == [RewardResult(0.0, "ValueError: boom"), RewardResult(1.0)]


@pytest.mark.parametrize("command", ["nan", "text", "none"])
def test_runner_rejects_non_finite_or_non_numeric_scores(runner, command):
    [result] = runner.score([(command, "1")])
    assert result.score == 0.0 and "not a finite number" in result.error


def test_runner_accepts_any_real_number(runner):
    assert runner.score([("echo:0.25", ""), ("bool", "")]) == [RewardResult(0.25),
                                                               RewardResult(1.0)]
    assert runner.score([]) == []


def test_runner_times_out_a_hanging_reward_and_replaces_its_process(runner):
    [before] = runner.score([("pid", "")])
    start = time.monotonic()
    results = runner.score([("echo:1", ""), ("sleep", ""), ("echo:2", ""), ("pid", "")])
    elapsed = time.monotonic() - start
    assert results[:3] == [RewardResult(1.0), RewardResult(0.0, "timeout after 1.0s"),
                           RewardResult(2.0)]
    # The items after the hang ran in a fresh process; the stuck one is gone.
    assert results[3].error is None and results[3].score != before.score
    assert not _pid_alive(int(before.score))
    assert elapsed < 30, "one timeout plus one restart, not the 60 s sleep"
    assert runner.score([("so 12", "12")]) == [RewardResult(1.0)]


def test_runner_survives_a_reward_that_kills_its_process(runner):
    """An item that kills its process every time is scored again once, then fails alone."""
    before = runner.restarts
    results = runner.score([("exit", ""), ("echo:3", "")])
    assert results == [RewardResult(0.0, "reward process died twice (exit code 3)"),
                       RewardResult(3.0)]
    assert runner.restarts == before + 2


def test_a_reward_process_killed_from_outside_is_replaced_and_the_item_rescored():
    with RewardRunner(scripted_reward, timeout_s=20.0) as runner:
        [pid] = runner.score([("pid", "")])
        killer = threading.Timer(1.0, os.kill, (int(pid.score), signal.SIGKILL))
        killer.start()
        results = runner.score([("echo:1", ""), ("slow:3", ""), ("echo:2", "")])
        killer.join()
        # The SIGKILL landed during the slow item, which the new process scored again.
        assert results == [RewardResult(1.0), RewardResult(3.0), RewardResult(2.0)]
        assert runner.restarts == 1 and not _pid_alive(int(pid.score))


def test_runner_keeps_concurrent_callers_apart(runner):
    # Rollout workers score several groups at once from helper threads.
    outputs: dict[int, list[RewardResult]] = {}

    def call(caller: int) -> None:
        outputs[caller] = runner.score([(f"echo:{caller * 10 + i}", "") for i in range(5)])

    threads = [threading.Thread(target=call, args=(c,)) for c in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for caller, results in outputs.items():
        assert [r.score for r in results] == [caller * 10 + i for i in range(5)]
    assert len(outputs) == 4


def test_runner_close_stops_the_process():
    with RewardRunner(scripted_reward, timeout_s=5.0) as runner:
        [result] = runner.score([("pid", "")])
    assert not _pid_alive(int(result.score))


def test_runner_refuses_a_function_it_cannot_send():
    with pytest.raises(TypeError, match="module-level function"):
        RewardRunner(lambda completion, reference: 1.0, timeout_s=1.0)
    with pytest.raises(ValueError, match="timeout_s"):
        RewardRunner(scripted_reward, timeout_s=0)


@pytest.mark.parametrize("completion", [
    "To calculate 36 + 53, you simply add the numbers together: 36 + 53.",
    "The sum is $36 + 53$.",
    "$3 \\times 4$",
])
def test_restating_the_question_is_not_an_answer(completion):
    # math-verify evaluates "36 + 53" to 89; a policy learned to exploit that in 20 steps.
    reference = "12" if "times" in completion else "89"
    assert math_verify_reward(completion, reference) == 0.0
    assert math_verify_reward("36 + 53 = 89", "89") == 1.0
