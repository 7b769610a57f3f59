"""trainer/optimizers.py under real DeepSpeed on the CPU: each allowed ZeRO stage / dtype steps the
hidden matrices by torch.optim.Muon's rule and everything else by torch.optim.AdamW's; refused
settings raise one line; the configs reject bad values."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from slipstream.launch.models import make_tiny_model
from slipstream.trainer.learner import init_world_of_one
from slipstream.trainer.optimizers import (AdamWConfig, MuonConfig, OptimizerConfig,
                                           OptimizerSettingError, build_optimizer,
                                           check_zero_stage, muon_parameter_names)

LR = 1e-2              # large, so that a bf16 weight's rounding is small against one update
MICRO_BATCHES = 2      # DeepSpeed's gradient accumulation steps
STEPS = 2              # the second step exercises the momentum / moment buffers
HIDDEN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("optimizers") / "tiny")


@pytest.fixture(scope="module", autouse=True)
def world_of_one():
    """DeepSpeed wants torch.distributed even for one process; it initialises it once per process
    (deepspeed.initialize skips that when it is already up, e.g. from another test module)."""
    init_world_of_one()
    # DeepSpeed torch.compile's its muon_update; compiling it on a 2-core CPU per shape and dtype
    # costs more than this whole file. Eager runs the same arithmetic. One thread, as the learner
    # runs by default: on a shared 2-core machine two threads made Newton-Schulz 15x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch._dynamo.config.patch(disable=True):   # torch's own, restored on exit
        yield
    torch.set_num_threads(threads)


def _newton_schulz_fp64(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's Newton-Schulz iteration, in float64 instead of bf16, so that the
    reference is the Muon rule itself and not bf16 noise (which is ~10% on an LM gradient)."""
    a, b, c = ns_coefficients
    x = grad.double()
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(grad.dtype)


def _batches(vocab_size: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab_size, (2, 48), generator=generator)
            for _ in range(MICRO_BATCHES)]


def _deepspeed_engine(model, config, zero_stage: int, dtype: str, grad_clip: float,
                      micro_batch: int):
    """The engine the way the learner builds it."""
    import deepspeed

    optimizer = build_optimizer(model, config, LR)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config={
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": MICRO_BATCHES, "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage}, "bf16": {"enabled": dtype == "bfloat16"},
        "steps_per_print": 2**31 - 1}, dist_init_required=True)
    return engine


def _train(engine, batches, steps: int = STEPS):
    """`steps` optimizer steps of MICRO_BATCHES micro-batches each, as the learner drives them."""
    for _ in range(steps):
        for ids in batches:
            engine.backward(engine(input_ids=ids, labels=ids).loss)
            engine.step()
    return engine


def _reference_run(model, config, grad_clip: float, batches, zero_step_first: bool):
    """The same steps with plain torch: fp32 masters, torch.optim.Muon on the hidden matrices
    (float64 Newton-Schulz) and torch.optim.AdamW on the rest, the gradient computed by `model`
    in its own dtype and clipped by its global norm as DeepSpeed does. `zero_step_first`: one
    step with zero gradients before the real ones, as DeepSpeed's bf16 ZeRO-0 wrapper
    (FP16_UnfusedOptimizer.initialize_optimizer_states) takes when it is built."""
    named = dict(model.named_parameters())
    master = {n: torch.nn.Parameter(p.detach().float().clone()) for n, p in named.items()}
    muon_names = muon_parameter_names(model) if config.kind == "muon" else set()
    adamw = config.adamw if config.kind == "muon" else config
    optimizers = [torch.optim.AdamW([master[n] for n in named if n not in muon_names], lr=LR,
                                    betas=adamw.betas, eps=adamw.eps,
                                    weight_decay=adamw.weight_decay)]
    if muon_names:
        optimizers.append(torch.optim.Muon(
            [master[n] for n in named if n in muon_names], lr=LR, momentum=config.momentum,
            weight_decay=config.weight_decay, nesterov=True, ns_steps=5,
            adjust_lr_fn=config.adjust_lr_fn))
    if zero_step_first:
        for p in master.values():
            p.grad = torch.zeros_like(p)
        for optimizer in optimizers:
            optimizer.step()
    for _ in range(STEPS):
        model.zero_grad()
        for ids in batches:
            (model(input_ids=ids, labels=ids).loss / len(batches)).backward()
        grads = {n: p.grad.float() for n, p in named.items()}
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
        scale = min(1.0, grad_clip / (float(norm) + 1e-6)) if grad_clip > 0 else 1.0
        for n, g in grads.items():
            master[n].grad = g * scale
        for optimizer in optimizers:
            optimizer.step()
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(master[n])
    return {n: p.detach() for n, p in named.items()}


def _update_errors(initial, stepped, reference, dtype: str) -> dict[str, float]:
    """Per parameter: |update - reference update| / |reference update|."""
    errors = {}
    for name, before in initial.items():
        if dtype == "bfloat16" and name.endswith("k_proj.bias"):
            # Its gradient is 0 in exact arithmetic (softmax ignores a score shift shared by all
            # keys), so what AdamW normalises to +-lr here is bf16 rounding noise.
            continue
        want = reference[name].float() - before
        assert float(want.norm()) > 0, f"{name} did not move in the reference"
        errors[name] = float((stepped[name].float() - before - want).norm() / want.norm())
    return errors


