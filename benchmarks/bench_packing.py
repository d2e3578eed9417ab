"""Native-resolution vision encoding: vlmkit packed vs vlmkit padded-to-largest vs transformers.

    python benchmarks/bench_packing.py [--layers 2] [--dtype bfloat16] [--reps 3] [--threads N] [--json out.json]

One mixed batch of 16 images, 224 x 224 up to 896 x 448 (and 448 x 896), goes through two
encoders at their published width with fewer blocks (`--layers`, default 2):

- Pixtral-ViT (Pixtral 12B / Mistral 3's tower): width 1024, MLP 4096, 16 heads, 16-px patches;
- Qwen2-VL's ViT (Qwen2-VL-2B / 7B): width 1280, MLP 5120, 16 heads, 14-px patches, 2 x 2 merger
  to 1536.

Three variants with the same weights, interleaved (A, B, C, A, ...), best of --reps, images/s:

- vlmkit packed: the towers as the models run them, all patches in one sequence, attention only
  within an image (models/common/packing);
- vlmkit padded: the same blocks over a [16, n_max, D] batch, each image's patches padded to the
  largest image's and masked out of attention by a key-padding mask (the usual batching);
- transformers: PixtralVisionModel / Qwen2VisionTransformerPretrainedModel, SDPA attention.

Outputs are compared (max |diff| of the real patches' features against transformers'). `--tiny`:
debug widths and 1/8-size images, for the smoke test (no timing meaning).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import ratio, report, run_metadata  # noqa: E402

from vlmkit.models.common.mapping import rename  # noqa: E402
from vlmkit.models.common.rope2d import (axial_rope_cos_sin, grid_positions, merge_order_positions,  # noqa: E402
                                         pixtral_inv_freq, pixtral_rope_cos_sin, qwen2_vl_inv_freq)
from vlmkit.models.parts.pixtral_vit import PixtralVisionConfig, PixtralVisionTower  # noqa: E402
from vlmkit.models.parts.qwen2_vit import Qwen2VisionTower, Qwen2VitConfig  # noqa: E402
from vlmkit.models.pixtral.hf_mapping import TABLE as PIXTRAL_TABLE  # noqa: E402

# (height, width): 16 images from 224 x 224 to 896 x 448, multiples of 16 and 28 (both patch grids).
SIZES = [(224, 224), (224, 336), (336, 336), (448, 336), (448, 448), (448, 672), (672, 448), (896, 448),
         (224, 448), (336, 224), (448, 224), (560, 448), (336, 672), (560, 560), (448, 896), (896, 448)]
RATIO_LEGEND = ("x padded, x transformers = this row's images/s / that variant's images/s (> 1 = this row faster); "
                "max |diff| = largest difference of the real patches' features from transformers'")


def images(tiny: bool, seed: int = 0) -> list[torch.Tensor]:
    """The 16 test images [3, h, w] (normalised-range noise), 1/8 size with `tiny`."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, h // 8 if tiny else h, w // 8 if tiny else w, generator=g) for h, w in SIZES]


def pad_sequences(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """M sequences [n_i, ...] -> ([M, n_max, ...] zero-padded, key-padding mask [M, 1, 1, n_max] bool)."""
    n_max = max(s.shape[0] for s in seqs)
    out = seqs[0].new_zeros(len(seqs), n_max, *seqs[0].shape[1:])
    valid = torch.zeros(len(seqs), n_max, dtype=torch.bool)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]], valid[i, : s.shape[0]] = s, True
    return out, valid[:, None, None, :]


# ----------------------------------------------------------------------------------------- Pixtral


