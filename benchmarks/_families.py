"""What bench_generate.py benchmarks per registered `vlm` family: model shapes and prompt batches.

A case is a family and a shape name: either one of the benchmark's own shapes below (mid-size
models that match no published checkpoint but exercise every part at a size where memory
bandwidth, not Python overhead, dominates) or any preset of the family's registry record
(`debug`, the published checkpoints' shapes).

Both frameworks are fed one batch built here, saved once and loaded by each worker, so the token
ids and pixels they see are identical. It is laid out as the family's processor lays out one
image per prompt (the tokens are random ids, the pixels uniform noise, the weights random): the
image's tokens followed by random text, no padding, and the family's image entries (one builder
per layout in `_family_batches`: `LAYOUTS` / `TOWER_LAYOUTS`, by default pixel_values
[B, 3, H, W]); a prefix-LM family (its adapter's `prefix_lm`) also gets token_type_ids 0 (the
whole prompt is the prefix), an M-RoPE family transformers' mm_token_type_ids.
The processor itself is not run: the benchmark's folders hold no tokenizer of the benchmarked
vocabulary size, and a processor would add nothing to what the decoder and vision tower do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace

import torch

from _family_batches import LAYOUTS, TOWER_LAYOUTS, Images, one_image

from vlmkit.errors import ConfigError
from vlmkit.models.registry import families, get_family

TEXT_LOW = 16  # random text ids start here: above Pixtral's [IMG] / [IMG_BREAK] / [IMG_END] (10, 12, 13)
TEXT_HIGH_GAP = 8  # and end this far below the vocabulary's top (or 1000)


def _paligemma_mid_300m():
    """SigLIP-B/16 + a 12-layer, 1024-wide Gemma with a 32k vocabulary (299M params)."""
    from vlmkit.models.gemma.config import GemmaConfig
    from vlmkit.models.paligemma import PaliGemmaConfig
    from vlmkit.models.siglip.config import SiglipVisionConfig

    vision = SiglipVisionConfig.from_preset("b16-224", use_head=False)
    text = GemmaConfig(vocab_size=32768, hidden_size=1024, intermediate_size=4096, num_layers=12,
                       num_heads=8, num_kv_heads=1, head_dim=128)
    return PaliGemmaConfig(vision=vision, text=text, image_token_id=32767)


def _llava_clip_b16_llama_300m():
    """LLaVA-1.5's layout at a mid size: CLIP ViT-B/16 at 224 (86M; layer -2, class token
    dropped: 196 image tokens), the 2-layer GELU projector 768 -> 1024 -> 1024, and a Vicuna-like
    Llama decoder (multi-head attention, untied head, LLaVA's 32064 vocabulary) of 18 layers,
    1024 wide, MLP 2816: 297M decoder parameters, 385M in all."""
    from vlmkit.models.clip.config import PRESETS as CLIP
    from vlmkit.models.llama.config import LlamaConfig
    from vlmkit.models.llava.config import PRESETS as LLAVA

    text = LlamaConfig(vocab_size=32064, hidden_size=1024, intermediate_size=2816, num_layers=18,
                       num_heads=16, num_kv_heads=16, head_dim=64, max_position_embeddings=4096,
                       tie_embeddings=False, pad_token_id=32001, bos_token_id=1, eos_token_id=2)
    return replace(LLAVA["llava-1.5-7b-hf"], vision=CLIP["clip-vit-base-patch16"], text=text)


def _qwen2_vl_2b_decoder():
    """Qwen2-VL-2B's decoder exactly (28 layers, 1536 wide, 151936 vocabulary: the decode shape) under
    4 of its tower's 32 blocks, so that two 2B processes fit a shared 23 GB machine (3.3 GB each)."""
    cfg = get_family("qwen2_vl").presets["qwen2-vl-2b-instruct"]
    return replace(cfg, vision=replace(cfg.vision, depth=4))


# (family, shape) -> config: the benchmark's own shapes, besides every registry preset.
SHAPES: dict[tuple[str, str], Callable[[], object]] = {
    ("paligemma", "mid-300m"): _paligemma_mid_300m,
    ("paligemma", "3b-224"): lambda: get_family("paligemma").presets["paligemma-3b-224"],  # older runs' name
    ("llava", "clip-b16-llama-300m"): _llava_clip_b16_llama_300m,
    ("qwen2_vl", "2b-decoder"): _qwen2_vl_2b_decoder,
}

# --cases when none are given. 3b-224 is PaliGemma's real shape (--full).
DEFAULT_CASES = {
    "paligemma": "debug:float32,mid-300m:float32,mid-300m:bfloat16",
    "llava": "debug:float32,clip-b16-llama-300m:bfloat16",
    "idefics3": "debug:float32,SmolVLM-256M-Instruct:bfloat16",
}
FULL_CASES = {"paligemma": "3b-224:bfloat16", "llava": "llava-1.5-7b-hf:bfloat16",
              "idefics3": "SmolVLM-Instruct:bfloat16"}


def vlm_family(name: str):
    """The registry record of a `vlm` family; SystemExit with one line otherwise."""
    try:
        spec = get_family(name)
    except ConfigError as e:
        raise SystemExit(f"--family: {e}") from None
    if spec.kind != "vlm":
        raise SystemExit(f"--family: {name} is not a vlm family (its kind is {spec.kind}); "
                         "bench_generate.py benchmarks image + prompt -> text generation")
    return spec


def case_config(family: str, name: str):
    """The config of case `name` of `family`: a benchmark shape, else a registry preset."""
    if (family, name) in SHAPES:
        return SHAPES[family, name]()
    spec = vlm_family(family)
    if name not in spec.presets:
        own = [s for f, s in SHAPES if f == family]
        raise SystemExit(f"unknown {family} case {name!r}; choose from {', '.join([*own, *sorted(spec.presets)])}")
    return in_vocabulary(spec.presets[name])


def in_vocabulary(cfg):
    """`cfg` with its special token ids (`*_token_id` fields: image, video, vision start / end)
    that lie outside the text vocabulary moved to its top ids, as `vlmkit create` places them with
    a tokenizer that has them: Qwen2-VL's debug preset keeps the real checkpoint's ids (151652...)
    with a 512-token vocabulary, whose embedding both frameworks would index out of range."""
    vocab = cfg.text.vocab_size
    names = [f.name for f in fields(cfg) if f.name.endswith("_token_id") and (getattr(cfg, f.name) or 0) >= vocab]
    return replace(cfg, **{n: vocab - 1 - i for i, n in enumerate(names)}) if names else cfg


def layout(family: str, cfg) -> Callable[..., Images]:
    """The batch builder of `family` with config `cfg`: its vision tower's (`TOWER_LAYOUTS`), else
    its own (`LAYOUTS`), else one image [B, 3, S, S] per prompt."""
    # The registered family of the tower's config, if any (Qwen2-VL's tower is a part, not a family).
    tower = {f.config_class: f.name for f in families()}.get(type(getattr(cfg, "vision", None)))
    return TOWER_LAYOUTS.get(tower) or LAYOUTS.get(family, one_image)


def build_batch(family: str, cfg, rows: int, text_len: int, dtype: str, seed: int) -> tuple[dict, Images]:
    """`rows` prompts of the family's image tokens + `text_len` random text tokens (no padding)
    with the family's image entries in `dtype`, and the builder's `Images` (its token count and
    tower length, for the floors). Text ids avoid the image placeholder id."""
    g = torch.Generator().manual_seed(seed)
    images = layout(family, cfg)(cfg, rows, g, getattr(torch, dtype))
    # Below the top TEXT_HIGH_GAP ids, where `in_vocabulary` puts special ids.
    text = torch.randint(TEXT_LOW, min(cfg.text.vocab_size, 1000) - TEXT_HIGH_GAP, (rows, text_len), generator=g)
    text[text == cfg.image_token_id] = TEXT_LOW
    ids = torch.cat([torch.tensor([images.tokens] * rows), text], 1)  # [B, n + text_len]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(vlm_family(family).generation, "prefix_lm", False):
        batch["token_type_ids"] = torch.zeros_like(ids)
    if images.token_types:  # transformers' M-RoPE reads which tokens are image tokens
        batch["mm_token_type_ids"] = (ids == cfg.image_token_id).long()
    return {**batch, **images.entries}, images


def make_batch(family: str, cfg, rows: int, text_len: int, dtype: str, seed: int) -> dict:
    """The batch of `build_batch` alone."""
    return build_batch(family, cfg, rows, text_len, dtype, seed)[0]
