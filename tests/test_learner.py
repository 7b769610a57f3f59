"""The learner itself, in-process on a tiny model with real DeepSpeed: the sign of its update,
micro-batch invariance of a whole step's gradient, PPO's value head, the stale-token probe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slipstream.buffer.records import Group, Sample
from slipstream.errors import SlipstreamError
from slipstream.launch.models import make_tiny_model
from slipstream.model_config import ModelConfig
from slipstream.trainer.config import TrainerConfig
from slipstream.trainer.learner import Learner
from slipstream.trainer.logprobs import collate, token_logprobs
from slipstream.trainer.value_head import VALUE_HEAD_FILE, PolicyWithValue

from factories import connect_to_file_reader

GROUP = 4
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


def make_learner(tiny, tmp_path, **trainer) -> Learner:
    config = TrainerConfig(**{"groups_per_step": 2, "micro_batch_size": 8, "lr": 1e-3,
                              "zero_stage": 0, **trainer})
    return Learner(config, ModelConfig(path=tiny, dtype="float32"), group_size=GROUP,
                   temperature=1.0, max_new_tokens=8, max_lag=1, seed=0, deterministic=False,
                   weights_dir=str(tmp_path / "weights"))


def make_groups(learner: Learner, rewards: list[list[float]], version: int = 0) -> list[Group]:
    """Groups of random completions whose sampler logprobs are the learner's own (ratio 1)."""
    gen = torch.Generator().manual_seed(3)
    groups = []
    for g, group_rewards in enumerate(rewards):
        samples = []
        for i, reward in enumerate(group_rewards):
            prompt = tuple(torch.randint(3, 300, (5,), generator=gen).tolist())
            n = 3 + (i % 4)       # ragged lengths: padding must not matter
            completion = tuple(torch.randint(3, 300, (n,), generator=gen).tolist())
            draft = Sample(f"g{g}-{i}", f"g{g}", "p", prompt, completion, (0.0,) * n,
                           (version,) * n, "", "", "stop", "", reward)
            with torch.no_grad():
                logprobs = token_logprobs(learner.policy, collate([draft], learner.pad_id), 1.0)
            samples.append(Sample(f"g{g}-{i}", f"g{g}", "p", prompt, completion,
                                  tuple(logprobs[0].tolist()), (version,) * n, "", "", "stop", "",
                                  reward))
        groups.append(Group(f"g{g}", g, "p", tuple(samples)))
    return groups


def sequence_logprob(learner: Learner, sample: Sample) -> float:
    with torch.no_grad():
        return float(token_logprobs(learner.policy, collate([sample], learner.pad_id), 1.0).sum())


