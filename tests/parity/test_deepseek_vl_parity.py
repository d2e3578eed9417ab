"""DeepSeek-VL parity with transformers' DeepseekVLForConditionalGeneration (tiny random configs, fp32,
CPU): logits, a left-padded batch, greedy generation through vlmkit's engine, both load directions of
the weights, bf16, presets and the processor builder.

Two heads: tied (transformers' DeepseekVLConfig default) and untied (`lm_head.weight` on disk).
"""

import dataclasses
import json

import pytest
import torch
import transformers as tf

from tests.parity import hf_builders as hb
from tests.parity import placeholder_checks as pc
from tests.parity.llava_builders import llama_cfg
from vlmkit.errors import CheckpointError, ConfigError
from vlmkit.generation import SamplingConfig, generate
from vlmkit.models.deepseek_vl import DeepseekVL, DeepseekVLConfig
from vlmkit.models.registry import family_of
from vlmkit.weights.hf import load_hf
from vlmkit.weights.safetensors_io import SafetensorsReader

ATOL = 0.0  # measured: every fp32 comparison here is bit-identical (max |diff| 0.0)
N_IMG = 16  # (32 / 8)^2 SigLIP patches, all kept (no class token, no feature selection)


def _text(vocab):
    text = llama_cfg()
    text.vocab_size = vocab
    return text.to_dict()


def deepseek_vl(tie=True, seed=0, vocab=hb.VOCAB, image_token=hb.IMAGE_TOKEN):
    cfg = tf.DeepseekVLConfig(vision_config=hb.siglip_vision_cfg().to_dict(), text_config=_text(vocab),
                              image_token_id=image_token, tie_word_embeddings=tie)
    return hb.randomize(tf.DeepseekVLForConditionalGeneration(cfg), seed)


def _inputs(batch=2, text_len=7, seed=1, images_per_row=1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, hb.IMAGE_TOKEN, (batch, text_len), generator=g)
    image = torch.full((batch, N_IMG * images_per_row), hb.IMAGE_TOKEN)
    ids = torch.cat([text[:, :2], image, text[:, 2:]], 1)
    pix = torch.randn(batch * images_per_row, 3, 32, 32, generator=g)
    return ids, pix


def _exact(got, ref):
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def _saved_pair(build, tie, folder):
    """(transformers model, ours loaded strictly from its save_pretrained folder)."""
    hf = build(tie=tie)
    hf.save_pretrained(folder)
    return hf, load_hf(folder, dtype="float32")


@pytest.fixture(params=[True, False], ids=["tied", "untied"])
def pair(tmp_path, request):
    return _saved_pair(deepseek_vl, request.param, tmp_path / "hf")


def test_logits(pair):
    hf, ours = pair
    assert type(ours) is DeepseekVL and ours.cfg.num_image_tokens == N_IMG
    assert ours.cfg.text.tie_embeddings == hf.config.tie_word_embeddings
    ids, pix = _inputs(images_per_row=2)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix).logits
        got = ours(ids, pix)
        swapped = ours(ids, pix[[1, 0, 3, 2]])
    _exact(got, ref)
    assert not torch.allclose(got, swapped)  # image order matters


def test_left_padding(pair):
    hf, ours = pair
    pc.assert_left_padding(hf, ours, *_inputs(), atol=ATOL)


def test_greedy_generation(pair):
    hf, ours = pair
    assert family_of(ours).generation is not None
    pc.assert_greedy_generation(hf, ours, *_inputs(seed=3))


def test_roundtrip(pair, tmp_path):
    """HF -> ours is strict (the fixture) and equal (above); ours -> HF writes transformers' own key
    set, loads strictly there with equal logits; ours -> HF -> ours is bit-identical."""
    hf, ours = pair
    pc.assert_round_trip(tf.DeepseekVLForConditionalGeneration, hf, ours, tmp_path / "ours", *_inputs(), atol=ATOL)
    assert set(SafetensorsReader(tmp_path / "ours").keys()) == set(SafetensorsReader(tmp_path / "hf").keys())


def test_reads_transformers_4_layout_and_shards(tmp_path):
    """transformers 4.x's nesting `model.vision_model.vision_model.*`, sharded, loads to the same model."""
    deepseek_vl().save_pretrained(tmp_path / "hub")
    old = pc.copy_folder(tmp_path / "hub", tmp_path / "old", max_shard_bytes=20_000,
                         rename=lambda k: k.replace("model.vision_model.", "model.vision_model.vision_model."))
    assert (old / "model.safetensors.index.json").exists()
    pc.assert_same_models(load_hf(tmp_path / "hub", dtype="float32"), load_hf(old, dtype="float32"))


