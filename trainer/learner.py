"""The learner: DeepSpeed around a Hugging Face causal LM (and PPO's value head).

`train_step(groups)` is the algorithm: advantages from the step's rewards (and, for some
recipes, reference logprobs or values scored first, without gradient), then for each
micro-batch the trainer's logprobs of the sampled tokens, the configured loss, backward, and one
optimizer step at the end of the step. DeepSpeed owns bf16 with fp32 master weights (the
optimizer's partitions), ZeRO, gradient clipping and checkpoints; we tell it the number of
micro-batches as its accumulation steps and scale each micro-batch's loss ourselves
(`scale_wrt_gas=False`), because the losses already normalise by the whole step's token count.
Record keeping (metrics, the gap, per-token records) is step_record.py's; rescoring stale tokens
under their own version is version_replay.py's.

The same class runs inside the pipeline (as a Ray actor) and in the synchronous reference loop
(in-process), so both train identically.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import random
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slipstream.buffer.records import Group
from slipstream.errors import SlipstreamError
from slipstream.model_config import ModelConfig
from slipstream.trainer.advantages import estimate_advantages, gae, whiten
from slipstream.trainer.config import TrainerConfig, initial_threads
from slipstream.trainer.logprobs import MicroBatch, TokenForward, forward_tokens
from slipstream.trainer.losses import LossInputs, LossOutput, compute_loss
from slipstream.trainer.losses.kl import kl_estimate
from slipstream.trainer.numerics import batch_invariant
from slipstream.trainer.optimizers import build_optimizer
from slipstream.trainer.step_batch import StepBatch, build_step_batch
from slipstream.trainer.step_record import StepRecord, StepResult
from slipstream.trainer.value_head import VALUE_HEAD_FILE, PolicyWithValue
from slipstream.trainer.version_replay import REPLAY_DIR, VersionReplay
from slipstream.weight_fingerprint import fingerprint_names_for

__all__ = ["Learner", "StepResult", "init_world_of_one"]


@dataclass(frozen=True)
class _Scored:
    """Per-token quantities of the whole step computed before training, without gradient."""

    ref_B_T: torch.Tensor | None        # reference-model logprobs
    values_B_T: torch.Tensor | None     # the value head's predictions (V_old)
    ref_logits_B_T: torch.Tensor | None = None   # the reference's sampled-token logits (soft_q)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (another C library: nothing to do)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand the heap pages freed since the last call back to the system. glibc keeps them
    (a long-lived tensor above a freed one pins the heap top, and its threshold for giving
    large blocks their own mapping rises as they are freed), so the learner's resident memory
    grew by every micro-batch's activations and stayed there: measured at the quickstart's
    batch, the learner's peak fell from 10.0 to 7.1 GiB in deterministic mode (its small
    tiles fragment the heap most) and from 5.0 to 4.6 GiB in normal mode, for a few ms."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def init_world_of_one() -> None:
    """DeepSpeed wants torch.distributed even for one process; give it a world of one, on a
    free port. The values are set, not defaulted: a MASTER_PORT inherited from the shell (a
    torchrun or SLURM environment, or a test process that ran a learner) may name a port in use,
    and the learner would die binding it. Nothing to do once torch.distributed is up."""
    import torch.distributed

    if torch.distributed.is_initialized():
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0",
                      WORLD_SIZE="1")


class Learner:
    """`model.path` must be resolved (launch/models.py resolve_model). The keyword arguments
    are the few run-level values the learner needs from other sections: the rollout's group
    size, temperature and completion limit, the buffer's max_lag, the run's seed and mode."""

    def __init__(self, trainer: TrainerConfig, model: ModelConfig, *, group_size: int,
                 temperature: float, max_new_tokens: int, max_lag: int, seed: int,
                 deterministic: bool, weights_dir: str) -> None:
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config, self.loss = trainer, trainer.loss
        self.samples_per_step = trainer.groups_per_step * group_size
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.deterministic, self.weights_dir = deterministic, weights_dir
        torch.set_num_threads(initial_threads(trainer.threads, deterministic))
        torch.manual_seed(seed)
        dtype = getattr(torch, model.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model.path)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.policy = AutoModelForCausalLM.from_pretrained(model.path, dtype=dtype)
        trained = PolicyWithValue(self.policy) if self.loss.needs_values else self.policy
        self.reference = None
        if trainer.reference_model:
            self.reference = AutoModelForCausalLM.from_pretrained(model.path, dtype=dtype)
            self.reference.requires_grad_(False).eval()
        init_world_of_one()
        optimizer = build_optimizer(trained, trainer.optimizer, trainer.lr)
        warmup = trainer.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=trained, optimizer=optimizer, lr_scheduler=scheduler,
            config=self._deepspeed_config(), dist_init_required=True)
        if self.reference is not None:       # beside the policy (DeepSpeed moved that one)
            self.reference.to(self.engine.device)
        self.fingerprint_names = fingerprint_names_for(
            [name for name, _ in self.policy.named_parameters()])
        self.step = 0
        self._grad_norm: float | None = None    # this step's, where DeepSpeed reports none
        self._sync = None     # (trainer engine, source, client) once `connect` ran
        self._published = None    # the last `Published`
        self.replay = None
        if deterministic or trainer.mismatch_probe > 0:
            self.replay = VersionReplay(self.policy, max_lag, self._numerics)
            self.replay.keep(0)

    def _numerics(self):
        """batch_invariant() in deterministic mode: the sampler computes under it too."""
        return batch_invariant() if self.deterministic else contextlib.nullcontext()

    @property
    def version(self) -> int:
        """The policy version: optimizer steps taken (one per train_step)."""
        return self.step

    def _deepspeed_config(self) -> dict:
        t = self.config
        return {
            "train_micro_batch_size_per_gpu": t.micro_batch_size,
            "gradient_accumulation_steps": self.samples_per_step // t.micro_batch_size,
            "gradient_clipping": t.grad_clip,
            "zero_optimization": {"stage": t.zero_stage},
            "bf16": {"enabled": self.policy.dtype == torch.bfloat16},
            "steps_per_print": 2**31 - 1,
        }

    def set_threads(self, threads: int) -> None:
        torch.set_num_threads(threads)

    def train_step(self, groups: list[Group]) -> StepResult:
        started = time.perf_counter()
        batch = build_step_batch(groups, self.pad_id, self.config.micro_batch_size, self.loss,
                                 self.max_new_tokens, expected_samples=self.samples_per_step)
        scored = self._score_before_training(batch)      # reference logprobs, values (PPO)
        advantages_B_T, returns_B_T = self._advantages(batch, scored)
        record = StepRecord(self.version, batch)
        self._grad_norm = None
        self.engine.train()
        for rows, micro in batch.micro_batches():
            forward, out = self._train_micro_batch(batch, rows, micro, advantages_B_T,
                                                   returns_B_T, scored)  # loss, backward, step
            record.add(micro, forward, out, self._own_version_logprobs(micro, forward, record))
        self.step += 1
        return record.result(self.step, self.version, advantages_B_T,
                             self._step_metrics(batch, started))

    def _step_metrics(self, batch: StepBatch, started: float) -> dict[str, float]:
        elapsed = time.perf_counter() - started
        metrics = {"optim/lr": self.scheduler.get_last_lr()[0], "timing/step_s": elapsed,
                   "throughput/train_tokens_per_s":
                       sum(s.num_tokens for s in batch.samples) / elapsed}
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is None:
            grad_norm = self._grad_norm
        if grad_norm is not None:     # no gradient at all this step: no figure
            metrics["optim/grad_norm"] = float(grad_norm)
        return metrics

    def _score_before_training(self, batch: StepBatch) -> _Scored:
        """Reference logprobs and values for the whole step, no gradient, before any update:
        a KL placed in the reward and PPO's GAE need them before the advantages exist."""
        needs_ref, needs_values = self.reference is not None, self.loss.needs_values
        if not (needs_ref or needs_values):
            return _Scored(None, None)
        shape = tuple(batch.mask_B_T.shape)
        ref = torch.zeros(shape) if needs_ref else None
        values = torch.zeros(shape) if needs_values else None
        ref_logits = torch.zeros(shape) if needs_ref and self.loss.needs_logits else None
        self.engine.eval()
        with torch.no_grad(), self._numerics():
            for rows, micro in batch.micro_batches():
                width = micro.mask_B_T.shape[1]
                if ref is not None:
                    scored = forward_tokens(self.reference, micro, self.temperature,
                                            with_logits=ref_logits is not None)
                    ref[rows, :width] = scored.logprobs_B_T
                    if ref_logits is not None:
                        ref_logits[rows, :width] = scored.target_logits_B_T
                if values is not None:
                    values[rows, :width] = forward_tokens(self.engine, micro,
                                                          self.temperature).values_B_T
        return _Scored(ref, values, ref_logits)

    def _advantages(self, batch: StepBatch, scored: _Scored
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(advantages_B_T, returns_B_T or None) for the whole step (trainer/advantages.py)."""
        penalty = None
        kl = self.loss.kl
        if kl.placement == "reward" and kl.coef > 0:
            # KL(mu || ref) on the sampler's logprobs: the tokens were drawn from mu, so the
            # estimators are unbiased for the policy that generated the data, with no forward.
            penalty = kl.coef * kl_estimate(batch.sampler_B_T, scored.ref_B_T, kl.estimator)
        if not self.loss.needs_values:
            return estimate_advantages(self.loss.advantage, batch.rewards_B, batch.groups,
                                       batch.mask_B_T, batch.trained_B_T, penalty), None
        advantages, returns = gae(batch.rewards_B, scored.values_B_T, batch.mask_B_T,
                                  self.loss.gamma, self.loss.lam, penalty)
        if self.loss.whiten_advantages:
            advantages = whiten(advantages, batch.trained_B_T)
        return advantages, returns

    def _train_micro_batch(self, batch: StepBatch, rows: slice, micro: MicroBatch,
                           advantages_B_T: torch.Tensor, returns_B_T: torch.Tensor | None,
                           scored: _Scored) -> tuple[TokenForward, LossOutput]:
        """Forward (under the configured numerics), loss, backward, and DeepSpeed's step (which
        only updates the weights at the end of the step's accumulation)."""
        width = micro.mask_B_T.shape[1]

        def cut(whole: torch.Tensor | None) -> torch.Tensor | None:
            return None if whole is None else whole[rows, :width]

        teacher = batch.teacher
        with self._numerics():
            forward = forward_tokens(
                self.engine, micro, self.temperature, with_entropy=True,
                with_logits=self.loss.needs_logits, with_argmax=teacher is not None,
                gather_ids_B_T_K=cut(None if teacher is None else teacher.topk_ids_B_T_K))
        known = batch.proximal_known_B
        out = compute_loss(LossInputs(
            logprobs_B_T=forward.logprobs_B_T, sampler_logprobs_B_T=micro.sampler_logprobs_B_T,
            advantages_B_T=cut(advantages_B_T), mask_B_T=micro.mask_B_T,
            ref_logprobs_B_T=cut(scored.ref_B_T), total_tokens=batch.total_tokens,
            total_sequences=batch.total_sequences, max_tokens=batch.max_tokens,
            filtered_B=None if batch.filtered_B is None else batch.filtered_B[rows],
            values_B_T=forward.values_B_T, old_values_B_T=cut(scored.values_B_T),
            returns_B_T=cut(returns_B_T), proximal_logprobs_B_T=cut(batch.proximal_B_T),
            proximal_known_B=None if known is None else known[rows],
            target_logits_B_T=forward.target_logits_B_T,
            ref_target_logits_B_T=cut(scored.ref_logits_B_T),
            student_topk_logprobs_B_T_K=forward.gathered_B_T_K,
            student_argmax_B_T=forward.argmax_B_T,
            **({} if teacher is None else teacher.cut(rows, width))), self.loss)
        self.engine.backward(out.loss, scale_wrt_gas=False)
        if self.engine.is_gradient_accumulation_boundary():
            self._grad_norm = self._unreported_grad_norm()
        self.engine.step()
        release_freed_memory()
        return forward, out

    def _unreported_grad_norm(self) -> float | None:
        """The pre-clip gradient norm where DeepSpeed keeps none: at ZeRO 0 in fp32 the engine
        clips with torch's rule and drops the norm; its optimizer wrappers (bf16, ZeRO 1/2)
        keep it, and then this returns None. Call after the step's last backward."""
        if hasattr(self.engine.optimizer, "_global_grad_norm"):
            return None
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else None

    def _own_version_logprobs(self, micro: MicroBatch, forward: TokenForward,
                              record: StepRecord) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Stale tokens rescored under their own version (every sequence in deterministic mode,
        `trainer.mismatch_probe` per step otherwise); None when nothing is kept for it."""
        if self.replay is None:
            return None
        self.replay.prune(self.version)
        budget = None if self.deterministic else self.config.mismatch_probe - record.probed
        if budget is not None and budget <= 0:
            return None
        started = time.perf_counter()
        own, ok, scored = self.replay.own_version_logprobs(
            micro, forward.logprobs_B_T, self.version, self.temperature, budget)
        record.probed += scored
        record.probe_s += time.perf_counter() - started
        return own, ok

    def connect(self, client, transfer: str, host: str | None = None) -> None:
        """Join the engines' weight-transfer channel once per run (trainer/weight_transfer.py):
        `client` reaches the engines (rollout/sync_client.py), `transfer` is shm, collective
        or ipc; `host` is this host's address the engines reach (default: Ray's node address,
        or loopback outside Ray)."""
        from slipstream.trainer.weight_transfer import LearnerSource, connect

        if host is None:
            import ray

            host = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        client.fingerprint_names = self.fingerprint_names
        source = LearnerSource(self.policy, self.fingerprint_names)
        sender = connect(transfer, client, source, weights_dir=self.weights_dir,
                         bucket_bytes=self.config.bucket_mb << 20,
                         timeout_s=self.config.sync_timeout_s, host=host)
        self._sync = (sender, source, client)

    def publish(self):
        """Send the policy's weights to every engine as version `self.version` and check that
        they landed (trainer/weight_transfer.py `Published`)."""
        from slipstream.trainer.weight_transfer import send

        if self._sync is None:
            raise RuntimeError("Learner.publish before Learner.connect")
        published = send(*self._sync, version=self.version)
        if self.replay is not None:
            self.replay.keep(self.version)
        self._published = published
        return published

    def replace_engine(self, index: int, worker) -> int:
        """A new rollout worker takes engine `index`'s place (the old one's process died): it
        loads the last published weights, labelled with their version, checked by fingerprint,
        without pausing the other engines. Returns that version (0: none published yet, the
        new engine's initial weights are version 0)."""
        sender, _, client = self._sync
        alone = client.replace_worker(index, worker)
        if self._published is None:
            return 0
        update = getattr(sender, "last_update", None)
        if update is None:
            raise SlipstreamError(
                f"rollout worker {index} died; a new engine cannot join the running "
                f"{type(sender).__name__} weight transfer: --resume the run from its last "
                "checkpoint instead")
        version = self._published.version
        alone.pending_version = version
        alone.start_weight_update()
        alone.update_weights(update)
        alone.finish_weight_update()
        landed = dict(alone.results[0]["fingerprint"])
        if landed != self._published.fingerprint:
            raise SlipstreamError(f"the replacement of rollout worker {index} did not load "
                                  f"version {version}: fingerprint {landed} != "
                                  f"{self._published.fingerprint}")
        return version

    def ready(self) -> bool:
        return True

    def node_id(self) -> str | None:
        """The Ray node the learner runs on (None outside Ray)."""
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None

    def save_checkpoint(self, directory: str, extra: dict[str, str] | None = None) -> str:
        """A crash-consistent DeepSpeed checkpoint (trainer/checkpoints.py) of everything a
        resume needs: weights, optimizer, scheduler, step, RNG states, the value head (part of
        the engine's module), and in deterministic mode the kept versions' weights (so stale
        tokens are still checked bitwise after a resume). `extra` (file name -> text) is the
        controller's own state, saved inside the same checkpoint. The last
        `trainer.keep_checkpoints` are kept."""
        from slipstream.trainer.checkpoints import save_checkpoint

        def write_extra(folder: Path) -> None:
            for name, text in (extra or {}).items():
                (folder / name).write_text(text)
            if self.deterministic and self.replay is not None:
                self.replay.save(folder / REPLAY_DIR)

        rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
               "numpy": np.random.get_state()}
        folder = save_checkpoint(self.engine, directory, f"step-{self.step:06d}",
                                 {"version": self.version, "step": self.step, "rng": rng},
                                 keep=self.config.keep_checkpoints, write_extra=write_extra)
        return str(folder)

    def load_checkpoint(self, folder: str) -> int:
        """Continue from a checkpoint `save_checkpoint` wrote (a complete one: the caller picks
        it with checkpoints.latest_complete); returns the restored version."""
        folder_path = Path(folder)
        _, client = self.engine.load_checkpoint(str(folder_path.parent), tag=folder_path.name,
                                                load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
        if client is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {folder}")
        self.step = int(client["step"])
        torch.set_rng_state(client["rng"]["torch"])
        random.setstate(client["rng"]["python"])
        np.random.set_state(client["rng"]["numpy"])
        if self.replay is not None:
            self.replay.weights.clear()
            if (folder_path / REPLAY_DIR).is_dir():
                self.replay.load(folder_path / REPLAY_DIR)
        return self.version

    def save_final(self, directory: str) -> str:
        """The policy in Hugging Face format (loadable by vLLM and transformers), and PPO's value
        head in a subfolder (VALUE_HEAD_FILE), where neither loader reads it."""
        # Written beside it and renamed, so `final/` is never half a model.
        final = Path(directory)
        partial = final.with_name(f".{final.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        self.policy.save_pretrained(partial)
        self.tokenizer.save_pretrained(partial)
        module = self.engine.module
        if isinstance(module, PolicyWithValue):
            from safetensors.torch import save_file

            head_file = partial / VALUE_HEAD_FILE
            head_file.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().contiguous() for k, v in module.value_head.state_dict()
                       .items()}, str(head_file))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        return directory
