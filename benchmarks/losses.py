"""Every loss recipe's learner step against GRPO's, side by side in one run on this machine.

    python benchmarks/losses.py [--model smollm2-135m-instruct] [--dtype float32]
                                [--prompts 2] [--group-size 8] [--new-tokens 48] [--repeats 3]

One learner trains the same batch under each recipe in turn (its loss config swapped between
steps, round-robin over the recipes, `--repeats` rounds, so machine noise hits every recipe
alike); PPO needs a value head and a KL needs a reference model, so each has a learner of its
own (the same weights), measured in the same rounds. Also timed: the corrections (TIS, MIS, IcePop together) and
a KL to a reference model, and the stale-token probe that measures the numerics gap every step
(`trainer.mismatch_probe`) on a fully stale batch, against the same step without it.

The batch: prompts and completions of random token ids (the step's cost depends on shapes, not
text), sampler logprobs = the model's own plus N(0, 0.05) noise so importance ratios vary,
rewards 0/1 at random with both in every group. Prints the median step time of each and its
ratio to GRPO's (the issue's target: within 10%, PPO reporting its own).
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


def measure(model_path: str, args) -> dict[str, list[float]]:
    from pydantic import TypeAdapter

    from slipstream.trainer.losses import LossConfig

    adapter = TypeAdapter(LossConfig)
    configs = {name: adapter.validate_python(fields) for name, fields in ARMS.items()}
    times: dict[str, list[float]] = {name: [] for name in [*ARMS, "ppo", "grpo+kl", "probe off",
                                                           "probe 4"]}
    with tempfile.TemporaryDirectory() as weights_dir:
        main = _learner(model_path, args, weights_dir, ARMS["grpo"], mismatch_probe=4)
        groups = _groups(main, args, 0)
        ppo = _learner(model_path, args, weights_dir, {"kind": "ppo"}, mismatch_probe=0)
        with_ref = _learner(model_path, args, weights_dir, {"kind": "grpo", "kl": {"coef": 0.1}},
                            mismatch_probe=0, reference_model=True)
        kl_config = with_ref.loss
        for _ in range(args.repeats):
            for name, config in configs.items():
                _time_step(main, config, groups, times[name])
            _time_step(ppo, adapter.validate_python({"kind": "ppo"}), groups, times["ppo"])
            _time_step(with_ref, kl_config, groups, times["grpo+kl"])
            for name, budget in (("probe off", 0), ("probe 4", 4)):
                main.loss, main.config.mismatch_probe = configs["grpo"], budget
                main.publish()                        # keeps this version's weights
                sampled = main.version
                main.train_step(_restamp(groups, sampled))     # the learner moves on
                started = time.perf_counter()
                main.train_step(_restamp(groups, sampled))     # now one version stale
                times[name].append(time.perf_counter() - started)
    return times


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
          f"{args.group_size} samples x {args.new_tokens} tokens, median of {args.repeats}")
    print(f"{'recipe':<22}{'step s':>9}{'vs grpo':>9}   runs")
    for name, value in median.items():
        base = {"probe 4": "probe off", "probe off": "probe off"}.get(name, "grpo")
        runs = " ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:<22}{value:>9.2f}{value / median[base]:>8.2f}x   {runs}"
              + ("" if base == "grpo" else f"   (against {base})"))


if __name__ == "__main__":
    main()
