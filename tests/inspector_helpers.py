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


# -- distillation samples -----------------------------------------------------------------------
# A group of three at step 7 (learner version 6), four tokens each (ids 3..6, sampler logprob
# -0.5 each: factories.make_sample): an ensemble-scored sample, one no teacher scored, and one
# whose teacher failed. The numbers are exact in binary, so the gaps below are exact too.
TEACHER_STEP = 7
TEACHER_ID = "t0-0"
NO_TEACHER_ID = "t0-1"
FAILED_TEACHER_ID = "t0-2"
TRAINER_LOGPROBS = (-1.25, -0.5, -0.5, -3.0)
TEACHER_LOGPROBS = (-0.25, -2.0, -0.5, -1.0)
TEACHER_GAPS = (1.0, -1.5, 0.0, 2.0)              # teacher - trainer, by hand
TEACHER_TOPK_IDS = ((3, 9), (8, 4), (5, 2), (6,))  # token 1's best is 8, not the generated 4
TEACHER_TOPK_LOGPROBS = ((-0.25, -2.5), (-0.1, -2.0), (-0.5, -1.5), (-1.0,))
# User strings (a teacher's id, ensemble member names) that would run as markup if rendered as
# HTML; the page must show them as text.
HOSTILE_TEACHER = "<script>alert('teacher')</script>"
HOSTILE_MEMBER = "<img src=x onerror=alert(3)>\u202e"
TEACHER_PARTS = {"alpha": (-0.5, -1.5, -0.25, -1.0), HOSTILE_MEMBER: (0.0, -3.0, -1.0, -1.0)}
TEACHER_WEIGHTS = {"alpha": 0.75, HOSTILE_MEMBER: 0.25}


def teacher_trained(index: int, trainer=TRAINER_LOGPROBS, **teacher_fields):
    """A `TrainedSample` of group t0 at TEACHER_STEP with the given `teacher_*` fields."""
    import dataclasses

    from factories import make_sample

    from slipstream.buffer.records import TrainedSample

    sample = dataclasses.replace(make_sample("t0", index, versions=(6,) * len(trainer)),
                                 **teacher_fields)
    return TrainedSample(sample, TEACHER_STEP, 6, 0.0, tuple(trainer))


def scored_teacher_fields(**changes) -> dict:
    """The `teacher_*` fields of the ensemble-scored sample TEACHER_ID, with `changes`."""
    return {"teacher_logprobs_T": TEACHER_LOGPROBS, "teacher_topk_ids_T_K": TEACHER_TOPK_IDS,
            "teacher_topk_logprobs_T_K": TEACHER_TOPK_LOGPROBS, "teacher_id": HOSTILE_TEACHER,
            "teacher_version": 0, "teacher_parts": TEACHER_PARTS,
            "teacher_weights": TEACHER_WEIGHTS, **changes}


def add_teacher_step(run_dir: Path) -> Path:
    """Append the distillation group (TEACHER_STEP) to a run directory, e.g. the demo's."""
    from slipstream.buffer.rollout_log import write_step

    scored = teacher_trained(0, **scored_teacher_fields())
    failed = teacher_trained(2, teacher_id="tutor", teacher_error="context function raised")
    write_step(run_dir / "rollouts", TEACHER_STEP, [scored, teacher_trained(1), failed])
    return run_dir


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """The demo run with the distillation group appended, made once per test module."""
    return add_teacher_step(demo.make_demo_run(tmp_path_factory.mktemp("teacher") / "run"))
