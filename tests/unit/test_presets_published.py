"""Presets keep the published config.json values of the checkpoints they are named after.

For each preset verified against a public source, `spec.config_to_hf(preset)` (and the
preprocessor_config.json `spec.preprocessor_config(preset)` writes) must hold the literal values
below, copied from that source. A future edit of a preset that changes one of them fails here.

The dicts use the layout vlmkit writes (transformers 5.x); where the source is a 4.x file the
renamed keys are: `rope_theta` -> `rope_parameters.rope_theta`, `rope_scaling.mrope_section` ->
`rope_parameters.mrope_section`, Qwen2.5-VL's top-level decoder keys -> `text_config`,
`in_chans` -> `in_channels`, an int InternVL `image_size` / `patch_size` -> `[n, n]` (as
InternVLVisionConfig stores it). Only the fields the source states are listed.
"""

import json

import pytest

from vlmkit.models.registry import get_family

_CLIP_MEAN, _CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
_QWEN25_VISION = dict(depth=32, hidden_size=1280, hidden_act="silu", intermediate_size=3420, num_heads=16,
                      in_channels=3, patch_size=14, spatial_merge_size=2, window_size=112,
                      fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, temporal_patch_size=2)
_QWEN25_TEXT = dict(hidden_act="silu", rms_norm_eps=1e-06, max_position_embeddings=128000, bos_token_id=151643,
                    eos_token_id=151645, use_sliding_window=False,
                    rope_parameters=dict(rope_theta=1000000.0, mrope_section=[16, 24, 24]))
_QWEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                 vision_end_token_id=151653)


def _qwen25(**text) -> tuple[dict, dict]:
    """A Qwen2.5-VL checkpoint's fields: the shared tower and decoder settings + its own decoder shape."""
    tie = text["tie_word_embeddings"]
    cfg = dict(model_type="qwen2_5_vl", tie_word_embeddings=tie, **_QWEN_IDS, text_config=dict(_QWEN25_TEXT, **text),
               vision_config=dict(_QWEN25_VISION, out_hidden_size=text["hidden_size"]))
    return cfg, dict(patch_size=14, temporal_patch_size=2, merge_size=2, image_mean=_CLIP_MEAN, image_std=_CLIP_STD)


