"""Pixtral-ViT, the native-resolution vision encoder of Pixtral 12B (arXiv:2410.07073 sec. 2.1), as
transformers' PixtralVisionModel computes it; single-device plain PyTorch.

Axes: M images, h_i x w_i patch grid of image i, n_i = h_i * w_i, N = sum n_i packed patches,
D width, H heads, hd head dim.

Each image is read at its own size (a multiple of the patch size, see
vlmkit.data.processors.pixtral): patch conv (no bias) -> its h_i x w_i patches, row-major; the
patches of all images are packed into one [1, N, D] sequence (models/common/packing) -> RMSNorm
(`ln_pre`) -> blocks:
    x = x + attn(RMSNorm(x));  x = x + W_down(silu(W_gate x) * W_up x)
Attention has no biases, RoPE-2D on q and k from each patch's (row, column) in its own image
(models/common/rope2d; no learned positions, no class token) and block-diagonal attention (computed
per image by `packing.packed_attention`, never as an N x N mask), so a patch attends only to patches of its image: the packed forward equals encoding each image alone,
and no block sees padding (the sequence is never padded to the largest image). No final norm.

Why a part of its own and not switches of `SiglipVisionTower`: Pixtral differs in every
sub-layer (RMSNorm for LayerNorm, a gated FFN for the MLP, no biases anywhere, RoPE for the
position table, a packed variable-length input for a fixed square one); as switches they would
put a branch in each of SigLIP's embed, attention, block and tower functions. What is shared is
reused: `attend` (SDPA), `apply_rope`, `GatedMLP`, `RMSNorm`, and the `hidden_states` contract of
`models.parts.vision` (index 0 the `ln_pre` output, i the output of block i).

Inputs: `pixel_values` [M, 3, H_max, W_max] zero-padded to the largest image, as transformers'
processor returns them, with `image_sizes` [M, 2] (each image's height and width in pixels); the
patch conv runs over that batch and each image's real patches are cut out of its output. A list of
M tensors [3, H_i, W_i] works too (zero-padded for the conv only).

Not supported: dropout, flash-attention varlen kernels (attention loops over the images), Mistral 3's patch
merger (a connector, not part of this tower).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vlmkit.models.common.activations import Activation
from vlmkit.models.common.attention import attend
from vlmkit.models.common.mlp import GatedMLP
from vlmkit.models.common.norms import RMSNorm
from vlmkit.models.common.packing import packed_attention
from vlmkit.models.common.rope import apply_rope
from vlmkit.models.common.rope2d import grid_positions, pixtral_inv_freq, pixtral_rope_cos_sin

# Pixtral's norms use a fixed eps, whatever the config says (transformers hard-codes it too).
_NORM_EPS = 1e-5


@dataclass(kw_only=True)
class PixtralVisionConfig:
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    num_channels: int = 3
    # The longest edge an image is resized to fit (the processor's `size.longest_edge`).
    image_size: int = 1024
    patch_size: int = 16
    hidden_act: Activation = "silu"
    rope_theta: float = 10000.0

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.head_dim % 4:
            raise ValueError(f"Pixtral's 2-D RoPE needs a head dim divisible by 4, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """The most patches one image gives (a full-size square one); each image gives its own count."""
        return self.max_patches_per_side**2


def _rms_norm(dim: int) -> RMSNorm:
    # transformers' PixtralRMSNorm is Llama's: normalise in float32, cast, then scale by w.
    return RMSNorm(dim, eps=_NORM_EPS, unit_offset=False, scale_in_fp32=False)


class PixtralAttention(nn.Module):
    """Multi-head self-attention without biases, RoPE-2D on q / k. x [1, N, D] -> [1, N, D]."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """mask: [B, 1, N, N] bool, or the lengths of the packed images (attention within each)."""
        B, N, D = x.shape
        hd = D // self.num_heads
        q = self.q_proj(x).view(B, N, -1, hd).transpose(1, 2)  # [B, H, N, hd]
        k = self.k_proj(x).view(B, N, -1, hd).transpose(1, 2)  # [B, H, N, hd]
        v = self.v_proj(x).view(B, N, -1, hd).transpose(1, 2)  # [B, H, N, hd]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if torch.is_tensor(mask):
            out = attend(q, k, v, mask, hd**-0.5)  # [B, H, N, hd]
        else:  # packed: per image, never the N x N mask (models/common/packing)
            out = packed_attention(q, k, v, mask, hd**-0.5)
        return self.o_proj(out.transpose(1, 2).reshape(B, N, D))  # [B, N, D]


class PixtralBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + gated_ffn(norm(x))."""

    def __init__(self, cfg: PixtralVisionConfig):
        super().__init__()
        self.attention_norm = _rms_norm(cfg.hidden_size)
        self.attention = PixtralAttention(cfg.hidden_size, cfg.num_heads)
        self.ffn_norm = _rms_norm(cfg.hidden_size)
        self.feed_forward = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x, cos, sin, mask):
        """x [B, N, D]; cos / sin [B, N, hd]; mask [B, 1, N, N] bool, or the packed images' lengths."""
        x = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class PixtralVisionTower(nn.Module):
    """images of any sizes (multiples of the patch) -> packed patch features [1, N, D]."""

    def __init__(self, cfg: PixtralVisionConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        self.patch_conv = nn.Conv2d(cfg.num_channels, D, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.ln_pre = _rms_norm(D)
        self.layers = nn.ModuleList(PixtralBlock(cfg) for _ in range(cfg.num_layers))

    @staticmethod
    def padded(pixel_values, image_sizes=None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """(a zero-padded batch [M, 3, H_max, W_max], each image's (H_i, W_i) in pixels) from a
        padded batch + image_sizes, a batch of equal images, or a list of [3, H_i, W_i]."""
        if torch.is_tensor(pixel_values):
            H, W = pixel_values.shape[-2:]
            if image_sizes is None:
                return pixel_values, [(H, W)] * pixel_values.shape[0]
            sizes = image_sizes.tolist() if torch.is_tensor(image_sizes) else image_sizes
            sizes = [(int(h), int(w)) for h, w in sizes]
            if len(sizes) != len(pixel_values) or any(h > H or w > W for h, w in sizes):
                raise ValueError(f"image_sizes {sizes} do not fit pixel_values of shape {tuple(pixel_values.shape)}")
            return pixel_values, sizes
        sizes = [tuple(img.shape[-2:]) for img in pixel_values]
        batch = pixel_values[0].new_zeros(len(sizes), pixel_values[0].shape[0], *map(max, zip(*sizes)))
        for i, img in enumerate(pixel_values):  # indexed writes: autograd tracks them into `batch`
            batch[i, :, : img.shape[-2], : img.shape[-1]] = img
        return batch, sizes

    def embed(self, pixel_values, image_sizes=None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """-> (the `ln_pre`-normed packed patches [1, N, D], each image's (h_i, w_i) patch grid).

        The patch conv runs once over the padded batch, as transformers runs it: a stride-p conv is
        local, so the padding changes no real patch, and it is the only step that sees padding (CPU
        bf16 convs of a lone one-patch-wide image came out wrong in PyTorch 2.13; the batch is right).
        """
        batch, sizes = self.padded(pixel_values, image_sizes)
        p = self.cfg.patch_size
        small = [s for s in sizes if min(s) < p]
        if small:
            raise ValueError(f"an image of {small[0]} pixels is smaller than one {p}-pixel patch")
        x = self.patch_conv(batch.to(self.patch_conv.weight.dtype))  # [M, D, H_max / p, W_max / p]
        grids = [(h // p, w // p) for h, w in sizes]  # a remainder < p is dropped
        patches = [xi[:, :h, :w].flatten(1).T for xi, (h, w) in zip(x, grids)]  # [n_i, D] each, row-major
        return self.ln_pre(torch.cat(patches)[None]), grids  # [1, N, D]

    def hidden_states(self, pixel_values, layers: Sequence[int], image_sizes=None) -> list[torch.Tensor]:
        """transformers' `hidden_states` at the given indices, each packed [1, N, D]: 0 is the
        `ln_pre` output, i the output of block i, negative indices count from the end.
        Blocks after the deepest requested index are not run."""
        n = self.cfg.num_layers + 1
        if any(not -n <= i < n for i in layers):
            raise ValueError(f"hidden-state index out of range in {list(layers)} (the tower has {n} states)")
        wanted = [i % n for i in layers]
        x, grids = self.embed(pixel_values, image_sizes)
        positions = torch.cat([grid_positions(h, w, x.device) for h, w in grids])  # [N, 2]
        # Frequencies are recomputed per call (no buffer: the model may be built on the meta device).
        inv_freq = pixtral_inv_freq(self.cfg.head_dim, self.cfg.rope_theta).to(x.device)
        cos, sin = pixtral_rope_cos_sin(positions, inv_freq, x.dtype)  # [1, N, hd] each
        lengths = [h * w for h, w in grids]  # attention within each image (block-diagonal)
        kept = {0: x}
        for i, layer in enumerate(self.layers[: max(wanted)], start=1):
            x = layer(x, cos, sin, lengths)
            if i in wanted:
                kept[i] = x
        return [kept[i] for i in wanted]

    def forward(self, pixel_values, image_sizes=None) -> torch.Tensor:
        """pixel_values [M, 3, H, W] (+ image_sizes [M, 2]) or M tensors [3, H_i, W_i] -> the last
        block's output [1, N, D], images in order, each image's patches row-major."""
        return self.hidden_states(pixel_values, [-1], image_sizes)[0]

    def num_patches(self, image_sizes) -> list[int]:
        """Patches n_i per image for (height, width) pixel sizes."""
        p = self.cfg.patch_size
        return [(int(h) // p) * (int(w) // p) for h, w in image_sizes]
