"""The wire format of the collective weight transfer, shared by its two ends.

The learner (trainer/weight_transfer.py) sends the model as a few broadcasts of packed uint8
buckets; each engine (rollout/collective_transfer.py) receives them. Only bytes cross the data
plane: names, dtypes and shapes travel once per update on the control plane (vLLM's
`update_info`), and both ends cut the same buckets from that metadata with `plan_buckets`, so the
receiver knows every bucket's size before its broadcast starts.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype_name: str          # torch dtype without the "torch." prefix, e.g. "bfloat16"
    shape: tuple[int, ...]

    @property
    def dtype(self) -> torch.dtype:
        dtype = getattr(torch, self.dtype_name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"tensor {self.name}: unknown dtype {self.dtype_name!r}")
        return dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def metas_from_update_info(names: Sequence[str], dtype_names: Sequence[str],
                           shapes: Sequence[Sequence[int]]) -> list[TensorMeta]:
    if not len(names) == len(dtype_names) == len(shapes):
        raise ValueError(f"update info lists differ in length: {len(names)} names, "
                         f"{len(dtype_names)} dtypes, {len(shapes)} shapes")
    return [TensorMeta(n, d, tuple(int(x) for x in s))
            for n, d, s in zip(names, dtype_names, shapes)]


def update_info_from_metas(metas: Iterable[TensorMeta]) -> dict[str, list]:
    metas = list(metas)
    return {"names": [m.name for m in metas], "dtype_names": [m.dtype_name for m in metas],
            "shapes": [list(m.shape) for m in metas]}


def meta_of(name: str, tensor: torch.Tensor) -> TensorMeta:
    return TensorMeta(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))


def plan_buckets(metas: Sequence[TensorMeta], bucket_bytes: int) -> list[range]:
    """Consecutive index ranges of at most `bucket_bytes` each; a tensor larger than that gets
    a bucket of its own (it is never split)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    buckets, start, size = [], 0, 0
    for i, meta in enumerate(metas):
        if i > start and size + meta.nbytes > bucket_bytes:
            buckets.append(range(start, i))
            start, size = i, 0
        size += meta.nbytes
    if start < len(metas):
        buckets.append(range(start, len(metas)))
    return buckets


def pack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One contiguous uint8 buffer holding the tensors' bytes back to back."""
    return torch.cat([t.detach().contiguous().view(-1).view(torch.uint8) for t in tensors])


def unpack(buffer: torch.Tensor, metas: Sequence[TensorMeta]) -> list[torch.Tensor]:
    """Views into `buffer` (so a receiver allocates a fresh buffer per bucket: vLLM's layerwise
    reload may keep a reference to what it was given until the layer is complete)."""
    sizes = [m.nbytes for m in metas]
    if sum(sizes) != buffer.numel():
        raise ValueError(f"bucket of {buffer.numel()} bytes does not hold its {len(metas)} "
                         f"tensors ({sum(sizes)} bytes)")
    return [part.view(m.dtype).view(m.shape)
            for part, m in zip(buffer.split(sizes), metas)]


def join_group(host: str, port: int, rank: int, world_size: int, backend: str,
               timeout_s: float, listen_socket: socket.socket | None = None):
    """The transfer's process group: vLLM's stateless group, which leaves each process's
    default group (DeepSpeed's in the learner, vLLM's executor's in an engine) alone. Rank 0
    passes the socket it already bound, so no other process can take the port meanwhile.
    Every wait, here and in each broadcast, is bounded by `timeout_s`."""
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    try:
        return stateless_init_torch_distributed_process_group(
            host, port, rank, world_size, backend, listen_socket=listen_socket,
            timeout=timedelta(seconds=timeout_s))
    except Exception as error:  # noqa: BLE001 - torch raises several kinds; one line out
        first = (str(error).strip().splitlines() or [""])[0]
        raise RuntimeError(f"weight-transfer group {host}:{port} (rank {rank} of {world_size}, "
                           f"{backend}) did not form within {timeout_s:g}s: "
                           f"{type(error).__name__}: {first}") from None