# (family, preset) -> (config.json fields, preprocessor fields or None)
PUBLISHED = {
    # Exact copy of the hub repo's config.json / preprocessor_config.json / processor_config.json:
    # github xi-ix/smolvlm_256m_ft, SmolVLM-256M-Instruct/*.json at commit 0c7b2de.
    ("idefics3", "SmolVLM-256M-Instruct"): (
        dict(model_type="idefics3", image_token_id=49190, scale_factor=4, tie_word_embeddings=False,
             text_config=dict(vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                              num_attention_heads=9, num_key_value_heads=3, head_dim=64, hidden_act="silu",
                              rms_norm_eps=1e-05, rope_parameters=dict(rope_theta=100000),
                              max_position_embeddings=8192, tie_word_embeddings=False, pad_token_id=2,
                              bos_token_id=1, eos_token_id=2, attention_bias=False, mlp_bias=False),
             vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, num_channels=3, image_size=512, patch_size=16,
                                layer_norm_eps=1e-06, hidden_act="gelu_pytorch_tanh")),
        dict(size={"longest_edge": 2048}, max_image_size={"longest_edge": 512}, do_image_splitting=True,
             resample=1, rescale_factor=0.00392156862745098, image_mean=[0.5, 0.5, 0.5],
             image_std=[0.5, 0.5, 0.5], do_pad=True, image_seq_len=64),
    ),
    # A test that quotes "the released HuggingFaceTB/SmolVLM-Instruct config.json" (find_string
    # '"rope_theta": 273768'); max_position_embeddings and the processor sizes are not in it.
    ("idefics3", "SmolVLM-Instruct"): (
        dict(model_type="idefics3", image_token_id=49153, scale_factor=3, tie_word_embeddings=False,
             text_config=dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                              num_attention_heads=32, num_key_value_heads=32, head_dim=64, rms_norm_eps=1e-05,
                              rope_parameters=dict(rope_theta=273768.0), vocab_size=49155,
                              tie_word_embeddings=False),
             vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                num_attention_heads=16, patch_size=14, image_size=384)),
        dict(image_seq_len=81),
    ),
    # Exact copy of OpenGVLab/InternVL3-1B-hf/config.json (transformers 4.52.0.dev0): github
    # hlky/dinoml_v2, agents/plans/transformers/internvl/_sources/OpenGVLab__InternVL3-1B-hf--config.json.
    # Not listed: its text rope_scaling {"rope_type": "dynamic", "factor": 2.0}, which vlmkit has no
    # form for, and tie_word_embeddings, which the file does not state (see the InternVL config).
    ("internvl", "internvl3-1b-hf"): (
        dict(image_token_id=151667, image_seq_length=256, downsample_ratio=0.5, projector_hidden_act="gelu",
             vision_feature_layer=-1, vision_feature_select_strategy="default",
             vision_config=dict(attention_bias=True, hidden_act="gelu", hidden_size=1024, image_size=[448, 448],
                                intermediate_size=4096, layer_norm_eps=1e-06, layer_scale_init_value=0.1,
                                norm_type="layer_norm", num_attention_heads=16, num_channels=3,
                                num_hidden_layers=24, patch_size=[14, 14], use_absolute_position_embeddings=True,
                                use_mask_token=False, use_mean_pooling=True, use_qk_norm=False),
             text_config=dict(bos_token_id=151643, eos_token_id=151645, hidden_act="silu", hidden_size=896,
                              intermediate_size=4864, max_position_embeddings=32768, num_attention_heads=14,
                              num_hidden_layers=24, num_key_value_heads=2, rms_norm_eps=1e-06,
                              rope_parameters=dict(rope_theta=1000000.0), sliding_window=None,
                              use_sliding_window=False, vocab_size=151674)),
        # transformers' convert_internvl_weights_to_hf.py write_image_processor.
        dict(size={"height": 448, "width": 448}, rescale_factor=0.00392156862745098,
             image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
    ),
    # Exact copy of deepseek-community/deepseek-vl-1.3b-chat config.json and preprocessor_config.json
    # (transformers 4.53.0.dev0): hlky/dinoml_v2, agents/plans/transformers/deepseek_vl/_sources/. Not
    # in the dicts: vision hidden_act "gelu" (checked on the config below: the SigLIP mapping writes
    # gelu_pytorch_tanh), tie_word_embeddings (absent: DeepseekVLConfig's default True) and the
    # preprocessor's mean / std 0.5 (family.py writes CLIP's).
    ("deepseek_vl", "deepseek-vl-1.3b-chat"): (
        dict(image_token_id=100015, model_type="deepseek_vl",
             text_config=dict(attention_bias=False, head_dim=128, hidden_act="silu", hidden_size=2048,
                              intermediate_size=5632, max_position_embeddings=16384, mlp_bias=False,
                              num_attention_heads=16, num_hidden_layers=24, num_key_value_heads=16,
                              rms_norm_eps=1e-06, rope_parameters=dict(rope_theta=10000.0), vocab_size=102400),
             vision_config=dict(hidden_size=1024, image_size=384, intermediate_size=4096, layer_norm_eps=1e-06,
                                num_attention_heads=16, num_channels=3, num_hidden_layers=24, patch_size=16,
                                vision_use_head=False)),
        dict(size={"height": 384, "width": 384}, min_size=14, resample=3, rescale_factor=0.00392156862745098),
    ),
    # A field-by-field snapshot of deepseek-community/deepseek-vl-7b-chat config.json (hlky/dinoml_v2,
    # agents/plans/transformers/deepseek_vl_hybrid/_sources/config_snapshot.md); tie_word_embeddings
    # is not in it.
    ("deepseek_vl_hybrid", "deepseek-vl-7b-chat"): (
        dict(image_token_id=100015, model_type="deepseek_vl_hybrid",
             text_config=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=30,
                              num_attention_heads=32, num_key_value_heads=32, head_dim=128,
                              max_position_embeddings=16384, vocab_size=102400, hidden_act="silu",
                              attention_bias=False, mlp_bias=False, rms_norm_eps=1e-6,
                              rope_parameters=dict(rope_theta=10000.0)),
             vision_config=dict(image_size=384, patch_size=16, hidden_size=1024, intermediate_size=4096,
                                num_hidden_layers=24, num_attention_heads=16, layer_norm_eps=1e-6,
                                vision_use_head=False),
             high_res_vision_config=dict(image_size=1024, patch_size=16, hidden_size=768, mlp_dim=3072,
                                         num_hidden_layers=12, num_attention_heads=12, output_channels=256,
                                         global_attn_indexes=[2, 5, 8, 11], window_size=14, qkv_bias=True,
                                         use_abs_pos=True, use_rel_pos=True)),
        dict(num_image_tokens=576, high_res_size={"height": 1024, "width": 1024}, high_res_resample=3,
             high_res_image_mean=_CLIP_MEAN, high_res_image_std=_CLIP_STD),
    ),
    # A markdown copy headed "# Qwen/Qwen2.5-VL-3B-Instruct ## model config" (find_string id
    # 11644284334; transformers_version 4.41.2) with the module printout.
    ("qwen2_5_vl", "qwen2.5-vl-3b-instruct"): _qwen25(vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                                                      num_hidden_layers=36, num_attention_heads=16,
                                                      num_key_value_heads=2, tie_word_embeddings=True),
    # Copies of Qwen/Qwen2.5-VL-7B-Instruct/config.json: TensorRT-LLM's Qwen2.5-VL test config
    # (layers reduced) and a copy with 28 layers (find_string '"out_hidden_size": 3584,').
    ("qwen2_5_vl", "qwen2.5-vl-7b-instruct"): _qwen25(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                                      num_hidden_layers=28, num_attention_heads=28,
                                                      num_key_value_heads=4, tie_word_embeddings=False),
    # Exact copy of mistral-community/pixtral-12b config.json: hlky/dinoml_v2,
    # agents/plans/transformers/pixtral/_sources/mistral-community_pixtral-12b_config.json; the
    # fields it leaves out take the class defaults (PixtralVisionConfig 1024 / 4096 / 24 layers /
    # 16 heads, MistralConfig 32 heads, LlavaConfig projector bias), which are listed too.
    # transformers' convert_pixtral_weights_to_hf.py writes the same MistralConfig.
    ("llava", "pixtral-12b"): (
        dict(image_token_index=10, projector_hidden_act="gelu", vision_feature_layer=-1,
             vision_feature_select_strategy="full", multimodal_projector_bias=True, tie_word_embeddings=False,
             text_config=dict(hidden_size=5120, head_dim=128, intermediate_size=14336,
                              max_position_embeddings=1024000, model_type="mistral", num_hidden_layers=40,
                              num_key_value_heads=8, rms_norm_eps=1e-05, rope_parameters=dict(rope_theta=1000000000.0),
                              sliding_window=None, vocab_size=131072, num_attention_heads=32, hidden_act="silu",
                              tie_word_embeddings=False),
             vision_config=dict(head_dim=64, hidden_act="silu", image_size=1024, model_type="pixtral", patch_size=16,
                                rope_parameters=dict(rope_theta=10000.0), hidden_size=1024, intermediate_size=4096,
                                num_hidden_layers=24, num_attention_heads=16)),
        None,
    ),
    # transformers' llava/convert_llava_weights_to_hf.py (image token 32000, vocabulary 32000 + 2
    # padded to a multiple of 64) with LlavaConfig's default CLIP-L/14-336 vision config.
    ("llava", "llava-1.5-7b-hf"): (
        dict(image_token_index=32000, vision_feature_layer=-2, vision_feature_select_strategy="default",
             projector_hidden_act="gelu", text_config=dict(vocab_size=32064),
             vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                num_attention_heads=16, image_size=336, patch_size=14, layer_norm_eps=1e-05,
                                hidden_act="quick_gelu")),
        None,
    ),
    # transformers' llava_next/convert_llava_next_weights_to_hf.py (same vocabulary padding,
    # the LlavaNextImageProcessor default pinpoints, LlavaNextConfig defaults).
    ("llava_next", "llava-v1.6-mistral-7b-hf"): (
        dict(image_token_index=32000, vision_feature_layer=-2, vision_feature_select_strategy="default",
             image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
             text_config=dict(vocab_size=32064),
             vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                num_attention_heads=16, image_size=336, patch_size=14, hidden_act="quick_gelu")),
        dict(image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]),
    ),
    # A config.json saved by transformers 4.57.1 for a Mistral Small 3.x 24B checkpoint, embedded
    # in a public FLUX.2 text-encoder loader (find_string '"model_type": "pixtral",').
    ("mistral3", "mistral-small-3.1-24b-instruct-2503"): (
        dict(image_token_index=10, multimodal_projector_bias=False, projector_hidden_act="gelu",
             spatial_merge_size=2, vision_feature_layer=-1,
             text_config=dict(head_dim=128, hidden_act="silu", hidden_size=5120, intermediate_size=32768,
                              max_position_embeddings=131072, num_attention_heads=32, num_hidden_layers=40,
                              num_key_value_heads=8, rms_norm_eps=1e-05,
                              rope_parameters=dict(rope_theta=1000000000.0), sliding_window=None,
                              vocab_size=131072),
             vision_config=dict(head_dim=64, hidden_act="silu", hidden_size=1024, image_size=1540,
                                intermediate_size=4096, num_attention_heads=16, num_channels=3,
                                num_hidden_layers=24, patch_size=14, rope_parameters=dict(rope_theta=10000.0))),
        # mistral-small-3.1 preprocessor_config.json: hlky/dinoml_v2, agents/plans/transformers/mistral3/.
        dict(image_mean=_CLIP_MEAN, image_std=_CLIP_STD, patch_size={"height": 14, "width": 14}, resample=3,
             rescale_factor=0.00392156862745098, size={"longest_edge": 1540}, do_convert_rgb=True),
    ),
    # Exact copy of google/siglip2-so400m-patch16-naflex config.json (transformers 4.49.0.dev0):
    # hlky/dinoml_v2, agents/plans/transformers/siglip2/_sources/hf_configs/; patch_size 16 and
    # num_patches 256 are Siglip2VisionConfig's defaults (the file leaves them out).
    ("siglip2", "siglip2-so400m-patch16-naflex"): (
        dict(model_type="siglip2", initializer_factor=1.0,
             text_config=dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27,
                              projection_size=1152, vocab_size=256000),
             vision_config=dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16,
                                num_hidden_layers=27, patch_size=16, num_patches=256)),
        None,
    ),
    # transformers' siglip2/convert_siglip2_to_hf.py ("siglip2-base-patch-16-naflex-256").
    ("siglip2", "siglip2-base-patch16-naflex"): (
        dict(text_config=dict(vocab_size=256000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12),
             vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, patch_size=16, num_patches=256)),
        dict(patch_size=16, max_num_patches=256, do_resize=True, do_normalize=True, image_mean=[0.5, 0.5, 0.5],
             image_std=[0.5, 0.5, 0.5], do_rescale=True, rescale_factor=1 / 255),
    ),
}


