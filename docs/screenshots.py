"""Screenshots of every inspector view, for the README and docs/: headless Chromium on the demo
run (or on a run directory given as an argument).

    python docs/screenshots.py                 # the demo run -> docs/inspector-*.png
    python docs/screenshots.py runs/qs --prefix inspector-real
    python docs/screenshots.py runs/distill --prefix inspector-distill --only tokens-teacher
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright

from slipstream.inspector import demo
from slipstream.inspector.export import export_html
from slipstream.inspector.query import parse_query
from slipstream.inspector.server import InspectorServer
from slipstream.inspector.store import RunStore

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DOCS = Path(__file__).resolve().parent


def views(store: RunStore) -> list[tuple[str, str, str | None]]:
    """(name, fragment, token to hover) for each view; sample views pick telling samples."""
    rows = store.rows
    top = max(rows, key=lambda r: r["max_gap"])
    spanning = max(rows, key=lambda r: (r["versions"], r["len"]))
    groups = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r["reward"])
    flat = [g for g, rewards in groups.items() if len(set(rewards)) == 1]
    group = flat[0] if flat else top["group"]
    hover = str(demo.DEMO_LARGEST_GAP_TOKEN) if top["id"] == demo.DEMO_LARGEST_GAP_ID else "0"
    return [("overview", "view=overview", None),
            ("samples", "view=samples&sort=max_gap&desc=1", None),
            ("tokens-gap", f"view=sample&id={top['id']}&step={top['step']}&color=gap", hover),
            ("tokens-version", f"view=sample&id={spanning['id']}&step={spanning['step']}"
                               "&color=version", None),
            ("tokens-weight", f"view=sample&id={spanning['id']}&step={spanning['step']}"
                              "&color=weight", None),
            ("group", f"view=group&id={group}", None),
            ("buffer", "view=buffer", None)] + _teacher_view(store, rows)


def _teacher_view(store: RunStore, rows: list[dict]) -> list[tuple[str, str, str | None]]:
    """A distillation run's teacher-gap colouring, on its longest sample a teacher scored."""
    for row in sorted(rows, key=lambda r: -r["len"])[:50]:
        record = store.sample(row["id"], row["step"])
        if record is not None and record["teacher_view"].get("available"):
            return [("tokens-teacher", f"view=sample&id={row['id']}&step={row['step']}"
                                       "&color=teacher", "0")]
    return []


def shoot(page, url: str, path: Path, hover: str | None = None) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")
    fragment = url.split("#", 1)[1] if "#" in url else ""
    page.wait_for_selector(f'body[data-rendered-hash="#{fragment}"]', state="attached")
    if hover is not None:
        page.hover(f"#tokens .tok[data-i='{hover}']")
        page.click(f"#tokens .tok[data-i='{hover}']")
    page.screenshot(path=str(path))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", help="a run directory (default: a fresh demo run)")
    parser.add_argument("--prefix", default="inspector")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--only", help="one view by name (e.g. tokens-teacher)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else demo.make_demo_run(Path(tmp) / "demo")
        store = RunStore(run)
        server = InspectorServer(store, "127.0.0.1", 0, allow_remote=False)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            for name, fragment, hover in views(store):
                if args.only and name != args.only:
                    continue
                shoot(page, f"{server.url}#{fragment}", DOCS / f"{args.prefix}-{name}.png", hover)
            if not args.run and not args.only:
                det = demo.make_demo_run(Path(tmp) / "deterministic", deterministic=True)
                det_server = InspectorServer(RunStore(det), "127.0.0.1", 0, allow_remote=False)
                threading.Thread(target=det_server.serve_forever, daemon=True).start()
                shoot(page, f"{det_server.url}#view=samples&sort=max_gap&desc=1",
                      DOCS / f"{args.prefix}-deterministic.png")
            export, _, _ = export_html(store, Path(tmp) / "export.html", parse_query({}))
            if not args.only:
                shoot(page, export.resolve().as_uri() + "#view=overview",
                      DOCS / f"{args.prefix}-export.png")
            browser.close()
        server.shutdown()


if __name__ == "__main__":
    main()
