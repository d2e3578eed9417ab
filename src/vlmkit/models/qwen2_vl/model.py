"""Qwen2-VL (arXiv:2409.12191), single-device plain PyTorch.

Axes: B batch, T tokens, M images, N image tokens in the batch (sum over images of
t_i h_i w_i / m^2), D text width, V vocabulary.

The native-resolution tower (`models/parts/qwen2_vit`: packed images, vision RoPE, PatchMerger
straight to the decoder width, no separate connector) and the shared decoder with M-RoPE
(`mrope_section`, models/common/mrope). The processor expands each image into its N_i
`<|image_pad|>` tokens between `<|vision_start|>` and `<|vision_end|>`; the merged tokens replace
them in order. Positions are [3, B, T] (temporal, height, width), built from the prompt's image
grids as transformers' get_rope_index builds them; attention is plain causal.

Videos (`pixel_values_videos` [sum t h w, C*Tp*P*P] with `video_grid_thw`, frame pairs as
temporal patches) run through the same tower and fill the `<|video_pad|>` tokens; their temporal
positions step by 1 per temporal patch (Qwen2-VL) or by tokens_per_second * second_per_grid_ts
(Qwen2.5-VL, `cfg.tokens_per_second` set), see models/common/mrope.

Qwen2.5-VL (arXiv:2502.13923) is this model with its tower's switches (window attention,
RMSNorm, SwiGLU: models/parts/qwen2_vit) and `tokens_per_second` (models/qwen2_5_vl).
"""

import torch
from torch import nn

from vlmkit.models.common.contracts import DecoderInputs
from vlmkit.models.common.mrope import IMAGE, TEXT, VIDEO, mrope_positions
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
        """[B, T] 1 at `<|image_pad|>`, 2 at `<|video_pad|>`, else 0 (transformers' mm_token_type_ids)."""
        types = torch.where(input_ids == self.cfg.image_token_id, IMAGE, TEXT)
        return torch.where(input_ids == self.cfg.video_token_id, VIDEO, types)

    def video_intervals(self, video_grid_thw: torch.Tensor, second_per_grid_ts=None) -> torch.Tensor | None:
        """[v] float32 temporal steps per temporal patch, or None (Qwen2-VL: 1 each)."""
        if self.cfg.tokens_per_second is None:
            return None
        if second_per_grid_ts is None:  # the reference then takes 1 s per temporal patch
            return torch.full((len(video_grid_thw),), float(self.cfg.tokens_per_second))
        seconds = torch.as_tensor(second_per_grid_ts, dtype=torch.float32).cpu()
        return self.cfg.tokens_per_second * seconds

    def _embed(self, input_ids, attention_mask, image_features, video_features) -> torch.Tensor:
        x = merge_image_features(self.language_model.embed, input_ids, self.cfg.image_token_id, image_features)
        # Real tokens only: a folder may reuse the padding id as its (unused) video token id.
        is_video = (input_ids == self.cfg.video_token_id) & attention_mask.bool()
        n = int(is_video.sum())
        got = 0 if video_features is None else video_features.shape[0]
        if n != got:
            raise ValueError(f"{n} <|video_pad|> tokens in the input but the videos give {got} features")
        return x if video_features is None else x.masked_scatter(is_video[..., None], video_features.to(x.dtype))

    def _features(self, pixels, grids, features, what: str):
        if features is None and pixels is not None:
            if grids is None:
                raise ValueError(f"Qwen2-VL {what} pixels need their grid_thw")
            features = self.encode_images(pixels, grids)
        return features

    def inputs(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
               image_features=None, pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None,
               video_features=None) -> tuple[DecoderInputs, torch.Tensor]:
        """-> (DecoderInputs with [3, B, T] M-RoPE positions, rope deltas [B, 1])."""
        image_features = self._features(pixel_values, image_grid_thw, image_features, "image")
        video_features = self._features(pixel_values_videos, video_grid_thw, video_features, "video")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        grids = image_grid_thw if image_grid_thw is not None else torch.zeros(0, 3, dtype=torch.long)
        intervals = None if video_grid_thw is None else self.video_intervals(video_grid_thw, second_per_grid_ts)
        positions, deltas = mrope_positions(self.token_types(input_ids), attention_mask.bool(), grids,
                                            self.cfg.vision.spatial_merge_size, video_grid_thw, intervals)
        x = self._embed(input_ids, attention_mask, image_features, video_features)
        causal = torch.zeros_like(attention_mask, dtype=torch.bool)  # no bidirectional prefix block
        return DecoderInputs(x, attention_mask, causal, positions.to(input_ids.device)), deltas

    def forward(self, input_ids, pixel_values=None, attention_mask=None, image_grid_thw=None,
                image_features=None, **videos) -> torch.Tensor:
        """Full (uncached) forward: input_ids / attention_mask [B, T], pixel_values
        [sum t h w, C*Tp*P*P] with image_grid_thw [M, 3] (or image_features [N, D]), and the
        video inputs of `inputs` by keyword -> logits [B, T, V]."""
        inp, _ = self.inputs(input_ids, attention_mask, pixel_values, image_grid_thw, image_features, **videos)
        valid = inp.attention_mask.bool()
        return self.language_model.logits(self.language_model(inp.embeds, inp.positions, valid, inp.in_prefix))


_VIDEO_INPUTS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts", "video_features")


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
        if bool((model.token_types(ids[:, -1]) != TEXT).any()):
            raise ValueError("a Qwen2-VL prompt must end with text, not an image or video token")
        videos = {k: batch.get(k) for k in _VIDEO_INPUTS}
        inp, _ = model.inputs(ids, batch["attention_mask"], batch.get("pixel_values"), batch.get("image_grid_thw"),
                              batch.get("image_features"), **videos)
        return inp
