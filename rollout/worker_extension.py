"""Methods slipstream adds to vLLM's worker process (engine arg `worker_extension_cls`).

vLLM mixes this class into its Worker, so `self.model_runner` is the worker's model runner, and
`await engine.collective_rpc("slipstream_fingerprint", args=(names,))` calls the method in the
process that holds the model. Importing this module also registers the `slipstream_shm`
weight-transfer backend (belt and braces next to the `vllm.general_plugins` entry point: the
worker imports this module before it builds its weight-transfer engine).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from slipstream.rollout.weight_transfer import register
from slipstream.weight_fingerprint import fingerprint

register()

# vLLM pads the vocabulary dimension of these to a multiple of 64; the learner's copy is unpadded.
_VOCAB_PADDED = ("embed_tokens.weight", "lm_head.weight")


def _unpadded(named: Iterator[tuple[str, torch.Tensor]],
              vocab_size: int) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in named:
        if name.endswith(_VOCAB_PADDED) and tensor.dim() == 2 and tensor.shape[0] > vocab_size:
            tensor = tensor[:vocab_size]
        yield name, tensor


class SlipstreamWorkerExtension:
    def slipstream_fingerprint(self, names: Sequence[str]) -> dict[str, float]:
        """The fingerprint of the named tensors as the engine holds them now (same function as
        the learner's, on the tensors without vLLM's vocabulary padding)."""
        model = self.model_runner.get_model()
        vocab_size = self.model_runner.model_config.get_vocab_size()
        return fingerprint(_unpadded(model.named_parameters(), vocab_size), list(names))
