"""Connectors: image features [M, N, Dv] -> text-width tokens [M, N', D], one typed config.

Axes: M images, N tokens per image (g x g grid, row-major), Dv vision width, s pixel-shuffle
factor, N' = N / s^2, D text width.

Every Type C connector we load is a path through the same steps, each a typed field:
  [pixel shuffle s] -> [LayerNorm] -> linear_1 -> [act -> linear_2]
- PaliGemma: one linear with bias (it keeps its own `nn.Linear` named `projector`, which is
  this connector with `num_layers=1` under another name; see models/paligemma).
- LLaVA (`multi_modal_projector.linear_1/act/linear_2`): two layers, `projector_hidden_act`
  (exact GELU), biases per `multimodal_projector_bias`.
- Idefics3 / SmolVLM (`connector.modality_projection.proj`): pixel shuffle, one linear, no bias.
- InternVL (`multi_modal_projector.layer_norm/linear_1/linear_2`): pixel shuffle
  (`1 / downsample_ratio`), LayerNorm (eps 1e-5), two layers with biases.
- DeepSeek-VL (`aligner.linear1/linear2`): two layers, exact GELU, biases.
DeepSeek-VL hybrid reads two towers, so it is its own module, `HybridConnector`.

Pixel shuffle (space-to-depth): each s x s block of neighbouring patches becomes one token whose
channels are the block's vectors in the order (row in block, column in block, channel). This is
the order of both transformers' Idefics3Connector.pixel_shuffle and InternVL's pixel_shuffle
(written differently: one reshapes a [M, N, Dv] sequence, the other a [M, g, g, Dv] grid with
`scale_factor` 0.5; the parity tests check ours against both).
"""

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vlmkit.models.common.activations import ACTIVATIONS, Activation


@dataclass(kw_only=True)
class ConnectorConfig:
    # Merge each s x s block of patches into one token (1 = off).
    pixel_shuffle: int = 1
    # LayerNorm over the (merged) vision channels before the first linear (InternVL).
    norm: bool = False
    layer_norm_eps: float = 1e-5
    # 1: a single linear; 2: linear_1 -> act -> linear_2, both to the text width.
    num_layers: Literal[1, 2] = 2
    hidden_act: Activation = "gelu"
    bias: bool = True

    def __post_init__(self):
        if self.pixel_shuffle < 1:
            raise ValueError(f"pixel_shuffle must be >= 1, got {self.pixel_shuffle}")
        if self.num_layers not in (1, 2):
            raise ValueError(f"connector num_layers must be 1 or 2, got {self.num_layers}")

    def num_tokens(self, n_in: int) -> int:
        """Tokens out for `n_in` tokens in."""
        return n_in // self.pixel_shuffle**2


def pixel_shuffle(x: torch.Tensor, s: int) -> torch.Tensor:
    """Space-to-depth over a square grid: [M, N, Dv] -> [M, N / s^2, Dv * s^2].

    Output token (r, c) of the (g/s) x (g/s) grid, row-major, holds input patches
    (s*r + i, s*c + j) at channels (i * s + j) * Dv : (i * s + j + 1) * Dv.
    """
    M, N, Dv = x.shape
    g = int(round(N**0.5))
    if g * g != N or g % s:
        raise ValueError(f"pixel shuffle by {s} needs a square grid with a side divisible by {s}, got {N} tokens")
    x = x.reshape(M, g // s, s, g // s, s, Dv)  # [M, g/s rows, i, g/s cols, j, Dv]
    x = x.permute(0, 1, 3, 2, 4, 5)  # [M, g/s, g/s, i, j, Dv]
    return x.reshape(M, (g // s) ** 2, s * s * Dv)  # [M, N', s^2 Dv]


class Connector(nn.Module):
    """image features [M, N, in_dim] -> [M, N / s^2, out_dim] in the weights' dtype."""

    def __init__(self, cfg: ConnectorConfig, in_dim: int, out_dim: int):
        super().__init__()
        self.cfg = cfg
        merged = in_dim * cfg.pixel_shuffle**2
        self.layer_norm = nn.LayerNorm(merged, eps=cfg.layer_norm_eps) if cfg.norm else None
        self.linear_1 = nn.Linear(merged, out_dim, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.linear_2 = nn.Linear(out_dim, out_dim, bias=cfg.bias) if cfg.num_layers == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.pixel_shuffle > 1:
            x = pixel_shuffle(x, self.cfg.pixel_shuffle)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        x = self.linear_1(x)
        return x if self.linear_2 is None else self.linear_2(self.act(x))


@dataclass(kw_only=True)
class HybridConnectorConfig:
    hidden_act: Activation = "gelu"


class HybridConnector(nn.Module):
    """DeepSeek-VL hybrid's aligner: each tower's tokens are projected to D / 2, concatenated
    (high-resolution half first, as in the reference), then act -> linear to D.

    low [M, N, Dlow] (SigLIP tokens), high [M, N, Dhigh] (SAM-B tokens, already flattened to
    the same N) -> [M, N, D].
    """

    def __init__(self, cfg: HybridConnectorConfig, low_dim: int, high_dim: int, out_dim: int):
        super().__init__()
        if out_dim % 2:
            raise ValueError(f"the hybrid connector splits the text width in halves; {out_dim} is odd")
        self.vision_proj = nn.Linear(low_dim, out_dim // 2)
        self.high_res_vision_proj = nn.Linear(high_dim, out_dim // 2)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.high_res_vision_proj(high), self.vision_proj(low)], dim=-1)  # [M, N, D]
        return self.proj(self.act(x))
