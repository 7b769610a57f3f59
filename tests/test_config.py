"""Config parsing: dotted overrides, script defaults, one-line errors naming the field."""

import subprocess
import sys
from pathlib import Path

import pytest

from slipstream.errors import SlipstreamError
from slipstream.launch.cli import parse_config
from slipstream.launch.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_validate_and_round_trip_through_json():
    config = RunConfig()
    assert RunConfig.model_validate_json(config.model_dump_json()) == config


def test_dotted_overrides_beat_script_defaults():
    config = parse_config(["--steps", "3", "--output-dir", "D", "--trainer.lr", "3e-6",
                           "--trainer.loss.clip-high", "0.3"],
                          steps=50, trainer={"lr": 1e-5, "groups_per_step": 4})
    assert (config.steps, config.output_dir, config.trainer.lr) == (3, "D", 3e-6)
    assert config.trainer.groups_per_step == 4 and config.trainer.loss.clip_high == 0.3


def test_a_flag_may_spell_its_field_with_underscores_as_config_json_does():
    config = parse_config(["--trainer.checkpoint_every=3", "--rollout.max_new_tokens", "9",
                           "--output_dir", "D_1"])
    assert (config.trainer.checkpoint_every, config.rollout.max_new_tokens) == (3, 9)
    assert config.output_dir == "D_1"          # values keep their underscores


def test_switching_env_kind_replaces_the_branch():
    config = parse_config(["--env.kind", "jsonl"], env={"kind": "arithmetic", "digits": 3})
    assert config.env.kind == "jsonl"


@pytest.mark.parametrize("argv, fragment", [
    (["--trainer.lr", "abc"], "trainer.lr"),
    (["--trainer.lr", "-1"], "trainer.lr"),
    (["--trainer.lr", "inf"], "trainer.lr"),           # non-finite numbers never pass
    (["--rollout.temperature", "nan"], "rollout.temperature"),
    (["--trainer.loss.clip-high", "inf"], "trainer.loss"),
    (["--trainer.weight-transfer", "nccl"], "trainer.weight_transfer"),
    (["--rollout.gpus-per-worker", "-1"], "rollout.gpus_per_worker"),
    (["--steps", "0"], "steps"),
    (["--buffer.max-lag", "-1"], "buffer.max_lag"),
    (["--env.digits", "0"], "env.arithmetic.digits"),
    (["--trainer.zero-stage", "3"], "trainer.zero_stage"),
    (["--trainer.micro-batch-size", "7"], "micro_batch_size (7) must divide"),
    (["--trainer.sync-every", "3", "--buffer.max-lag", "1"], "buffer.max_lag (1) must be"),
    (["--no-such-flag", "1"], "unrecognized arguments: --no-such-flag"),
    (["--trainer.loss.kind", "vanilla"], "does not match any of the expected tags: 'grpo'"),
    (["--trainer.loss.correction.mis", "token", "--trainer.loss.correction.mis-low", "2",
      "--trainer.loss.correction.mis-high", "0.5"], "mis band is inverted"),
    (["--trainer.loss.correction.icepop-beta", "0.5"], "icepop_beta"),
    (["--trainer.loss.kl.coef", "0.1"], "needs trainer.reference_model=true"),
    (["--trainer.loss.kind", "reinforce_pp", "--trainer.loss.kl.coef", "0.1",
      "--trainer.loss.kl.placement", "reward"], "KL in the reward) needs trainer.reference"),
    (["--trainer.loss.kind", "dapo", "--rollout.max-new-tokens", "8"],
     "overlong_buffer_tokens (16) must not exceed rollout.max_new_tokens (8)"),
    (["--trainer.loss.kind", "dapo", "--buffer.schedule", "pinned"], "cannot do"),
    (["--rollout.group-size", "1", "--trainer.micro-batch-size", "1"],
     "group_size must be at least 2"),
    (["--trainer.loss.kind", "grpo", "--trainer.loss.advantage", "gae"],
     "trainer.loss.grpo.advantage"),
    (["--trainer.optimizer.kind", "muon", "--trainer.zero-stage", "1"],
     "optimizer muon with ZeRO stage 1 needs grad_clip 0"),
    (["--trainer.optimizer.kind", "sgd"], "trainer.optimizer"),
    (["--rollout.max-new-tokens", "100000"], "leaves no room for a prompt"),
    (["--curriculum.explore-k", "32"], "set curriculum.kind=edge"),
    (["--curriculum.kind", "edge", "--curriculum.explore-k", "4"],
     "explore_k (4) must exceed rollout.group_size (8)"),
    (["--curriculum.kind", "edge", "--curriculum.explore-k", "32", "--buffer.schedule",
      "pinned"], "which buffer.schedule=pinned exists to rule out"),
])
def test_bad_values_name_the_field(argv, fragment):
    with pytest.raises(SlipstreamError) as error:
        parse_config(argv)
    message = str(error.value)
    assert fragment in message and "\n" not in message


