"""Every loss recipe's learner step against GRPO's, side by side in one run on this machine.

    python benchmarks/losses.py [--model smollm2-135m-instruct] [--dtype float32]
                                [--prompts 2] [--group-size 8] [--new-tokens 48] [--repeats 3]

One learner trains the same batch under each recipe in turn (its loss config swapped between
steps, round-robin over the recipes, `--repeats` rounds, so machine noise hits every recipe
alike, in a shuffled order each round); PPO needs a value head and a KL needs a reference model,
so each has a learner of its own (the same weights), measured in the same rounds. Also timed: the corrections (TIS, MIS, IcePop together) and
a KL to a reference model, and the stale-token probe that measures the numerics gap every step
(`trainer.mismatch_probe`) on a fully stale batch, against the same step without it.

The batch: prompts and completions of random token ids (the step's cost depends on shapes, not
text), sampler logprobs = the model's own plus N(0, 0.05) noise so importance ratios vary,
rewards 0/1 at random with both in every group. Prints the median step time of each and its
ratio to GRPO's (target: within 10%; PPO and the KL pay for an extra model and report their own),
and each recipe's own cost with the model taken out: advantages, loss and its backward to the
logprobs, in milliseconds per step (20 repeats), which the step times' noise would hide.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import tempfile
import time

import slipstream  # noqa: F401  (before torch: hides the broken vision packages)

ARMS = {
    "grpo": {"kind": "grpo"},
    "dr_grpo": {"kind": "dr_grpo"},
    "dapo": {"kind": "dapo"},
    "gspo": {"kind": "gspo"},
    "cispo": {"kind": "cispo"},
    "rloo": {"kind": "rloo"},
    "reinforce_pp": {"kind": "reinforce_pp"},
    "grpo+corrections": {"kind": "grpo", "correction": {"tis": "token", "mis": "geometric",
                                                        "icepop": True}},
}


def _groups(learner, args, version: int):
    import torch

    from slipstream.buffer.records import Group, Sample
    from slipstream.trainer.logprobs import collate, token_logprobs

    gen = torch.Generator().manual_seed(0)
    vocab = learner.policy.config.vocab_size
    groups = []
    for g in range(args.prompts):
        prompt = tuple(torch.randint(10, vocab, (24,), generator=gen).tolist())
        samples = []
        for i in range(args.group_size):
            ids = tuple(torch.randint(10, vocab, (args.new_tokens,), generator=gen).tolist())
            reward = float(i % 3 == 0)
            draft = Sample(f"g{g}-{i}", f"g{g}", "p", prompt, ids, (0.0,) * len(ids),
                           (version,) * len(ids), "", "", "stop", "", reward)
            with torch.no_grad():
                logprobs = token_logprobs(learner.policy, collate([draft], learner.pad_id), 1.0)
            noisy = logprobs[0] + 0.05 * torch.randn(len(ids), generator=gen)
            samples.append(Sample(f"g{g}-{i}", f"g{g}", "p", prompt, ids,
                                  tuple(noisy.clamp(max=0).tolist()), (version,) * len(ids), "",
                                  "", "stop", "", reward))
        groups.append(Group(f"g{g}", g, "p", tuple(samples)))
    return groups


def _restamp(groups, version: int):
    import dataclasses

    def stamp(sample):
        return dataclasses.replace(sample, versions_T=(version,) * len(sample.versions_T))
    return [dataclasses.replace(g, samples=tuple(stamp(s) for s in g.samples)) for g in groups]


def _learner(model_path: str, args, weights_dir: str, loss: dict, **trainer):
    from slipstream.model_config import ModelConfig
    from slipstream.trainer.config import TrainerConfig
    from slipstream.trainer.learner import Learner

    samples = args.prompts * args.group_size
    config = TrainerConfig(groups_per_step=args.prompts, micro_batch_size=min(samples, 8),
                           lr=1e-7, loss=loss, **trainer)
    return Learner(config, ModelConfig(path=model_path, dtype=args.dtype),
                   group_size=args.group_size, temperature=1.0, max_new_tokens=args.new_tokens,
                   max_lag=1, seed=0, deterministic=False, weights_dir=weights_dir)


def _time_step(learner, loss_config, groups, times: list[float]) -> None:
    learner.loss = loss_config
    batch = _restamp(groups, learner.version)           # on-policy: the learner's own version
    started = time.perf_counter()
    learner.train_step(batch)
    times.append(time.perf_counter() - started)


def _probe_step(learner, grpo, budget: int, groups, times: list[float]) -> None:
    """A GRPO step on a batch one version stale, with the probe's budget set to `budget`."""
    learner.loss, learner.config.mismatch_probe = grpo, budget
    if learner.replay is not None:    # what a publish records: this version's weights
        learner.replay.keep(learner.version)
    sampled = learner.version
    learner.train_step(_restamp(groups, sampled))       # the learner moves on
    started = time.perf_counter()
    learner.train_step(_restamp(groups, sampled))       # now one version stale
    times.append(time.perf_counter() - started)


