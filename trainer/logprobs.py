"""Trainer-side logprobs of sampled tokens, and the sampler-against-trainer gap metrics.

A micro-batch is right-padded `prompt + completion` sequences. The completion token at position
`P + j` is predicted by the logits at `P + j - 1`, so we gather exactly those rows before the
log-softmax (the full-vocabulary softmax is the expensive part; prompt rows are never needed).
Logits are divided by the sampling temperature and the log-softmax runs in float32: vLLM reports
temperature-scaled logprobs (`logprobs_mode="processed_logprobs"`), so both sides compare the
same distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from slipstream.buffer.records import Sample
from slipstream.trainer.losses.kl import kl_estimate
from slipstream.trainer.numerics import scaled_log_softmax
from slipstream.trainer.value_head import ValueOutput


@dataclass(frozen=True)
class MicroBatch:
    input_ids_B_L: torch.Tensor
    attention_mask_B_L: torch.Tensor
    positions_B_T: torch.Tensor       # logits row that predicts each completion token
    targets_B_T: torch.Tensor         # the completion token ids
    mask_B_T: torch.Tensor            # True on the policy's completion tokens (not an env's)
    sampler_logprobs_B_T: torch.Tensor
    versions_B_T: torch.Tensor
    prefix_recomputed_B: torch.Tensor  # bool: the sampler recomputed the KV at every update
    lengths_B: torch.Tensor           # completion tokens per sequence, env tokens included

    def select(self, rows_B: torch.Tensor) -> MicroBatch:
        """The sub-batch of the sequences where `rows_B` (bool) is True."""
        return MicroBatch(*(t[rows_B] for t in (
            self.input_ids_B_L, self.attention_mask_B_L, self.positions_B_T, self.targets_B_T,
            self.mask_B_T, self.sampler_logprobs_B_T, self.versions_B_T,
            self.prefix_recomputed_B, self.lengths_B)))


def collate(samples: Sequence[Sample], pad_id: int) -> MicroBatch:
    lengths = [s.num_tokens for s in samples]
    max_len, max_comp = max(lengths), max(len(s.completion_ids_T) for s in samples)
    n = len(samples)
    input_ids = torch.full((n, max_len), pad_id, dtype=torch.long)
    attention = torch.zeros((n, max_len), dtype=torch.long)
    positions = torch.zeros((n, max_comp), dtype=torch.long)
    targets = torch.zeros((n, max_comp), dtype=torch.long)
    mask = torch.zeros((n, max_comp), dtype=torch.bool)
    sampler = torch.zeros((n, max_comp), dtype=torch.float32)
    versions = torch.zeros((n, max_comp), dtype=torch.long)
    recomputed = torch.tensor([s.prefix_recomputed for s in samples], dtype=torch.bool)
    for b, s in enumerate(samples):
        p, c = len(s.prompt_ids), len(s.completion_ids_T)
        input_ids[b, : p + c] = torch.tensor(s.prompt_ids + s.completion_ids_T)
        attention[b, : p + c] = 1
        positions[b, :c] = torch.arange(p - 1, p + c - 1)
        targets[b, :c] = torch.tensor(s.completion_ids_T)
        mask[b, :c] = torch.tensor(s.policy_tokens_T, dtype=torch.bool)
        sampler[b, :c] = torch.tensor(s.sampler_logprobs_T, dtype=torch.float32)
        versions[b, :c] = torch.tensor(s.versions_T)
    return MicroBatch(input_ids, attention, positions, targets, mask, sampler, versions,
                      recomputed, torch.tensor([len(s.completion_ids_T) for s in samples]))


@dataclass(frozen=True)
class TokenForward:
    """One forward pass over a micro-batch, at the completion tokens."""

    logprobs_B_T: torch.Tensor               # float32, with grad where the model has it
    entropy_B_T: torch.Tensor | None         # float32, no grad; when asked for
    values_B_T: torch.Tensor | None          # float32; the value head's, when the model has one
    # float32, with grad: the temperature-scaled logit of each sampled token, when asked for
    # (soft Q-learning: trainer/losses/soft_q.py)
    target_logits_B_T: torch.Tensor | None = None
    # Distillation: the logprobs of given tokens per position (a teacher's top k), with grad,
    # and the argmax token (no grad), when asked for.
    gathered_B_T_K: torch.Tensor | None = None
    argmax_B_T: torch.Tensor | None = None


def forward_tokens(model, batch: MicroBatch, temperature: float, with_entropy: bool = False,
                   with_logits: bool = False, gather_ids_B_T_K: torch.Tensor | None = None,
                   with_argmax: bool = False) -> TokenForward:
    """The completion tokens' logprobs under `model` (and entropies, the sampled tokens' logits,
    the logprobs of `gather_ids_B_T_K`, the argmax tokens, and values when `model` is a policy
    with a value head: trainer/value_head.py)."""
    # The batch lives on the CPU; the model where DeepSpeed put it (CUDA on a GPU). Only the
    # per-token results come back (`.to` keeps the graph), so the losses run on the CPU.
    device = next(model.parameters()).device
    # The full-vocabulary logits are the learner's largest tensors: the model computes them
    # only from the first position that predicts a completion token (HF's `logits_to_keep`
    # keeps the last N positions), skipping the prompt rows every sequence shares.
    first = int(batch.positions_B_T[batch.mask_B_T].min()) if batch.mask_B_T.any() else 0
    length = batch.input_ids_B_L.shape[1]
    output = model(input_ids=batch.input_ids_B_L.to(device),
                   attention_mask=batch.attention_mask_B_L.to(device), use_cache=False,
                   logits_to_keep=length - first)
    positions = batch.positions_B_T.to(device)
    values = None
    if isinstance(output, ValueOutput):
        values = output.values_B_L.gather(1, positions).float().cpu()
    logits = output.logits
    del output                  # the logits are freed once gathered, before the fp32 copies
    vocab = logits.shape[-1]
    kept = (positions - first).clamp(min=0)       # padding columns point at row 0, masked later
    rows = logits.gather(1, kept.unsqueeze(-1).expand(-1, -1, vocab))
    del logits
    targets = batch.targets_B_T.to(device).unsqueeze(-1)
    target_logits = None
    if with_logits:
        target_logits = (rows.gather(-1, targets).squeeze(-1).float() / temperature).cpu()
    logp_all = scaled_log_softmax(rows, temperature)
    logprobs = logp_all.gather(-1, targets).squeeze(-1)
    entropy = _entropy(logp_all) if with_entropy else None
    gathered = None
    if gather_ids_B_T_K is not None:
        gathered = logp_all.gather(-1, gather_ids_B_T_K.to(device)).cpu()
    argmax = logp_all.detach().argmax(-1).cpu() if with_argmax else None
    return TokenForward(logprobs.cpu(), entropy, values, target_logits, gathered, argmax)


@torch.no_grad()
def _entropy(logp_all_B_T_V: torch.Tensor) -> torch.Tensor:
    """Per-token entropy, one sequence at a time: p * log p over the whole vocabulary would
    otherwise be two more fp32 copies of the micro-batch's logits."""
    return torch.stack([-(row.exp() * row).sum(-1) for row in logp_all_B_T_V]).cpu()


