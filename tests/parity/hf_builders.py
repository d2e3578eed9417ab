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


def paligemma_inputs(hf_model, text_len: int = 7, pad: int = 2, suffix_len: int = 3, seed: int = 1):
    """Two processor-style prompts `<image>*N text`, left-padded to one length (pad id 0, mask 0).

    Row 1 has `pad` more text tokens than row 0, so row 0 starts with `pad` padding slots and its
    image block sits `pad` slots later. The last `suffix_len` tokens of each row are suffix
    (token type 1). Returns input_ids, token_type_ids, attention_mask [2, T] and pixel_values.
    """
    vc = hf_model.config.vision_config
    n_img = (vc.image_size // vc.patch_size) ** 2
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, IMAGE_TOKEN, (2, text_len + pad), generator=g)
    ids = torch.cat([torch.full((2, n_img), IMAGE_TOKEN), text], 1)  # row 1's prompt
    ids[0] = torch.cat([torch.zeros(pad, dtype=torch.long), ids[0, : n_img + text_len]])
    ids[0, pad + n_img:] = text[0, :text_len]
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    tt = torch.zeros_like(ids)
    tt[:, ids.shape[1] - suffix_len:] = 1
    pix = torch.randn(2, 3, vc.image_size, vc.image_size, generator=g)
    return ids, tt, mask, pix


def generate_positions(mask: torch.Tensor) -> torch.Tensor:
    """The RoPE positions transformers' `generate` feeds PaliGemma for a padded prompt.

    `GenerationMixin._prepare_position_ids_for_generation` gives mask.cumsum - 1 (padding at 0) and
    PaliGemma's `prepare_inputs_for_generation` adds 1. Its plain forward without `position_ids`
    uses 1..T instead, counting the padding slots.
    """
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0) + 1


def assert_module_layout_loads(hf_model, tmp_path) -> None:
    """transformers 5's module names (`model.vision_tower.*`, `model.language_model.*`, top-level
    `lm_head`, ...) written as a sharded folder load to the same vlmkit model as the hub layout
    `save_pretrained` writes."""
    from vlmkit.weights.hf import load_hf
    from vlmkit.weights.safetensors_io import write_state_dict

    hf_model.save_pretrained(tmp_path / "hub")
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "config.json").write_text((tmp_path / "hub" / "config.json").read_text())
    sd = hf_model.state_dict()
    assert any(k.startswith("model.vision_tower.") for k in sd) and "lm_head.weight" in sd
    write_state_dict(sd, tmp_path / "mod", max_shard_bytes=20_000)
    assert (tmp_path / "mod" / "model.safetensors.index.json").exists()
    a, b = load_hf(tmp_path / "hub", dtype="float32"), load_hf(tmp_path / "mod", dtype="float32")
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def load_strictly(hf_class, folder, reference=None):
    """transformers' `hf_class` from `folder`: no missing / unexpected / mismatched key, and (given
    a `reference` model) every tensor equal to the reference's. Returns the model in eval mode."""
    model, info = hf_class.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    if reference is not None:
        ref = reference.state_dict()
        for k, v in model.state_dict().items():
            assert torch.equal(v, ref[k]), k
    return model.eval()
