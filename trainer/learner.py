"""The learner: DeepSpeed around a Hugging Face causal LM.

One `train_step(groups)` is: group-normalised advantages -> for each micro-batch, recompute the
trainer's logprobs of the sampled tokens, compute the configured loss, backward -> one optimizer
step. DeepSpeed owns bf16 with fp32 master weights (the optimizer's partitions), ZeRO, gradient
clipping and checkpoints; we tell it the number of micro-batches as its accumulation steps and
scale each micro-batch's loss ourselves (`scale_wrt_gas=False`), because the loss functions
already normalise by the whole step's token count.

The same class runs inside the pipeline (as a Ray actor) and in the synchronous reference loop
(in-process), so both train identically.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from slipstream.buffer.records import Group, Sample, TrainedSample
from slipstream.rollout.weight_transfer import fingerprint_names_for
from slipstream.trainer.advantages import group_advantages
from slipstream.trainer.logprobs import GapAccumulator, collate, token_logprobs
from slipstream.trainer.losses import LossConfig, LossInputs, compute_loss
from slipstream.trainer.losses.base import token_records
from slipstream.trainer.numerics import batch_invariant
from slipstream.trainer.version_replay import VersionReplay
from slipstream.trainer.weight_publish import WeightsFile, remove_old_weight_files, write_weights_file


@dataclass(frozen=True)
class LearnerSettings:
    model_path: str
    dtype: str                   # "bfloat16" | "float32"
    loss: LossConfig
    samples_per_step: int
    micro_batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    zero_stage: int
    threads: int
    temperature: float
    reference_model: bool
    seed: int
    weights_dir: str             # where published weight files go (tmpfs)
    deterministic: bool = False  # batch-invariant numerics; stale tokens replayed (version_replay)
    max_lag: int = 0             # how many versions back a trained token may come from


@dataclass(frozen=True)
class StepResult:
    step: int
    version: int                 # learner version after the step
    metrics: dict[str, float]
    trained: tuple[TrainedSample, ...]


def _init_single_process_group() -> None:
    """DeepSpeed wants torch.distributed even for one process; give it a world of one."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)