def token_logprobs(model, batch: MicroBatch, temperature: float) -> torch.Tensor:
    """Only the completion tokens' logprobs (float32) under `model`."""
    return forward_tokens(model, batch, temperature).logprobs_B_T


def reproducible_by(version: int, batch: MicroBatch) -> torch.Tensor:
    """(B, T) bool: tokens whose logprob the weights of `version` reproduce exactly, given the
    same numerics: the token was sampled by `version`, and so was the KV it attended to. When
    the sampler recomputed the KV at every update (the reference sampler), the token's own
    version is enough; when it kept the KV across updates (vLLM), every earlier token of the
    sample must be of `version` too (the prompt's KV came with the first token)."""
    own = batch.versions_B_T == version
    whole_prefix = (torch.cummin(batch.versions_B_T, dim=1).values == version) & \
        (torch.cummax(batch.versions_B_T, dim=1).values == version)
    return batch.mask_B_T & torch.where(batch.prefix_recomputed_B.unsqueeze(-1), own,
                                        whole_prefix)


@dataclass
class GapAccumulator:
    """Sampler-against-trainer gap over a step, split into numerical mismatch and staleness.

    A token counts as *mismatch* when the learner computed it with the weights that sampled it,
    prompt and KV cache included (`reproducible_by`): any gap is then numerics alone. Normally
    those are the tokens of the learner's current version; in deterministic mode the learner
    also recomputes older tokens under the weights of their own version (`own_B_T`, `own_ok_B_T`),
    so every token is checked. Every other token counts as *staleness*: sampled by older weights,
    or attending to KV cache written by older ones (an update landed mid-sample; see
    rollout/engine.py), which is drift, not numerics. Staleness is always measured against the
    learner's current logprobs.
    """

    learner_version: int
    mismatch_tokens: int = 0
    mismatch_kl_sum: float = 0.0
    mismatch_max_abs: float = 0.0
    stale_tokens: int = 0
    stale_kl_sum: float = 0.0
    staleness_sum: float = 0.0
    staleness_max: int = 0
    total_tokens: int = 0

    def add(self, trainer_B_T: torch.Tensor, batch: MicroBatch, own_B_T: torch.Tensor | None = None,
            own_ok_B_T: torch.Tensor | None = None) -> None:
        trainer = trainer_B_T.detach()
        current = reproducible_by(self.learner_version, batch)
        checked, checked_logprobs = current, trainer
        if own_B_T is not None:
            checked, checked_logprobs = own_ok_B_T & batch.mask_B_T, own_B_T
        gap = (checked_logprobs - batch.sampler_logprobs_B_T).abs()
        self.mismatch_tokens += int(checked.sum())
        # KL(sampler || trainer) in float64: fp32 gaps of 1e-7 would round k3 to exactly 0.
        sampler = batch.sampler_logprobs_B_T.double()
        kl = kl_estimate(sampler, checked_logprobs.double(), "k3")
        self.mismatch_kl_sum += float(kl[checked].sum())
        if checked.any():
            self.mismatch_max_abs = max(self.mismatch_max_abs, float(gap[checked].max()))
        older = batch.mask_B_T & ~current
        self.stale_tokens += int(older.sum())
        stale_kl = kl_estimate(sampler, trainer.double(), "k3")
        self.stale_kl_sum += float(stale_kl[older].sum())
        lag = (self.learner_version - batch.versions_B_T)[batch.mask_B_T]
        self.total_tokens += int(batch.mask_B_T.sum())
        self.staleness_sum += float(lag.sum())
        self.staleness_max = max(self.staleness_max, int(lag.max()) if lag.numel() else 0)

    def metrics(self) -> dict[str, float]:
        """A figure over no token is left out, never written as 0: a step where every token was
        stale and none was rescored has no mismatch/kl (docs/ARCHITECTURE.md)."""
        metrics = {"mismatch/tokens": self.mismatch_tokens, "staleness/tokens": self.stale_tokens,
                   "staleness/max": self.staleness_max}
        if self.mismatch_tokens:
            metrics["mismatch/kl"] = self.mismatch_kl_sum / self.mismatch_tokens
            metrics["mismatch/max_abs_logprob_diff"] = self.mismatch_max_abs
        if self.stale_tokens:
            metrics["staleness/kl"] = self.stale_kl_sum / self.stale_tokens
        if self.total_tokens:
            metrics["staleness/mean"] = self.staleness_sum / self.total_tokens
        return metrics
