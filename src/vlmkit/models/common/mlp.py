"""Feed-forward blocks: the ViT two-layer MLP and the gated (GeGLU) MLP of Gemma."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # Both SigLIP and Gemma were trained with the tanh approximation of GELU; the exact erf form
    # changes outputs beyond float tolerance.
    return F.gelu(x, approximate="tanh")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    # OpenAI's CLIP was trained with x * sigmoid(1.702 x), a cheaper GELU stand-in; its towers
    # (and LLaVA's, which reuse them) must keep it.
    return x * torch.sigmoid(1.702 * x)


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
    """down(gelu_tanh(gate(x)) * up(x)), no biases (GeGLU). x [..., dim] -> [..., dim]."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(gelu_tanh(self.gate_proj(x)) * self.up_proj(x))
