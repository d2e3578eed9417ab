"""Tiny random transformers CLIP / LLaVA models for the vision-parts and LLaVA parity tests."""

import transformers as tf

from tests.parity import hf_builders as hb


def clip_vision_cfg(**kw):
    return tf.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
        patch_size=8, **kw,
    )


def llama_cfg():
    return tf.LlamaConfig(vocab_size=hb.VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2)


def llava(text_cfg, seed=0, **kw):
    cfg = tf.LlavaConfig(vision_config=clip_vision_cfg().to_dict(), text_config=text_cfg.to_dict(),
                         image_token_index=hb.IMAGE_TOKEN, **kw)
    return hb.randomize(tf.LlavaForConditionalGeneration(cfg), seed)
