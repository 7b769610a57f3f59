"""The inspector on run directories a crashed, resumed or foreign writer left behind: every bad
row is skipped and counted or answered with a readable JSON error; the server never drops a
connection and never lists a row twice. And the URL it prints opens for every host it binds."""

import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest
import inspector_helpers
from inspector_helpers import (
    TEACHER_ID, TEACHER_STEP, get_json, request, scored_teacher_fields, teacher_trained)

from slipstream.buffer.records import to_json_dict
from slipstream.buffer.rollout_log import index_row, write_step
from slipstream.errors import SlipstreamError
from slipstream.inspector import demo, jsonl, teacher
from slipstream.inspector.export import export_html
from slipstream.inspector.query import SORT_KEYS, parse_query
from slipstream.inspector.server import InspectorServer
from slipstream.inspector.store import RunStore
from slipstream.inspector.terminal import print_table

ALL = demo.DEMO_STEPS * demo.DEMO_GROUPS_PER_STEP * demo.DEMO_GROUP_SIZE


@pytest.fixture()
def run(tmp_path):
    return demo.make_demo_run(tmp_path / "run")


def serving(run_dir, host="127.0.0.1", remote=False):
    """Stopping in milliseconds: many short-lived servers here."""
    return inspector_helpers.serving(run_dir, host, remote, poll_s=0.01)


def _index(run):
    return run / "rollouts" / "index.jsonl"


def _index_rows(run):
    return [json.loads(line) for line in _index(run).read_text().splitlines()]


def _append(path, *lines):
    with path.open("a") as out:
        out.write("".join(line + "\n" for line in lines))


