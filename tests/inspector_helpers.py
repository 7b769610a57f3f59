"""Shared by the inspector's API and browser tests: a demo run served on a free port."""

from __future__ import annotations

import http.client
import json
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from slipstream.inspector import demo
from slipstream.inspector.server import InspectorServer
from slipstream.inspector.store import RunStore


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The demo run directory, made once per test module."""
    return demo.make_demo_run(tmp_path_factory.mktemp("inspector") / "run")


@pytest.fixture(scope="module")
def server(run):
    """The demo run served on a free loopback port."""
    with serving(run) as server:
        yield server


@contextmanager
def serving(run_dir: Path, host: str = "127.0.0.1", remote: bool = False,
            poll_s: float = 0.5):
    """A server on a free port of `host`; a short `poll_s` stops it in milliseconds."""
    server = InspectorServer(RunStore(run_dir), host, 0, allow_remote=remote)
    thread = threading.Thread(target=server.serve_forever, args=(poll_s,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def request(server: InspectorServer, path: str, method: str = "GET",
            host: str | None = None) -> tuple[int, dict, bytes]:
    port = server.server_address[1]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host if host is not None else f"127.0.0.1:{port}"}
    connection.request(method, path, headers=headers)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), body


def get_json(server: InspectorServer, path: str):
    status, _, body = request(server, path)
    return status, json.loads(body)
