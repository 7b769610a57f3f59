"""A small Python sandbox for tool calls: the model's code runs bounded in time, memory, output,
processes, network and filesystem, and every way it can fail comes back as text.

    result = run_python("print(2 + 2)", SandboxLimits())     # result.output == "4\n"

Each call is a fresh interpreter (`python -I -S`: no site-packages, no environment, no user
site) in a new session, in its own temporary directory, removed afterwards:
- time: a wall-clock limit, after which the whole process group is killed, and a CPU-seconds
  rlimit as the backstop;
- memory: RLIMIT_AS (address space), so an allocation past it raises MemoryError in the child;
- output: stdout and stderr go to one file under RLIMIT_FSIZE, so printing 100 MB stops at the
  cap (the write fails) instead of filling the parent's memory or disk; what comes back is cut
  to `output_chars`, its head and its tail;
- network, processes, the filesystem: a PEP 578 audit hook, installed before the model's code
  runs and impossible to remove from Python, refuses sockets, subprocesses, exec, fork, signals
  to other processes, ctypes (which could reach around the hook), and any open, listing or
  change of a path outside the temporary directory, except reading (and listing) the standard
  library the interpreter imports from (not installed packages).
The audit hook is a Python-level guard: it stops Python code, which is what the model writes,
not a native exploit of the interpreter. A run needing a hard boundary against that should
also run the worker in a container or a network namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

_KILL_GRACE_S = 2.0

# Runs in the child before the model's code: argv[1] the sandbox directory, argv[2] the readable
# standard library directories (os.pathsep-joined), argv[3] the file holding the code, argv[4:7]
# the address-space, CPU-seconds and file-size limits. The limits are set here rather than in a
# preexec_fn, which is unsafe in a process with threads (a Ray actor running vLLM).
_PRELUDE = r'''
import os, resource, sys
for _kind, _value in zip((resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_FSIZE,
                          resource.RLIMIT_CORE), (*map(int, sys.argv[4:7]), 0)):
    resource.setrlimit(_kind, (_value, _value))
_ROOT = os.path.realpath(sys.argv[1])
_READABLE = tuple(os.path.realpath(p) for p in sys.argv[2].split(os.pathsep) if p)
_CODE = sys.argv[3]
_DENIED_PREFIXES = ("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn",
                    "os.fork", "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.",
                    "os.system", "pty.", "resource.setrlimit", "webbrowser",
                    "urllib.", "http.", "ftplib.", "smtplib.", "imaplib.", "poplib.", "nntplib.",
                    "telnetlib.", "os.setuid", "os.setgid", "os.chroot", "mmap.")
_DENIED_MODULES = {"_ctypes", "ctypes", "_posixsubprocess", "_socket", "socket", "mmap", "pty"}
_PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                "os.symlink", "os.link", "os.truncate", "os.utime", "os.chdir", "shutil.rmtree",
                "shutil.copyfile", "shutil.move", "os.chflags", "os.lchown", "os.mkfifo",
                "os.mknod"}
_LISTING_EVENTS = {"os.listdir", "os.scandir", "os.walk", "glob.glob"}   # imports list stdlib
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_ONLY_ROOT = (_ROOT,)

def _inside(path, roots):
    real = os.path.realpath(path)
    if roots is not _ONLY_ROOT and {"site-packages", "dist-packages"} & set(real.split(os.sep)):
        return False                            # installed packages are not the stdlib
    return any(real == r or real.startswith(r + os.sep) for r in roots)

def _paths(args):
    return [a for a in args if isinstance(a, (str, bytes, os.PathLike))]

def _guard(event, args):
    if event.startswith(_DENIED_PREFIXES):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args[0].split(".")[0] in _DENIED_MODULES:
        raise PermissionError(f"sandbox: import of {args[0]} is not allowed")
    if event == "open":
        path, mode, flags = args
        if not isinstance(path, (str, bytes, os.PathLike)):
            return                                  # an open file descriptor
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
            bool((flags or 0) & _WRITE)
        if _inside(path, _ONLY_ROOT) or (not writing and _inside(path, _READABLE)):
            return
        raise PermissionError(f"sandbox: no access to {os.fsdecode(path)!r}")
    if event in _PATH_EVENTS or event in _LISTING_EVENTS:
        roots = (_ROOT, *_READABLE) if event in _LISTING_EVENTS else _ONLY_ROOT
        for path in _paths(args):
            if not _inside(path, roots):
                raise PermissionError(f"sandbox: no access to {os.fsdecode(path)!r}")

with open(_CODE, encoding="utf-8") as _file:
    _SOURCE = _file.read()
os.chdir(_ROOT)
sys.addaudithook(_guard)
del _file
exec(compile(_SOURCE, "<tool>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


class SandboxLimits(BaseModel):
    """What one tool call may use."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    timeout_s: float = Field(3.0, gt=0, le=60, description="Wall-clock seconds per call.")
    memory_mb: int = Field(512, ge=64, le=8192, description="Address space of the interpreter.")
    file_mb: float = Field(1.0, gt=0, le=100, description=(
        "Largest file it may write, its output included (past it the kernel stops it)."))
    output_chars: int = Field(2000, ge=64, le=100_000, description=(
        "Characters of output handed back to the model; the rest is cut with a note."))


