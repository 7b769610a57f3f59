"""Stale tokens rescored under the weights that sampled them: the sampler/trainer gap measured
on tokens the current weights can no longer check.

In an asynchronous run most tokens a step trains on were sampled by an older version than the
learner holds (with max_lag=1 and a slow learner, all of them after step 1), so the learner's own
logprobs measure staleness, not numerics. The learner keeps the parameters of each published
version still within `max_lag` (a copy per version: 270 MB in bf16 for SmolLM2-135M; with the
copy of the version being trained, max_lag + 1 copies at most) and recomputes stale tokens
under their own version, with no gradient:

* deterministic mode: every sequence, under the batch-invariant numerics. With the reference
  sampler (which recomputes its KV cache at every update, so a token depends on its own
  version's weights alone) each logprob must equal the sampler's bitwise, and `mismatch/*` covers
  every trained token.
* normal mode: `trainer.mismatch_probe` sequences per step, with the learner's usual numerics,
  so `mismatch/*` measures the real numerics gap every step at the cost of one small no-grad
  forward (reported as `timing/mismatch_probe_s`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import ContextManager

import torch
from torch.func import functional_call

from slipstream.trainer.logprobs import MicroBatch, reproducible_by, token_logprobs

REPLAY_DIR = "replay"   # a checkpoint's subfolder for the kept versions' weights


class _WithParameters:
    """`module` called with other parameters (torch.func.functional_call), like a model."""

    def __init__(self, module: torch.nn.Module, parameters: dict[str, torch.Tensor]) -> None:
        self.module, self.weights = module, parameters

    def parameters(self):
        return iter(self.weights.values())

    def __call__(self, **kwargs):
        return functional_call(self.module, self.weights, args=(), kwargs=kwargs)


class VersionReplay:
    def __init__(self, module: torch.nn.Module, max_lag: int,
                 numerics: Callable[[], ContextManager] = contextlib.nullcontext) -> None:
        self.module = module
        self.max_lag = max_lag
        self.numerics = numerics
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def keep(self, version: int) -> None:
        """Remember the module's current parameters as `version` (call when publishing it)."""
        self.weights[version] = {name: p.detach().clone()
                                 for name, p in self.module.named_parameters()}

    def save(self, directory: Path) -> None:
        """Every kept version's weights, one safetensors file each (a checkpoint's part)."""
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        for version, weights in self.weights.items():
            save_file({k: v.contiguous() for k, v in weights.items()},
                      str(directory / f"v{version:06d}.safetensors"))

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        for path in sorted(directory.glob("v*.safetensors")):
            self.weights[int(path.stem[1:])] = load_file(str(path))

    def prune(self, learner_version: int) -> None:
        """Forget versions no batch may still hold (older than learner_version - max_lag)."""
        for version in [v for v in self.weights if v < learner_version - self.max_lag]:
            del self.weights[version]

    def own_version_logprobs(self, batch: MicroBatch, current_B_T: torch.Tensor,
                             learner_version: int, temperature: float,
                             max_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(logprobs_B_T, ok_B_T, rows): each token's logprob under the weights of its own
        version, where that is exact (the version is held and the token reproducible by it),
        and how many sequences were rescored. `max_rows` bounds those (None: every one); the
        current version's tokens are the training forward's own and cost nothing."""
        own = current_B_T.detach().clone()
        ok = reproducible_by(learner_version, batch)
        versions = set(batch.versions_B_T[batch.mask_B_T].tolist()) - {learner_version}
        scored = 0
        for version in sorted(versions & self.weights.keys()):
            tokens = reproducible_by(version, batch)
            rows = tokens.any(-1)
            if max_rows is not None:     # the first rows, up to the budget left
                rows &= rows.cumsum(0) <= max_rows - scored
                tokens &= rows.unsqueeze(-1)
            if not rows.any():
                continue
            model = _WithParameters(self.module, self.weights[version])
            with torch.no_grad(), self.numerics():
                logprobs = token_logprobs(model, batch.select(rows), temperature)
            own[tokens] = logprobs[tokens[rows]]     # both in row-major order of the same rows
            ok |= tokens
            scored += int(rows.sum())
        return own, ok, scored