def test_cli_prints_one_line_and_no_traceback():
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "quickstart.py"), "--trainer.lr", "abc"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("slipstream: invalid config: trainer.lr:")
    assert "Traceback" not in result.stderr


def test_a_recipe_is_one_flag_and_its_pieces_stay_overridable():
    config = parse_config(["--trainer.loss.kind", "dapo", "--trainer.loss.aggregation",
                           "sequence_mean", "--trainer.loss.correction.tis", "geometric"])
    loss = config.trainer.loss
    assert (loss.kind, loss.clip_high, loss.dynamic_sampling) == ("dapo", 0.28, True)
    assert (loss.aggregation, loss.correction.tis) == ("sequence_mean", "geometric")
    # Switching kind drops the old recipe's fields instead of mixing two recipes.
    config = parse_config(["--trainer.loss.kind", "gspo"],
                          trainer={"loss": {"kind": "dapo", "clip_high": 0.3}})
    assert (config.trainer.loss.kind, config.trainer.loss.clip_high) == ("gspo", 4e-4)


def test_muon_is_one_flag_where_deepspeed_can_run_it():
    config = parse_config(["--trainer.optimizer.kind", "muon"])     # ZeRO 0, the default
    assert config.trainer.optimizer.kind == "muon" and config.trainer.grad_clip == 1.0
    config = parse_config(["--trainer.optimizer.kind", "muon", "--trainer.grad-clip", "0",
                           "--trainer.zero-stage", "1"])
    assert config.trainer.zero_stage == 1


@pytest.mark.parametrize("args, message", [
    (["/nonexistent-model"], "slipstream: model directory /nonexistent-model does not exist"),
    (["MODEL", "./missing-model", "--count", "3"], "model directory missing-model does not"),
    (["MODEL", "--count", "0"], "argument --count: must be at least 1, got 0"),
    (["MODEL", "--trainer.lr", "nan"], "trainer.lr"),
])
def test_evaluate_checks_every_argument_before_any_engine_starts(tmp_path, args, message):
    (tmp_path / "config.json").write_text("{}")      # a model directory, never loaded here
    args = [str(tmp_path) if a == "MODEL" else a for a in args]
    result = subprocess.run([sys.executable, str(ROOT / "launch" / "evaluate.py"), *args],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flags, expected", [
    ("flags : fpu sse2 avx2 avx512f avx512_bf16\n", "bfloat16"),
    ("flags : fpu sse2 avx2 amx_bf16 amx_tile\n", "bfloat16"),
    ("flags : fpu sse2 avx2 fma\n", "float32"),       # bf16 emulated: measured ~5x slower
    ("processor : 0\n", "float32"),
])
def test_dtype_auto_picks_bf16_only_where_the_cpu_has_bf16_instructions(tmp_path, flags,
                                                                         expected):
    from slipstream.model_config import fastest_dtype

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\n" + flags)
    if Path("/proc/driver/nvidia/gpus").is_dir():
        pytest.skip("a GPU machine picks bf16 whatever its CPU")
    assert fastest_dtype(str(cpuinfo)) == expected


def test_dtype_auto_is_written_to_the_config_as_the_dtype_chosen():
    from slipstream.model_config import fastest_dtype

    config = parse_config(["--model.dtype", "auto"])
    assert config.model.dtype == fastest_dtype() in ("bfloat16", "float32")
    assert config.model_dump(mode="json")["model"]["dtype"] == config.model.dtype
    with pytest.raises(SlipstreamError, match="'fp16' is not one of auto, bfloat16, float32"):
        parse_config(["--model.dtype", "fp16"])


def test_one_line_names_the_error_or_the_error_a_ray_error_wraps():
    from slipstream.errors import one_line

    class Wrapped(Exception):
        cause = KeyError("missing")

    assert one_line(ValueError("bad\nsecond line")) == "ValueError: bad"
    assert one_line(Wrapped("ray text")) == "KeyError: 'missing'"
    assert one_line(RuntimeError()) == "RuntimeError"
    assert one_line(SlipstreamError("said\nmore")) == "SlipstreamError: said"
    assert one_line(SlipstreamError("said\nmore"), name_own=False) == "said"
