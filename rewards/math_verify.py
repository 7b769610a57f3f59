"""A math-verify reward: 1.0 when the completion's final answer equals the reference, else 0.0.

Choices:
- The gold is a bare answer ("57", "-3", "\\frac{1}{2}", "(1, 2)", "x^2+1"), not a sentence, so
  it is parsed as LaTeX math first (wrapped in $...$): parsed as free text, math-verify drops
  "x^2+1" and reads "(1, 2)" as 2. Plain parsing is the fallback. A gold that parses to nothing
  is a data bug, so it raises (the runner records the error) rather than scoring every sample 0.
- The completion is parsed with math-verify's defaults: the last \\boxed{} or $...$ answer, else
  the last plain expression ("The answer is 57.").
- math-verify bounds its own parsing and comparison with `signal.alarm`, which works only in a
  process's main thread, and callers score from helper threads. Its timeouts are switched off
  here (`parsing_timeout=None`, `timeout_seconds=None`) and `RewardRunner` bounds the time from
  outside, in another process.
"""

from __future__ import annotations

import logging

from math_verify import parse, verify


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once per process that its timeout is off; here that is deliberate."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


def parse_gold(reference: str) -> list:
    """math-verify's parse of a bare gold answer (see the module docstring)."""
    gold = parse(f"${reference}$", parsing_timeout=None)
    if not gold:
        gold = parse(reference, parsing_timeout=None)
    if not gold:
        raise ValueError(f"math-verify cannot parse the reference {reference!r}")
    return gold


def math_verify_reward(completion: str, reference: str) -> float:
    """1.0 if math-verify finds the completion's answer equal to `reference`, else 0.0."""
    gold = parse_gold(reference)
    answer = parse(completion, parsing_timeout=None)
    return 1.0 if verify(gold, answer, timeout_seconds=None) else 0.0
