"""Deterministic mode: recompute stale tokens under the weights that sampled them.

In an asynchronous run most tokens a step trains on were sampled by an older version than the
learner holds, so the current weights cannot check them. The learner keeps the parameters of
the versions still within `max_lag` (a copy per published version: 270 MB in bf16 for
SmolLM2-135M) and recomputes each stale token's logprob under its own version, with the same
batch-invariant numerics. With the reference sampler (which recomputes its KV cache at every
update, so a token depends on its own version's weights alone) that logprob must equal the
sampler's bitwise: `mismatch/*` then covers every trained token, not only the fresh ones.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from slipstream.trainer.logprobs import MicroBatch, reproducible_by, token_logprobs
from slipstream.trainer.numerics import batch_invariant


class _WithParameters:
    """`module` called with other parameters (torch.func.functional_call), like a model."""

    def __init__(self, module: torch.nn.Module, parameters: dict[str, torch.Tensor]) -> None:
        self.module, self.parameters = module, parameters

    def __call__(self, **kwargs):
        return functional_call(self.module, self.parameters, args=(), kwargs=kwargs)


class VersionReplay:
    def __init__(self, module: torch.nn.Module, max_lag: int) -> None:
        self.module = module
        self.max_lag = max_lag
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def keep(self, version: int) -> None:
        """Remember the module's current parameters as `version` (call when publishing it)."""
        self.weights[version] = {name: p.detach().clone()
                                 for name, p in self.module.named_parameters()}

    def prune(self, learner_version: int) -> None:
        """Forget versions no batch may still hold (older than learner_version - max_lag)."""
        for version in [v for v in self.weights if v < learner_version - self.max_lag]:
            del self.weights[version]

    def own_version_logprobs(self, batch: MicroBatch, current_B_T: torch.Tensor,
                             learner_version: int, temperature: float
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logprobs_B_T, ok_B_T): each token's logprob under the weights of its own version,
        and where that is exact (the version is held and the token reproducible by it)."""
        own = current_B_T.detach().clone()
        ok = reproducible_by(learner_version, batch)
        versions = set(batch.versions_B_T[batch.mask_B_T].tolist()) - {learner_version}
        for version in sorted(versions & self.weights.keys()):
            tokens = reproducible_by(version, batch)
            rows = tokens.any(-1)
            if not rows.any():
                continue
            model = _WithParameters(self.module, self.weights[version])
            with torch.no_grad(), batch_invariant():
                logprobs, _ = token_logprobs(model, batch.select(rows), temperature)
            own[tokens] = logprobs[tokens[rows]]     # both in row-major order of the same rows
            ok |= tokens
        return own, ok
