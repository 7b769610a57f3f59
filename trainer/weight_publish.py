"""The published weights file of the `shm` transfer (trainer/weight_transfer.py sends it).

Every parameter packed into ONE safetensors file on tmpfs, which the engine's `slipstream_shm`
backend maps and loads (rollout/weight_transfer.py). The file is written under a temporary name
in the same folder and renamed, so an engine never maps half a file.
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

from slipstream.weight_fingerprint import fingerprint, fingerprint_names_for


@dataclass(frozen=True)
class WeightsFile:
    path: str
    version: int
    nbytes: int                      # tensor payload in bytes (the file adds a small header)
    fingerprint: dict[str, float]    # of a few tensors; see rollout/weight_transfer.py

    @property
    def fingerprint_names(self) -> list[str]:
        """The tensors to read back from an engine to compare with `fingerprint`."""
        return list(self.fingerprint)


def shm_dir(run_name: str) -> Path:
    """A per-run folder on tmpfs (/dev/shm), or in the temp dir where there is no /dev/shm."""
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return root / f"slipstream-{run_name}"


def _packed(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors. A tensor whose storage was already seen gets a copy,
    because safetensors refuses to write tensors that share memory (a tied lm_head passed via
    state_dict(), or views into one fused buffer)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in named_tensors:
        if name in tensors:
            raise ValueError(f"write_weights_file: tensor {name} given twice")
        t = tensor.detach().to("cpu").contiguous()
        key = t.untyped_storage().data_ptr()
        tensors[name] = t.clone() if key in seen else t
        seen.add(key)
    return tensors


def write_weights_file(named_tensors: Iterable[tuple[str, torch.Tensor]],
                       directory: str | Path, version: int,
                       fingerprint_names: Sequence[str] | None = None,
                       fingerprinted: bool = True) -> WeightsFile:
    """Write `directory/weights-v{version}.safetensors` atomically and fingerprint it.

    `fingerprint_names` defaults to fingerprint_names_for(the names written). `fingerprinted`
    False leaves the fingerprint empty, for a caller that already took it (the learner's
    source fingerprints what it yields: trainer/weight_transfer.py)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = _packed(named_tensors)
    if not tensors:
        raise ValueError("write_weights_file: no tensors given")
    names = list(fingerprint_names) if fingerprint_names else fingerprint_names_for(tensors)
    path = directory / f"weights-v{version}.safetensors"
    # Same folder, so the rename is atomic; pid in the name so two writers never collide.
    tmp = directory / f".weights-v{version}.{os.getpid()}.tmp"
    try:
        save_file(tensors, str(tmp), metadata={"slipstream_version": str(version)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    return WeightsFile(str(path), version, nbytes,
                       fingerprint(tensors.items(), names) if fingerprinted else {})


def remove_old_weight_files(directory: str | Path, keep_version: int) -> None:
    """Delete published files of other versions (tmpfs is memory). An engine that still maps
    one keeps reading it safely: unlinking frees the pages only when the last map closes."""
    for path in Path(directory).glob("weights-v*.safetensors"):
        if path.name != f"weights-v{keep_version}.safetensors":
            path.unlink(missing_ok=True)


def remove_weights_dir(directory: str | Path) -> None:
    """Free the run's tmpfs folder at the end of a run."""
    shutil.rmtree(directory, ignore_errors=True)
