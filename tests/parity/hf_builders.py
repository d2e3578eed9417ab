"""Tiny random transformers models for parity tests (offline, fp32, CPU)."""

import torch
import transformers as tf

VOCAB = 300
IMAGE_TOKEN = 299


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Overwrite every parameter with N(0, std) so zero-initialised norms etc. are exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def siglip_vision_cfg(image_size=32, patch_size=8, use_head=True):
    return tf.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=patch_size, vision_use_head=use_head,
    )


def gemma_cfg(version: int, **kw):
    common = dict(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, head_dim=16, pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    if version == 1:
        return tf.GemmaConfig(num_key_value_heads=1, **{**common, **kw})
    return tf.Gemma2Config(
        num_key_value_heads=2, query_pre_attn_scalar=24, sliding_window=4,
        final_logit_softcapping=30.0, attn_logit_softcapping=50.0, **{**common, **kw},
    )


def paligemma(version: int, image_size: int = 32, seed: int = 0):
    vision = siglip_vision_cfg(image_size=image_size, use_head=False).to_dict()
    vision.update(projection_dim=48)
    text = gemma_cfg(version).to_dict()
    cfg = tf.PaliGemmaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
        vocab_size=VOCAB, projection_dim=48,
    )
    return randomize(tf.PaliGemmaForConditionalGeneration(cfg), seed)
