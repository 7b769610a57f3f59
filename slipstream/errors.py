"""The one exception type the command line shows as a single line, without a traceback."""


class SlipstreamError(Exception):
    """A user-facing error whose message is one readable line; the CLI prints it without a
    traceback. Raised for bad config, bad data, a failed actor, a weight sync that did not land."""


class RunStopped(SlipstreamError):
    """The user asked the run to stop (Ctrl-C, SIGTERM) and it did, cleanly, state saved."""


def one_line(error: BaseException, *, name_own: bool = True) -> str:
    """`Type: first line` of an error, or of the error a Ray error wraps (its `cause`); the
    type alone when it has no message. `name_own=False`: a SlipstreamError, already written for
    users, keeps its bare first line."""
    cause = getattr(error, "cause", None) or error
    lines = str(cause).strip().splitlines()
    if not name_own and isinstance(cause, SlipstreamError):
        return lines[0] if lines else ""
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