def test_bad_folders(tmp_path):
    """A missing aligner tensor and a non-SigLIP tower are one-line CheckpointErrors."""
    deepseek_vl().save_pretrained(tmp_path / "hub")
    short = pc.copy_folder(tmp_path / "hub", tmp_path / "short", drop="model.aligner.linear2.weight")
    with pytest.raises(CheckpointError, match=r"missing keys: aligner\.linear_2\.weight$"):
        load_hf(short)
    cfg = json.loads((tmp_path / "hub" / "config.json").read_text())
    cfg["vision_config"]["model_type"] = "clip_vision_model"
    clip = pc.copy_folder(tmp_path / "hub", tmp_path / "clip", config=cfg)
    with pytest.raises(CheckpointError, match="unsupported DeepSeek-VL vision model_type 'clip_vision_model'"):
        load_hf(clip)


def test_bf16_bit_identical(tmp_path):
    """In bf16 our logits equal transformers' bit for bit (measured max |diff| 0.0)."""
    deepseek_vl().save_pretrained(tmp_path)
    pc.assert_bf16_identical(tf.DeepseekVLForConditionalGeneration, tmp_path, *_inputs())


def test_presets():
    cfg = DeepseekVLConfig.from_preset("deepseek-vl-1.3b-chat")
    assert cfg.num_image_tokens == 576 and cfg.image_token_id == 100015
    v, t = cfg.vision, cfg.text
    assert (v.hidden_size, v.num_layers, v.num_heads, v.image_size, v.patch_size) == (1024, 24, 16, 384, 16)
    assert (t.num_layers, t.hidden_size, t.intermediate_size, t.num_heads, t.vocab_size) == (24, 2048, 5632, 16, 102400)
    with torch.device("meta"):
        big = DeepseekVL(cfg)
    assert tuple(big.aligner.linear_1.weight.shape) == (2048, 1024)
    vision = sum(p.numel() for p in big.vision_tower.parameters())
    text = sum(p.numel() for p in big.language_model.parameters())
    aligner = sum(p.numel() for p in big.aligner.parameters())
    # SigLIP-L/16-384: patch conv + 576 positions + 24 blocks + post-LN (the published
    # vision_use_head is false: no MAP head), written out so that a changed part shows up here.
    block = 4 * (1024 * 1024 + 1024) + 2 * 1024 * 4096 + 4096 + 1024 + 4 * 1024
    assert vision == 3 * 16 * 16 * 1024 + 1024 + 576 * 1024 + 24 * block + 2 * 1024 == 303_688_704
    assert aligner == 1024 * 2048 + 2048 + 2048 * 2048 + 2048
    # DeepSeek-LLM-1.3B, head tied (the published config.json has no tie_word_embeddings, and
    # DeepseekVLConfig ties by default): embeddings + 24 x (attention, SwiGLU MLP, 2 norms) + final norm
    assert text == 102400 * 2048 + 24 * (4 * 2048 * 2048 + 3 * 2048 * 5632 + 2 * 2048) + 2048
    # transformers 5.24 builds the published config.json with the same count (meta device).
    assert sum(p.numel() for p in big.parameters()) == vision + aligner + text == 1_752_925_184
    debug = DeepseekVL(DeepseekVLConfig.from_preset("debug"))
    assert debug.aligner.linear_1.in_features == 32 and debug.aligner.linear_2.out_features == 64
    with pytest.raises(KeyError, match="unknown DeepSeek-VL preset"):
        DeepseekVLConfig.from_preset("huge")


# ---- processor builder: a transformers-saved folder -> our processor -> our engine --------------------

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(40)] + ["User:", "Assistant:",
                                                                              "<image_placeholder>"]


def _hf_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<pad>", "<bos>", "<eos>", "<unk>", "<image_placeholder>"])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                      unk_token="<unk>", extra_special_tokens={"image_token": "<image_placeholder>"})


def _save_folder(folder, hybrid: bool):
    """A DeepSeek-VL (hybrid) folder as transformers saves it: model, processor (PIL image processor)
    and a word-level tokenizer whose "image_token" is `<image_placeholder>`."""
    kw = dict(size={"height": 32, "width": 32}, min_size=4, do_convert_rgb=True)
    if hybrid:
        image_processor = tf.DeepseekVLHybridImageProcessorPil(high_res_size={"height": HIGH_RES, "width": HIGH_RES},
                                                               high_res_image_mean=[0.5, 0.4, 0.3], **kw)
        processor = tf.DeepseekVLHybridProcessor(image_processor=image_processor, tokenizer=_hf_tokenizer(),
                                                 num_image_tokens=N_IMG)
    else:
        processor = tf.DeepseekVLProcessor(image_processor=tf.DeepseekVLImageProcessorPil(**kw),
                                           tokenizer=_hf_tokenizer(), num_image_tokens=N_IMG)
    processor.save_pretrained(folder)
    build = deepseek_vl_hybrid if hybrid else deepseek_vl
    build(seed=5, vocab=len(WORDS), image_token=WORDS.index("<image_placeholder>")).save_pretrained(folder)
    return folder


