"""PPO's critic: a linear value head on the policy's final hidden state, trained with it.

One backbone for policy and value (as most LLM PPO implementations share it): the head reads the
hidden state of the position that predicts token t, the same row whose logits give the token's
logprob, so V_t is the value of the state before token t. The head starts at zero (V = 0), so
GAE begins as a discounted Monte-Carlo return and the critic learns from there. It is never sent
to the rollout workers and is saved beside the policy (`value_head.safetensors`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slipstream.errors import SlipstreamError


@dataclass
class ValueOutput:
    logits: torch.Tensor         # (B, L, V) as the policy's
    values_B_L: torch.Tensor     # (B, L) the value head at every position


class PolicyWithValue(nn.Module):
    """`policy` (a Hugging Face causal LM) and `value_head`, one module for DeepSpeed."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        hidden = policy.config.to_dict().get("hidden_size")
        if not isinstance(hidden, int):
            raise SlipstreamError(
                f"trainer.loss.kind=ppo needs a value head on the model's last hidden state, but "
                f"{type(policy).__name__} names no hidden_size in its config")
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
