"""`slipstream inspect DIR --html OUT.html`: the inspector as one self-contained file.

The page is the same HTML, CSS and JavaScript the server sends, inlined, with the run's data in
`<script type="application/json">` (escaped by encoding.html_embedded_json so no model text can
close the tag). It opens from file:// with no network: nothing in it refers to anything outside
the file, and its Content-Security-Policy allows only its own inline script and style (by
SHA-256 hash) and no connections at all.

Which samples go in: the rows of a query (filters and sort of query.py), each with its group's
siblings so the group view is complete, until `limit` samples or `max_bytes` of sample records;
what was left out is counted in the page's run info and printed.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from slipstream.inspector.encoding import html_embedded_json
from slipstream.inspector.query import Query, select
from slipstream.inspector.server import STATIC_DIR
from slipstream.inspector.store import DataError, RunStore

SCRIPTS = ("common.js", "tokens.js", "charts.js", "views.js", "app.js")


def choose_rows(store: RunStore, query: Query, limit: int, max_bytes: int
                ) -> tuple[list[dict[str, Any]], int]:
    """The rows to include (query order, siblings alongside) and how many matches were left out."""
    matching = select(store.rows, query)
    chosen: dict[tuple[str, int], dict[str, Any]] = {}
    size = 0
    for row in matching:
        if (row["id"], row["step"]) in chosen:
            continue
        family = [row] + [r for r in store.group(row["group"])
                          if (r["id"], r["step"]) not in chosen and r is not row]
        cost = sum(int(r.get("bytes", 0)) for r in family)
        if len(chosen) + len(family) > limit or size + cost > max_bytes:
            break
        size += cost
        for r in family:
            chosen[(r["id"], r["step"])] = r
    left_out = sum(1 for r in matching if (r["id"], r["step"]) not in chosen)
    return list(chosen.values()), left_out


def export_payload(store: RunStore, rows: list[dict[str, Any]], left_out: int) -> dict[str, Any]:
    samples, unreadable = {}, 0
    for row in rows:
        try:
            record = store.sample(row["id"], row["step"])
        except DataError:       # its step file changed since it was indexed: the row stays
            record, unreadable = None, unreadable + 1
        if record is not None:
            samples[f"{row['id']}@{row['step']}"] = record
    buffer = store.buffer_info(None)
    run = store.run_info()
    run["export"] = {"samples": len(rows), "left_out": left_out, "of": len(store.rows),
                     "unreadable": unreadable}
    return {"run": run, "rows": rows, "metrics": store.metrics, "samples": samples,
            "buffer": {"snapshots": buffer["snapshots"],
                       "rows": {name: store.snapshot(name) for name in buffer["snapshots"]},
                       "evictions": buffer["evictions"],
                       "eviction_counts": buffer["eviction_counts"]}}


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def render_html(payload: dict[str, Any]) -> str:
    page = (STATIC_DIR / "index.html").read_text()
    body = page[page.index("<!--body-->") + len("<!--body-->"): page.index("<!--/body-->")]
    css = (STATIC_DIR / "app.css").read_text()
    script = "\n".join((STATIC_DIR / name).read_text() for name in SCRIPTS)
    if "</script" in script.lower() or "</style" in css.lower():
        raise ValueError("inspector static files must not contain a closing tag")
    csp = (f"default-src 'none'; script-src '{_sha256(script)}'; style-src '{_sha256(css)}'; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    return "\n".join([
        "<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>slipstream inspector (export)</title>", f"<style>{css}</style>", "</head>",
        "<body>", body,
        f'<script type="application/json" id="slipstream-data">{html_embedded_json(payload)}'
        "</script>",
        f"<script>{script}</script>", "</body>", "</html>", ""])


def export_html(store: RunStore, out: str | Path, query: Query, limit: int = 2000,
                max_bytes: int = 50 * 2**20) -> tuple[Path, int, int]:
    """Write the export; returns (path, samples included, matching samples left out)."""
    rows, left_out = choose_rows(store, query, limit, max_bytes)
    out = Path(out)
    out.write_text(render_html(export_payload(store, rows, left_out)))
    return out, len(rows), left_out
