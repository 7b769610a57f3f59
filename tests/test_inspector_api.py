"""The inspector's HTTP API, its safety rules, the --html export and --print, and the CLI."""

import json
import re
import subprocess
import sys

import pytest
from inspector_helpers import (  # noqa: F401  (run, server, teacher_run are fixtures)
    HOSTILE_TEACHER, NO_TEACHER_ID, TEACHER_GAPS, TEACHER_ID, TEACHER_STEP, get_json, request,
    run, scored_teacher_fields, server, serving, teacher_run, teacher_trained)

from slipstream.inspector import demo
from slipstream.inspector.export import export_html
from slipstream.inspector.query import parse_query
from slipstream.inspector.server import InspectorServer
from slipstream.inspector.store import RunStore
from slipstream.inspector.terminal import inert, print_table
from slipstream.errors import SlipstreamError


def test_api_serves_run_index_metrics_samples_groups_and_buffer(server):
    status, info = get_json(server, "/api/run")
    assert status == 200 and info["samples"] == 48 and info["max_lag"] == demo.DEMO_MAX_LAG
    status, headers, body = request(server, "/api/index?from=40")
    rows = [json.loads(line) for line in body.decode().splitlines()]
    assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
    assert [r["step"] for r in rows] == [6] * 8
    _, metrics = get_json(server, "/api/metrics")
    assert [m["step"] for m in metrics["rows"]] == list(range(1, demo.DEMO_STEPS + 1))
    _, top = get_json(server, "/api/samples?sort=max_gap&desc=1&per_page=1")
    assert top["rows"][0]["id"] == demo.DEMO_LARGEST_GAP_ID and top["total"] == 48
    step = top["rows"][0]["step"]
    status, record = get_json(server, f"/api/sample?id={demo.DEMO_LARGEST_GAP_ID}&step={step}")
    assert status == 200 and record["sample"]["sample_id"] == demo.DEMO_LARGEST_GAP_ID
    _, group = get_json(server, f"/api/group?id={demo.DEMO_ZERO_VARIANCE_GROUP}")
    assert len(group["rows"]) == demo.DEMO_GROUP_SIZE
    _, buffer = get_json(server, "/api/buffer?snapshot=snapshot-step000002.jsonl")
    assert buffer["snapshot"] == "snapshot-step000002.jsonl" and len(buffer["rows"]) == 8
    assert all(r["age"] <= r["max_lag"] for r in buffer["rows"])
    assert buffer["evictions"][0]["group_id"] == demo.DEMO_EVICTED_GROUP


def test_pages_carry_a_strict_content_security_policy(server):
    status, headers, body = request(server, "/")
    assert status == 200 and b"<script src=\"static/app.js\">" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    html = body.decode()
    assert not re.search(r"(src|href)=\"(https?:)?//", html)      # nothing from elsewhere


@pytest.mark.parametrize("host", ["evil.example:80", "attacker.com", "", "127.0.0.1:1"])
def test_a_foreign_host_header_is_refused(server, host):
    status, _, _ = request(server, "/api/run", host=host)
    assert status == 403


def test_localhost_host_header_is_accepted(server):
    port = server.server_address[1]
    assert request(server, "/api/run", host=f"localhost:{port}")[0] == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_the_server_is_read_only(server, method):
    assert request(server, "/api/run", method=method)[0] == 405


@pytest.mark.parametrize("path", [
    "/static/../store.py", "/static/..%2fstore.py", "/static/%2e%2e/server.py",
    "/../../etc/passwd", "/api/sample?id=../../../etc/passwd&step=1",
    "/api/sample?id=g0000000-0&step=999", "/api/buffer?snapshot=../../config.json",
    "/static/index.html/../../../demo.py", "/config.json", "/rollouts/step-000001.jsonl",
])
def test_paths_and_ids_cannot_reach_files(server, path):
    status, _, body = request(server, path)
    assert b"root:" not in body and b"import" not in body and b"\"sample_id\"" not in body
    if path.startswith("/api/buffer"):
        assert json.loads(body)["snapshot"] != "../../config.json"
    else:
        assert status in (400, 404)


def test_bad_parameters_are_400(server):
    assert request(server, "/api/samples?sort=nope")[0] == 400
    assert request(server, "/api/index?from=-1")[0] == 400


def test_a_non_loopback_bind_is_refused_without_allow_remote(run):
    with pytest.raises(SlipstreamError, match="--allow-remote"):
        InspectorServer(RunStore(run), "0.0.0.0", 0, allow_remote=False)
    with pytest.raises(SlipstreamError, match="bad port"):
        InspectorServer(RunStore(run), "127.0.0.1", 70000, allow_remote=False)


def test_export_embeds_hostile_text_inertly_and_round_trips(run, tmp_path):
    out, count, left_out = export_html(RunStore(run), tmp_path / "run.html", parse_query({}))
    html = out.read_text()
    assert count == 48 and left_out == 0
    data = html[html.index('id="slipstream-data">') + len('id="slipstream-data">'):]
    data = data[: data.index("</script>")]
    for raw in ("<", ">", "&", "\u2028", "\u2029"):
        assert raw not in data
    assert html.count("</script>") == 2      # the data block's own and the app's own
    payload = json.loads(data)
    hostile = [r for r in payload["samples"].values()
               if r["sample"]["sample_id"] == demo.DEMO_HOSTILE_ID]
    assert hostile[0]["sample"]["completion_text"] == demo.DEMO_HOSTILE_TEXT
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


