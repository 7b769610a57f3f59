"""The learner's end of a weight sync, plugged into vLLM's trainer-side protocol.

Every backend is a `TrainerWeightTransferEngine` (vLLM 0.32): built once by
`WeightTransferTrainerFactory.trainer_init(init_info, client=..., source=...)`, then one
`send_weights()` per sync, which drives the client's start / update / finish
(rollout/sync_client.py: pause with requests kept, load, label the version, resume, read back).

* `shm` (`slipstream_shm`, here): every tensor packed into ONE safetensors file on tmpfs
  (trainer/weight_publish.py), written while the engines keep generating; the engines map it.
  One host only: the file system is the channel.
* `collective` (`slipstream_collective`, here): the learner is rank 0 of a process group the
  engines join at start; each sync broadcasts packed buckets (slipstream/weight_wire.py). gloo
  on the CPU, NCCL when the learner is on CUDA; engines may sit on other nodes.
* `ipc`: vLLM's own `IPCTrainerWeightTransferEngine`, unpacked: CUDA IPC handles to the learner's
  own GPU tensors, no copy; the learner and the engine share one GPU. UNVERIFIED: no GPU here.

The source (`LearnerSource`) yields the policy's parameters in metadata order; under ZeRO-3 it
gathers one decoder layer at a time (never the whole model on one rank), and it fingerprints the
tensors as they are sent, so what each engine reads back is compared with what was sent.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from vllm.distributed.weight_transfer.base import (ParamMeta, TrainerInitInfo,
                                                   TrainerWeightTransferEngine, WeightSource)
from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

from slipstream.errors import SlipstreamError, one_line
from slipstream.trainer.weight_publish import remove_old_weight_files, write_weights_file
from slipstream.weight_fingerprint import fingerprint
from slipstream.weight_wire import (TensorMeta, join_group, meta_of, pack, plan_buckets,
                                    update_info_from_metas)


class LearnerSource(WeightSource):
    """The policy's parameters, re-iterable; `fingerprint` and `nbytes` describe the last pass."""

    def __init__(self, module: torch.nn.Module, fingerprint_names: list[str]) -> None:
        self.module, self.fingerprint_names = module, fingerprint_names
        self.fingerprint: dict[str, float] = {}
        self.nbytes = 0

    def _named(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(self.module.named_parameters())

    def metadata(self) -> list[ParamMeta]:
        # `ds_shape`: a ZeRO-3 parameter's full shape (its own `.shape` is its empty shard's).
        return [ParamMeta(n, p.dtype, tuple(getattr(p, "ds_shape", p.shape)))
                for n, p in self._named()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        params = dict(self._named())
        kept: dict[str, torch.Tensor] = {}
        nbytes = 0
        for group in self.groups():
            with _gathered([params[n] for n in group]) as sharded:
                for name in group:
                    tensor = params[name].detach()
                    if sharded:    # the gathered storage is released when the group ends
                        tensor = tensor.clone()
                    if name in self.fingerprint_names:
                        kept[name] = tensor
                    nbytes += tensor.numel() * tensor.element_size()
                    yield name, tensor
        self.fingerprint = fingerprint(kept.items(), self.fingerprint_names)
        self.nbytes = nbytes


@contextlib.contextmanager
def _gathered(params: list[torch.nn.Parameter]):
    """ZeRO-3: gather these parameters' shards for the block (True); otherwise nothing."""
    if not any(hasattr(p, "ds_id") for p in params):
        yield False
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield True


# ---------------------------------------------------------------- slipstream_shm

@dataclass
class ShmTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = "slipstream_shm"
    weights_dir: str = ""


class ShmTrainerEngine(TrainerWeightTransferEngine[ShmTrainerInitInfo]):
    init_info_cls = ShmTrainerInitInfo

    @classmethod
    def trainer_init(cls, init_info, *, client, source=None):
        engine = cls(client=client, source=source, is_sender=init_info.is_sender)
        engine.weights_dir, engine.files_written = init_info.weights_dir, 0
        engine.last_update = None    # the last publish's update_info: its file stays on tmpfs
        return engine      # the file system is the channel: no rendezvous

    def send_weights(self) -> None:
        # Written before the engines pause: they keep generating meanwhile.
        self.files_written += 1
        written = write_weights_file(iter(self.source), self.weights_dir, self.files_written,
                                     fingerprinted=False)    # the source fingerprints it
        self.client.start_weight_update()
        self.client.update_weights({"path": written.path})
        self.client.finish_weight_update()
        self.last_update = {"path": written.path}
        remove_old_weight_files(self.weights_dir, keep_version=self.files_written)


# ---------------------------------------------------------------- slipstream_collective

@dataclass
class CollectiveTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = "slipstream_collective"
    world_size: int = 2                  # the learner and every engine's workers
    group_backend: str = "gloo"          # "nccl" when the learner's tensors are on CUDA
    bucket_bytes: int = 32 << 20
    timeout_s: float = 120.0
    host: str = "127.0.0.1"              # an address of the learner's host the engines reach


class CollectiveTrainerEngine(TrainerWeightTransferEngine[CollectiveTrainerInitInfo]):
    init_info_cls = CollectiveTrainerInitInfo

    @classmethod
    def trainer_init(cls, init_info, *, client, source=None):
        engine = cls(client=client, source=source, is_sender=init_info.is_sender)
        engine.info = init_info
        engine.device = torch.device("cuda" if init_info.group_backend == "nccl" else "cpu")
        listener = socket.socket()
        listener.bind((init_info.host, 0))
        listener.listen()
        port = listener.getsockname()[1]
        worker_info = {"master_address": init_info.host, "master_port": port,
                       "rank_offset": 1, "world_size": init_info.world_size,
                       "group_backend": init_info.group_backend,
                       "bucket_bytes": init_info.bucket_bytes, "timeout_s": init_info.timeout_s}
        # Both ends block in the rendezvous: the engines' side runs on a thread meanwhile.
        engine.group = _alongside(
            lambda: join_group(init_info.host, port, 0, init_info.world_size,
                               init_info.group_backend, init_info.timeout_s, listener),
            lambda: client.init_weight_transfer_engine(worker_info),
            "forming the weight-transfer group")
        return engine

    def send_weights(self) -> None:
        metas = [TensorMeta(m.name, str(m.dtype).removeprefix("torch."), tuple(m.shape))
                 for m in self.source.metadata()]
        buckets = plan_buckets(metas, self.info.bucket_bytes)
        self.client.start_weight_update()
        _alongside(lambda: self._broadcast(metas, buckets),
                   lambda: self.client.update_weights(update_info_from_metas(metas)),
                   "broadcasting the weights")
        self.client.finish_weight_update()

    def _broadcast(self, metas: list[TensorMeta], buckets: list[range]) -> None:
        named = iter(self.source)
        for bucket in buckets:
            tensors = []
            for i in bucket:
                name, tensor = next(named)
                if meta_of(name, tensor) != metas[i]:
                    raise RuntimeError(f"weight source yielded {meta_of(name, tensor)}, "
                                       f"its metadata said {metas[i]}")
                tensors.append(tensor)
            self.group.broadcast(pack(tensors).to(self.device), 0).wait()
        for _ in named:      # the source fingerprints what it yielded once it is exhausted
            raise RuntimeError("weight source yielded more tensors than its metadata lists")

    def shutdown(self) -> None:
        from vllm.distributed.utils import stateless_destroy_torch_distributed_process_group

        stateless_destroy_torch_distributed_process_group(self.group)


def _alongside(local, remote, what: str):
    """Run `local()` here while `remote()` (the engines' half of a collective) runs on a
    thread; return local's result. If either fails, the error says so in one line; the
    engines' own error wins when both fail (it says why, the local one only that a peer left).
    The thread is a daemon: an engine call stuck on a dead peer never blocks the exit."""
    outcome: dict[str, BaseException | None] = {}

    def run_remote() -> None:
        try:
            remote()
            outcome["error"] = None
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=run_remote, name="slipstream-sync", daemon=True)
    thread.start()
    try:
        result = local()
    except Exception as error:  # noqa: BLE001 - re-raised as one line below
        thread.join(timeout=1.0)      # the engines' error usually follows within moments
        cause = outcome.get("error") or error
        raise SlipstreamError(f"{what}: {one_line(cause, name_own=False)}") from error
    thread.join()                     # bounded: every engine call has the client's timeout
    if outcome["error"] is not None:
        failure = outcome["error"]
        raise SlipstreamError(f"{what}: {one_line(failure, name_own=False)}") from failure
    return result


# ---------------------------------------------------------------- building one

def register_trainer_engines() -> None:
    """Register slipstream's trainer engines with vLLM (idempotent; vLLM's `ipc` is built in)."""
    for cls in (ShmTrainerEngine, CollectiveTrainerEngine):
        name = cls.init_info_cls.backend
        if name not in WeightTransferTrainerFactory._registry:
            WeightTransferTrainerFactory.register_engine(name, cls)


def connect(transfer: str, client: Any, source: LearnerSource, *, weights_dir: str,
            bucket_bytes: int, timeout_s: float, host: str) -> TrainerWeightTransferEngine:
    """The trainer engine for `transfer` (shm, collective or ipc), joined with the engines."""
    register_trainer_engines()
    if transfer == "shm":
        info: TrainerInitInfo = ShmTrainerInitInfo(weights_dir=weights_dir, rank=0)
    elif transfer == "collective":
        on_gpu = next(source.module.parameters()).is_cuda
        info = CollectiveTrainerInitInfo(world_size=client.world_size,
                                         group_backend="nccl" if on_gpu else "gloo",
                                         bucket_bytes=bucket_bytes, timeout_s=timeout_s,
                                         host=host, rank=0)
    elif transfer == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        info = IPCTrainerInitInfo(packed=False, rank=0)
    else:
        raise ValueError(f"unknown weight transfer {transfer!r} (shm, collective or ipc)")
    return WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)


@dataclass(frozen=True)
class Published:
    """One completed sync: what was sent, and how long each engine was paused for it."""

    version: int
    nbytes: int
    fingerprint: dict[str, float]
    engine_seconds: list[float]


def send(sender: TrainerWeightTransferEngine, source: LearnerSource, client: Any,
         version: int) -> Published:
    """One sync to `version`; raises (one line) unless every engine read back what was sent."""
    client.pending_version = version
    sender.send_weights()
    for engine_id, result in enumerate(client.results):
        if dict(result["fingerprint"]) != source.fingerprint:
            raise SlipstreamError(f"weight sync to version {version} did not land on engine "
                                  f"{engine_id}: fingerprint {dict(result['fingerprint'])} != "
                                  f"sent {source.fingerprint}")
    return Published(version, source.nbytes, dict(source.fingerprint),
                     [r["seconds"] for r in client.results])