@pytest.fixture(params=[False, True], ids=["plain", "hybrid"])
def folder(tmp_path, request):
    return _save_folder(tmp_path, request.param)


def test_processor_builder_drives_generation(folder, rng_image):
    """The registry's processor builder reads the folder; its left-padded batch (different prompt
    lengths, one image each, different sizes) through the family's adapter generates the tokens
    transformers' processor + generate give."""
    ours = load_hf(folder, dtype="float32")
    processor = family_of(ours).build_processor(folder, None, ours.cfg)
    prompts = ["User: <image_placeholder> w1 w2 Assistant:", "w3 <image_placeholder> w4 w5 w6 w7 w8 Assistant:"]
    images = [rng_image(20, 40, seed=1), rng_image(50, 30, seed=2)]
    batch = processor(prompts, images, padding_side="left")
    expected = tf.AutoProcessor.from_pretrained(folder)(text=prompts, images=images, padding="longest",
                                                        padding_side="left", return_tensors="pt")
    assert set(batch) == set(expected)  # + high_res_pixel_values for the hybrid
    for key in expected:
        assert torch.equal(batch[key], expected[key]), key
    assert batch["attention_mask"][0, 0] == 0  # row 0 is left-padded
    hf = tf.AutoModelForImageTextToText.from_pretrained(folder).eval()
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        ref = hf.generate(**expected, max_new_tokens=10, do_sample=False)[:, batch["input_ids"].shape[1]:]
    out = generate(ours, pc.IdTokenizer(), batch, SamplingConfig(max_new_tokens=10))
    assert [r.token_ids for r in out] == ref.tolist()


def test_pipeline(tmp_path, rng_image):
    """`vlmkit.load(folder)` dispatches through the registry (processor builder, tokenizer, adapter) and
    answers with transformers' greedy tokens. (The pipeline's feature cache takes one image tensor, so
    it runs the plain family; the hybrid's two go through `generate` as above.)"""
    from vlmkit.pipeline import Pipeline

    folder = _save_folder(tmp_path, hybrid=False)
    prompt, image = "User: <image_placeholder> w1 w2 Assistant:", rng_image(20, 40, seed=1)
    got = Pipeline.load(folder, dtype="float32").generate(prompt, image, SamplingConfig(max_new_tokens=6))
    hf = tf.DeepseekVLForConditionalGeneration.from_pretrained(folder).eval()
    hf.generation_config.eos_token_id = None
    inputs = tf.AutoProcessor.from_pretrained(folder)(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad():
        ref = hf.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert got.token_ids == ref.tolist()


def test_processor_builder_checks_the_config(tmp_path):
    folder = _save_folder(tmp_path, hybrid=False)
    ours = load_hf(folder, dtype="float32")
    spec = family_of(ours)
    with pytest.raises(ConfigError, match=r"<image_placeholder> id 46 != config.json image_token_id 45$"):
        spec.build_processor(folder, None, DeepseekVLConfig(vision=ours.cfg.vision, text=ours.cfg.text, image_token_id=45))
    big_tower = DeepseekVLConfig(vision=DeepseekVLConfig.from_preset("deepseek-vl-1.3b-chat").vision,
                                 text=ours.cfg.text, image_token_id=46)
    with pytest.raises(ConfigError, match="processor num_image_tokens 16 != the 576 tokens"):
        spec.build_processor(folder, None, big_tower)
    hybrid = load_hf(_save_folder(tmp_path / "hybrid", hybrid=True), dtype="float32")
    wrong = dataclasses.replace(hybrid.cfg, high_res_vision=dataclasses.replace(hybrid.cfg.high_res_vision, image_size=128))
    with pytest.raises(ConfigError, match=r"processor image sizes \(32, 64\) != the towers' \(32, 128\)"):
        family_of(hybrid).build_processor(tmp_path / "hybrid", None, wrong)


# ---- DeepSeek-VL hybrid: + the SAM ViT high-resolution tower ------------------------------------------

HIGH_RES = 64  # the SAM debug tower: 8-px patches -> an 8 x 8 grid, windows of 3 (padded to 9)


def deepseek_vl_hybrid(tie=True, seed=0, vocab=hb.VOCAB, image_token=hb.IMAGE_TOKEN):
    sam = tf.SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=4, num_attention_heads=4,
                             image_size=HIGH_RES, patch_size=8, mlp_dim=64, window_size=3, global_attn_indexes=[1, 3])
    cfg = tf.DeepseekVLHybridConfig(vision_config=hb.siglip_vision_cfg().to_dict(), high_res_vision_config=sam.to_dict(),
                                    text_config=_text(vocab), image_token_id=image_token, tie_word_embeddings=tie)
    return hb.randomize(tf.DeepseekVLHybridForConditionalGeneration(cfg), seed)  # alpha != 0 too


