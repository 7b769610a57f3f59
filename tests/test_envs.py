"""Envs: the arithmetic task and the JSON Lines dataset, with the shipped GSM8K-style sample."""

import json
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from slipstream.envs import (ArithmeticEnvConfig, EnvConfig, JsonlEnvConfig, build_env,
                             parse_reference, sample_gsm8k_path)
from slipstream.errors import SlipstreamError
from slipstream.rewards import math_verify_reward

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _write(tmp_path: Path, lines: list[str], name: str = "data.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _row(question: str, answer) -> str:
    return json.dumps({"question": question, "answer": answer})


# ---- configs ------------------------------------------------------------------------------------

def test_env_config_is_a_union_on_kind():
    adapter = TypeAdapter(EnvConfig)
    assert isinstance(adapter.validate_python({"kind": "jsonl"}), JsonlEnvConfig)
    config = adapter.validate_python({"kind": "arithmetic", "operations": ["+", "*"]})
    assert config == ArithmeticEnvConfig(operations=("+", "*"))
    assert JsonlEnvConfig().path == sample_gsm8k_path()
    with pytest.raises(ValidationError):
        adapter.validate_python({"kind": "arithmetic", "digits": 10})
    with pytest.raises(ValidationError):
        adapter.validate_python({"kind": "arithmetic", "operations": ["/"]})
    with pytest.raises(ValidationError):
        adapter.validate_python({"kind": "jsonl", "promt_field": "q"})


@pytest.mark.parametrize("template, operations, fragment", [
    ("What is {a} plus {c}?", ("+",), "must contain {a} and {b}"),
    ("What is {a} {op} {b", ("+",), "not a valid format string"),
    ("Combine {a} and {b}.", ("+", "-"), "must show {op}"),
])
def test_arithmetic_template_errors_name_the_fix(template, operations, fragment):
    with pytest.raises(ValidationError, match=fragment):
        ArithmeticEnvConfig(template=template, operations=operations)


# ---- arithmetic ---------------------------------------------------------------------------------

def test_arithmetic_is_deterministic_in_seed_and_index():
    config = ArithmeticEnvConfig(operations=("+", "-", "*"))
    first, again = build_env(config, seed=3), build_env(config, seed=3)
    assert [first.prompt(i) for i in range(50)] == [again.prompt(i) for i in range(50)]
    assert first.prompt(40) == again.prompt(40)                  # no need to walk the stream
    other = build_env(config, seed=4)
    assert [first.prompt(i).messages for i in range(20)] != [other.prompt(i).messages
                                                              for i in range(20)]
    assert first.prompt(7).prompt_id == "arith-d2-s3-000007"


@pytest.mark.parametrize("digits", [1, 2, 5])
def test_arithmetic_answers_are_correct(digits):
    env = build_env(ArithmeticEnvConfig(digits=digits, operations=("+", "-", "*")), seed=0)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    seen_ops = set()
    for index in range(200):
        prompt = env.prompt(index)
        meta = prompt.metadata
        a, b, op = meta["a"], meta["b"], meta["op"]
        assert low <= a < 10**digits and low <= b < 10**digits
        assert prompt.messages == ({"role": "user", "content": f"What is {a} {op} {b}?"},)
        assert prompt.reference == str(OPS[op](a, b))
        assert json.loads(json.dumps(dict(meta))) == meta
        seen_ops.add(op)
    assert seen_ops == {"+", "-", "*"}


def test_arithmetic_held_out_is_a_different_stream():
    env = build_env(ArithmeticEnvConfig(digits=3), seed=0)
    held_out = env.held_out(20)
    training = {env.prompt(i).messages[0]["content"] for i in range(200)}
    assert len(held_out) == 20 and len({p.prompt_id for p in held_out}) == 20
    repeats = sum(p.messages[0]["content"] in training for p in held_out)
    assert repeats <= 1                                          # 3-digit pairs rarely repeat
    assert held_out == env.held_out(20)


def test_negative_index_is_refused():
    with pytest.raises(ValueError, match=">= 0"):
        build_env(ArithmeticEnvConfig(), seed=0).prompt(-1)


# ---- jsonl --------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, reference", [
    ("3 * 4 = 12.\n#### 12", "12"),
    ("It costs 1,234.\n#### 1,234", "1234"),
    ("big\n#### 1,234,567", "1234567"),
    ("one #### 2 then #### -3 ", "-3"),          # the last '####' wins
    ("  \\frac{1}{2} ", "\\frac{1}{2}"),          # no '####': as is
    ("(1, 2)", "(1, 2)"),                          # ... commas kept
])
def test_parse_reference(answer, reference):
    assert parse_reference(answer) == reference


