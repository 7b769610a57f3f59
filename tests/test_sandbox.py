"""The tool sandbox against hostile code: each escape is tried for real and must fail, be
bounded in time, and come back as text. The one network attempt targets a loopback socket this
test opened itself."""

import os
import socket
import time

import pytest

from slipstream.envs.sandbox import SandboxLimits, run_python

LIMITS = SandboxLimits(timeout_s=2, memory_mb=256, file_mb=1, output_chars=500)


def test_ordinary_code_runs_and_may_use_its_own_directory():
    result = run_python("import json, math, fractions\nopen('a.txt', 'w').write('x' * 3)\n"
                        "print(json.dumps([math.isqrt(49), len(open('a.txt').read())]))", LIMITS)
    assert result.ok and result.output == "[7, 3]\n"


def test_a_loop_and_a_sleep_are_stopped_at_the_time_limit():
    for code in ("while True: pass", "import time\ntime.sleep(30)"):
        started = time.monotonic()
        result = run_python(code, LIMITS)
        assert result.status == "timeout" and time.monotonic() - started < 6


def test_memory_and_output_floods_are_bounded():
    assert run_python("x = bytearray(1 << 31)", LIMITS).status == "memory"
    started = time.monotonic()
    flood = run_python("import sys\nwhile True: sys.stdout.write('y' * 65536)", LIMITS)
    assert flood.status == "output_limit" and time.monotonic() - started < 6
    assert len(flood.output) < 700 and "output cut to its first and last 250" in flood.output


def test_the_network_is_refused_even_to_a_listener_on_loopback():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    attempts = [f"import socket\nsocket.create_connection(('127.0.0.1', {port}))",
                f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))",
                "import importlib\nimportlib.import_module('socket')",
                f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/')"]
    try:
        for code in attempts:
            result = run_python(code, LIMITS)
            assert result.status == "error" and "not allowed" in result.output, code
        with pytest.raises(socket.timeout):
            listener.accept()                 # nothing ever reached it
    finally:
        listener.close()


def test_the_filesystem_outside_its_directory_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    target = tmp_path / "written.txt"
    attempts = [f"print(open({str(secret)!r}).read())",
                f"open({str(target)!r}, 'w').write('x')",
                f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
                "print(open('../../etc/hostname').read())",
                f"import os\nprint(os.listdir({str(tmp_path)!r}))",
                f"import os\nos.remove({str(secret)!r})",
                f"import os\nos.symlink({str(secret)!r}, 'link')\nprint(open('link').read())",
                f"import shutil\nshutil.copyfile({str(secret)!r}, 'copy')",
                f"print(open({pytest.__file__!r}).read())"]      # installed packages too
    for code in attempts:
        result = run_python(code, LIMITS)
        assert result.status == "error" and "sandbox:" in result.output, code
        assert "do not read" not in result.output
    assert secret.read_text() == "do not read" and not target.exists()


def test_processes_signals_and_ctypes_are_refused():
    attempts = ["import os\nos.system('true')", "import subprocess\nsubprocess.run(['true'])",
                "import os\nos.fork()", f"import os\nos.kill({os.getpid()}, 9)",
                "import os\nos.execv('/bin/true', ['true'])", "import ctypes",
                "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (999, 999))"]
    for code in attempts:
        result = run_python(code, LIMITS)
        assert result.status == "error" and "not allowed" in result.output, code
    assert os.getpid() > 0                      # still here: the kill never happened


def test_limits_are_checked():
    with pytest.raises(ValueError):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError):
        SandboxLimits(memory_mb=1)