def _hybrid_inputs(seed=1, **kw):
    ids, pix = _inputs(seed=seed, **kw)
    high = torch.randn(pix.shape[0], 3, HIGH_RES, HIGH_RES, generator=torch.Generator().manual_seed(seed + 100))
    return ids, {"pixel_values": pix, "high_res_pixel_values": high}


@pytest.fixture(params=[True, False], ids=["tied", "untied"])
def hybrid_pair(tmp_path, request):
    return _saved_pair(deepseek_vl_hybrid, request.param, tmp_path / "hf")


def test_hybrid_logits(hybrid_pair):
    hf, ours = hybrid_pair
    assert type(ours).__name__ == "DeepseekVLHybrid" and ours.cfg.num_image_tokens == N_IMG
    assert ours.high_res_alpha.detach().item() != 0  # the global-attention branch contributes
    ids, images = _hybrid_inputs(images_per_row=2)
    with torch.no_grad():
        _exact(ours.encode_high_res(images["high_res_pixel_values"]),
               hf.model.get_high_res_image_features(images["high_res_pixel_values"]).last_hidden_state)
        ref = hf(input_ids=ids, **images).logits
        got = ours(ids, **images)
        swapped = ours(ids, images["pixel_values"], images["high_res_pixel_values"][[1, 0, 3, 2]])
    _exact(got, ref)
    assert not torch.allclose(got, swapped)  # the high-resolution image matters


def test_hybrid_left_padding_and_generation(hybrid_pair):
    hf, ours = hybrid_pair
    pc.assert_left_padding(hf, ours, *_hybrid_inputs(), atol=ATOL)
    pc.assert_greedy_generation(hf, ours, *_hybrid_inputs(seed=3))


def test_hybrid_roundtrip_and_bf16(hybrid_pair, tmp_path):
    hf, ours = hybrid_pair
    cls = tf.DeepseekVLHybridForConditionalGeneration
    pc.assert_round_trip(cls, hf, ours, tmp_path / "ours", *_hybrid_inputs(), atol=ATOL)
    assert set(SafetensorsReader(tmp_path / "ours").keys()) == set(SafetensorsReader(tmp_path / "hf").keys())
    pc.assert_bf16_identical(cls, tmp_path / "hf", *_hybrid_inputs())


def test_sam_windows_and_sam_b_shape():
    """Window partition pads and inverts exactly; the SAM-B default tower has transformers' parameter
    count (both built on the meta device)."""
    from vlmkit.models.parts.sam_vit import SamVisionConfig, SamVisionEncoder, window_partition, window_unpartition

    x = torch.randn(2, 8, 8, 5)
    windows = window_partition(x, 3)
    assert windows.shape == (2 * 9, 3, 3, 5) and torch.equal(window_unpartition(windows, 3, 8, 8), x)
    with torch.device("meta"):
        ours = SamVisionEncoder(SamVisionConfig())
        theirs = tf.SamVisionModel(tf.SamVisionConfig())
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in theirs.parameters()) == 89_670_912
    assert [layer.window for layer in ours.layers] == [14, 14, 0, 14, 14, 0, 14, 14, 0, 14, 14, 0]
    with pytest.raises(ValueError, match="global_attn_indexes"):
        SamVisionConfig(num_layers=2)


def test_hybrid_presets():
    from vlmkit.models.deepseek_vl import DeepseekVLHybrid, DeepseekVLHybridConfig
    from vlmkit.models.deepseek_vl.config import HYBRID_PRESETS

    cfg = HYBRID_PRESETS["deepseek-vl-7b-chat"]
    assert isinstance(cfg, DeepseekVLHybridConfig) and cfg.num_image_tokens == 576 and cfg.high_res_features == 1024
    with torch.device("meta"):
        big = DeepseekVLHybrid(cfg)
    parts = {name: sum(p.numel() for p in m.parameters()) for name, m in big.named_children()}
    assert parts["high_res_vision_tower"] == 89_670_912  # SAM ViT-B, as transformers counts it (above)
    assert parts["vision_tower"] == 303_688_704  # SigLIP-L/16-384 without a MAP head (see test_presets)
    assert parts["high_res_neck"] == 768 * 256 + 2 * 256 + 256 * 256 * 9 + 2 * 256
    assert parts["high_res_proj"] == 256 * 512 * 9 + 512 * 1024 * 9
    assert parts["aligner"] == 1024 * 2048 + 2048 + 1024 * 2048 + 2048 + 4096 * 4096 + 4096
    assert parts["language_model"] == 2 * 102400 * 4096 + 30 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096) + 4096
    assert tuple(big.high_res_alpha.shape) == (1,)
    assert sum(p.numel() for p in big.parameters()) == sum(parts.values()) + 1 == 7_331_390_721
