"""Feed-forward blocks: the ViT two-layer MLP and the gated MLP of decoders (GeGLU / SwiGLU)."""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["gelu_tanh", "silu"]


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # Both SigLIP and Gemma were trained with the tanh approximation of GELU; the exact erf form
    # changes outputs beyond float tolerance.
    return F.gelu(x, approximate="tanh")


# transformers' `hidden_act` names: gelu_pytorch_tanh (Gemma's GeGLU), silu (Llama's SwiGLU).
ACTIVATIONS = {"gelu_tanh": gelu_tanh, "silu": F.silu}


class MLP(nn.Module):
    """fc2(gelu_tanh(fc1(x))), with biases. x [..., dim] -> [..., dim]."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_tanh(self.fc1(x)))


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
