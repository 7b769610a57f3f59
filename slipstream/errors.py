"""The one exception type the command line shows as a single line, without a traceback."""


class SlipstreamError(Exception):
    """A user-facing error whose message is one readable line; the CLI prints it without a
    traceback. Raised for bad config, bad data, a failed actor, a weight sync that did not land."""


class RunStopped(SlipstreamError):
    """The user asked the run to stop (Ctrl-C, SIGTERM) and it did, cleanly, state saved."""
