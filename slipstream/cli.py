"""The `slipstream` command: `slipstream inspect DIR` (the replay-buffer inspector, as a local web
app, an `--html` file or a `--print`ed table; `--demo` for a generated run) and `slipstream board
DIR` (TensorBoard on the run's curves). Errors are one line, `slipstream: ...`, exit status 1.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import webbrowser
from collections.abc import Sequence
from pathlib import Path

from slipstream.errors import SlipstreamError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slipstream", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="open a run directory in the inspector")
    inspect.add_argument("dir", nargs="?", help="the run directory (with --demo: where to "
                         "write the demo run; a new temporary directory if omitted)")
    inspect.add_argument("--demo", action="store_true", help="generate a demo run and open it")
    inspect.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    inspect.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one")
    inspect.add_argument("--allow-remote", action="store_true",
                         help="allow a non-loopback --host (exposes the run to the network)")
    inspect.add_argument("--no-browser", action="store_true", help="do not open a browser")
    inspect.add_argument("--html", metavar="OUT.html", help="write a self-contained file instead")
    inspect.add_argument("--print", action="store_true", dest="print_table",
                         help="print the samples table instead")
    selection = inspect.add_argument_group("selection (--print and --html)")
    selection.add_argument("--steps", metavar="A:B", help="step range, inclusive (e.g. 3:5, 7:)")
    selection.add_argument("--sort", default="step", help="sort key (step, max_gap, reward, ...)")
    selection.add_argument("--desc", action="store_true", help="sort descending")
    selection.add_argument("--text", default="", help="substring of id, prompt or completion")
    selection.add_argument("--mask", default="", help="a mask reason, or 'none'")
    selection.add_argument("--finish", default="", help="a finish reason (stop, length, ...)")
    selection.add_argument("--limit", type=int, default=None,
                           help="most samples (default: 50 printed, 2000 exported)")
    selection.add_argument("--max-mb", type=float, default=50.0,
                           help="--html: cap on the sample records embedded, in MB")
    board = commands.add_parser("board", help="TensorBoard on DIR/tb")
    board.add_argument("dir")
    board.add_argument("--port", type=int, default=6006)
    return parser


def _query(args: argparse.Namespace, per_page: int):
    from slipstream.inspector.query import parse_query

    params = {"sort": args.sort, "desc": "1" if args.desc else "", "text": args.text,
              "mask": args.mask, "finish": args.finish, "per_page": str(per_page)}
    if args.steps:
        low, _, high = args.steps.partition(":")
        params.update(step_min=low, step_max=high if ":" in args.steps else low)
    try:
        return parse_query(params)
    except ValueError as error:
        raise SlipstreamError(f"bad selection: {error}") from None


def _inspect(args: argparse.Namespace) -> None:
    from slipstream.inspector.store import RunStore

    if not 0 <= args.port <= 65535:
        raise SlipstreamError(f"bad port {args.port}: use 0..65535 (0 = any free port)")
    if args.demo:
        from slipstream.inspector.demo import make_demo_run

        target = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="slipstream-demo-"))
        if (target / "config.json").exists():
            raise SlipstreamError(f"{target} already holds a run; give --demo a new directory")
        make_demo_run(target)
        print(f"slipstream: demo run written to {target}", file=sys.stderr)
        args.dir = str(target)
    if not args.dir:
        raise SlipstreamError("inspect needs a run directory (or --demo)")
    store = RunStore(args.dir)
    if args.print_table:
        from slipstream.inspector.terminal import print_table

        print(print_table(store.rows, _query(args, min(args.limit or 50, 500))))
        banner = store.deterministic_banner()
        if banner is not None:
            print(f"deterministic run: {banner['nonzero']} of {banner['tokens']} compared tokens "
                  "have a gap that is not exactly 0")
        return
    if args.html:
        from slipstream.inspector.export import export_html

        try:
            path, count, left_out = export_html(store, args.html, _query(args, 500),
                                                limit=args.limit or 2000,
                                                max_bytes=int(args.max_mb * 2**20))
        except OSError as error:
            raise SlipstreamError(f"cannot write {args.html}: {error.strerror}") from None
        more = f" ({left_out} matching samples left out by --limit/--max-mb)" if left_out else ""
        print(f"slipstream: wrote {path} with {count} samples{more}")
        return
    _serve(store, args)


def _serve(store, args: argparse.Namespace) -> None:
    from slipstream.inspector.server import InspectorServer

    server = InspectorServer(store, args.host, args.port, args.allow_remote)
    print(f"slipstream inspector: {server.url}  (Ctrl-C to stop)", flush=True)
    if not args.no_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _board(args: argparse.Namespace) -> None:
    tb = Path(args.dir) / "tb"
    if not Path(args.dir).is_dir():
        raise SlipstreamError(f"run directory {args.dir} does not exist")
    if not tb.is_dir():
        raise SlipstreamError(f"{args.dir} has no tb/ directory (not a run directory?)")
    executable = shutil.which("tensorboard") or str(Path(sys.executable).with_name("tensorboard"))
    if not Path(executable).exists():
        raise SlipstreamError("tensorboard is not installed in this environment")
    try:
        subprocess.run([executable, "--logdir", str(tb), "--host", "127.0.0.1",
                        "--port", str(args.port)], check=False)
    except KeyboardInterrupt:
        pass


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "inspect":
            _inspect(args)
        else:
            _board(args)
    except SlipstreamError as error:
        print(f"slipstream: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
