"""A multi-turn tool-use env: word problems (GSM8K-style JSONL) the policy may solve by calling a
calculator or a sandboxed Python tool, over several turns.

    policy:  ... <python>print(48 / 2 + 48)</python>
    env:     <output>
             72.0
             </output>
    policy:  ... #### 72          (no tool call: the episode ends, the reward scores it)

Choices:
- A turn's first tool call is run (`<python>...</python>` or `<calc>...</calc>`); text after it
  is the policy's own and ignored by the env. A turn without one ends the episode.
- Every failure of a tool comes back as its output, never as an exception: a syntax error, a
  raise, a timeout, a memory or output limit, a refused network or filesystem access
  (envs/sandbox.py). Each call's tool and status are kept per turn in the sample's
  `env_metadata.env_info`, where the run's metrics count them.
- The calculator evaluates arithmetic over numbers only (an AST walk, no eval), with exponents
  and results bounded, so "9**9**9" is an error, not a hang.
- Prompts, references and held-out rows are the JSONL env's (envs/jsonl.py), with the tool
  instructions as the system prompt.
"""

from __future__ import annotations

import ast
import operator
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from slipstream.envs.base import EnvReply, Prompt
from slipstream.envs.jsonl import JsonlEnv, JsonlEnvConfig, sample_gsm8k_path
from slipstream.envs.sandbox import SandboxLimits, run_python

TOOL_INSTRUCTIONS = (
    "Solve the problem step by step. You may use tools: write <calc>expression</calc> for "
    "arithmetic or <python>code</python> to run Python (print what you need). The result comes "
    "back as <output>...</output>. When you know the answer, write it after '####'.")
_CALL = re.compile(r"<(python|calc)>(.*?)</\1>", re.DOTALL)
_MAX_EXPONENT = 64
_MAX_MAGNITUDE = 1e100
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class ToolEnvConfig(BaseModel):
    """Word problems with a calculator and a sandboxed Python tool, over several turns."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["tools"] = Field("tools", description="Selects this env.")
    path: str = Field(default_factory=sample_gsm8k_path, description=(
        "The JSON Lines problems (GSM8K's format); by default the sample shipped with slipstream."))
    prompt_field: str = Field("question", min_length=1, description="Field holding the problem.")
    answer_field: str = Field("answer", min_length=1, description="Field holding the answer.")
    tools: tuple[Literal["python", "calc"], ...] = Field(("python", "calc"), min_length=1,
                                                         description="Tools the policy may call.")
    max_turns: int = Field(4, ge=1, le=64, description="Policy turns per episode, at most.")
    max_turn_tokens: int | None = Field(None, ge=1, description=(
        "Tokens one policy turn may take; None: the rest of rollout.max_new_tokens."))
    system_prompt: str = Field(TOOL_INSTRUCTIONS, min_length=1, description=(
        "The instructions given as the system message."))
    sandbox: SandboxLimits = Field(default_factory=SandboxLimits, description=(
        "Limits of one Python call (envs/sandbox.py)."))


def calculate(expression: str) -> str:
    """The value of an arithmetic expression over numbers, or "error: ..." saying why not."""
    try:
        value = _evaluate(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError) as error:
        return f"error: {type(error).__name__}: {error}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ValueError(f"exponent {right} is larger than {_MAX_EXPONENT}")
        value = _BINARY[type(node.op)](left, right)
        if abs(value) > _MAX_MAGNITUDE:
            raise ValueError("result too large")
        return value
    raise ValueError(f"only numbers and + - * / // % ** are allowed, not {type(node).__name__}")


class ToolEpisode:
    """One sample's conversation: runs the turn's first tool call and answers with its output."""

    def __init__(self, config: ToolEnvConfig) -> None:
        self.config = config

    def step(self, text: str) -> EnvReply:
        call = next((m for m in _CALL.finditer(text) if m.group(1) in self.config.tools), None)
        if call is None:
            return EnvReply(done=True, info={"tool": None})
        tool, body = call.group(1), call.group(2)
        if tool == "calc":
            output = calculate(body)
            status = "error" if output.startswith("error:") else "ok"
        else:
            result = run_python(body, self.config.sandbox)
            output, status = result.output.rstrip("\n"), result.status
        return EnvReply(messages=({"role": "user", "content": f"<output>\n{output}\n</output>"},),
                        info={"tool": tool, "status": status})


class ToolEnv:
    """Prompts of the JSONL env with tool instructions; `episode` opens a `ToolEpisode`."""

    def __init__(self, config: ToolEnvConfig, seed: int) -> None:
        self.config = config
        self.max_turns, self.max_turn_tokens = config.max_turns, config.max_turn_tokens
        self._problems = JsonlEnv(JsonlEnvConfig(
            path=config.path, prompt_field=config.prompt_field, answer_field=config.answer_field,
            system_prompt=config.system_prompt), seed)
        self.name = f"tools-{self._problems.name}"

    def prompt(self, index: int) -> Prompt:
        return self._problems.prompt(index)

    def held_out(self, count: int) -> list[Prompt]:
        return self._problems.held_out(count)

    def episode(self, prompt: Prompt) -> ToolEpisode:
        return ToolEpisode(self.config)
