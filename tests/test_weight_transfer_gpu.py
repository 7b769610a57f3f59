"""The GPU half of the weight transfer with torch alone (marked `gpu`: skipped where torch finds
no CUDA device; vLLM's CUDA build need not be installed).

* NCCL: the collective transfer's wire format (buckets planned from metadata, packed, broadcast
  from rank 0, unpacked) over a real NCCL group of two processes on one GPU each.
* CUDA IPC: a handle to the learner's own tensor, opened in another process, aliases the same
  memory (no copy) and reads the same bytes, as vLLM's `ipc` receiver uses it.
* The learner on CUDA under DeepSpeed: a step and a publish.

Written without a GPU to run them on (see the README's "What runs where").
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tensors(device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {f"layer.{i}.weight": torch.randn(257, 129, generator=gen).to(torch.bfloat16)
            .to(device) for i in range(6)}


def _nccl_member(rank: int, port: int, device_index: int, out) -> None:
    import torch.distributed as dist

    from slipstream.weight_wire import meta_of, pack, plan_buckets, unpack

    torch.cuda.set_device(device_index)
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=rank == 0)
    group = dist.ProcessGroupNCCL(store, rank, 2)
    sent = _tensors("cuda")
    metas = [meta_of(n, t) for n, t in sent.items()]
    received = {}
    for bucket in plan_buckets(metas, 200_000):
        part = [metas[i] for i in bucket]
        if rank == 0:
            buffer = pack([sent[m.name] for m in part])
        else:
            buffer = torch.empty(sum(m.nbytes for m in part), dtype=torch.uint8, device="cuda")
        group.broadcast([buffer], dist.BroadcastOptions()).wait()
        received.update({m.name: t for m, t in zip(part, unpack(buffer, part))})
    torch.cuda.synchronize()
    out.put((rank, all(torch.equal(received[n], sent[n]) for n in sent)))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL between two GPUs")
def test_nccl_broadcast_of_packed_buckets_is_bitwise():
    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_nccl_member, args=(rank, port, rank, out)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    assert results == {0: True, 1: True}


def _ipc_reader(handle, out) -> None:
    rebuild, args = handle
    tensor = rebuild(*args)
    out.put(float(tensor.float().sum()))
    tensor.fill_(7)            # written through the alias: the learner must see it
    torch.cuda.synchronize()


def test_cuda_ipc_handle_aliases_the_learners_tensor():
    from torch.multiprocessing.reductions import reduce_tensor

    weight = torch.randn(1024, 256, device="cuda")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_ipc_reader, args=(reduce_tensor(weight), out))
    proc.start()
    seen_sum = out.get(timeout=120)
    proc.join(timeout=60)
    assert seen_sum == pytest.approx(float(weight.sum()), rel=1e-6)
    assert bool((weight == 7).all())          # no copy: the other process wrote our memory


def test_learner_steps_and_publishes_on_cuda(tmp_path):
    from factories import connect_to_file_reader
    from test_learner import make_groups, make_learner

    from slipstream.launch.models import make_tiny_model

    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
    tiny = str(make_tiny_model(tmp_path / "tiny"))
    learner = make_learner(tiny, tmp_path, zero_stage=1)
    assert next(learner.engine.module.parameters()).is_cuda
    before = {n: p.detach().clone() for n, p in learner.policy.named_parameters()}
    result = learner.train_step(make_groups(learner, [[1.0, 0.0, 0.0, 1.0],
                                                      [0.0, 1.0, 0.0, 0.0]]))
    assert result.metrics["loss/total"] != 0
    assert any(not torch.equal(before[n], p) for n, p in learner.policy.named_parameters())
    engine, stop = connect_to_file_reader(learner)
    try:
        assert learner.publish().version == engine.version == 1
    finally:
        stop()