def test_jsonl_walks_a_fresh_permutation_per_epoch(tmp_path):
    path = _write(tmp_path, [_row(f"Question {i}?", f"work\n#### {i}") for i in range(10)])
    env = build_env(JsonlEnvConfig(path=path), seed=0)
    epoch0 = [env.prompt(i).reference for i in range(10)]
    epoch1 = [env.prompt(i).reference for i in range(10, 20)]
    assert sorted(epoch0, key=int) == sorted(epoch1, key=int) == [str(i) for i in range(10)]
    assert epoch0 != epoch1
    assert env.prompt(13) == build_env(JsonlEnvConfig(path=path), seed=0).prompt(13)
    other = build_env(JsonlEnvConfig(path=path), seed=1)
    assert [other.prompt(i).reference for i in range(10)] != epoch0
    first = env.prompt(0)
    assert first.prompt_id == f"data-{int(first.reference) + 1:06d}"   # the file's line number
    assert first.messages == ({"role": "user", "content": f"Question {first.reference}?"},)


def test_jsonl_system_prompt_suffix_and_fields(tmp_path):
    path = _write(tmp_path, [json.dumps({"problem": "2 + 2?", "solution": "4"})])
    config = JsonlEnvConfig(path=path, prompt_field="problem", answer_field="solution",
                            system_prompt="Be brief.", prompt_suffix=" Answer in \\boxed{}.")
    prompt = build_env(config, seed=0).prompt(5)
    assert prompt.messages == ({"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "2 + 2? Answer in \\boxed{}."})
    assert prompt.reference == "4" and prompt.metadata["line"] == 1


def test_jsonl_skips_and_reports_malformed_rows(tmp_path, capsys):
    path = _write(tmp_path, [
        _row("Good one?", "#### 1"),
        "{not json",
        json.dumps({"question": "No answer?"}),
        "",                                        # blank lines are not rows
        _row("Number answer?", 7),
        _row("   ", "#### 2"),
        _row("Good two?", "#### 2"),
        "[1, 2]",
    ])
    env = build_env(JsonlEnvConfig(path=path), seed=0)
    assert env.skipped_rows == 5 and len(env.rows) == 2
    assert {env.prompt(i).reference for i in range(2)} == {"1", "2"}
    err = capsys.readouterr().err
    assert err == (f"slipstream: skipped 5 of 7 rows in {path} (line 2: invalid JSON; "
                   "line 3: missing field 'answer'; line 5: field 'answer' is not a string; "
                   "...)\n")


def test_jsonl_clean_file_reports_nothing(tmp_path, capsys):
    env = build_env(JsonlEnvConfig(path=_write(tmp_path, [_row("Q?", "#### 3")])), seed=0)
    assert env.skipped_rows == 0 and capsys.readouterr().err == ""


@pytest.mark.parametrize("lines, fragment", [
    (None, "not found"),
    ([], "is empty"),
    (["", "  "], "is empty"),
    (["{bad", _row("Q?", "#### ")], "no usable row: all 2 are malformed (line 1: invalid JSON; "
                                    "line 2: nothing after '####'"),
])
def test_jsonl_unusable_file_is_one_line_error(tmp_path, lines, fragment):
    path = str(tmp_path / "missing.jsonl") if lines is None else _write(tmp_path, lines)
    with pytest.raises(SlipstreamError) as error:
        build_env(JsonlEnvConfig(path=path), seed=0)
    assert fragment in str(error.value) and path in str(error.value)
    assert "\n" not in str(error.value)


def test_shipped_sample_loads_clean_and_its_answers_verify(capsys):
    env = build_env(JsonlEnvConfig(), seed=0)
    assert env.name == "gsm8k_sample" and env.skipped_rows == 0 and len(env.rows) >= 40
    assert capsys.readouterr().err == ""
    lines = Path(sample_gsm8k_path()).read_text(encoding="utf-8").splitlines()
    for line, prompt in zip(lines, env.held_out(len(lines)), strict=True):
        row = json.loads(line)
        assert prompt.reference.isdigit()
        # The worked solution itself must earn the reward: the sample is consistent.
        assert math_verify_reward(row["answer"], prompt.reference) == 1.0
    assert {env.prompt(i).prompt_id for i in range(len(lines))} == {
        p.prompt_id for p in env.held_out(len(lines))}
