"""Feed-forward blocks: the ViT two-layer MLP and the gated MLP of decoders (GeGLU / SwiGLU)."""

from collections.abc import Callable

import torch
from torch import nn

from vlmkit.models.common.activations import ACTIVATIONS, Activation, gelu_tanh


class MLP(nn.Module):
    """fc2(act(fc1(x))), with biases; act is tanh-GELU unless given. x [..., dim] -> [..., dim]."""

    def __init__(self, dim: int, hidden_dim: int, act: Callable[[torch.Tensor], torch.Tensor] = gelu_tanh):
        super().__init__()
        self.act = act
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)). x [..., dim] -> [..., dim].

    `activation` "gelu_tanh" is GeGLU (Gemma), "silu" SwiGLU (Llama, Mistral, Qwen2); `bias`
    adds biases to all three projections (Llama's `mlp_bias`, off in published checkpoints).
    """

    def __init__(self, dim: int, hidden_dim: int, activation: Activation = "gelu_tanh", bias: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown MLP activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        self.act = ACTIVATIONS[activation]
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