def _embedded(html):
    data = html[html.index('id="slipstream-data">') + len('id="slipstream-data">'):]
    return data[: data.index("</script>")]


def test_the_teacher_gap_is_served_and_exported_with_its_sample(teacher_run, tmp_path):
    sample = f"/api/sample?id={TEACHER_ID}&step={TEACHER_STEP}"
    with serving(teacher_run) as server:
        status, record = get_json(server, sample)
        assert status == 200 and record["teacher_view"]["gap_T"] == list(TEACHER_GAPS)
        _, other = get_json(server, f"/api/sample?id={NO_TEACHER_ID}&step={TEACHER_STEP}")
        assert other["teacher_view"]["available"] is False
        assert "No teacher scores" in other["teacher_view"]["reason"]
    out, count, _ = export_html(RunStore(teacher_run), tmp_path / "t.html",
                                parse_query({"step_min": str(TEACHER_STEP)}))
    data = _embedded(out.read_text())
    assert count == 3 and HOSTILE_TEACHER not in data       # the teacher's id is inert there
    view = json.loads(data)["samples"][f"{TEACHER_ID}@{TEACHER_STEP}"]["teacher_view"]
    assert view["gap_T"] == list(TEACHER_GAPS) and view["id"] == HOSTILE_TEACHER


def test_non_finite_teacher_scores_reach_the_browser_as_browser_json(tmp_path):
    from slipstream.buffer.rollout_log import write_step

    run = demo.make_demo_run(tmp_path / "run")
    fields = scored_teacher_fields(teacher_logprobs_T=(float("-inf"), float("nan"), -0.5, -1.0))
    write_step(run / "rollouts", TEACHER_STEP, [teacher_trained(0, **fields)])
    with serving(run) as server:
        status, _, body = request(server, f"/api/sample?id={TEACHER_ID}&step={TEACHER_STEP}")

    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    view = json.loads(body, parse_constant=refuse)["teacher_view"]   # JSON.parse's rules
    assert status == 200 and view["available"]
    assert view["gap_T"] == [{"$float": "-Infinity"}, {"$float": "NaN"}, 0.0, 2.0]
    assert view["mean_gap"] == {"$float": "NaN"}            # a NaN score is not averaged away
    assert view["max_abs_gap"] == {"$float": "Infinity"}


def test_export_selection_and_size_cap(run, tmp_path):
    store = RunStore(run)
    _, count, left_out = export_html(store, tmp_path / "a.html",
                                     parse_query({"step_min": "3", "step_max": "3"}))
    assert count == 8 and left_out == 0
    _, count, left_out = export_html(store, tmp_path / "b.html", parse_query({}), limit=10)
    assert count == 8 and left_out == 40            # whole groups only: 2 groups of 4
    _, count, _ = export_html(store, tmp_path / "c.html", parse_query({}), max_bytes=1)
    assert count == 0


def test_print_shows_the_table_with_control_characters_made_inert(run):
    table = print_table(RunStore(run).rows, parse_query({"sort": "max_gap", "desc": "1",
                                                          "per_page": "3"}))
    lines = table.splitlines()
    assert demo.DEMO_LARGEST_GAP_ID in lines[2] and lines[-1] == "3 of 48 matching samples"
    assert inert("a\x1b[31mred\x07\u202eb\n") == "a\\x1b[31mred\\x07\\u202eb\\x0a"


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "slipstream.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_cli_demo_print_and_one_line_errors(tmp_path):
    result = _cli("inspect", "--demo", str(tmp_path / "d"), "--print", "--sort", "max_gap",
                  "--desc", "--limit", "1")
    assert result.returncode == 0, result.stderr
    assert demo.DEMO_LARGEST_GAP_ID in result.stdout
    for args, message in [(["inspect", str(tmp_path / "nope")], "does not exist"),
                          (["inspect", str(tmp_path)], "is not a run directory"),
                          (["inspect", str(tmp_path / "d"), "--host", "0.0.0.0",
                            "--no-browser"], "--allow-remote"),
                          (["inspect", str(tmp_path / "d"), "--port", "-3"], "bad port"),
                          (["inspect", str(tmp_path / "d"), "--print", "--sort", "x"],
                           "bad selection"),
                          (["inspect", str(tmp_path / "d"), "--html",
                            str(tmp_path / "no" / "such" / "x.html")], "cannot write"),
                          (["board", str(tmp_path / "nope")], "does not exist")]:
        result = _cli(*args)
        assert result.returncode == 1, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("slipstream: ") and message in lines[0]


def test_cli_serves_on_a_free_port_and_prints_its_url(run):
    process = subprocess.Popen([sys.executable, "-m", "slipstream.cli", "inspect", str(run),
                                "--port", "0", "--no-browser"], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        url = line.split()[2]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), line
        import urllib.request

        with urllib.request.urlopen(url + "api/run", timeout=10) as response:
            assert json.loads(response.read())["samples"] == 48
    finally:
        process.terminate()
        process.wait(timeout=10)