def pixtral(tiny: bool, layers: int):
    """(tower, transformers' model, name) with the same random weights."""
    import transformers as tf

    width = dict(hidden_size=32, intermediate_size=64, num_heads=4) if tiny else dict(
        hidden_size=1024, intermediate_size=4096, num_heads=16)
    cfg = PixtralVisionConfig(**width, num_layers=layers, image_size=1024 // (8 if tiny else 1),
                              patch_size=4 if tiny else 16)
    torch.manual_seed(0)
    ours = PixtralVisionTower(cfg)
    for p in ours.parameters():  # the default init leaves RMSNorm scales at 1: perturb everything
        torch.nn.init.normal_(p, std=0.02 if p.dim() > 1 else 1.0)
    hf = tf.PixtralVisionModel(tf.PixtralVisionConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_hidden_layers=layers,
        num_attention_heads=cfg.num_heads, image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_act="silu",
        head_dim=cfg.head_dim, attn_implementation="sdpa"))
    hf.load_state_dict({rename(k, PIXTRAL_TABLE): v for k, v in ours.state_dict().items()}, strict=True)
    return ours, hf, f"Pixtral-ViT width {cfg.hidden_size}, {layers} blocks, {cfg.patch_size}-px patches"


def pixtral_padded(tower: PixtralVisionTower, imgs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tower's blocks over the images padded to the largest one's patch count (key-padding mask)."""
    x, grids = tower.embed(imgs)  # [1, N, D] packed, then split and padded
    seqs = list(torch.split(x[0], [h * w for h, w in grids]))
    inv_freq = pixtral_inv_freq(tower.cfg.head_dim, tower.cfg.rope_theta)
    rope = [pixtral_rope_cos_sin(grid_positions(h, w), inv_freq, x.dtype) for h, w in grids]  # [1, n_i, hd] each
    x, mask = pad_sequences(seqs)  # [M, n_max, D]
    cos, _ = pad_sequences([c[0] for c, _ in rope])
    sin, _ = pad_sequences([s[0] for _, s in rope])
    for layer in tower.layers:
        x = layer(x, cos, sin, mask)
    return [xi[: h * w] for xi, (h, w) in zip(x, grids)]


def pixtral_variants(ours, hf, imgs, dtype):
    batch, sizes = PixtralVisionTower.padded(imgs)
    batch, image_sizes = batch.to(dtype), torch.tensor(sizes)
    lengths = ours.num_patches(sizes)
    return {
        "vlmkit packed": lambda: list(torch.split(ours(batch, image_sizes)[0], lengths)),
        "vlmkit padded": lambda: pixtral_padded(ours, [im.to(dtype) for im in imgs]),
        "transformers": lambda: list(torch.split(hf(batch, image_sizes=image_sizes).last_hidden_state[0], lengths)),
    }


# ----------------------------------------------------------------------------------------- Qwen2-VL


def qwen(tiny: bool, layers: int):
    import transformers as tf

    width = dict(embed_dim=32, num_heads=4, hidden_size=64) if tiny else dict(embed_dim=1280, num_heads=16,
                                                                              hidden_size=1536)
    cfg = Qwen2VitConfig(**width, depth=layers, mlp_ratio=4, patch_size=4 if tiny else 14)
    torch.manual_seed(0)
    ours = Qwen2VisionTower(cfg)
    hf = tf.models.qwen2_vl.modeling_qwen2_vl.Qwen2VisionTransformerPretrainedModel._from_config(
        tf.Qwen2VLVisionConfig(depth=layers, embed_dim=cfg.embed_dim, hidden_size=cfg.hidden_size,
                               num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, patch_size=cfg.patch_size,
                               spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu"),
        attn_implementation="sdpa")
    hf.load_state_dict(ours.state_dict(), strict=True)  # the same names (see models/qwen2_vl/hf_mapping)
    return ours, hf, f"Qwen2-ViT width {cfg.embed_dim}, {layers} blocks, {cfg.patch_size}-px patches, merge 2"


def qwen_inputs(tower: Qwen2VisionTower, imgs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened patches [N, C*Tp*P*P] (the processor's layout) and grid_thw [M, 3]."""
    from vlmkit.data.processors.qwen2_vl import patchify

    c, factor = tower.cfg, tower.cfg.patch_size * 2
    crops = [im[:, : im.shape[1] // factor * factor, : im.shape[2] // factor * factor] for im in imgs]
    patches = [patchify(im, c.patch_size, c.spatial_merge_size, c.temporal_patch_size) for im in crops]
    grids = [[1, im.shape[1] // c.patch_size, im.shape[2] // c.patch_size] for im in crops]
    return torch.cat(patches), torch.tensor(grids)


def qwen_padded(tower: Qwen2VisionTower, pixel_values, grid_thw) -> list[torch.Tensor]:
    """The tower's blocks over the images padded to the largest one's patch count, then the merger."""
    grids = grid_thw.tolist()
    lengths = [t * h * w for t, h, w in grids]
    seqs = list(torch.split(tower.patch_embed(pixel_values), lengths))
    inv_freq = qwen2_vl_inv_freq(tower.cfg.head_dim, tower.cfg.rope_theta)
    rope = [axial_rope_cos_sin(merge_order_positions(t, h, w, 2), inv_freq, torch.float32) for t, h, w in grids]
    x, mask = pad_sequences(seqs)
    cos, _ = pad_sequences([c[0] for c, _ in rope])
    sin, _ = pad_sequences([s[0] for _, s in rope])
    for block in tower.blocks:
        x = x + _masked_attention(block.attn, block.norm1(x), cos, sin, mask)
        x = x + block.mlp(block.norm2(x))
    return [tower.merger(xi[:n]) for xi, n in zip(x, lengths)]


def _masked_attention(attn, x, cos, sin, mask):
    """The tower block's attention over a padded batch x [M, L, D] with a key-padding mask
    [M, 1, 1, L] (the tower itself attends per frame over the packed sequence)."""
    import torch.nn.functional as F

    B, N, D = x.shape
    q, k, v = attn.project(x, cos, sin)  # [B, H, N, hd]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=(D // attn.num_heads) ** -0.5)
    return attn.proj(out.transpose(1, 2).reshape(B, N, D))


def qwen_variants(ours, hf, imgs, dtype):
    pixel_values, grid_thw = qwen_inputs(ours, imgs)
    pixel_values = pixel_values.to(dtype)
    tokens = ours.num_tokens(grid_thw)
    return {
        "vlmkit packed": lambda: list(torch.split(ours(pixel_values, grid_thw), tokens)),
        "vlmkit padded": lambda: qwen_padded(ours, pixel_values, grid_thw),
        "transformers": lambda: list(torch.split(hf(pixel_values, grid_thw=grid_thw).pooler_output, tokens)),
    }


# ----------------------------------------------------------------------------------------- run


def run_encoder(build, variants_of, args, dtype) -> tuple[list[dict], dict]:
    ours, hf, name = build(args.tiny, args.layers)
    ours, hf = ours.to(dtype).eval(), hf.to(dtype).eval()
    imgs = images(args.tiny)
    variants = variants_of(ours, hf, imgs, dtype)
    times = {k: [] for k in variants}
    with torch.inference_mode():
        outputs = {k: fn() for k, fn in variants.items()}  # warm-up, and the outputs to compare
        for _ in range(args.reps):
            for k, fn in variants.items():  # interleaved: external load hits every variant alike
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    rate = {k: len(imgs) / min(t) for k, t in times.items()}
    rows = []
    for k in variants:
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(outputs[k], outputs["transformers"]))
        rows.append({"encoder": name, "variant": k, "images/s": rate[k], "best s": min(times[k]),
                     "x padded": ratio(rate[k], rate["vlmkit padded"]),
                     "x transformers": ratio(rate[k], rate["transformers"]), "max |diff|": diff})
    return rows, times


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2, help="blocks per encoder (the published towers have 24 / 32)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--tiny", action="store_true", help="debug widths, 1/8-size images (smoke test)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    meta = run_metadata(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rows, samples = [], {}
    for label, build, variants_of in (("pixtral", pixtral, pixtral_variants), ("qwen2_vl", qwen, qwen_variants)):
        encoder_rows, samples[label] = run_encoder(build, variants_of, args, dtype)
        rows += encoder_rows
    scale = "1/8-size" if args.tiny else "full-size"
    print(f"{len(SIZES)} {scale} images {SIZES[0][0]}x{SIZES[0][1]} .. {SIZES[7][0]}x{SIZES[7][1]}, {args.dtype}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    report(rows, RATIO_LEGEND, args.json, meta, sizes=SIZES, args={k: str(v) for k, v in vars(args).items()},
           samples_s=samples)


if __name__ == "__main__":
    main()