def _differences(expected: dict, got: dict, path: str = "") -> list[str]:
    """'path: expected X, got Y' for every expected leaf that `got` lacks or holds differently."""
    out = []
    for key, want in expected.items():
        where = f"{path}{key}"
        if key not in got:
            out.append(f"{where}: expected {want!r}, missing")
        elif isinstance(want, dict) and isinstance(got[key], dict):
            out.extend(_differences(want, got[key], where + "."))
        elif got[key] != want or isinstance(got[key], bool) != isinstance(want, bool):
            out.append(f"{where}: expected {want!r}, got {got[key]!r}")
    return out


def _written(family: str, preset: str) -> tuple[dict, dict | None]:
    spec = get_family(family)
    cfg = spec.preset(preset)
    pre = spec.preprocessor_config(cfg) if spec.preprocessor_config else None
    # JSON round trip: tuples become lists, as in the file on disk.
    return json.loads(json.dumps(spec.config_to_hf(cfg))), (json.loads(json.dumps(pre)) if pre else None)


@pytest.mark.parametrize(("family", "preset"), sorted(PUBLISHED), ids=lambda v: v)
def test_preset_writes_the_published_values(family, preset):
    want_cfg, want_pre = PUBLISHED[family, preset]
    got_cfg, got_pre = _written(family, preset)
    assert _differences(want_cfg, got_cfg) == []
    if want_pre is not None:
        assert got_pre is not None, f"{family} writes no preprocessor config"
        assert _differences(want_pre, got_pre) == []


def test_differences_reports_a_changed_missing_or_retyped_field():
    got = {"a": 1, "b": {"c": 2.0}, "t": False}
    assert _differences({"a": 1, "b": {"c": 2}, "t": False}, got) == []
    assert _differences({"a": 2, "b": {"d": 1}, "t": 0}, got) == [
        "a: expected 2, got 1", "b.d: expected 1, missing", "t: expected 0, got False"]


def test_deepseek_vl_towers_use_the_published_exact_gelu():
    """deepseek-community/deepseek-vl-{1.3b,7b}-chat vision_config: hidden_act "gelu" (erf), read on
    the config because the SigLIP mapping writes every SigLIP tower as gelu_pytorch_tanh."""
    for family, preset in [("deepseek_vl", "deepseek-vl-1.3b-chat"), ("deepseek_vl_hybrid", "deepseek-vl-7b-chat")]:
        cfg = get_family(family).preset(preset)
        assert (cfg.vision.hidden_act, cfg.vision.use_head) == ("gelu", False)
    assert get_family("deepseek_vl").preset("deepseek-vl-1.3b-chat").text.tie_embeddings is True
