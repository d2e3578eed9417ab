"""SigLIP 2 NaFlex (arXiv:2502.14786, sec. 2.4): SigLIP's towers with native-resolution images.

Axes: M images, h_i x w_i patch grid of image i, n_i = h_i * w_i, N = sum n_i packed patches,
L padded length (max_num_patches), P values per flattened patch (C * p * p), D width, g side of
the learned position table, E embedding width.

Vision tower, equal to transformers' Siglip2VisionModel:
    flattened patches [n_i, P] -> Linear -> + the g x g position table resized to h_i x w_i
    (bilinear with antialiasing, float32) -> SigLIP's pre-LN encoder blocks -> post-LayerNorm
    -> the MAP head (attention pooling), which reads only the image's own patches.
Two input layouts, same maths:
- packed: the images' patches concatenated, [N, P] (+ spatial_shapes [M, 2]); attention sees
  only its own image through a block-diagonal mask (models/common/packing), never padding;
- padded: transformers' layout, [M, L, P] with pixel_attention_mask [M, L] (1 on the first n_i
  rows) and spatial_shapes; padded patches are masked out as keys (their rows are computed but
  unused, and get the position of patch (0, 0), as in transformers).
The text tower and the logits are SigLIP's (`SiglipTextTower`, `SiglipTwoTower`).

Not supported: dropout, images of more patches than the caller's budget checks (any h x w works
here; the processor enforces max_num_patches).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlmkit.models.common.activations import ACTIVATIONS
from vlmkit.models.common.packing import block_diagonal_mask, segment_ids
from vlmkit.models.siglip.model import AttentionPoolingHead, encoder_blocks
from vlmkit.models.siglip.text import padding_mask
from vlmkit.models.siglip.two_tower import SiglipTwoTower, TwoTowerOutput, l2_normalize
from vlmkit.models.siglip2.config import Siglip2Config, Siglip2VisionConfig

Grids = Sequence[tuple[int, int]]


def grids_of(spatial_shapes: torch.Tensor | Grids) -> list[tuple[int, int]]:
    """spatial_shapes [M, 2] int (rows, cols of patches) -> [(h_i, w_i)], each at least 1 x 1."""
    grids = [(int(h), int(w)) for h, w in (spatial_shapes.tolist() if torch.is_tensor(spatial_shapes)
                                            else spatial_shapes)]
    if any(h < 1 or w < 1 for h, w in grids):
        raise ValueError(f"spatial_shapes must be positive patch grids, got {grids}")
    return grids


def resize_positions(table: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The [g * g, D] position table resized to an h x w patch grid -> [h * w, D], row-major.

    Bilinear, align_corners=False, with antialiasing (a wider triangle filter when shrinking),
    computed in float32 and cast back, as transformers' resize_positional_embeddings does.
    """
    g = int(round(table.shape[0] ** 0.5))
    grid = table.float().reshape(1, g, g, -1).permute(0, 3, 1, 2)  # [1, D, g, g]
    grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return grid.permute(0, 2, 3, 1).reshape(height * width, -1).to(table.dtype)  # [h * w, D]