def _strict(line):
    """JSON.parse's rules: no NaN or Infinity literals."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(line, parse_constant=refuse)


def _served(run):
    """/api/run, and the rows of /api/index, after checking that every listing answers, parses
    as the browser would, and holds each (id, step) once."""
    with serving(run) as server:
        status, info = get_json(server, "/api/run")
        assert status == 200
        status, _, body = request(server, "/api/index")
        rows = [_strict(line) for line in body.decode().splitlines()]
        keys = [(r["id"], r["step"]) for r in rows]
        assert status == 200 and len(keys) == len(set(keys)) == info["samples"]
        for sort in SORT_KEYS:
            for desc in ("0", "1"):
                status, result = get_json(server, f"/api/samples?sort={sort}&desc={desc}"
                                                  "&per_page=500")
                assert status == 200 and result["total"] == len(rows)
                assert len({(r["id"], r["step"]) for r in result["rows"]}) == len(rows)
        assert get_json(server, "/api/buffer")[0] == 200
        assert get_json(server, "/api/metrics")[0] == 200
    return info, rows


BAD_INDEX_FIELDS = [
    ("id", None), ("id", 7), ("id", ["a"]), ("id", {"a": 1}), ("id", True), ("id", ""),
    ("group", None), ("group", 3), ("group", ["g"]),
    ("step", "3"), ("step", None), ("step", -1), ("step", 2.5), ("step", True), ("step", [3]),
    ("step", float("nan")), ("step", {"$float": "NaN"}),
    ("offset", -1), ("offset", 1.5), ("offset", "0"), ("offset", None), ("offset", 10**30),
    ("offset", float("inf")), ("offset", False),
    ("bytes", 0), ("bytes", -5), ("bytes", 2**40), ("bytes", "100"), ("bytes", None),
    ("bytes", 10**6), ("bytes", [100]),
    ("file", "../../etc/passwd"), ("file", "/etc/passwd"), ("file", "step-000999.jsonl"),
    ("file", "step-000001.jsonl/../../config.json"), ("file", "../config.json"),
    ("file", None), ("file", ["step-000001.jsonl"]), ("file", "index.jsonl"),
    ("reward", "1.0"), ("reward", [1]), ("reward", {"a": 1}), ("reward", True),
    ("advantage", "x"), ("max_gap", "big"), ("k3", [0]), ("max_iw", "1"),
    ("len", "5"), ("len", 5.5), ("staleness", "1"), ("versions", True), ("det_nonzero", "2"),
    ("det_tokens", float("nan")), ("masked", {"n": 1}),
    ("reasons", "ppo_clip"), ("reasons", ["ppo_clip"]), ("reasons", {"ppo_clip": "2"}),
    ("reasons", {"ppo_clip": -1}), ("reasons", {"ppo_clip": None}),
    ("finish", 3), ("text", ["x"]), ("prompt", {"a": 1}), ("reward_error", 5),
    ("prompt_id", {"a": 1}),
]


@pytest.mark.parametrize("field, value", BAD_INDEX_FIELDS)
def test_an_index_row_with_a_bad_field_is_skipped_and_counted(run, field, value):
    row = {**_index_rows(run)[0], "id": "hostile", field: value}
    _append(_index(run), json.dumps(row))
    demo.append_demo_step(run, demo.DEMO_STEPS + 1)       # good lines after the bad one
    info, rows = _served(run)
    assert info["samples"] == ALL + 8 and "hostile" not in {r["id"] for r in rows}
    [(reason, count)] = info["skipped"].items()
    assert info["skipped_lines"] == count == 1 and reason.startswith("rollouts/index.jsonl: ")
    with serving(run) as server:
        status, answer = get_json(server, "/api/sample?id=hostile")
        assert status == 404 and "not in the index" in answer["error"]


@pytest.mark.parametrize("line", ["[1, 2]", '"row"', "17", "null", "{", "\xff\xfe{}",
                                  '{"id": {"$float": "x"}}', "[" * 100000])
def test_an_index_line_that_is_not_a_json_object_is_skipped_and_counted(run, line):
    with _index(run).open("ab") as out:
        out.write(line.encode("latin-1") + b"\n")
    info, rows = _served(run)
    assert len(rows) == ALL and info["skipped_lines"] == 1
    assert list(info["skipped"]) == ["rollouts/index.jsonl: not a JSON object"]


def test_missing_or_non_finite_summary_numbers_are_kept_and_sort_last(run):
    first, second = _index_rows(run)[:2]
    _append(_index(run), json.dumps({**first, "id": "nan", "reward": float("nan"),
                                     "max_gap": float("inf"), "advantage": None}),
            json.dumps({**second, "id": "none", "reward": None, "k3": None}))
    info, rows = _served(run)                              # NaN lines served re-encoded
    assert info["samples"] == ALL + 2 and info["skipped_lines"] == 0
    with serving(run) as server:
        for desc in ("0", "1"):
            _, result = get_json(server, f"/api/samples?sort=reward&desc={desc}&per_page=500")
            assert {r["id"] for r in result["rows"][-2:]} == {"nan", "none"}
        _, result = get_json(server, "/api/samples?reward_min=-1e9&per_page=500")
        assert result["total"] == ALL
    table = print_table(RunStore(run).rows, parse_query({"sort": "reward", "per_page": "500"}))
    assert table.splitlines()[-1] == f"{ALL + 2} of {ALL + 2} matching samples"


def test_a_repeated_index_row_is_listed_once(run):
    lines = _index(run).read_text().splitlines()
    _append(_index(run), lines[0], lines[5], lines[5])
    info, rows = _served(run)
    assert len(rows) == ALL and info["skipped"] == {
        "rollouts/index.jsonl: a second row for the same sample and step": 3}


def test_an_index_row_pointing_at_another_sample_is_a_readable_error(run):
    rows = _index_rows(run)
    other = rows[9]
    # The same sample at another step (a buffer may train a sample twice) is listed, but the
    # bytes it points at hold its step-2 record; an id the record does not bear likewise.
    _append(_index(run), json.dumps({**rows[0], "step": 9}),
            json.dumps({**rows[0], "id": "impostor", "offset": other["offset"],
                        "bytes": other["bytes"], "file": other["file"]}))
    info, _ = _served(run)
    assert info["samples"] == ALL + 2
    with serving(run) as server:
        status, answer = get_json(server, f"/api/sample?id={rows[0]['id']}&step=9")
        assert status == 500 and "the file changed after it was indexed" in answer["error"]
        status, answer = get_json(server, "/api/sample?id=impostor")
        assert status == 500 and repr(other["id"]) in answer["error"]
        assert get_json(server, f"/api/sample?id={rows[0]['id']}&step=1")[0] == 200


def _row_of_step(run, step, last=True):
    rows = [r for r in _index_rows(run) if r["step"] == step]
    return rows[-1] if last else rows[0]


def test_a_step_file_rewritten_shorter_is_a_readable_error(run):
    row = _row_of_step(run, 3)
    path = run / "rollouts" / row["file"]
    with serving(run) as server:
        assert get_json(server, f"/api/sample?id={row['id']}&step=3")[0] == 200
        path.write_bytes(path.read_bytes()[: row["offset"] + 10])
        status, answer = get_json(server, f"/api/sample?id={row['id']}&step=3")
        assert status == 500 and "rewritten shorter" in answer["error"]
        assert row["file"] in answer["error"]
        assert get_json(server, f"/api/group?id={row['group']}")[0] == 200
        assert get_json(server, "/api/run")[0] == 200      # the server goes on answering
        path.unlink()
        status, answer = get_json(server, f"/api/sample?id={row['id']}&step=3")
        assert status == 500 and "no longer in the run directory" in answer["error"]


def test_a_record_whose_loss_said_nothing_per_token_is_readable(run):
    """Empty per-token lists (a loss that reported no weights or masks) are not damage."""
    from factories import make_sample

    from slipstream.buffer.records import TrainedSample
    from slipstream.buffer.rollout_log import write_step

    sample = make_sample("g9", 0, versions=(6,) * 4)
    write_step(run / "rollouts", 7, [TrainedSample(sample, 7, 6, 0.0, (-0.5,) * 4)])
    store = RunStore(run)
    assert store.sample("g9-0", 7)["importance_weights_T"] == []
    assert store.skipped_lines == 0


def _write_raw_step(run, step, records):
    """A step file of JSON records as given (what no writer of ours would produce), indexed."""
    name, lines, rows = f"step-{step:06d}.jsonl", [], []
    offset = 0
    for record in records:
        line = (json.dumps(record) + "\n").encode()
        rows.append(json.dumps(index_row(record, name, offset, len(line))))
        lines.append(line)
        offset += len(line)
    (run / "rollouts" / name).write_bytes(b"".join(lines))
    _append(_index(run), *rows)


BAD_TEACHER_FIELDS = [
    ("teacher_logprobs_T", [-0.5] * 3), ("teacher_logprobs_T", ["-0.5"] * 4),
    ("teacher_logprobs_T", [True] * 4), ("teacher_logprobs_T", [10**400] * 4),
    ("teacher_logprobs_T", {"0": -0.5}), ("teacher_logprobs_T", "-0.5"),
    ("teacher_topk_ids_T_K", [[3]] * 3), ("teacher_topk_ids_T_K", [3, 4, 5, 6]),
    ("teacher_topk_ids_T_K", [["3"]] * 4), ("teacher_topk_ids_T_K", [[3.0]] * 4),
    ("teacher_topk_logprobs_T_K", [["x"]] * 4), ("teacher_topk_logprobs_T_K", {"a": 1}),
    ("teacher_parts", [[-0.5] * 4]), ("teacher_parts", {"<b>m</b>" * 50: [-0.5] * 3}),
    ("teacher_parts", {"m": "abc"}), ("teacher_parts", {"m": [None] * 4}),
    ("teacher_weights", {"alpha": "heavy"}), ("teacher_weights", [0.5]),
    ("teacher_id", 5), ("teacher_id", ["t"]), ("teacher_version", "0"),
    ("teacher_version", True), ("teacher_version", 1.5), ("teacher_error", {"e": 1}),
]


@pytest.mark.parametrize("field, value", BAD_TEACHER_FIELDS)
def test_a_malformed_teacher_field_leaves_the_sample_readable_without_a_teacher_view(
        run, field, value):
    record = to_json_dict(teacher_trained(0, **scored_teacher_fields()))
    record["sample"][field] = value
    _write_raw_step(run, TEACHER_STEP, [record])
    info, rows = _served(run)
    assert info["skipped_lines"] == 0 and TEACHER_ID in {r["id"] for r in rows}
    with serving(run) as server:
        status, served = get_json(server, f"/api/sample?id={TEACHER_ID}&step={TEACHER_STEP}")
    view = served["teacher_view"]
    assert status == 200 and served["sample"][field] == value      # the record, as written
    assert view["available"] is False and view["malformed"] is True and "gap_T" not in view
    # The reason names the field, stays short, and repeats no user string (a member name).
    assert view["reason"].startswith("The teacher fields of this sample are malformed")
    assert len(view["reason"]) < 200 and "<b>" not in view["reason"]


def test_teacher_strings_and_member_lists_are_bounded(run):
    n = 4
    parts = {f"m{i}\u202e<i>": (-0.5,) * n for i in range(1000)}
    record = teacher_trained(0, teacher_logprobs_T=(-1.0,) * n, teacher_topk_ids_T_K=((1,),) * n,
                             teacher_topk_logprobs_T_K=((-1.0,),) * n, teacher_id="t" * 10**5,
                             teacher_parts=parts)
    write_step(run / "rollouts", TEACHER_STEP, [record])
    view = RunStore(run).sample(TEACHER_ID, TEACHER_STEP)["teacher_view"]
    assert view["available"] and len(view["id"]) == teacher.MAX_TEXT + 1      # and an ellipsis
    assert len(view["members"]) == teacher.MAX_MEMBERS
    assert view["members_left_out"] == 1000 - teacher.MAX_MEMBERS
    assert [m["name"] for m in view["members"]] == list(parts)[:teacher.MAX_MEMBERS]
    assert all(m["weight"] is None for m in view["members"])             # none recorded


@pytest.mark.parametrize("replacement", [b'{"x": 1}', b"\xff" * 40, b"[]", b'{"sample": []}'])
def test_a_record_overwritten_in_place_is_a_readable_error(run, replacement):
    row = _row_of_step(run, 2, last=False)
    path = run / "rollouts" / row["file"]
    data = bytearray(path.read_bytes())
    data[row["offset"]: row["offset"] + row["bytes"] - 1] = \
        replacement.ljust(row["bytes"] - 1, b" ")
    path.write_bytes(bytes(data))
    with serving(run) as server:
        status, answer = get_json(server, f"/api/sample?id={row['id']}&step=2")
        assert status == 500 and "are not its record" in answer["error"]
    out, count, _ = export_html(RunStore(run), run.parent / "x.html", parse_query({}))
    assert count == ALL and '"unreadable": 1' in out.read_text()


def test_a_rewound_index_and_metrics_are_read_again_not_appended(run):
    """A resume rewinds index.jsonl and metrics.jsonl (a new file renamed over the old), then
    the run appends again: the store must hold each row once, as the files now say."""
    store = RunStore(run)
    assert len(store.rows) == ALL
    for name, keep in (("rollouts/index.jsonl", 16), ("metrics.jsonl", 2)):
        path = run / name
        tmp = path.with_name(".rewind")
        tmp.write_text("".join(f"{line}\n" for line in path.read_text().splitlines()[:keep]))
        os.replace(tmp, path)
    for step in range(3, demo.DEMO_STEPS + 1):
        (run / "rollouts" / f"step-{step:06d}.jsonl").unlink()
    demo.append_demo_step(run, 3)                          # step 3 again, after the rewind
    store.refresh(force=True)
    keys = [(r["id"], r["step"]) for r in store.rows]
    assert len(keys) == len(set(keys)) == 24 and store.generation > 0
    assert [m["step"] for m in store.metrics] == [1, 2, 3] and store.skipped_lines == 0
    with serving(run) as server:
        status, headers, _ = request(server, "/api/index")
        assert headers["X-Slipstream-Generation"] == "0"   # a fresh store: nothing rewound yet


def test_an_index_rewritten_in_place_longer_is_read_again(run):
    store = RunStore(run)
    index = _index(run)
    index.write_bytes(b"  " + index.read_bytes())          # same file, shifted, longer
    store.refresh(force=True)
    assert len(store.rows) == len(store.index_lines) == ALL and store.generation == 1
    assert store.skipped_lines == 0


METRICS_LINES = ['{"step": "7"}', '{"step": null}', '{"step": -1}', '{"step": true}',
                 '{"step": [7]}', '{"step": 7.0}', '{"reward/mean": 1}', "[1, 2]", '"step"',
                 "nonsense", '{"step": 1, "reward/mean": 0}']


def test_bad_metrics_rows_are_skipped_and_counted(run):
    _append(run / "metrics.jsonl", *METRICS_LINES, '{"step": 7, "reward/mean": NaN}')
    info, _ = _served(run)
    assert info["metric_rows"] == demo.DEMO_STEPS + 1
    assert info["skipped_lines"] == len(METRICS_LINES)
    assert all(key.startswith("metrics.jsonl: ") for key in info["skipped"])
    with serving(run) as server:
        status, _, body = request(server, "/api/metrics")
        assert status == 200 and _strict(body)["rows"][-1]["reward/mean"] == {"$float": "NaN"}


def test_bad_snapshot_and_eviction_rows_are_skipped_and_counted(run):
    buffer = run / "buffer"
    good = (buffer / "snapshot-step000002.jsonl").read_text().splitlines()[0]
    eviction = (buffer / "evictions.jsonl").read_text().splitlines()[0]
    _append(buffer / "snapshot-step000099.jsonl", good, good, '{"sample": []}',
            '{"sample": {"sample_id": 5}}', '{"sample": {"sample_id": "a", "versions_T": "12"}}',
            '{"sample": {"sample_id": "b", "versions_T": [1, "2"]}}',
            '{"sample": {"sample_id": "c"}, "ticket": "x"}', "garbage", "[]",
            '{"sample": {"sample_id": "d", "completion_text": ["x"]}}')
    _append(buffer / "evictions.jsonl", eviction, "[]",
            '{"group_id": null, "reason": "stale", "ticket": 1}',
            '{"group_id": "g", "reason": {"a": 1}, "ticket": 1}',
            '{"group_id": "g", "reason": "stale", "ticket": "1"}')
    with serving(run) as server:
        status, info = get_json(server, "/api/buffer?snapshot=snapshot-step000099.jsonl")
        assert status == 200 and len(info["rows"]) == 1 and info["skipped_lines"] == 9 + 5
        assert len(info["evictions"]) == 1 and info["eviction_counts"] == {"stale": 1}
        assert get_json(server, "/api/run")[1]["skipped_lines"] == 0   # counted per answer


@pytest.mark.parametrize("config", ["[1, 2]", "not json", '{"buffer": "x"}',
                                    '{"buffer": {"max_lag": "2"}}', '{"buffer": {"max_lag": true}}',
                                    '{"buffer": {"max_lag": -1}}', '{"deterministic": "yes"}',
                                    '{"buffer": [1]}'])
def test_a_bad_config_json_does_not_break_the_run_view(run, config):
    (run / "config.json").write_text(config)
    info, rows = _served(run)
    assert len(rows) == ALL and info["max_lag"] is None and info["deterministic"] is False
    assert RunStore(run).deterministic_banner() is None


def test_a_step_file_without_index_skips_its_bad_records(run):
    _index(run).unlink()
    step = run / "rollouts" / "step-000002.jsonl"
    record = json.loads(step.read_text().splitlines()[0])
    bad = [{**record, "sample": []}, {**record, "step": "2"},
           {**record, "trainer_logprobs_T": record["trainer_logprobs_T"][:-1]},
           {**record, "sample": {**record["sample"], "versions_T": "1"}},
           {**record, "sample": {k: v for k, v in record["sample"].items() if k != "prompt_id"}}]
    _append(step, *map(json.dumps, bad), "not json", json.dumps(record))   # and a repeat
    for path in (run / "rollouts").iterdir():
        os.utime(path, (path.stat().st_mtime - 60,) * 2)
    info, rows = _served(run)
    assert len(rows) == ALL and info["skipped_lines"] == len(bad) + 2
    assert all(k.startswith("rollouts/step-000002.jsonl: ") for k in info["skipped"])


def test_a_line_longer_than_the_cap_is_skipped_without_being_held(run, monkeypatch):
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 2000)
    store = RunStore(run)
    metrics = run / "metrics.jsonl"
    with metrics.open("a") as out:
        out.write('{"step": 50, "x": "' + "y" * 5000)     # still being written
    store.refresh(force=True)
    with metrics.open("a") as out:
        out.write("y" * 3000 + '"}\n{"step": 51}\n')
    store.refresh(force=True)
    assert [m["step"] for m in store.metrics][-1] == 51 and store.skipped_lines == 1


def test_a_failure_costs_one_answer_not_the_connection(run, monkeypatch):
    with serving(run) as server:
        def broken(name):
            raise RuntimeError("boom")
        monkeypatch.setattr(server.store, "buffer_info", broken)
        status, answer = get_json(server, "/api/buffer")
        assert status == 500 and answer["error"] == "internal error: RuntimeError: boom"
        status, _, body = request(server, "http://[/")         # a path urlsplit rejects
        assert status == 400 and json.loads(body)["error"]
        assert get_json(server, "/api/sample?id=x&step=99999999999999999999")[0] == 404
        assert get_json(server, "/api/run")[0] == 200


# -- the printed URL ---------------------------------------------------------------------------
HOSTS = [("127.0.0.1", False), ("localhost", False), ("::1", False), ("[::1]", False),
         ("0.0.0.0", True), ("::", True), ("", True)]


def _open(url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # no proxy
    with opener.open(url + "api/run", timeout=10) as response:
        return response.status, json.loads(response.read())


@pytest.mark.parametrize("host, remote", HOSTS)
def test_the_printed_url_opens_for_every_host_that_binds(run, host, remote):
    try:
        context = serving(run, host, remote)
        server = context.__enter__()
    except SlipstreamError as error:
        pytest.skip(f"{host!r} does not bind here: {error}")
    try:
        assert re.fullmatch(r"http://(127\.0\.0\.1|\[::1\]):\d+/", server.url), server.url
        status, info = _open(server.url)
        assert status == 200 and info["samples"] == ALL
    finally:
        context.__exit__(None, None, None)


@pytest.mark.parametrize("host, message", [
    ("no-such-host.invalid", "cannot listen on"), ("a" * 70 + ".example", "cannot listen on"),
    ("192.0.2.77", "cannot listen on"), ("300.1.1.1", "cannot listen on"),
    ("fd00::1234", "--allow-remote")])
def test_a_host_that_cannot_bind_is_one_clear_error(run, host, message):
    with pytest.raises(SlipstreamError, match=message):
        InspectorServer(RunStore(run), host, 0, allow_remote=message != "--allow-remote")


def _cli(*args):
    return subprocess.Popen([sys.executable, "-m", "slipstream.cli", "inspect", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("args", [("--host", "::1"), ("--host", "::", "--allow-remote")])
def test_the_cli_prints_an_ipv6_url_that_opens(run, args):
    process = _cli(str(run), "--port", "0", "--no-browser", *args)
    try:
        line = process.stdout.readline()
        if not line:
            pytest.skip(f"IPv6 does not bind here: {process.stderr.read().strip()}")
        url = line.split()[2]
        assert url.startswith("http://[::1]:"), line
        status, info = _open(url)
        assert status == 200 and info["samples"] == ALL
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_cli_refuses_an_unknown_host_in_one_line(run):
    process = _cli(str(run), "--host", "no-such-host.invalid", "--no-browser")
    _, stderr = process.communicate(timeout=60)
    lines = stderr.strip().splitlines()
    assert process.returncode == 1 and len(lines) == 1
    assert lines[0].startswith("slipstream: cannot listen on 'no-such-host.invalid'")
