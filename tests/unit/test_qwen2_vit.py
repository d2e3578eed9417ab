"""The Qwen2-VL tower's fast forms equal the forms transformers computes: the patch embedding over
rows of patches vs the Conv3d on each kernel-sized patch (bit for bit in fp32, within one bf16 step
in bf16), and RoPE by halves vs `apply_rope` on the float32 copy (bit for bit)."""

import pytest
import torch

from vlmkit.models.common.rope import apply_rope
from vlmkit.models.common.rope2d import axial_rope_cos_sin, merge_order_positions, qwen2_vl_inv_freq
from vlmkit.models.parts.qwen2_vit import PatchEmbed, Qwen2VitConfig, rope_in_float32


# (dtype, width, patch): float32 at a tiny and the published width, bf16 at both.
CASES = [(torch.float32, 48, 8), (torch.float32, 1280, 14), (torch.bfloat16, 48, 8), (torch.bfloat16, 1280, 14)]


@pytest.mark.parametrize("dtype,width,patch", CASES)
@pytest.mark.parametrize("n", [1, 63, 65, 200])  # around whole rows of 64 patches
@pytest.mark.parametrize("seed", range(3))
def test_patch_embed_equals_the_conv_on_each_patch(dtype, width, patch, n, seed):
    """fp32: bit-equal. bf16: oneDNN's per-patch call rounds a few outputs one bf16 step apart for
    some weights (measured: 2 of 48 draws at width 1280), so at most one step (<= 2^-7 of the magnitude) and in under 1% of outputs."""
    torch.manual_seed(seed)
    cfg = Qwen2VitConfig(embed_dim=width, depth=1, num_heads=4, patch_size=patch, hidden_size=32)
    embed = PatchEmbed(cfg).to(dtype)
    x = torch.randn(n, cfg.patch_dim, generator=torch.Generator().manual_seed(n)).to(dtype)
    with torch.no_grad():
        ref = embed.proj(x.view(n, 3, 2, patch, patch)).view(n, width)  # transformers' call: a volume per patch
        got = embed(x)
    assert got.shape == (n, width) and got.dtype == dtype
    if dtype == torch.float32:
        assert torch.equal(got, ref)
    else:  # one bf16 step of the larger magnitude (8 significand bits)
        step = torch.maximum(got.float().abs(), ref.float().abs()) * 2**-7
        assert ((got.float() - ref.float()).abs() <= step + 1e-30).all()
        assert (got != ref).float().mean() < 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_by_halves_equals_apply_rope_in_float32(dtype):
    hd, H = 16, 3
    positions = torch.cat([merge_order_positions(1, 4, 6, 2), merge_order_positions(1, 2, 2, 2)])  # [28, 2]
    cos, sin = axial_rope_cos_sin(positions * 37, qwen2_vl_inv_freq(hd, 10000.0), torch.float32)  # [1, 28, hd]
    qk = torch.randn(2, 1, H, positions.shape[0], hd, generator=torch.Generator().manual_seed(0)).to(dtype)
    got = rope_in_float32(qk, cos, sin)
    assert got.dtype == dtype and got.shape == qk.shape
    for i in range(2):  # q and k rotated together, each as the reference rotates it alone
        assert torch.equal(got[i], apply_rope(qk[i].float(), cos, sin).to(dtype))
    assert not torch.equal(got, qk)