def _compare(tiny_path, config, zero_stage, dtype, grad_clip, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(torch.optim._muon, "_zeropower_via_newtonschulz", _newton_schulz_fp64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=getattr(torch, dtype))
    reference_model = copy.deepcopy(model)
    initial = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    batches = _batches(model.config.vocab_size)
    engine = _train(_deepspeed_engine(model, config, zero_stage, dtype, grad_clip,
                                      batches[0].shape[0]), batches)
    stepped = {n: p.detach() for n, p in engine.module.named_parameters()}
    reference = _reference_run(reference_model, config, grad_clip, batches,
                               zero_step_first=(zero_stage == 0 and dtype == "bfloat16"))
    return engine, _update_errors(initial, stepped, reference, dtype)


# |update - reference update| / |reference update|, by dtype and by which rule steps the parameter.
# fp32 differs only by summation order and Newton-Schulz in fp32 vs fp64: measured <= 3e-4 on
# one machine, and on a Xeon with AMX (where oneDNN picks other fp32 kernels) Muon matrices
# <= 0.016 and the AdamW parameters <= 0.0024, with the same code and packages.
# bf16 rounds every weight after a step and takes step 2's gradient at the rounded weights, and
# Newton-Schulz on this gradient (192 tokens a step, a fast-decaying spectrum) magnifies small
# differences in its weak directions. Measured: Muon matrices <= 0.055 at ZeRO 0 and <= 0.11 at
# ZeRO 1/2, which keep Muon's momentum and Newton-Schulz input in bf16 (torch.optim.Muon's own
# bf16 Newton-Schulz is 0.09 off float64 on this gradient); the rest <= 0.02. A wrong rule is far
# outside: the refused ZeRO 1/2 clip puts the Muon step 0.975 off, and the other adjust_lr_fn
# changes a 128 x 128 matrix's step 2.26-fold.
TOLERANCE = {("float32", True): 0.05, ("float32", False): 0.01,
             ("bfloat16", True): 0.2, ("bfloat16", False): 0.05}
MUON = MuonConfig(weight_decay=0.5, adamw=AdamWConfig(weight_decay=0.5))


@pytest.mark.parametrize("zero_stage,dtype,grad_clip,config", [
    (0, "float32", 1.0, MUON),
    (0, "bfloat16", 1.0, MUON),
    (1, "float32", 0.0, MUON.model_copy(update={"adjust_lr_fn": "original"})),
    (1, "bfloat16", 0.0, MUON),
    (2, "float32", 0.0, MUON),
    (2, "bfloat16", 0.0, MUON),
])
def test_muon_under_deepspeed_steps_by_muon_and_adamw(tiny_path, zero_stage, dtype, grad_clip,
                                                      config, monkeypatch):
    check_zero_stage(config, zero_stage, dtype, grad_clip=grad_clip)
    engine, errors = _compare(tiny_path, config, zero_stage, dtype, grad_clip, monkeypatch)
    hidden = {n for n in errors if n.endswith(".weight") and n.split(".")[-2] in HIDDEN}
    assert hidden == muon_parameter_names(engine.module) and len(hidden) == 14
    _assert_within_tolerance(errors, hidden, dtype)
    _assert_muon_sees_matrices(engine)


def _assert_within_tolerance(errors: dict[str, float], muon_names: set[str], dtype: str):
    for name, error in errors.items():
        rule = "Muon" if name in muon_names else "AdamW"
        assert error < TOLERANCE[dtype, name in muon_names], \
            f"{name} is {error:.3g} off the torch {rule} reference"


def _assert_muon_sees_matrices(engine):
    """After deepspeed.initialize, whatever feeds Muon is still the 2-D matrices: the optimizer's
    own parameters at ZeRO 0 (the model's, or the bf16 wrapper's fp32 copies, which Muon's step
    tells apart by ndim), or at ZeRO 1/2 the parameters behind each flat partition, which the
    ZeRO code orthogonalises by their `use_muon` tag."""
    groups = engine.basic_optimizer.param_groups
    assert groups[0]["use_muon"] is False    # the run's lr is group 0's
    for index, group in enumerate(groups):
        if not group["use_muon"]:
            continue
        held = group["params"]
        if held[0].ndim == 1:                # ZeRO 1/2: the flat fp32 partition
            held = engine.optimizer.bit16_groups[index]
            assert all(p.use_muon for p in held), group["name"]
        assert held and all(p.ndim == 2 for p in held), group["name"]


@pytest.mark.parametrize("zero_stage,dtype", [(0, "float32"), (2, "bfloat16")])
def test_adamw_matches_torch_adamw(tiny_path, zero_stage, dtype, monkeypatch):
    config = AdamWConfig(betas=(0.8, 0.99), weight_decay=0.1)
    _, errors = _compare(tiny_path, config, zero_stage, dtype, 1.0, monkeypatch)
    _assert_within_tolerance(errors, set(), dtype)


class _WithValueHead(torch.nn.Module):
    """Like the learner's PPO wrapper: the policy under `policy.`, a 1 x hidden linear head."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        self.value_head = torch.nn.Linear(policy.config.hidden_size, 1)


def test_muon_takes_the_block_matrices_only(tiny_path):
    from transformers import AutoModelForCausalLM

    model = _WithValueHead(AutoModelForCausalLM.from_pretrained(tiny_path))
    names = muon_parameter_names(model)
    assert names == {f"policy.model.layers.{i}.{part}.{proj}.weight" for i in range(2)
                     for part, projs in (("self_attn", HIDDEN[:4]), ("mlp", HIDDEN[4:]))
                     for proj in projs}
    optimizer = build_optimizer(model, MuonConfig(weight_decay=0.1), LR)
    aux = [p for g in optimizer.param_groups if not g["use_muon"] for p in g["params"]]
    assert any(p is model.value_head.weight for p in aux)
    assert any(p is model.policy.model.embed_tokens.weight for p in aux)   # tied with lm_head
    assert sum(len(g["params"]) for g in optimizer.param_groups) == \
        len(list(model.parameters()))
    # One lr for every arm: AdamW's group gets it as is; a square Muon matrix 0.2 * sqrt(128).
    square = next(g for g in optimizer.param_groups if g["name"] == "muon-128x128")
    assert optimizer.param_groups[0]["lr"] == LR
    assert square["lr"] == pytest.approx(LR * 0.2 * 128 ** 0.5)
    assert square["lr"] * square["weight_decay"] == pytest.approx(LR * 0.1)  # decay: lr * wd


def test_refused_settings_raise_one_line():
    muon = MuonConfig()
    for stage in (1, 2):
        for dtype in ("float32", "bfloat16"):
            with pytest.raises(ValueError, match=f"ZeRO stage {stage} needs grad_clip 0") as error:
                check_zero_stage(muon, stage, dtype, grad_clip=1.0)
            assert isinstance(error.value, OptimizerSettingError)
            assert "\n" not in str(error.value)
            check_zero_stage(muon, stage, dtype, grad_clip=0.0)
    with pytest.raises(ValueError, match="ZeRO stage 3 is not supported"):
        check_zero_stage(muon, 3, "float32", grad_clip=0.0)
    with pytest.raises(ValueError, match="dtype 'float16'"):
        check_zero_stage(AdamWConfig(), 0, "float16", grad_clip=1.0)
    for stage in (0, 1, 2):
        check_zero_stage(AdamWConfig(), stage, "bfloat16", grad_clip=1.0)
    check_zero_stage(muon, 0, "bfloat16", grad_clip=1.0)


def test_configs_validate():
    adapter = TypeAdapter(OptimizerConfig)
    assert isinstance(adapter.validate_python({"kind": "muon"}), MuonConfig)
    parsed = adapter.validate_python({"kind": "adamw", "betas": [0.9, 0.95]})
    assert parsed == AdamWConfig(betas=(0.9, 0.95))
    assert MuonConfig().adjust_lr_fn == "match_rms_adamw" and MuonConfig().momentum == 0.95
    bad = [{"kind": "sgd"}, {}, {"kind": "adamw", "lr": 1e-3},
           {"kind": "adamw", "betas": [1.0, 0.9]}, {"kind": "adamw", "betas": [0.9]},
           {"kind": "adamw", "eps": 0}, {"kind": "adamw", "weight_decay": -0.1},
           {"kind": "muon", "momentum": 1.0}, {"kind": "muon", "nesterov": False},
           {"kind": "muon", "adjust_lr_fn": "none"}, {"kind": "muon", "ns_method": "svd"},
           {"kind": "muon", "adamw": {"kind": "adamw", "extra": 1}}]
    for value in bad:
        with pytest.raises(ValidationError):
            adapter.validate_python(value)
    with pytest.raises(ValueError, match="learning rate"):
        build_optimizer(torch.nn.Linear(2, 2), AdamWConfig(), 0.0)
    with pytest.raises(OptimizerSettingError, match="stack of blocks"):
        build_optimizer(torch.nn.Linear(2, 2), MuonConfig(), LR)


def test_muon_resumes_from_a_deepspeed_checkpoint(tiny_path, tmp_path):
    """ZeRO 1 keeps Muon's momentum in DeepSpeed's partition state; it and AdamW's moments travel
    through save/load_checkpoint: a fresh engine that loads the checkpoint takes the same next
    step as the engine that kept going."""
    from transformers import AutoModelForCausalLM

    def engine():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.bfloat16)
        return _deepspeed_engine(model, MUON, 1, "bfloat16", 0.0, batches[0].shape[0])

    batches = _batches(AutoModelForCausalLM.from_pretrained(tiny_path).config.vocab_size)
    kept = _train(engine(), batches)
    kept.save_checkpoint(str(tmp_path), tag="t")
    resumed = engine()
    resumed.load_checkpoint(str(tmp_path), tag="t")
    for run in (kept, resumed):
        _train(run, batches, steps=1)
    for (name, a), b in zip(kept.module.named_parameters(), resumed.module.parameters()):
        assert torch.equal(a, b), name
