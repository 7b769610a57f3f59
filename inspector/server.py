"""The inspector's local web server: the standard library's ThreadingHTTPServer, read-only.

Safe by default, because a run's text is model output and the page runs in the user's browser:
* binds 127.0.0.1 unless `allow_remote`; a non-loopback host without it is refused;
* every request's Host header must name this server (127.0.0.1, localhost or [::1] with its
  port), which defeats DNS rebinding (a hostile page that resolves its own name to 127.0.0.1);
* GET and HEAD only; the API takes ids (sample, group, snapshot name), never paths, and the
  store reads only files it names itself inside DIR (store.py);
* pages carry a strict Content-Security-Policy (`default-src 'self'`, no inline script), so even
  a rendering bug cannot run model text; the page renders model text with textContent.
Static files are the package's own, from a fixed list, and nothing is fetched from elsewhere.
"""

from __future__ import annotations

import ipaddress
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from slipstream.buffer.browser_json import browser_json
from slipstream.errors import SlipstreamError
from slipstream.inspector.query import page, parse_query
from slipstream.inspector.store import RunStore

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css", "common.js": "text/javascript",
                "views.js": "text/javascript",
                "charts.js": "text/javascript", "tokens.js": "text/javascript",
                "favicon.svg": "image/svg+xml"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class InspectorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, store: RunStore, host: str, port: int, allow_remote: bool) -> None:
        if not is_loopback(host) and not allow_remote:
            raise SlipstreamError(f"refusing to serve on {host}: the inspector binds loopback "
                                  "only; pass --allow-remote to expose a run to the network")
        if not 0 <= port <= 65535:
            raise SlipstreamError(f"bad port {port}: use 0..65535 (0 = any free port)")
        self.store = store
        self.allow_remote = allow_remote
        if ":" in host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), InspectorHandler)
        except OSError as error:
            raise SlipstreamError(f"cannot listen on {host}:{port}: {error.strerror}") from None
        bound = self.server_address[1]
        self.allowed_hosts = {f"127.0.0.1:{bound}", f"localhost:{bound}", f"[::1]:{bound}"}
        if not is_loopback(host):
            self.allowed_hosts.add(f"{host}:{bound}")

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("127.0.0.1", "0.0.0.0") else host
        return f"http://{shown}:{port}/"


class InspectorHandler(BaseHTTPRequestHandler):
    server: InspectorServer
    server_version = "slipstream-inspector"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:   # quiet: no line per request
        pass

    def _host_allowed(self) -> bool:
        host = (self.headers.get("Host") or "").strip().lower()
        if self.server.allow_remote:
            return bool(host)
        return host in self.server.allowed_hosts

    def do_GET(self) -> None:
        if not self._host_allowed():
            self._send_json({"error": "unexpected Host header"}, HTTPStatus.FORBIDDEN)
            return
        parts = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            self._route(parts.path, params)
        except ValueError as error:
            self._send_json({"error": str(error)}, HTTPStatus.BAD_REQUEST)

    def do_HEAD(self) -> None:
        self.do_GET()

    def _refuse(self) -> None:
        self._send_json({"error": "read-only"}, HTTPStatus.METHOD_NOT_ALLOWED)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _route(self, path: str, params: dict[str, str]) -> None:
        store = self.server.store
        store.refresh()
        if path in ("/", "/index.html"):
            self._send_static("index.html", "text/html; charset=utf-8")
        elif path.startswith("/static/") and path[len("/static/"):] in STATIC_FILES:
            name = path[len("/static/"):]
            self._send_static(name, STATIC_FILES[name])
        elif path == "/api/run":
            self._send_json(store.run_info())
        elif path == "/api/index":
            # JSON Lines as written by the pipeline, unparsed: the page parses each line (and
            # skips one that is not JSON), so serving 25,000 rows costs a join, not a re-encode.
            start = _non_negative(params.get("from", "0"), "from")
            body = b"\n".join(store.index_lines[start:])
            self._send_bytes(body, "application/x-ndjson; charset=utf-8")
        elif path == "/api/metrics":
            start = _non_negative(params.get("from", "0"), "from")
            self._send_json({"from": start, "rows": store.metrics[start:],
                             "total": len(store.metrics)})
        elif path == "/api/samples":
            self._send_json(page(store.rows, parse_query(params)))
        elif path == "/api/sample":
            step = params.get("step")
            record = store.sample(params.get("id", ""),
                                  _non_negative(step, "step") if step else None)
            self._send_json(record, HTTPStatus.OK if record else HTTPStatus.NOT_FOUND)
        elif path == "/api/group":
            self._send_json({"rows": store.group(params.get("id", ""))})
        elif path == "/api/buffer":
            self._send_json(store.buffer_info(params.get("snapshot")))
        else:
            self._send_json({"error": "not found"}, HTTPStatus.NOT_FOUND)

    def _headers(self, status: HTTPStatus, content_type: str, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()

    def _send_static(self, name: str, content_type: str) -> None:
        body = (STATIC_DIR / name).read_bytes()
        self._headers(HTTPStatus.OK, content_type, len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, payload: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        if payload is None:
            payload = {"error": "not found"}
        self._send_bytes(browser_json(payload).encode(), "application/json", status)

    def _send_bytes(self, body: bytes, content_type: str,
                    status: HTTPStatus = HTTPStatus.OK) -> None:
        self._headers(status, content_type, len(body))
        if self.command != "HEAD":
            self.wfile.write(body)


def _non_negative(raw: str, name: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0")
    return value