def measure(model_path: str, args) -> dict[str, list[float]]:
    """Whole learner steps, every arm once a round, in a shuffled order each round (a fixed
    order would give later arms a systematic share of the machine's drift)."""
    import random

    from pydantic import TypeAdapter

    from slipstream.trainer.losses import LossConfig

    adapter = TypeAdapter(LossConfig)
    configs = {name: adapter.validate_python(fields) for name, fields in ARMS.items()}
    with tempfile.TemporaryDirectory() as weights_dir:
        main = _learner(model_path, args, weights_dir, ARMS["grpo"], mismatch_probe=4)
        groups = _groups(main, args, 0)
        ppo = _learner(model_path, args, weights_dir, {"kind": "ppo"}, mismatch_probe=0)
        with_ref = _learner(model_path, args, weights_dir, {"kind": "grpo", "kl": {"coef": 0.1}},
                            mismatch_probe=0, reference_model=True)
        steps = {name: (lambda c=config: (main, c)) for name, config in configs.items()}
        steps |= {"ppo": lambda: (ppo, ppo.loss), "grpo+kl": lambda: (with_ref, with_ref.loss)}
        times: dict[str, list[float]] = {name: [] for name in [*steps, "probe off", "probe 4"]}
        order = [*steps, "probe off", "probe 4"]
        rng = random.Random(0)
        for _ in range(args.repeats):
            rng.shuffle(order)
            for name in order:
                if name.startswith("probe"):
                    _probe_step(main, configs["grpo"], 4 if name == "probe 4" else 0, groups,
                                times[name])
                else:
                    _time_step(*steps[name](), groups, times[name])
        times |= _loss_only_ms(main, configs, adapter, groups)
    return times


def _loss_only_ms(learner, configs, adapter, groups) -> dict[str, list[float]]:
    """Each recipe's own cost without the model: advantages, the loss of every micro-batch and
    its backward to the logprobs, on logprobs computed once (milliseconds per step)."""
    import torch

    from slipstream.trainer.learner import _Scored
    from slipstream.trainer.logprobs import token_logprobs
    from slipstream.trainer.losses import LossInputs, compute_loss
    from slipstream.trainer.step_batch import build_step_batch

    batch = build_step_batch(groups, learner.pad_id, learner.config.micro_batch_size,
                             configs["grpo"], learner.max_new_tokens, learner.samples_per_step)
    with torch.no_grad():
        logprobs = [token_logprobs(learner.policy, micro, 1.0)
                    for _, micro in batch.micro_batches()]
    recipes = {**configs, "ppo": adapter.validate_python({"kind": "ppo"})}
    timings: dict[str, list[float]] = {f"{name} (loss only, ms)": [] for name in recipes}
    for _ in range(20):
        for name, config in recipes.items():
            batch = build_step_batch(groups, learner.pad_id, learner.config.micro_batch_size,
                                     config, learner.max_new_tokens, learner.samples_per_step)
            values = torch.randn(batch.mask_B_T.shape) if config.needs_values else None
            started = time.perf_counter()
            learner.loss = config
            advantages, returns = learner._advantages(batch, _Scored(None, values))
            for (rows, micro), logp in zip(batch.micro_batches(), logprobs):
                width = micro.mask_B_T.shape[1]
                cut = (lambda t: None if t is None else t[rows, :width])
                inputs = LossInputs(
                    logp.clone().requires_grad_(), micro.sampler_logprobs_B_T,
                    cut(advantages), micro.mask_B_T, None, batch.total_tokens,
                    batch.total_sequences, batch.max_tokens,
                    values_B_T=None if values is None else cut(values).clone().requires_grad_(),
                    old_values_B_T=cut(values), returns_B_T=cut(returns))
                compute_loss(inputs, config).loss.backward()
            timings[f"{name} (loss only, ms)"].append(1000 * (time.perf_counter() - started))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from slipstream.launch.models import resolve_model

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines()
                       if line.startswith("Model name")), platform.processor())
    times = measure(resolve_model(args.model), args)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.model} {args.dtype} on {model_name}: {args.prompts} prompts x "
          f"{args.group_size} samples x {args.new_tokens} tokens, median of {args.repeats} "
          f"steps (loss only: of 20)")
    print(f"{'recipe':<34}{'median':>9}{'vs grpo':>9}   runs")
    for name, value in median.items():
        base = {"probe 4": "probe off", "probe off": "probe off"}.get(name, "grpo")
        if name.endswith("(loss only, ms)"):
            base = "grpo (loss only, ms)"
        runs = " ".join(f"{t:.2f}" for t in times[name][:6])
        print(f"{name:<34}{value:>9.2f}{value / median[base]:>8.2f}x   {runs}"
              + ("" if base == "grpo" else f"   (against {base})"))


if __name__ == "__main__":
    main()
