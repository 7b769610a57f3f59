"""The record keeping of a learner step, kept beside `Learner.train_step` so that the step itself
reads like the algorithm: summed loss metrics, the sampler/trainer gap, and what the step did
with every sample and token (`TrainedSample`, written to DIR/rollouts/ for the inspector).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slipstream.buffer.records import TrainedSample
from slipstream.trainer.logprobs import GapAccumulator, MicroBatch, TokenForward
from slipstream.trainer.losses import LossOutput, token_records
from slipstream.trainer.step_batch import StepBatch


@dataclass(frozen=True)
class StepResult:
    step: int
    version: int                 # learner version after the step
    metrics: dict[str, float]
    trained: tuple[TrainedSample, ...]


class StepRecord:
    def __init__(self, learner_version: int, batch: StepBatch) -> None:
        self.batch = batch
        self.learner_version = learner_version    # the weights that recompute the logprobs
        self.probed = 0                           # sequences rescored under their own version
        self.probe_s = 0.0                        # and the seconds that took
        self.gap = GapAccumulator(learner_version)
        self.sums: dict[str, float] = {"loss/total": 0.0}
        self.entropy_sum = 0.0
        self.trainer_logprobs: list[tuple[float, ...]] = []
        self.token_fields: list[dict[str, tuple]] = []     # per sample: weights, mask reasons
        self.own_logprobs: list[tuple[float, ...] | None] = []

    def add(self, micro: MicroBatch, forward: TokenForward, out: LossOutput,
            own: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """One micro-batch: its loss output, and (when rescored) each token's logprob under its
        own version with where that is exact (trainer/version_replay.py)."""
        self.sums["loss/total"] += float(out.loss.detach())
        for key, value in out.metrics.items():
            self.sums[key] = max(self.sums.get(key, value), value) if key.endswith("_max") \
                else self.sums.get(key, 0.0) + value
        if forward.entropy_B_T is not None:
            self.entropy_sum += float(forward.entropy_B_T[micro.mask_B_T].sum())
        lengths = micro.lengths_B.tolist()
        logprobs = forward.logprobs_B_T.detach()
        if own is None:
            self.gap.add(logprobs, micro)
            self.own_logprobs.extend([None] * len(lengths))
        else:
            own_B_T, ok_B_T = own
            self.gap.add(logprobs, micro, own_B_T, ok_B_T)
            # A sample with any policy token no held version reproduces gets None, not a mix
            # (an env's tokens were sampled by none: they do not count).
            self.own_logprobs.extend(
                tuple(row[:n].tolist()) if bool((ok[:n] | ~policy[:n]).all()) else None
                for row, ok, policy, n in zip(own_B_T, ok_B_T, micro.mask_B_T, lengths))
        self.trainer_logprobs.extend(tuple(row[:n].tolist()) for row, n in zip(logprobs, lengths))
        first = len(self.token_fields)
        self.token_fields.extend(_env_tokens_marked(fields, self.batch.samples[first + k])
                                 for k, fields in enumerate(token_records(out, lengths)))

    def result(self, step: int, version: int, advantages_B_T: torch.Tensor,
               extra: dict[str, float]) -> StepResult:
        """`step` is numbered from 1 as logged (TensorBoard, rollouts/step-N.jsonl); `version`
        is the learner's after the step. Each sample records the version that recomputed its
        logprobs, the one before the step's update."""
        batch = self.batch
        real = batch.mask_B_T
        metrics = {**self.sums, **self.gap.metrics(), **extra,
                   "entropy/mean": self.entropy_sum / max(int(real.sum()), 1)}
        metrics |= self._weight_metrics()
        metrics |= self._age_metrics()
        if batch.filtered_B is not None:
            metrics["loss/overlong_filtered"] = int(batch.filtered_B.sum())
        if self.probed:
            metrics["mismatch/probed_sequences"] = self.probed
            metrics["timing/mismatch_probe_s"] = self.probe_s
        if batch.shaped:
            metrics["reward/shaped_mean"] = float(batch.rewards_B.mean())
        trained = []
        for b, sample in enumerate(batch.samples):
            n = len(sample.completion_ids_T)
            row = advantages_B_T[b, :n].tolist()
            constant = len(set(row)) <= 1
            shaped = float(batch.rewards_B[b])
            policy = [a for a, p in zip(row, sample.policy_tokens_T) if p]   # env tokens: none
            trained.append(TrainedSample(
                sample, step, self.learner_version,
                advantage=sum(policy) / len(policy) if policy else 0.0,
                trainer_logprobs_T=self.trainer_logprobs[b], **self.token_fields[b],
                own_version_logprobs_T=self.own_logprobs[b],
                advantages_T=() if constant else tuple(row),
                shaped_reward=None if shaped == sample.reward else shaped,
                reuse_count=batch.reuse_B[b] if batch.reuse_B else 0))
        return StepResult(step, version, metrics, tuple(trained))

    def _weight_metrics(self) -> dict[str, float]:
        """mismatch/ess: the normalised effective sample size (sum w)^2 / (N sum w^2) of the
        per-token importance weights the policy term applied, a masked token weighing 0, over
        the tokens the loss could train on (overlong-filtered ones excluded); 1 when every
        token counts fully, falling as a few weights dominate (VCPO: it drops before a
        collapse)."""
        weights = [0.0 if masked else w
                   for fields in self.token_fields
                   for w, masked, reason in zip(fields.get("importance_weights_T", ()),
                                                fields.get("masked_T", ()),
                                                fields.get("mask_reasons_T", ()))
                   if reason not in ("overlong", "env")]
        total, squares = sum(weights), sum(w * w for w in weights)
        if not weights or squares == 0:
            return {}
        return {"mismatch/ess": total * total / (len(weights) * squares)}

    def _age_metrics(self) -> dict[str, float]:
        """The staleness histogram of the step's tokens (learner version minus the version
        that sampled each) in power-of-two buckets: `staleness/tokens_age_B` tokens, and, where
        the loss reported its masks, `staleness/masked_frac_age_B` the share of them masked.
        Empty buckets write nothing."""
        tokens: dict[str, int] = {}
        masked: dict[str, int] = {}
        for sample, fields in zip(self.batch.samples, self.token_fields):
            flags = fields.get("masked_T") or (None,) * len(sample.versions_T)
            for version, flag, policy in zip(sample.versions_T, flags, sample.policy_tokens_T):
                if not policy:
                    continue                    # an env's token: sampled by no version
                bucket = age_bucket(self.learner_version - version)
                tokens[bucket] = tokens.get(bucket, 0) + 1
                if flag is not None:
                    masked[bucket] = masked.get(bucket, 0) + int(flag)
        metrics: dict[str, float] = {f"staleness/tokens_age_{b}": n for b, n in tokens.items()}
        metrics |= {f"staleness/masked_frac_age_{b}": masked[b] / tokens[b] for b in masked}
        return metrics


def _env_tokens_marked(fields: dict[str, tuple], sample) -> dict[str, tuple]:
    """A multi-turn sample's token fields with its env tokens masked for reason "env", weight 0
    (the loss saw them masked as padding; the record says why)."""
    if not sample.env_tokens_T or not fields:
        return fields
    env = sample.env_tokens_T
    return {"importance_weights_T": tuple(0.0 if e else w for w, e in
                                          zip(fields["importance_weights_T"], env)),
            "masked_T": tuple(e or m for m, e in zip(fields["masked_T"], env)),
            "mask_reasons_T": tuple("env" if e else r for r, e in
                                    zip(fields["mask_reasons_T"], env))}


def age_bucket(age: int) -> str:
    """0, 1, 2-3, 4-7, 8-15, ... : the power-of-two bucket an age falls in."""
    if age <= 1:
        return str(max(age, 0))
    low = 1 << (age.bit_length() - 1)
    return f"{low}-{2 * low - 1}"