class Learner:
    def __init__(self, settings: LearnerSettings) -> None:
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        torch.set_num_threads(settings.threads)
        torch.manual_seed(settings.seed)
        dtype = getattr(torch, settings.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        model = AutoModelForCausalLM.from_pretrained(settings.model_path, dtype=dtype)
        self.reference = None
        if settings.reference_model:
            self.reference = AutoModelForCausalLM.from_pretrained(settings.model_path, dtype=dtype)
            self.reference.requires_grad_(False).eval()
        _init_single_process_group()
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                      weight_decay=settings.weight_decay)
        warmup = settings.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=self._deepspeed_config(), dist_init_required=True)
        self.fingerprint_names = fingerprint_names_for(
            [name for name, _ in self.engine.module.named_parameters()])
        self.step = 0
        self.replay = None
        if settings.deterministic:
            self.replay = VersionReplay(self.engine.module, settings.max_lag)
            self.replay.keep(0)

    def _numerics(self):
        """batch_invariant() in deterministic mode: the sampler computes under it too."""
        return batch_invariant() if self.settings.deterministic else contextlib.nullcontext()

    @property
    def version(self) -> int:
        """The policy version: optimizer steps taken (one per train_step)."""
        return self.step

    def _deepspeed_config(self) -> dict:
        s = self.settings
        return {
            "train_micro_batch_size_per_gpu": s.micro_batch_size,
            "gradient_accumulation_steps": s.samples_per_step // s.micro_batch_size,
            "gradient_clipping": s.grad_clip,
            "zero_optimization": {"stage": s.zero_stage},
            "bf16": {"enabled": s.dtype == "bfloat16"},
            "steps_per_print": 2**31 - 1,
        }

    def train_step(self, groups: list[Group]) -> StepResult:
        started = time.perf_counter()
        samples: list[Sample] = [s for g in groups for s in g.samples]
        if len(samples) != self.settings.samples_per_step:
            raise ValueError(f"batch of {len(samples)} samples, expected "
                             f"{self.settings.samples_per_step}")
        advantages = [a for g in groups for a in group_advantages(g.rewards_G)]
        total_tokens = sum(len(s.completion_ids_T) for s in samples)
        self.engine.train()
        gap = GapAccumulator(self.version)
        sums: dict[str, float] = {"loss/total": 0.0, "entropy/mean": 0.0}
        trainer_logprobs: list[tuple[float, ...]] = []
        loss_tokens: list[dict[str, tuple]] = []     # per sample: weights and mask reasons
        own_logprobs: list[tuple[float, ...] | None] = []
        if self.replay is not None:
            self.replay.prune(self.version)
        micro = self.settings.micro_batch_size
        for start in range(0, len(samples), micro):
            chunk = samples[start:start + micro]
            batch = collate(chunk, self.pad_id)
            out, logprobs, entropy = self._train_micro_batch(
                batch, advantages[start:start + micro], total_tokens, len(samples))
            sums["loss/total"] += float(out.loss.detach())
            sums["entropy/mean"] += float(entropy[batch.mask_B_T].sum()) / max(total_tokens, 1)
            for key, value in out.metrics.items():
                sums[key] = max(sums.get(key, value), value) if key.endswith("_max") else \
                    sums.get(key, 0.0) + value
            lengths = [len(s.completion_ids_T) for s in chunk]
            if self.replay is None:
                gap.add(logprobs, batch)
                own_logprobs.extend([None] * len(chunk))
            else:
                own, own_ok = self.replay.own_version_logprobs(
                    batch, logprobs, self.version, self.settings.temperature)
                gap.add(logprobs, batch, own, own_ok)
                # A sample with any token no held version reproduces gets None, not a mix.
                own_logprobs.extend(tuple(row[:n].tolist()) if bool(ok[:n].all()) else None
                                    for row, ok, n in zip(own, own_ok, lengths))
            trainer_logprobs.extend(
                tuple(row[:n].tolist()) for row, n in zip(logprobs.detach(), lengths))
            loss_tokens.extend(token_records(out, lengths))
        # Steps are numbered from 1 as logged (TensorBoard, rollouts/step-N.jsonl); the learner
        # version is that of the weights that recomputed the logprobs, before this step.
        trained = tuple(TrainedSample(s, self.step + 1, self.version, a, t, **per_token,
                                      own_version_logprobs_T=own)
                        for s, a, t, per_token, own in zip(samples, advantages, trainer_logprobs,
                                                           loss_tokens, own_logprobs))
        self.step += 1
        elapsed = time.perf_counter() - started
        metrics = {**sums, **gap.metrics(),
                   "optim/grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
                   "optim/lr": self.scheduler.get_last_lr()[0],
                   "timing/step_s": elapsed,
                   "throughput/train_tokens_per_s": sum(s.num_tokens for s in samples) / elapsed}
        return StepResult(self.step, self.version, metrics, trained)

    def _train_micro_batch(self, batch, advantages: list[float], total_tokens: int,
                           total_sequences: int):
        """Forward (under the configured numerics), loss, backward, and DeepSpeed's step (which
        only updates the weights at the end of the step's accumulation)."""
        with self._numerics():
            logprobs, entropy = token_logprobs(self.engine, batch, self.settings.temperature,
                                               with_entropy=True)
            ref = None
            if self.reference is not None:
                with torch.no_grad():
                    ref, _ = token_logprobs(self.reference, batch, self.settings.temperature)
        out = compute_loss(LossInputs(
            logprobs_B_T=logprobs, sampler_logprobs_B_T=batch.sampler_logprobs_B_T,
            advantages_B=torch.tensor(advantages, dtype=torch.float32),
            mask_B_T=batch.mask_B_T, ref_logprobs_B_T=ref, total_tokens=total_tokens,
            total_sequences=total_sequences), self.settings.loss)
        self.engine.backward(out.loss, scale_wrt_gas=False)
        self.engine.step()
        return out, logprobs, entropy

    def publish(self) -> WeightsFile:
        """Write the current weights as one packed file on tmpfs for the rollout workers."""
        named = ((name, p.detach()) for name, p in self.engine.module.named_parameters())
        weights = write_weights_file(named, self.settings.weights_dir, self.version,
                                     self.fingerprint_names)
        remove_old_weight_files(self.settings.weights_dir, keep_version=self.version)
        if self.replay is not None:
            self.replay.keep(self.version)
        return weights

    def ready(self) -> bool:
        return True

    def save_checkpoint(self, directory: str) -> str:
        tag = f"step-{self.step:06d}"
        self.engine.save_checkpoint(directory, tag=tag,
                                    client_state={"version": self.version, "step": self.step})
        return str(Path(directory) / tag)

    def save_final(self, directory: str) -> str:
        """The policy in Hugging Face format (loadable by vLLM and transformers)."""
        self.engine.module.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory
