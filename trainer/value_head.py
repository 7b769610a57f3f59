"""PPO's critic: a linear value head on the policy's final hidden state, trained with it.

One backbone for policy and value (as most LLM PPO implementations share it): the head reads the
hidden state of the position that predicts token t, the same row whose logits give the token's
logprob, so V_t is the value of the state before token t. The head starts at zero (V = 0), so
GAE begins as a discounted Monte-Carlo return and the critic learns from there. It is never sent
to the rollout workers and is saved in a folder of its own inside the policy's
(`VALUE_HEAD_FILE`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slipstream.errors import SlipstreamError


# A subfolder, not a file beside model.safetensors: vLLM loads every top-level *.safetensors of a
# model folder as the model's weights and fails on the head's `weight`/`bias` (a playground run's
# evaluation did); transformers reads only model.safetensors either way.
VALUE_HEAD_FILE = "value_head/value_head.safetensors"


@dataclass
class ValueOutput:
    logits: torch.Tensor         # (B, L, V) as the policy's
    values_B_L: torch.Tensor     # (B, L) the value head at every position


def value_head_width(config, model_name: str) -> int:
    """The hidden size a value head attaches to, from a Hugging Face config; one line when the
    model has none at its top (a vision-language model keeps it in a sub-config). Read as an
    attribute, not from to_dict(): configs alias it (GPT-2's n_embd, T5's d_model)."""
    hidden = getattr(config, "hidden_size", None)   # a Hugging Face config, not one of ours
    if not isinstance(hidden, int):
        raise SlipstreamError(
            f"trainer.loss.kind=ppo needs a value head on the model's last hidden state, but "
            f"{model_name} ({type(config).__name__}) has no hidden_size")
    return hidden


def check_value_head_fits(model_path: str) -> None:
    """Before any actor starts: the model at `model_path` has a hidden state to attach to."""
    from transformers import AutoConfig

    value_head_width(AutoConfig.from_pretrained(model_path), model_path)


class PolicyWithValue(nn.Module):
    """`policy` (a Hugging Face causal LM) and `value_head`, one module for DeepSpeed."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        hidden = value_head_width(policy.config, type(policy).__name__)
        self.policy = policy
        self.value_head = nn.Linear(hidden, 1, dtype=policy.dtype)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, **kwargs) -> ValueOutput:
        output = self.policy(**kwargs, output_hidden_states=True)
        # transformers returns the final norm's output as the last hidden state (checked for
        # Qwen2 and Llama in tests/test_learner.py).
        values = self.value_head(output.hidden_states[-1]).squeeze(-1)
        return ValueOutput(output.logits, values)
