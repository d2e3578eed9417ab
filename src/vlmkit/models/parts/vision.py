"""Which vision-tower outputs a VLM reads: LLaVA-style feature selection as typed config.

Axes: M images, P tower positions (N patches, + 1 with a class token), Dv tower width,
k number of selected layers.

`vision_feature_layer` indexes transformers' `hidden_states` tuple of the tower: 0 is the
embedding output, i the output of block i, -1 the last block, -2 (LLaVA's default) the one
before it. These states are never post-LayerNormed (CLIP's post-LN only touches the pooled
class token). A list of layers concatenates their states on the channel axis, in list order.
`vision_feature_select_strategy` "default" then drops the first token (the class token of a
CLIP tower; transformers drops it whatever the tower, and so do we), "full" keeps all.
"""

from dataclasses import dataclass, field
from typing import Literal

import torch

from vlmkit.models.siglip.model import SiglipVisionTower

SelectStrategy = Literal["default", "full"]


@dataclass(kw_only=True)
class FeatureSelect:
    """vision_feature_layer: one hidden-state index or a tuple of them (see the module doc).
    vision_feature_select_strategy: "default" drops the first token, "full" keeps it."""

    # Negative indices count from the end, as in Python (metadata: the config checker allows them).
    vision_feature_layer: int | tuple[int, ...] = field(default=-2, metadata={"signed": True})
    vision_feature_select_strategy: SelectStrategy = "default"

    def __post_init__(self):
        if isinstance(self.vision_feature_layer, list):
            self.vision_feature_layer = tuple(self.vision_feature_layer)
        if self.vision_feature_layer == ():
            raise ValueError("vision_feature_layer is an empty list")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy must be 'default' or 'full', "
                f"got {self.vision_feature_select_strategy!r}"
            )

    @property
    def layers(self) -> tuple[int, ...]:
        layer = self.vision_feature_layer
        return (layer,) if isinstance(layer, int) else layer

    def num_tokens(self, num_positions: int) -> int:
        """Tokens per image for a tower of `num_positions` outputs."""
        return num_positions - (self.vision_feature_select_strategy == "default")

    def width(self, tower_width: int) -> int:
        """Channels per token: the tower width times the number of concatenated layers."""
        return tower_width * len(self.layers)


def select_image_features(tower: SiglipVisionTower, pixel_values: torch.Tensor, sel: FeatureSelect,
                          **tower_inputs: torch.Tensor) -> torch.Tensor:
    """pixel_values [M, C, H, W] -> features [M, P or P - 1, Dv * k] as configured by `sel`
    (a packed tower, Pixtral, gives [1, sum_i P_i, Dv * k]; `tower_inputs`: its image_sizes)."""
    states = tower.hidden_states(pixel_values, sel.layers, **tower_inputs)  # k x [M, P, Dv]
    if sel.vision_feature_select_strategy == "default":
        states = [s[:, 1:] for s in states]  # drop the class token
    return states[0] if len(states) == 1 else torch.cat(states, dim=-1)  # [M, P', Dv * k]
