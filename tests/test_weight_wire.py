"""The collective transfer's wire format (slipstream/weight_wire.py) and the learner's source
under ZeRO-3 (trainer/weight_transfer.py `LearnerSource`), without an engine."""

import pytest
import torch

from slipstream.weight_wire import (TensorMeta, meta_of, metas_from_update_info, pack,
                                    plan_buckets, unpack, update_info_from_metas)


def _tensors():
    gen = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 4, generator=gen).to(torch.bfloat16),
            "b": torch.randn(10, generator=gen),
            "c": torch.arange(6, dtype=torch.int64).view(2, 3),
            "d": torch.randn(1, generator=gen).to(torch.float16)}


def test_buckets_cover_every_tensor_once_in_order_and_respect_the_size():
    metas = [meta_of(n, t) for n, t in _tensors().items()]     # 24, 40, 48, 2 bytes
    assert plan_buckets(metas, 64) == [range(0, 2), range(2, 4)]
    assert plan_buckets(metas, 10) == [range(0, 1), range(1, 2), range(2, 3), range(3, 4)]
    assert plan_buckets(metas, 1 << 20) == [range(0, 4)]
    assert plan_buckets([], 8) == []
    with pytest.raises(ValueError, match="positive"):
        plan_buckets(metas, 0)


def test_pack_then_unpack_is_bitwise_through_the_update_info():
    tensors = _tensors()
    info = update_info_from_metas(meta_of(n, t) for n, t in tensors.items())
    metas = metas_from_update_info(info["names"], info["dtype_names"], info["shapes"])
    for bucket in plan_buckets(metas, 64):
        part = [metas[i] for i in bucket]
        buffer = pack([tensors[m.name] for m in part])
        assert buffer.dtype == torch.uint8 and buffer.numel() == sum(m.nbytes for m in part)
        for meta, out in zip(part, unpack(buffer.clone(), part)):
            assert out.dtype == tensors[meta.name].dtype
            assert torch.equal(out.view(torch.uint8), tensors[meta.name].view(torch.uint8))


def test_malformed_update_info_is_refused_in_one_line():
    with pytest.raises(ValueError, match="differ in length"):
        metas_from_update_info(["a", "b"], ["float32"], [[1], [2]])
    with pytest.raises(ValueError, match="unknown dtype 'float7'"):
        TensorMeta("a", "float7", (1,)).dtype
    with pytest.raises(ValueError, match="does not hold"):
        unpack(torch.zeros(3, dtype=torch.uint8), [TensorMeta("a", "float32", (1,))])


def test_learner_source_gathers_zero3_shards_layer_by_layer(tmp_path):
    """Under ZeRO-3 each parameter holds an empty shard; the source must still yield every
    full tensor, bitwise, report full shapes, and fingerprint what it yielded."""
    import deepspeed
    from transformers import AutoModelForCausalLM

    from slipstream.launch.models import make_tiny_model
    from slipstream.trainer.learner import init_world_of_one
    from slipstream.trainer.weight_transfer import LearnerSource
    from slipstream.weight_fingerprint import fingerprint, fingerprint_names_for

    init_world_of_one()
    model = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "tiny"),
                                                 dtype=torch.float32)
    full = {n: p.detach().clone() for n, p in model.named_parameters()}
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
        config={"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}},
        dist_init_required=True)
    assert all(p.numel() == 0 for p in model.parameters())        # really sharded
    names = fingerprint_names_for(full)
    source = LearnerSource(model, names)
    assert [(m.name, m.shape) for m in source.metadata()] == \
        [(n, tuple(t.shape)) for n, t in full.items()]
    sent = dict(iter(source))
    assert sent.keys() == full.keys()
    assert all(torch.equal(sent[n], full[n]) for n in full)
    assert source.fingerprint == fingerprint(full.items(), names)
    assert source.nbytes == sum(t.numel() * t.element_size() for t in full.values())
    assert all(p.numel() == 0 for p in model.parameters())        # released again
    del engine
