"""One TRL GRPOTrainer run on the quickstart's task, for `benchmarks/peer_trl.py`.

    python benchmarks/trl_arm.py --out DIR --seed 0 --minutes 12 [--precision autocast]

The quickstart's settings, mapped onto TRL 1.16 (`pip install -e ".[bench]"`):
- the same model, prompts (the env's training stream, in order: no shuffling), chat template,
  4 prompts x 8 samples per optimizer step (`generation_batch_size` 32, two micro-batches of 16),
  48 new tokens at temperature 1, AdamW at lr 5e-5 with a constant schedule, grad clip 1.0, no KL;
- GRPO's group-std advantages, PPO-clip 0.2 / 0.28 (clip-higher), the token mean over the batch
  (TRL's `dapo` aggregation is our `token_mean`), one gradient step per generation;
- the same reward, through the same RewardRunner (math-verify in a child process, 5 s timeout).

Writes DIR/metrics.jsonl (the pipeline's names: `reward/mean`, `timing/wall_s`,
`throughput/step_tokens`) and the final policy to DIR/final, then exits. The run ends after the
first step that finishes past `--minutes` on its own clock (started before the model loads), as
the quickstart's `--time-budget-min` does.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()

import argparse  # noqa: E402  (the clock starts before anything heavy is imported)
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import slipstream  # noqa: E402,F401  (before torch: hides the broken vision packages)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--precision", choices=["autocast", "bf16", "fp32"], default="autocast",
                        help="autocast: fp32 weights, bf16 matmuls (the learner's numerics); "
                             "bf16: the weights themselves in bf16; fp32: no bf16 at all")
    return parser.parse_args()


class StepLog:
    """What the reward function saw at each generation, written out at each optimizer step."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w")
        self.pending: dict[str, float] = {}

    def record(self, rewards: list[float], tokens: int) -> None:
        self.pending = {"reward/mean": sum(rewards) / len(rewards),
                        "throughput/step_tokens": tokens}

    def write(self, step: int) -> None:
        line = {"step": step, **self.pending, "timing/wall_s": time.monotonic() - STARTED}
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()


def quickstart_dataset(config, tokenizer, count: int):
    """The env's first `count` training prompts, in order, as TRL's conversational rows, each
    with its templated token count (the trained tokens include the prompt's, as ours do)."""
    from datasets import Dataset

    from slipstream.envs import build_env
    from slipstream.rollout.group import encode_prompt

    env = build_env(config.env, config.seed)
    return Dataset.from_list([
        {"prompt": list(p.messages), "reference": p.reference,
         "prompt_tokens": len(encode_prompt(tokenizer, p)[1])}
        for p in (env.prompt(i) for i in range(count))])


def make_reward(rewards, log: StepLog):
    """TRL's reward-function signature around the run's own RewardRunner."""

    def quickstart_reward(completions, completion_ids, reference, prompt_tokens, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        scores = [r.score for r in rewards.score(list(zip(texts, reference)))]
        log.record(scores, sum(prompt_tokens) + sum(len(ids) for ids in completion_ids))
        return scores

    return quickstart_reward


def run(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from slipstream.launch.cli import parse_config
    from slipstream.launch.models import resolve_model
    from slipstream.launch.quickstart import DEFAULTS
    from slipstream.rewards import RewardRunner, build_reward

    config = parse_config(["--seed", str(args.seed)], **DEFAULTS)
    rollout, trainer = config.rollout, config.trainer
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    samples_per_step = trainer.groups_per_step * rollout.group_size
    settings = GRPOConfig(
        output_dir=str(args.out / "trl"), seed=args.seed, use_cpu=True,
        bf16=args.precision == "autocast", max_steps=100_000, save_strategy="no",
        report_to=[], logging_steps=1, disable_tqdm=True, shuffle_dataset=False,
        learning_rate=trainer.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=trainer.grad_clip,
        per_device_train_batch_size=trainer.micro_batch_size,
        gradient_accumulation_steps=samples_per_step // trainer.micro_batch_size,
        generation_batch_size=samples_per_step, num_generations=rollout.group_size,
        max_completion_length=rollout.max_new_tokens, temperature=rollout.temperature,
        top_p=1.0, top_k=0, beta=0.0, epsilon=trainer.loss.clip_low,
        epsilon_high=trainer.loss.clip_high, loss_type="dapo", scale_rewards="group",
        num_iterations=1)
    log = StepLog(args.out / "metrics.jsonl")
    budget_s = args.minutes * 60

    class Budget(TrainerCallback):
        def on_step_end(self, _args, state, control, **_):
            log.write(state.global_step)
            if time.monotonic() - STARTED > budget_s:
                control.should_training_stop = True

    with RewardRunner(build_reward(config.reward), config.reward.timeout_s) as rewards:
        grpo = GRPOTrainer(
            model=model, processing_class=tokenizer, args=settings,
            reward_funcs=make_reward(rewards, log),
            train_dataset=quickstart_dataset(config, tokenizer, 8 * 1024),
            callbacks=[Budget()])
        grpo.train()
    grpo.save_model(str(args.out / "final"))
    tokenizer.save_pretrained(str(args.out / "final"))


if __name__ == "__main__":
    arguments = parse_args()
    arguments.out.mkdir(parents=True, exist_ok=True)
    run(arguments)
