"""Reward functions the tests pass as `reward.kind=python` (importable by module path, so the
spawn-based reward runner and Ray workers can load them; tests/ is put on PYTHONPATH)."""

import time


def digit_share(completion: str, reference: str) -> float:
    """Fraction of characters that are digits: varies even for a random model, so GRPO groups
    have non-zero advantages and the loss is not identically 0."""
    return sum(c.isdigit() for c in completion) / max(len(completion), 1)


def raises(completion: str, reference: str) -> float:
    raise ValueError("boom")


def hangs(completion: str, reference: str) -> float:
    time.sleep(60)
    return 1.0


def returns_nan(completion: str, reference: str) -> float:
    return float("nan")