@dataclass(frozen=True)
class SandboxResult:
    output: str            # stdout and stderr interleaved, cut to the limit
    status: str            # "ok" | "error" | "timeout" | "memory" | "output_limit" | "killed"
    exit_code: int | None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _readable_roots() -> str:
    # The base interpreter's lib/python3.X (lib-dynload inside it); a venv's own lib is where
    # its packages are, so not that. Its site-packages are refused by the hook.
    return sysconfig.get_path("stdlib", vars={"installed_base": sys.base_prefix,
                                              "base": sys.base_prefix})


def _limit_args(limits: SandboxLimits) -> list[str]:
    """The prelude's rlimits: address space, CPU seconds (the wall clock's backstop), file size."""
    return [str(limits.memory_mb * 2**20), str(int(limits.timeout_s) + 1),
            str(int(limits.file_mb * 2**20))]


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=_KILL_GRACE_S)


def run_python(code: str, limits: SandboxLimits) -> SandboxResult:
    """Run `code` under `limits`; never raises for anything the code does."""
    with tempfile.TemporaryDirectory(prefix="slipstream-tool-") as scratch, \
            tempfile.TemporaryDirectory(prefix="slipstream-tool-io-") as io_dir:
        code_path = Path(io_dir) / "tool.py"
        code_path.write_text(code, encoding="utf-8", errors="replace")
        output_path = Path(io_dir) / "output"
        with output_path.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _PRELUDE, scratch, _readable_roots(),
                 str(code_path), *_limit_args(limits)],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, cwd=scratch,
                env={"PYTHONIOENCODING": "utf-8"}, start_new_session=True)
            try:
                code_exit = process.wait(timeout=limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                code_exit, timed_out = None, True
            _kill_group(process)         # also whatever it left behind in its session
        size = output_path.stat().st_size
        text = _head_and_tail(output_path, size, limits.output_chars)
        # Python ignores SIGXFSZ: a write past the cap fails (EFBIG) and it exits non-zero.
        full = size >= int(limits.file_mb * 2**20)
        return _result(text, code_exit, timed_out, full, limits)


def _head_and_tail(path: Path, size: int, chars: int) -> str:
    """The output, or its first and last `chars // 2` characters when longer (a traceback's
    last line is what the model needs to see)."""
    window = chars * 4                     # bytes enough for `chars` UTF-8 characters
    with path.open("rb") as output:
        if size <= 2 * window:
            text = output.read().decode("utf-8", errors="replace")
            if len(text) <= chars:
                return text
            head, tail = text[:chars // 2], text[-(chars // 2):]
        else:
            head = output.read(window).decode("utf-8", errors="replace")[:chars // 2]
            output.seek(size - window)
            tail = output.read().decode("utf-8", errors="replace")[-(chars // 2):]
    return f"{head}\n[output cut to its first and last {chars // 2} characters]\n{tail}"


def _result(text: str, code_exit: int | None, timed_out: bool, output_full: bool,
            limits: SandboxLimits) -> SandboxResult:
    if timed_out or code_exit == -signal.SIGXCPU:
        return SandboxResult(text + f"\n[timed out after {limits.timeout_s:g}s]", "timeout", None)
    if output_full or code_exit == -signal.SIGXFSZ:
        return SandboxResult(text + f"\n[output past {limits.file_mb:g} MB: stopped]",
                             "output_limit", code_exit)
    if code_exit == 0:
        return SandboxResult(text, "ok", 0)
    if "MemoryError" in text:
        return SandboxResult(text, "memory", code_exit)
    if code_exit is not None and code_exit < 0:
        return SandboxResult(text + f"\n[killed by signal {-code_exit}]", "killed", code_exit)
    return SandboxResult(text, "error", code_exit)
