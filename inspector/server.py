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
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from slipstream.buffer.browser_json import browser_json
from slipstream.errors import SlipstreamError
from slipstream.inspector.query import page, parse_query
from slipstream.inspector.store import DataError, RunStore

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css", "common.js": "text/javascript",
                "views.js": "text/javascript",
                "charts.js": "text/javascript", "tokens.js": "text/javascript",
                "favicon.svg": "image/svg+xml"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")


def is_loopback(host: str) -> bool:
    """Whether `host` (an IP literal, maybe bracketed or with an IPv6 zone, or "localhost")
    is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple]:
    """(family, socket address) to bind for `--host`: an IP literal (IPv6 with or without
    brackets), a name this machine resolves (its first address), or "" for every interface."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(name or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError, ValueError) as error:   # idna and NUL errors are not OSError
        reason = getattr(error, "strerror", None) or "not a valid host name"
        raise SlipstreamError(f"cannot listen on {host!r}: {reason}") from None
    family, _, _, _, address = infos[0]
    return family, address


def url_host(address: str) -> str:
    """How a browser on this machine reaches a server bound to `address`: the loopback address
    of its family for a wildcard (0.0.0.0, ::), an IPv6 address in brackets (a zone's % written
    %25, as URLs require), an IPv4 address as it is."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.is_unspecified:
        return "127.0.0.1" if ip.version == 4 else "[::1]"
    return f"[{address.replace('%', '%25')}]" if ip.version == 6 else address


class InspectorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, store: RunStore, host: str, port: int, allow_remote: bool) -> None:
        if not 0 <= port <= 65535:
            raise SlipstreamError(f"bad port {port}: use 0..65535 (0 = any free port)")
        self.address_family, address = _resolve(host, port)
        # The address bound, not the name given, decides: a name may resolve off this machine.
        if not is_loopback(address[0]) and not allow_remote:
            raise SlipstreamError(f"refusing to serve on {host}: the inspector binds loopback "
                                  "only; pass --allow-remote to expose a run to the network")
        self.store = store
        self.allow_remote = allow_remote
        try:
            super().__init__(address, InspectorHandler)
        except OSError as error:
            shown = url_host(address[0]) if ":" in address[0] else address[0]
            raise SlipstreamError(f"cannot listen on {shown}:{port}: "
                                  f"{error.strerror or error}") from None
        bound = self.server_address[1]
        self.url_host = url_host(self.server_address[0])
        # Every name a browser on this machine may use for the server, with its port (and
        # without it on port 80, where browsers leave it out of the Host header).
        names = {"127.0.0.1", "localhost", "[::1]", self.url_host.lower()}
        self.allowed_hosts = {f"{name}:{bound}" for name in names}
        if bound == 80:
            self.allowed_hosts |= names

    @property
    def url(self) -> str:
        return f"http://{self.url_host}:{self.server_address[1]}/"


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
        self._responded = False
        try:
            parts = urlsplit(self.path)
            params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            self._route(parts.path, params)
        except ValueError as error:
            self._answer_error(str(error), HTTPStatus.BAD_REQUEST)
        except DataError as error:
            self._answer_error(str(error), error.status)
        except ConnectionError:               # the client went away: nobody to answer
            self.close_connection = True
        except Exception as error:            # a bug costs one request, not the connection
            sys.stderr.write(f"slipstream inspector: {self.path[:200]}: {error!r}\n")
            self._answer_error(f"internal error: {type(error).__name__}: {error}",
                               HTTPStatus.INTERNAL_SERVER_ERROR)

    def _answer_error(self, message: str, status: int) -> None:
        if self._responded:                   # failed mid-body: the client sees it cut short
            self.close_connection = True
            return
        self._send_json({"error": message}, HTTPStatus(status))

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
            # JSON Lines as written by the pipeline, unparsed (the store keeps only lines that
            # passed its checks), so serving 25,000 rows costs a join, not a re-encode. The
            # generation tells the page that the index was rewritten and its `from` is stale.
            start = _non_negative(params.get("from", "0"), "from")
            body = b"\n".join(store.index_lines[start:])
            self._send_bytes(body, "application/x-ndjson; charset=utf-8",
                             extra={"X-Slipstream-Generation": str(store.generation)})
        elif path == "/api/metrics":
            start = _non_negative(params.get("from", "0"), "from")
            self._send_json({"from": start, "rows": store.metrics[start:],
                             "total": len(store.metrics), "generation": store.generation})
        elif path == "/api/samples":
            self._send_json(page(store.rows, parse_query(params)))
        elif path == "/api/sample":
            sample_id, step = params.get("id", ""), params.get("step")
            record = store.sample(sample_id, _non_negative(step, "step") if step else None)
            if record is None:
                at = f" at step {step}" if step else ""
                self._send_json({"error": f"sample {sample_id[:80]!r}{at} is not in the index"},
                                HTTPStatus.NOT_FOUND)
            else:
                self._send_json(record)
        elif path == "/api/group":
            self._send_json({"rows": store.group(params.get("id", ""))})
        elif path == "/api/buffer":
            self._send_json(store.buffer_info(params.get("snapshot")))
        else:
            self._send_json({"error": "not found"}, HTTPStatus.NOT_FOUND)

    def _headers(self, status: HTTPStatus, content_type: str, length: int,
                 extra: dict[str, str] | None = None) -> None:
        self._responded = True
        self.send_response(status)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
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

    def _send_bytes(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK,
                    extra: dict[str, str] | None = None) -> None:
        self._headers(status, content_type, len(body), extra)
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
