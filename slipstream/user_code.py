"""Importing a user's function named on the command line as 'module:function' (a reward, a
teacher's context): one way, one message."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from slipstream.errors import SlipstreamError


def import_function(spec: str, what: str) -> Callable:
    """The callable `spec` ('module:function') names; a one-line SlipstreamError naming `what`
    (the config field) when it cannot be imported or is not callable."""
    module_name, _, attr = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as error:
        raise SlipstreamError(f"{what} {spec!r} cannot be imported: {error}") from None
    if not callable(function):
        raise SlipstreamError(f"{what} {spec!r} is not callable")
    return function
