"""Teacher context functions the tests pass as `--teacher.context module:function` (tests/ is
on PYTHONPATH, so Ray's workers import them)."""


def always_raises(sample, group, prompt) -> str:
    raise RuntimeError("no context for you")


def raises_on_odd_tickets(sample, group, prompt) -> str:
    if group.ticket % 2:
        raise ValueError(f"odd ticket {group.ticket}")
    return f"(The answer is {prompt.reference}.)"
