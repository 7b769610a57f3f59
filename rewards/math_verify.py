"""A math-verify reward: 1.0 when the completion's final answer equals the reference, else 0.0.

Choices:
- The gold is a bare answer ("57", "-3", "\\frac{1}{2}", "(1, 2)", "x^2+1"), not a sentence, so
  it is parsed as LaTeX math first (wrapped in $...$): parsed as free text, math-verify drops
  "x^2+1" and reads "(1, 2)" as 2. Plain parsing is the fallback. A gold that parses to nothing
  is a data bug, so it raises (the runner records the error) rather than scoring every sample 0.
- The completion is parsed with math-verify's defaults: the last \\boxed{} or $...$ answer, else
  the last plain expression ("The answer is 57.").
- An answer that is still arithmetic over numbers scores 0. math-verify evaluates "36 + 21" to
  57 and would call it right, so a policy asked "What is 36 + 21?" learns to restate the
  question: seen here, the quickstart reached 0.85 reward within 40 steps that way.
- math-verify bounds its own parsing and comparison with `signal.alarm`, which works only in a
  process's main thread, and callers score from helper threads. Its timeouts are switched off
  here (`parsing_timeout=None`, `timeout_seconds=None`) and `RewardRunner` bounds the time from
  outside, in another process.
"""

from __future__ import annotations

import logging
import re

from math_verify import parse, verify

# A number, an arithmetic operator, a number: "36 + 21", "6*7", "3 \times 4".
_UNEVALUATED = re.compile(r"\d\s*(?:[-+*/×÷^]|\\times|\\cdot|\\div)\s*[\d(]")


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


def _is_unevaluated(answer: str) -> bool:
    """Arithmetic over plain numbers ("36 + 53"); symbolic answers ("x^2+1") are fine."""
    has_variable = re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", answer))
    return bool(_UNEVALUATED.search(answer)) and not has_variable


def math_verify_reward(completion: str, reference: str) -> float:
    """1.0 if math-verify finds the completion's answer equal to `reference`, else 0.0."""
    gold = parse_gold(reference)
    answer = parse(completion, parsing_timeout=None)
    if any(isinstance(a, str) and _is_unevaluated(a) for a in answer):
        return 0.0
    return 1.0 if verify(gold, answer, timeout_seconds=None) else 0.0