class Siglip2VisionTower(nn.Module):
    """NaFlex vision tower: flattened patches of images of any sizes -> patch features / pooled."""

    def __init__(self, cfg: Siglip2VisionConfig):
        super().__init__()
        self.cfg, D = cfg, cfg.hidden_size
        self.patch_embedding = nn.Linear(cfg.patch_dim, D)  # over flattened patches, not a conv
        self.position_embedding = nn.Embedding(cfg.num_patches, D)
        self.layers = encoder_blocks(D, cfg.num_heads, cfg.intermediate_size, cfg.layer_norm_eps, cfg.num_layers,
                                     ACTIVATIONS[cfg.hidden_act])
        self.post_layernorm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.head = (AttentionPoolingHead(D, cfg.num_heads, cfg.intermediate_size, cfg.layer_norm_eps)
                     if cfg.use_head else None)

    def positions(self, grids: Grids) -> list[torch.Tensor]:
        """Each image's resized position embeddings [n_i, D] (one resize per distinct grid)."""
        cache: dict[tuple[int, int], torch.Tensor] = {}
        for hw in grids:
            if hw not in cache:
                cache[hw] = resize_positions(self.position_embedding.weight, *hw)
        return [cache[hw] for hw in grids]

    def _encode(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return self.post_layernorm(x)

    def packed(self, patches: torch.Tensor, spatial_shapes) -> torch.Tensor:
        """patches [N, P] (image after image, each row-major) -> post-LN features [1, N, D]."""
        grids = grids_of(spatial_shapes)
        lengths = [h * w for h, w in grids]
        if sum(lengths) != patches.shape[0]:
            raise ValueError(f"{patches.shape[0]} patches, but spatial_shapes {grids} need {sum(lengths)}")
        x = self.patch_embedding(patches.to(self.patch_embedding.weight.dtype))  # [N, D]
        x = (x + torch.cat(self.positions(grids)))[None]  # [1, N, D]
        return self._encode(x, block_diagonal_mask(lengths, x.device))

    def padded(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor, spatial_shapes) -> torch.Tensor:
        """transformers' layout: pixel_values [M, L, P], pixel_attention_mask [M, L] (1 = real
        patch, the first n_i rows) -> post-LN features [M, L, D] (padded rows unused)."""
        grids, L = grids_of(spatial_shapes), pixel_values.shape[1]
        if max(h * w for h, w in grids) > L:
            raise ValueError(f"spatial_shapes {grids} need more than the {L} padded patch rows")
        pos = [torch.cat([p, p[:1].expand(L - p.shape[0], -1)]) for p in self.positions(grids)]  # M x [L, D]
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)) + torch.stack(pos)  # [M, L, D]
        valid = pixel_attention_mask.bool()
        # As transformers (SDPA): no mask at all when no patch of the batch is padding.
        return self._encode(x, None if bool(valid.all()) else padding_mask(valid))

    def pool_packed(self, features: torch.Tensor, spatial_shapes) -> torch.Tensor:
        """Packed features [1, N, D] -> pooled [M, D]: one probe per image reads its own block."""
        lengths = [h * w for h, w in grids_of(spatial_shapes)]
        seg = segment_ids(lengths, features.device)  # [N]
        own = seg[None, :] == torch.arange(len(lengths), device=features.device)[:, None]  # [M, N]
        return self._head().pool(features, own[None])[0]  # [M, D]

    def pool_padded(self, features: torch.Tensor, pixel_attention_mask: torch.Tensor) -> torch.Tensor:
        """Padded features [M, L, D] -> pooled [M, D], padded patches masked out of the head."""
        valid = pixel_attention_mask.bool()
        return self._head()(features, None if bool(valid.all()) else valid)

    def _head(self) -> AttentionPoolingHead:
        if self.head is None:
            raise ValueError("this SigLIP 2 tower has no attention-pooling head (use_head=False)")
        return self.head

    def forward(self, pixel_values: torch.Tensor, spatial_shapes,
                pixel_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Packed [N, P] -> [1, N, D]; with pixel_attention_mask, padded [M, L, P] -> [M, L, D]."""
        if pixel_attention_mask is None:
            return self.packed(pixel_values, spatial_shapes)
        return self.padded(pixel_values, pixel_attention_mask, spatial_shapes)

    def pool(self, features: torch.Tensor, spatial_shapes,
             pixel_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`forward`'s features (same layout arguments) -> pooled [M, D]."""
        if pixel_attention_mask is None:
            return self.pool_packed(features, spatial_shapes)
        return self.pool_padded(features, pixel_attention_mask)


def unpad_patches(pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor) -> torch.Tensor:
    """transformers' padded [M, L, P] + mask [M, L] -> the packed [N, P] (real patches in order)."""
    return pixel_values[pixel_attention_mask.bool()]  # [N, P]


class Siglip2TwoTower(SiglipTwoTower):
    """SigLIP 2 NaFlex two-tower model; loads and saves HF "siglip2" checkpoints.

    Images are given packed (pixel_values [N, P] + spatial_shapes [M, 2]) or in transformers'
    padded layout (pixel_values [M, L, P] + pixel_attention_mask [M, L] + spatial_shapes).
    """

    vision_tower_class = Siglip2VisionTower
    cfg: Siglip2Config

    def encode_image(self, pixel_values: torch.Tensor, spatial_shapes=None,
                     pixel_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """-> L2-normalised image embeddings [M, E] (see the class doc for the two layouts)."""
        if spatial_shapes is None:
            raise ValueError("SigLIP 2 NaFlex images need spatial_shapes (each image's patch grid)")
        features = self.vision_tower(pixel_values, spatial_shapes, pixel_attention_mask)
        return l2_normalize(self.vision_tower.pool(features, spatial_shapes, pixel_attention_mask))

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                *, spatial_shapes, pixel_attention_mask: torch.Tensor | None = None) -> TwoTowerOutput:
        """Images (either layout), input_ids [Bt, T] -> TwoTowerOutput (logits_per_image [M, Bt])."""
        img = self.encode_image(pixel_values, spatial_shapes, pixel_attention_mask)
        txt = self.encode_text(input_ids, attention_mask)
        return TwoTowerOutput(self.logits(img, txt), img, txt)
