"""The learner's side of a weight sync: all parameters packed into one file on tmpfs.

The file is written under a temporary name and renamed, so an engine never maps half a file,
and its fingerprint is computed from the very tensors written (see rollout/weight_transfer.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from slipstream.rollout.weight_transfer import fingerprint


@dataclass(frozen=True)
class WeightsFile:
    path: str
    version: int
    nbytes: int
    fingerprint: dict[str, str]             # of a few tensors (see rollout/weight_transfer.py)
    fingerprint_shapes: dict[str, list[int]]  # what the engine must hash to compare


def shm_dir(run_name: str) -> Path:
    """A per-run folder on tmpfs (/dev/shm), or in the temp dir where there is no /dev/shm."""
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return root / f"slipstream-{run_name}"


def write_weights_file(named_tensors: Iterable[tuple[str, torch.Tensor]], directory: str | Path,
                       version: int, fingerprint_names: Sequence[str] = ()) -> WeightsFile:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in named_tensors}
    path = directory / f"weights-v{version}.safetensors"
    tmp = directory / f".weights-v{version}.{os.getpid()}.tmp"
    save_file(tensors, str(tmp))
    tmp.rename(path)
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    shapes = {name: list(tensors[name].shape) for name in fingerprint_names}
    return WeightsFile(str(path), version, nbytes, fingerprint(tensors.items(), shapes), shapes)


def remove_old_weight_files(directory: str | Path, keep_version: int) -> None:
    """Delete published files of other versions (tmpfs is memory)."""
    for path in Path(directory).glob("weights-v*.safetensors"):
        if path.name != f"weights-v{keep_version}.safetensors":
            path.unlink(missing_ok=True)


def remove_weights_dir(directory: str | Path) -> None:
    """Free the run's tmpfs folder at the end of a run."""
    shutil.rmtree(directory, ignore_errors=True)
