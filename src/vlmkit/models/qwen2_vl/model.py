"""Qwen2-VL (arXiv:2409.12191), single-device plain PyTorch.

Axes: B batch, T tokens, M images, N image tokens in the batch (sum over images of
t_i h_i w_i / m^2), D text width, V vocabulary.

The native-resolution tower (`models/parts/qwen2_vit`: packed images, vision RoPE, PatchMerger
straight to the decoder width, no separate connector) and the shared decoder with M-RoPE
(`mrope_section`, models/common/mrope). The processor expands each image into its N_i
`<|image_pad|>` tokens between `<|vision_start|>` and `<|vision_end|>`; the merged tokens replace
them in order. Positions are [3, B, T] (temporal, height, width), built from the prompt's image
grids as transformers' get_rope_index builds them; attention is plain causal.

Not supported: video inputs (the tower and the positions take t > 1 grids, but no video path is
wired or tested here), Qwen2.5-VL's tower.
"""

import torch
from torch import nn

from vlmkit.models.common.contracts import DecoderInputs
from vlmkit.models.common.mrope import IMAGE, TEXT, mrope_positions
from vlmkit.models.llama import Llama
from vlmkit.models.parts.placeholders import merge_image_features
from vlmkit.models.parts.qwen2_vit import Qwen2VisionTower
from vlmkit.models.qwen2_vl.config import Qwen2VLConfig


class Qwen2VL(nn.Module):
    def __init__(self, cfg: Qwen2VLConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = Qwen2VisionTower(cfg.vision)
        self.language_model = Llama(cfg.text)

    def encode_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [sum t h w, C*Tp*P*P], image_grid_thw [M, 3] -> image tokens [N, D]."""
        return self.visual(pixel_values, image_grid_thw)

    def token_types(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] 1 at `<|image_pad|>`, else 0 (transformers' mm_token_type_ids for images)."""
        return torch.where(input_ids == self.cfg.image_token_id, IMAGE, TEXT)

    def inputs(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
               image_features=None) -> tuple[DecoderInputs, torch.Tensor]:
        """-> (DecoderInputs with [3, B, T] M-RoPE positions, rope deltas [B, 1])."""
        if image_features is None and pixel_values is not None:
            if image_grid_thw is None:
                raise ValueError("Qwen2-VL pixel_values need image_grid_thw")
            image_features = self.encode_images(pixel_values, image_grid_thw)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        grids = image_grid_thw if image_grid_thw is not None else torch.zeros(0, 3, dtype=torch.long)
        positions, deltas = mrope_positions(self.token_types(input_ids), attention_mask.bool(), grids,
                                            self.cfg.vision.spatial_merge_size)
        x = merge_image_features(self.language_model.embed, input_ids, self.cfg.image_token_id, image_features)
        causal = torch.zeros_like(attention_mask, dtype=torch.bool)  # no bidirectional prefix block
        return DecoderInputs(x, attention_mask, causal, positions.to(input_ids.device)), deltas

    def forward(self, input_ids, pixel_values=None, attention_mask=None, image_grid_thw=None,
                image_features=None) -> torch.Tensor:
        """Full (uncached) forward: input_ids / attention_mask [B, T], pixel_values
        [sum t h w, C*Tp*P*P] with image_grid_thw [M, 3] (or image_features [N, D]) -> logits [B, T, V]."""
        inp, _ = self.inputs(input_ids, attention_mask, pixel_values, image_grid_thw, image_features)
        valid = inp.attention_mask.bool()
        return self.language_model.logits(self.language_model(inp.embeds, inp.positions, valid, inp.in_prefix))


class Qwen2VLGeneration:
    """The generation adapter: M-RoPE positions [3, B, T] at prefill. The engine then moves every
    row's three axes on by one per token from its last prompt position, which equals
    transformers' sequence index + rope delta as long as the prompt ends with a text token."""

    def context_length(self, model: nn.Module) -> int:
        return model.cfg.text.max_position_embeddings

    def decoder(self, model: nn.Module) -> nn.Module:
        return model.language_model

    def prepare(self, model: nn.Module, batch: dict) -> DecoderInputs:
        ids = batch["input_ids"]
        if bool((ids[:, -1] == model.cfg.image_token_id).any()):
            raise ValueError("a Qwen2-VL prompt must end with text, not an image token")
        inp, _ = model.inputs(ids, batch["attention_mask"], batch.get("pixel_values"), batch.get("image_grid_thw"),
                              batch.get("image_features"))
        return inp