def test_a_positive_advantage_raises_its_logprob_and_a_negative_one_lowers_it(tiny, tmp_path):
    learner = make_learner(tiny, tmp_path)
    groups = make_groups(learner, [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    before = {s.sample_id: sequence_logprob(learner, s) for g in groups for s in g.samples}
    result = learner.train_step(groups)
    after = {s.sample_id: sequence_logprob(learner, s) for g in groups for s in g.samples}
    for trained in result.trained:
        moved = after[trained.sample.sample_id] - before[trained.sample.sample_id]
        if trained.advantage > 0:
            assert moved > 0, trained.sample.sample_id
        else:
            assert trained.advantage < 0 and moved < 0, trained.sample.sample_id
    assert result.step == 1 and result.version == 1 and learner.version == 1
    assert all(t.learner_version == 0 for t in result.trained)


def _step_gradients(tiny, tmp_path, micro_batch_size: int, loss: dict) -> dict[str, torch.Tensor]:
    """The accumulated gradient of one whole step, read at DeepSpeed's boundary step."""
    learner = make_learner(tiny, tmp_path, micro_batch_size=micro_batch_size, loss=loss)
    groups = make_groups(learner, [[1.0, 0.0, 0.5, 0.0], [0.0, 0.3, 1.0, 0.0]])
    captured = {}
    real_step = learner.engine.step

    def step_and_capture():
        if learner.engine.is_gradient_accumulation_boundary():
            captured.update({n: p.grad.detach().clone()
                             for n, p in learner.engine.module.named_parameters()
                             if p.grad is not None})
        real_step()

    learner.engine.step = step_and_capture
    learner.train_step(groups)
    return captured


def test_the_gradient_norm_is_reported_at_every_zero_stage(tiny, tmp_path):
    """At ZeRO 0 in fp32 DeepSpeed clips without keeping the norm, so the learner measures it:
    the same first step at ZeRO 0 and at ZeRO 1 (where DeepSpeed's wrapper reports it)."""
    norms = []
    for stage in (0, 1):
        learner = make_learner(tiny, tmp_path / str(stage), zero_stage=stage)
        result = learner.train_step(make_groups(learner, [[1.0, 0.0, 0.0, 1.0]] * 2))
        norms.append(result.metrics["optim/grad_norm"])
    assert norms[0] > 0
    assert norms[0] == pytest.approx(norms[1], rel=1e-4)


@pytest.mark.parametrize("loss", [{"kind": "grpo"}, {"kind": "gspo"},
                                  {"kind": "dr_grpo", "aggregation": "sequence_mean"}],
                         ids=["grpo", "gspo", "dr_grpo-sequence"])
def test_a_whole_steps_gradient_does_not_depend_on_the_micro_batch_size(tiny, tmp_path, loss):
    whole = _step_gradients(tiny, tmp_path / "a", 8, loss)
    for size in (1, 2, 4):
        split = _step_gradients(tiny, tmp_path / f"m{size}", size, loss)
        assert split.keys() == whole.keys() and whole
        for name, grad in whole.items():
            torch.testing.assert_close(split[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_ppo_trains_a_value_head_publishes_only_the_policy_and_saves_both(tiny, tmp_path):
    learner = make_learner(tiny, tmp_path, loss={"kind": "ppo", "value_coef": 1.0})
    assert isinstance(learner.engine.module, PolicyWithValue)
    groups = make_groups(learner, [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    losses = [learner.train_step(groups).metrics["loss/value"] for _ in range(4)]
    assert losses[-1] < losses[0]         # the critic learns the returns of a fixed batch
    result = learner.train_step(groups)
    assert "value/mean" in result.metrics and result.metrics["value/mean"] != 0.0
    assert any(t.advantages_T for t in result.trained)     # GAE: per-token advantages
    engine, stop = connect_to_file_reader(learner)
    try:
        assert learner.publish().version == engine.version == learner.version
    finally:
        stop()
    published = load_file(engine.path)
    assert published.keys() == dict(learner.policy.named_parameters()).keys()
    final = tmp_path / "final"
    learner.save_final(str(final))
    head = load_file(str(final / VALUE_HEAD_FILE))
    assert set(head) == {"weight", "bias"} and head["weight"].abs().sum() > 0
    # vLLM loads every top-level *.safetensors of a model folder as the model's own weights
    policy_names = set(dict(learner.policy.named_parameters()))
    for weights in final.glob("*.safetensors"):
        assert set(load_file(str(weights))) <= policy_names, weights.name


def test_a_model_with_no_hidden_size_has_nothing_to_attach_a_value_head_to(tmp_path, tiny):
    from transformers import LlavaConfig

    from slipstream.trainer.value_head import check_value_head_fits

    LlavaConfig().save_pretrained(tmp_path / "llava")     # hidden size only in its text_config
    with pytest.raises(SlipstreamError, match="needs a value head .* has no hidden_size"):
        check_value_head_fits(str(tmp_path / "llava"))
    check_value_head_fits(tiny)                          # Qwen2: fine


def test_a_ppo_run_on_such_a_model_stops_in_one_line_before_anything_starts(tmp_path):
    import subprocess
    import sys

    from transformers import LlavaConfig

    from slipstream.launch.models import make_tiny_model

    model = make_tiny_model(tmp_path / "m")
    LlavaConfig().save_pretrained(model)                 # the same files, a config without one
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "quickstart.py"), "--model.path", str(model),
         "--output-dir", str(tmp_path / "run"), "--trainer.loss.kind", "ppo"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "slipstream: trainer.loss.kind=ppo needs a value head")


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_the_value_head_reads_the_final_normed_hidden_state(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / arch, arch=arch))
    ids = torch.randint(3, 300, (2, 6))
    with torch.no_grad():
        final = policy.get_decoder()(input_ids=ids).last_hidden_state
        hidden = policy(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    assert torch.equal(hidden, final)


def test_the_probe_rescores_stale_tokens_under_the_weights_that_sampled_them(tiny, tmp_path):
    learner = make_learner(tiny, tmp_path, mismatch_probe=3)
    from copy import deepcopy

    old_policy = deepcopy(learner.policy)
    groups = make_groups(learner, [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    learner.train_step(groups)
    _, stop = connect_to_file_reader(learner)
    try:
        learner.publish()
    finally:
        stop()
    # The same version-0 samples, now one version stale: the current weights cannot check them.
    result = learner.train_step(groups)
    metrics = result.metrics
    assert metrics["mismatch/probed_sequences"] == 3
    rescored = [t for t in result.trained if t.own_version_logprobs_T is not None]
    assert len(rescored) == 3
    for trained in rescored:
        with torch.no_grad():
            expected = token_logprobs(old_policy, collate([trained.sample], learner.pad_id), 1.0)
        # The probe rescored three sequences in one padded batch, this one alone: outside
        # deterministic mode the kernels may round a batch of another shape differently (one
        # ulp seen on some CPUs), so equal up to float32 rounding, not bitwise.
        assert trained.own_version_logprobs_T == pytest.approx(tuple(expected[0].tolist()),
                                                               rel=1e-6, abs=1e-6)
    # sampler logprobs came from the same weights: the probe sees (almost) no gap, while the
    # trainer's current logprobs have moved (staleness).
    assert metrics["mismatch/tokens"] == sum(len(t.sample.completion_ids_T) for t in rescored)
    assert metrics["mismatch/max_abs_logprob_diff"] < 1e-5
    assert metrics["staleness/kl"] > 0


def test_without_the_probe_a_stale_step_writes_no_mismatch_figure(tiny, tmp_path):
    learner = make_learner(tiny, tmp_path, mismatch_probe=0)
    groups = make_groups(learner, [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    learner.train_step(groups)
    metrics = learner.train_step(groups).metrics
    assert metrics["mismatch/tokens"] == 0
    assert "mismatch/kl" not in metrics and "mismatch/max_abs_logprob_diff" not in metrics
    assert learner.replay is None      # no copy of old weights is kept


@torch._dynamo.config.patch(disable=True)   # DeepSpeed compiles Muon's update: 30 s on 2 cores
def test_muon_trains_through_the_learner(tiny, tmp_path):
    learner = make_learner(tiny, tmp_path, optimizer={"kind": "muon"}, lr=1e-2)
    groups = make_groups(learner, [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    hidden = dict(learner.policy.named_parameters())["model.layers.0.mlp.up_proj.weight"]
    before_hidden = hidden.detach().clone()
    positive = next(s for g in groups for s in g.samples if s.reward == 1.0)
    before = sequence_logprob(learner, positive)
    learner.train_step(groups)
    assert sequence_logprob(learner, positive) > before
    # Muon's update of a hidden matrix is (nearly) orthogonal: its leading singular values are
    # alike (measured here: the 10th is 0.93 of the 1st; AdamW's update of the same matrix from
    # the same batch: 0.35). Newton-Schulz leaves the weakest gradient directions short of 1.
    singular = torch.linalg.svdvals((hidden.detach() - before_hidden).double())
    assert singular[9] > 0.8 * singular[0]


def test_an_inherited_master_port_in_use_does_not_break_the_learners_world(tmp_path):
    """A shell (torchrun, SLURM, a test process that ran a learner) may export MASTER_PORT for a
    port some other process holds; the learner's world of one must pick its own."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(busy.getsockname()[1]),
               "RANK": "0", "WORLD_SIZE": "1"}
        code = ("import slipstream, torch.distributed as d\n"
                "from slipstream.trainer.learner import init_world_of_one\n"
                "init_world_of_one(); d.init_process_group('gloo'); print(d.get_world_size())")
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "1"


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_a_learner_restored_from_its_checkpoint_trains_on_bit_for_bit(tiny, tmp_path,
                                                                      zero_stage):
    """Weights, AdamW moments, the warm-up schedule's position, the step and the RNG all come
    back: the restored learner's next step equals the original's, bit for bit."""
    first = make_learner(tiny, tmp_path, zero_stage=zero_stage, warmup_steps=4)
    groups = make_groups(first, [[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    first.train_step(groups)
    folder = Path(first.save_checkpoint(str(tmp_path / "checkpoints"),
                                        extra={"controller.json": '{"tokens": 7}'}))
    assert folder.name == "step-000001"
    assert (folder / "controller.json").read_text() == '{"tokens": 7}'
    after_save = torch.rand(3)
    second = make_learner(tiny, tmp_path, zero_stage=zero_stage, warmup_steps=4)
    assert second.load_checkpoint(str(folder)) == 1 and second.step == 1
    assert torch.equal(torch.rand(3), after_save)
    results = [learner.train_step(groups) for learner in (first, second)]
    assert results[0].metrics["optim/lr"] == results[1].metrics["optim/lr"] == 3 * 1e-3 / 4
    assert results[0].metrics["loss/total"] == results[1].metrics["loss/total"]
    weights = dict(second.policy.named_parameters())
    for name, param in first.policy.named_parameters():
        assert torch.equal(param, weights[name]), name
