"""`slipstream inspect --demo`: a generated run directory with known contents.

It is written with the pipeline's own writers (`write_step`, `write_snapshot`,
`append_evictions`) from real `TrainedSample` records, so it has exactly the layout of a real
run; only the numbers are made up (seeded), around a few planted facts the tests and a first-time
user can look for (the `DEMO_*` constants):

* one token with the run's largest trainer-sampler gap (DEMO_LARGEST_GAP at a known token);
* a sample whose weight version changes mid-completion (an update landed while it generated);
* hostile model text: `<script>alert(1)</script>`, a bare `</script>`, an `onerror` attribute;
* a zero-variance group (every sibling right: advantages all 0), and an evicted group;
* multi-byte characters split across tokens (a token holding "" and the next the character).

Tokens whose prefix was sampled by the learner's weights get a gap of exactly 0 or a float32-
sized one (always 0 in the deterministic demo, but for DEMO_DETERMINISTIC_NONZERO planted
ones); older tokens drift by up to 0.3. PPO-clip masking and importance weights are computed
as trainer/losses/grpo.py does without TIS (clip 0.2).
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

from slipstream.buffer.records import Group, Sample, TrainedSample
from slipstream.buffer.replay import Eviction, ReplayBuffer
from slipstream.buffer.rollout_log import write_step
from slipstream.buffer.snapshots import append_evictions, write_snapshot

DEMO_STEPS = 6
DEMO_GROUPS_PER_STEP = 2
DEMO_GROUP_SIZE = 4
DEMO_MAX_LAG = 1
DEMO_LARGEST_GAP_ID = "g0000004-1"       # trained at step 3
DEMO_LARGEST_GAP_TOKEN = 5
DEMO_LARGEST_GAP = 0.75
DEMO_TWO_VERSION_ID = "g0000006-0"       # trained at step 4: versions 2 then 3
DEMO_VERSION_CHANGE_TOKEN = 4            # the first token sampled by version 3
DEMO_HOSTILE_ID = "g0000002-3"
DEMO_HOSTILE_TEXT = "<script>alert(1)</script> 7 </script><img src=x onerror=alert(2)>"
DEMO_ZERO_VARIANCE_GROUP = "g0000003"
DEMO_EVICTED_GROUP = "g0000009"
DEMO_DETERMINISTIC_NONZERO = 2           # tokens with a nonzero gap in the deterministic demo
_CLIP = 0.2

_ANSWERS = ["The sum is 12.", "12", "I think 13, since 5 + 7 = 12... no, 12.", "café: 12 🙂",
            "Answer: 11", "Let me add: 5 + 7 = 12. So the answer is 12.", "twelve", "12.0"]


def _pieces(text: str) -> list[str]:
    """Split text into token-like pieces; multi-byte characters become an empty piece followed
    by the character, as rollout/group.py's token_texts records a character split across
    byte-level tokens."""
    pieces: list[str] = []
    for piece in re.findall(r"\s?[A-Za-z]{1,4}|\s?\d|\s?[^\sA-Za-z\d]|\s", text):
        if any(ord(ch) > 127 for ch in piece):
            pieces.append("")
        pieces.append(piece)
    return pieces


def _advantages(rewards: list[float]) -> list[float]:
    """GRPO's group-normalised advantages, (r - mean) / (population std + 1e-6), exact zeros for
    an all-equal group: the same arithmetic as trainer/advantages.py's group_advantages, so the
    demo's numbers are bitwise what a run would record. Written out here because the inspector
    imports only records and run-directory readers/writers, never the trainer (and its model
    stack); the demo needs nothing more than these few lines."""
    if max(rewards) == min(rewards):
        return [0.0] * len(rewards)
    mean = sum(rewards) / len(rewards)
    centred = [r - mean for r in rewards]
    std = math.sqrt(sum(c * c for c in centred) / len(rewards))
    return [c / (std + 1e-6) for c in centred]


def _trained(rng: random.Random, group_id: str, index: int, step: int, text: str,
             reward: float, advantage: float, versions: list[int], deterministic: bool,
             planted_gap: int | None) -> TrainedSample:
    learner_version = step - 1
    texts = _pieces(text)
    n = len(texts)
    versions = (versions * n)[:n] if len(versions) == 1 else versions[:n]
    sampler = [math.log(rng.uniform(0.05, 1.0)) for _ in range(n)]
    fresh = True
    trainer = []
    for t, (logp, version) in enumerate(zip(sampler, versions)):
        fresh = fresh and version == learner_version
        if fresh and (deterministic or rng.random() < 0.5):
            gap = 0.0
        elif fresh:
            gap = rng.choice([-1, 1]) * rng.uniform(1e-7, 3e-6)
        else:
            gap = rng.uniform(-0.3, 0.3)
        if t == planted_gap:
            gap = DEMO_LARGEST_GAP if not deterministic else 2.0 ** -20
        trainer.append(logp + gap if logp + gap <= 0 else logp - abs(gap))   # logprobs <= 0
    ratios = [math.exp(tr - s) for tr, s in zip(trainer, sampler)]
    clipped = [(advantage > 0 and r > 1 + _CLIP) or (advantage < 0 and r < 1 - _CLIP)
               for r in ratios]
    weights = [min(max(r, 1 - _CLIP), 1 + _CLIP) if c else r for r, c in zip(ratios, clipped)]
    sample = Sample(
        sample_id=f"{group_id}-{index}", group_id=group_id, prompt_id=f"add-{group_id}",
        prompt_ids=tuple(range(1, 9)), completion_ids_T=tuple(1000 + rng.randrange(5000)
                                                                for _ in range(n)),
        sampler_logprobs_T=tuple(sampler), versions_T=tuple(versions),
        prompt_text=f"<|im_start|>user\nWhat is 5 + 7? ({group_id})<|im_end|>\n"
                    "<|im_start|>assistant\n",
        completion_text="".join(texts), finish_reason="stop" if index % 3 else "length",
        reference="12", reward=reward, token_texts_T=tuple(texts), created_at=1.7e9 + step)
    return TrainedSample(sample, step, learner_version, advantage, tuple(trainer),
                         importance_weights_T=tuple(weights), masked_T=tuple(clipped),
                         mask_reasons_T=tuple("ppo_clip" if c else "" for c in clipped))


def _group(rng: random.Random, number: int, step: int, deterministic: bool) -> list[TrainedSample]:
    group_id = f"g{number:07d}"
    learner_version = step - 1
    if group_id == DEMO_ZERO_VARIANCE_GROUP:
        rewards = [1.0] * DEMO_GROUP_SIZE
    else:
        rewards = [rng.choice([0.0, 0.5, 1.0]) for _ in range(DEMO_GROUP_SIZE - 1)] + [0.0]
    advantages = _advantages(rewards)
    older = max(learner_version - DEMO_MAX_LAG, 0)
    samples = []
    for i, (reward, advantage) in enumerate(zip(rewards, advantages)):
        sample_id = f"{group_id}-{i}"
        text = DEMO_HOSTILE_TEXT if sample_id == DEMO_HOSTILE_ID else rng.choice(_ANSWERS)
        versions = [learner_version if number % 2 == 0 else older]
        if sample_id == DEMO_TWO_VERSION_ID:
            text = "Let me add: 5 + 7 = 12. So the answer is 12."
            cut = DEMO_VERSION_CHANGE_TOKEN
            versions = [older] * cut + [learner_version] * (len(_pieces(text)) - cut)
        planted = None
        if sample_id == DEMO_LARGEST_GAP_ID:
            text, planted = "So the answer is 12.", DEMO_LARGEST_GAP_TOKEN   # token 5: " 1"
        if deterministic and planted is None and sample_id == "g0000000-0":
            planted = 1
        samples.append(_trained(rng, group_id, i, step, text, reward, advantage, versions,
                                deterministic, planted))
    return samples


def _step_groups() -> dict[int, list[int]]:
    """Group numbers trained at each step; DEMO_EVICTED_GROUP (9) never trains."""
    numbers = [n for n in range(DEMO_STEPS * DEMO_GROUPS_PER_STEP + 1) if n != 9]
    return {s: numbers[(s - 1) * DEMO_GROUPS_PER_STEP: s * DEMO_GROUPS_PER_STEP]
            for s in range(1, DEMO_STEPS + 1)}


def _metrics(step: int, trained: list[TrainedSample]) -> dict[str, float]:
    tokens = [(t, s, v) for r in trained for t, s, v in
              zip(r.trainer_logprobs_T, r.sample.sampler_logprobs_T, r.sample.versions_T)]
    lv = step - 1
    same = [t - s for t, s, v in tokens if v == lv]
    stale = [lv - v for _, _, v in tokens]
    k3 = [math.expm1(g) - g for g in same]
    return {"step": step, "reward/mean": sum(r.sample.reward for r in trained) / len(trained),
            "mismatch/kl": sum(k3) / max(len(k3), 1),
            "mismatch/max_abs_logprob_diff": max((abs(g) for g in same), default=0.0),
            "mismatch/tokens": len(same), "staleness/mean": sum(stale) / len(stale),
            "staleness/max": max(stale), "rollout/weight_version": lv,
            "timing/step_s": 20.0 + step, "timing/weight_sync_s": 0.3 + 0.01 * step,
            "throughput/rollout_tokens_per_s": 60.0 + step,
            "throughput/train_tokens_per_s": 110.0 + 2 * step,
            "loss/total": 0.05 / step, "entropy/mean": 2.0 - 0.1 * step,
            "optim/grad_norm": 1.0 / step, "optim/lr": 5e-5}


def make_demo_run(directory: str | Path, deterministic: bool = False,
                  steps: int = DEMO_STEPS) -> Path:
    """Write the demo run into `directory` (created; must not hold a run already)."""
    root = Path(directory)
    if (root / "config.json").exists():
        raise FileExistsError(f"{root} already holds a run")
    for sub in ("rollouts", "buffer", "tb"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    config = {"seed": 0, "steps": steps, "deterministic": deterministic,
              "output_dir": str(root), "demo": True,
              "buffer": {"max_lag": DEMO_MAX_LAG, "snapshot_every": 2},
              "rollout": {"group_size": DEMO_GROUP_SIZE, "max_new_tokens": 48},
              "trainer": {"groups_per_step": DEMO_GROUPS_PER_STEP,
                          "loss": {"kind": "grpo", "clip_low": _CLIP, "clip_high": _CLIP}}}
    (root / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    rng = random.Random(0)
    trained_by_group: dict[int, list[TrainedSample]] = {}
    for step in range(1, steps + 1):
        trained_by_group.update(_write_step(root, step, rng, deterministic))
    _write_buffer_files(root, trained_by_group, rng, deterministic, steps)
    return root


def append_demo_step(root: Path, step: int, deterministic: bool = False) -> None:
    """One more learner step: its samples, index lines and metrics line (tests of live follow)."""
    _write_step(Path(root), step, random.Random(step), deterministic)


def _write_step(root: Path, step: int, rng: random.Random,
                deterministic: bool) -> dict[int, list[TrainedSample]]:
    numbers = _step_groups().get(step) or [100 + 2 * step, 101 + 2 * step]
    groups = {n: _group(rng, n, step, deterministic) for n in numbers}
    trained = [t for n in numbers for t in groups[n]]
    write_step(root / "rollouts", step, trained)
    with (root / "metrics.jsonl").open("a") as out:
        out.write(json.dumps(_metrics(step, trained)) + "\n")
    return groups


def _write_buffer_files(root: Path, trained_by_group: dict[int, list[TrainedSample]],
                        rng: random.Random, deterministic: bool, steps: int) -> None:
    """Snapshots every 2 steps holding the groups the next step trains (the very samples it
    trained), a final snapshot with one untrained group, and one stale eviction."""
    buffer = ReplayBuffer(DEMO_GROUPS_PER_STEP, DEMO_MAX_LAG, capacity_groups=8)
    by_step = _step_groups()

    def as_group(number: int, trained: list[TrainedSample]) -> Group:
        return Group(f"g{number:07d}", number, trained[0].sample.prompt_id,
                     tuple(t.sample for t in trained))

    for step in range(2, steps + 1, 2):
        buffer.waiting = {n: as_group(n, trained_by_group[n])
                          for n in by_step.get(step + 1, []) if n in trained_by_group}
        write_snapshot(buffer, root / "buffer", step, step)
    final_number = steps * DEMO_GROUPS_PER_STEP + 1
    buffer.waiting = {final_number: as_group(final_number,
                                             _group(rng, final_number, steps, deterministic))}
    write_snapshot(buffer, root / "buffer", "final", steps)
    append_evictions(root / "buffer", [Eviction(DEMO_EVICTED_GROUP, 9, "stale", 2, 4)])
