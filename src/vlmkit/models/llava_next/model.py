"""LLaVA-NeXT (LLaVA-1.6, "anyres"; Liu et al., "LLaVA-NeXT: Improved reasoning, OCR, and world
knowledge", 2024), single-device plain PyTorch.

Axes: B batch, T tokens, M images, K tiles of one image (its base image first), S tile size in
pixels, g = S / patch_size (a tile's feature-grid side), n = g^2 tokens per tile, gh x gw the
image's tile grid, D text width.

LLaVA (models/llava: CLIP tower, feature selection, 2-layer MLP connector, decoder from the text
config's family record; reused, not copied) plus what is LLaVA-NeXT's own:
1. pixel_values [M, K_max, 3, S, S] hold, per image, the base image (the whole image at S x S)
   and then its gh x gw tiles row-major; rows with fewer tiles are zero-padded, and `image_sizes`
   [M, 2] (original height, width) say how many are real (models/parts/anyres). All real tiles of
   all images go through the tower + projector as one batch, as in transformers.
2. Packing, per image: the base image's n tokens; then the tiles' features laid out as one
   (gh g) x (gw g) grid, the rows (or columns) that only cover the processor's padding cut off
   ("unpadding", with the original size), and the learned `image_newline` appended to each
   remaining row. This is the order in which `<image>` was expanded: n + rows * (cols + 1) tokens.
The packed features of all images fill the `<image>` placeholders in order, as in LLaVA:
`forward` / `hidden_states` are LLaVA's, called as `model(input_ids, pixel_values, attention_mask,
image_sizes=image_sizes)` (or with precomputed packed `image_features` [sum_i N_i, D]).

Not supported: transformers' single-tile branch (an image with no tiles, which no LLaVA-NeXT
processor produces), LLaVA-OneVision's `vision_aspect_ratio` pooling, dropout.
"""

import torch
from torch import nn

from vlmkit.models.llava.model import Llava
from vlmkit.models.llava_next.config import LlavaNextConfig
from vlmkit.models.parts.anyres import unpadded_window


class LlavaNext(Llava):
    def __init__(self, cfg: LlavaNextConfig):
        super().__init__(cfg)
        # Ends each row of the tile grid, so the decoder can tell where a row of the image wraps.
        self.image_newline = nn.Parameter(torch.empty(cfg.text.hidden_size))
        nn.init.normal_(self.image_newline, std=cfg.text.hidden_size**-0.5)

    def encode_images(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """pixel_values [M, K_max, 3, S, S], image_sizes [M, 2] int (height, width) -> the packed
        image tokens of all M images, concatenated: [sum_i N_i, D] in the projector dtype, with
        N_i = `cfg.tokens_for(*image_sizes[i])`."""
        if image_sizes is None:
            raise ValueError("LLaVA-NeXT images need image_sizes (the original height and width of each image)")
        if pixel_values.dim() != 5 or pixel_values.shape[0] != len(image_sizes):
            raise ValueError(f"pixel_values must be [images, tiles, 3, H, W] with one row per image_sizes entry, "
                             f"got {tuple(pixel_values.shape)} for {len(image_sizes)} image sizes")
        sizes = [tuple(s) for s in image_sizes.tolist()]
        counts = [self.cfg.num_tiles(h, w) for h, w in sizes]
        if max(counts) > pixel_values.shape[1]:
            raise ValueError(f"image_sizes need up to {max(counts)} tiles per image, "
                             f"pixel_values hold {pixel_values.shape[1]}")
        tiles = torch.cat([px[:k] for px, k in zip(pixel_values, counts)])  # [sum K, 3, S, S]
        feats = super().encode_images(tiles)  # [sum K, n, D]
        return torch.cat([self.pack(f, h, w) for f, (h, w) in zip(feats.split(counts), sizes)])

    def pack(self, feats: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """One image's tile features [K, n, D] (base image first) -> its tokens [N, D]."""
        g = self.cfg.grid_side
        gh, gw = self.cfg.tile_grid(height, width)
        D = feats.shape[-1]
        grid = feats[1:].reshape(gh, gw, g, g, D)  # [tile row, tile col, row in tile, col in tile, D]
        grid = grid.permute(0, 2, 1, 3, 4).reshape(gh * g, gw * g, D)  # [grid rows, grid cols, D]
        top, left, rows, cols = unpadded_window(height, width, gh * g, gw * g)
        grid = grid[top:top + rows, left:left + cols]  # [rows, cols, D]
        newline = self.image_newline.to(grid.dtype).expand(rows, 1, D)  # [rows, 1, D]
        return torch.cat([feats[0], torch.cat([grid, newline], 1).reshape(rows * (cols + 1), D)])
