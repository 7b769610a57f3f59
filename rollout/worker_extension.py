"""Methods slipstream adds to vLLM's worker process (engine arg `worker_extension_cls`).

`slipstream_fingerprint` reads a few tensors back from the loaded model so the learner can check
that a weight sync landed. Importing this module also registers the CPU weight-transfer backend,
for installs where the `vllm.general_plugins` entry point is not visible to the worker.
"""

from __future__ import annotations

from slipstream.rollout.weight_transfer import fingerprint, register

register()


class SlipstreamWorkerExtension:
    def slipstream_fingerprint(self, shapes: dict[str, list[int]]) -> dict[str, str]:
        model = self.model_runner.get_model()
        return fingerprint(model.named_parameters(), shapes)
