"""Command-line parsing for launch scripts: `--steps N --output-dir DIR --trainer.lr 1e-5 ...`.

pydantic-settings turns the arguments into a nested dict of overrides; we merge it over the
script's own defaults and validate the result once, so a script's defaults and the user's flags go
through the same checks. Any failure ends the process with one line naming the field.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, CliSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from slipstream.errors import RunStopped, SlipstreamError
from slipstream.launch.config import RunConfig


class _CliRunConfig(RunConfig, BaseSettings):
    """RunConfig as a settings class: only its CLI parsing is used, never environment variables."""

    model_config = SettingsConfigDict(extra="forbid", allow_inf_nan=False,
                                      cli_kebab_case=True, cli_exit_on_error=False,
                                      cli_implicit_flags=False)


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            # Switching a union's kind replaces the branch instead of mixing fields of two kinds.
            if "kind" in value and value["kind"] != merged[key].get("kind"):
                merged[key] = value
            else:
                merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def format_validation_error(error: ValidationError) -> str:
    """One line: the first failing field's dotted path and pydantic's message."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function-"))
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"invalid config: {field or 'config'}: {message}{more}"


def _kebab_flag(arg: str) -> str:
    """`--trainer.checkpoint_every=3` as `--trainer.checkpoint-every=3`: field names are written
    with underscores everywhere else (config.json, the docs), so both spellings are accepted."""
    if not arg.startswith("--"):
        return arg
    flag, equals, value = arg.partition("=")
    return flag.replace("_", "-") + equals + value


def parse_config(argv: Sequence[str] | None = None, **defaults: Any) -> RunConfig:
    """The script's `defaults` (nested dicts) overridden by the command line, validated. With
    `--resume DIR` the base is that run's own config.json instead of the script's defaults
    (launch/resume.py checks, before the run starts, that only safe fields changed)."""
    args = [_kebab_flag(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    try:
        overrides = CliSettingsSource(_CliRunConfig, cli_parse_args=args)()
    except SettingsError as error:
        raise SlipstreamError(str(error).replace("error parsing CLI: ", "invalid arguments: "))
    if overrides.get("resume"):
        from slipstream.launch.resume import saved_config

        base = {**saved_config(overrides["resume"]), "output_dir": overrides["resume"]}
    else:
        base = RunConfig.model_validate(defaults).model_dump(mode="json")
    try:
        return RunConfig.model_validate(_deep_merge(base, overrides))
    except ValidationError as error:
        raise SlipstreamError(format_validation_error(error)) from None


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # run the same clean-up as Ctrl-C: actors stopped, files flushed


def main_guard(run_fn, *args: Any) -> None:
    """Run `run_fn(*args)`; a SlipstreamError (bad config, bad data, a failed actor) prints one
    line and exits 1, a Ctrl-C or SIGTERM exits 130 after a clean stop (the pipeline first
    finishes its step and saves a checkpoint: launch/pipeline.py `GracefulStop`). Anything else
    is a bug and keeps its traceback."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        run_fn(*args)
    except RunStopped as error:
        print(f"slipstream: {error}", file=sys.stderr)
        sys.exit(130)
    except SlipstreamError as error:
        print(f"slipstream: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("slipstream: interrupted", file=sys.stderr)
        sys.exit(130)
