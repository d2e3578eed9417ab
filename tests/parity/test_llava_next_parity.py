"""LLaVA-NeXT parity with transformers' LlavaNextForConditionalGeneration (tiny random configs, fp32,
CPU): packed image features, logits for images of different aspect ratios (different tile grids and
unpadding), a left-padded batch, greedy generation through vlmkit's engine, the processor end to
end, both weight directions, bf16, and the published v1.6-mistral-7b shapes.

Two text models: Mistral (v1.6-mistral's decoder) and Llama (v1.6-vicuna's).
"""

import json
from types import SimpleNamespace

import pytest
import torch
import transformers as tf

from tests.parity import hf_builders as hb
from tests.parity import placeholder_checks as pc
from tests.parity.llava_builders import clip_vision_cfg, llama_cfg
from vlmkit.errors import ConfigError
from vlmkit.generation import SamplingConfig, generate
from vlmkit.models.llava_next import LlavaNext, LlavaNextConfig
from vlmkit.models.llava_next import hf_mapping
from vlmkit.models.parts.anyres import unpadded_window
from vlmkit.models.registry import family_of, get_family
from vlmkit.weights.hf import load_hf, save_hf
from vlmkit.weights.safetensors_io import write_state_dict

# Measured (both decoders): 0.0 against transformers for every fp32 comparison below; 2.4e-7 between a
# batched row and the same prompt alone (another matmul shape). The tolerance only absorbs a
# different BLAS on another machine; packed features and bf16 logits are asserted bit-identical.
ATOL = 0.0  # bit-identical: every fp32 comparison with transformers here
PINPOINTS = [[32, 64], [64, 32], [64, 64]]  # 32-px tiles: grids 1 x 2, 2 x 1, 2 x 2
# (height, width): rows cut (wide within 2 x 2), columns cut (tall), 1 x 2 with rows cut, square.
SIZES = [(50, 75), (150, 20), (12, 200), (40, 40)]


def mistral_cfg():
    return tf.MistralConfig(vocab_size=hb.VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=12, sliding_window=None,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2)


TEXT_CASES = [pytest.param(mistral_cfg, id="mistral"), pytest.param(llama_cfg, id="llama")]


def llava_next(text_cfg, seed=0, vocab=None, image_token=hb.IMAGE_TOKEN, **kw):
    text = text_cfg().to_dict()
    if vocab is not None:
        text["vocab_size"] = vocab
    cfg = tf.LlavaNextConfig(vision_config=clip_vision_cfg().to_dict(), text_config=text,
                             image_token_index=image_token, image_grid_pinpoints=PINPOINTS, **kw)
    return hb.randomize(tf.LlavaNextForConditionalGeneration(cfg), seed)


def _images(cfg: LlavaNextConfig, sizes, seed):
    """pixel_values [M, K_max, 3, 32, 32] (tiles past an image's own count zero, as the processor
    pads them) and image_sizes [M, 2]."""
    g = torch.Generator().manual_seed(seed)
    counts = [cfg.num_tiles(h, w) for h, w in sizes]
    pix = torch.randn(len(sizes), max(counts), 3, 32, 32, generator=g)
    for i, k in enumerate(counts):
        pix[i, k:] = 0
    return pix, torch.tensor(sizes, dtype=torch.long)


def _prompt(cfg: LlavaNextConfig, sizes, seed, text_len=5):
    """[1, T] ids: 2 text tokens, then per image its placeholders and `text_len` text tokens."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randint(3, hb.IMAGE_TOKEN, (2,), generator=g)]
    for h, w in sizes:
        parts += [torch.full((cfg.tokens_for(h, w),), hb.IMAGE_TOKEN),
                  torch.randint(3, hb.IMAGE_TOKEN, (text_len,), generator=g)]
    return torch.cat(parts)[None]


def _left_padded(rows, pad_id=0):
    """Left-pad [1, T_i] rows into ids, attention_mask [B, T] and generate's positions."""
    longest = max(r.shape[1] for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, longest - r.shape[1]:], mask[b, longest - r.shape[1]:] = r[0], 1
    return ids, mask, (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


@pytest.fixture
def pair(tmp_path, request):
    hf = llava_next(request.param)
    hf.save_pretrained(tmp_path / "hf")
    return hf, load_hf(tmp_path / "hf", dtype="float32")


def test_sizes_cover_every_case():
    """The probe sizes really exercise every grid and both unpadding directions."""
    cfg = LlavaNextConfig.from_preset("debug")
    grids = [cfg.tile_grid(h, w) for h, w in SIZES]
    assert set(grids) == {(1, 2), (2, 1), (2, 2)}
    g = cfg.grid_side
    windows = [unpadded_window(h, w, gh * g, gw * g) for (h, w), (gh, gw) in zip(SIZES, grids)]
    assert any(top for top, *_ in windows) and any(left for _, left, *_ in windows)


@pytest.mark.parametrize("pair", TEXT_CASES, indirect=True)
def test_packed_features(pair):
    """Tower + selection + projector per tile, then base / grid / unpadding / image_newline:
    ours equal transformers' pooler_output per image, lengths equal to the token expansion."""
    hf, ours = pair
    assert type(ours) is LlavaNext and family_of(ours).name == "llava_next"
    pix, sizes = _images(ours.cfg, SIZES, seed=1)
    with torch.no_grad():
        ref = hf.model.get_image_features(pix, sizes).pooler_output
        got = ours.encode_images(pix, sizes)
    assert [r.shape[0] for r in ref] == [ours.cfg.tokens_for(h, w) for h, w in SIZES]
    torch.testing.assert_close(got, torch.cat(ref), atol=0, rtol=0)


@pytest.mark.parametrize("pair", TEXT_CASES, indirect=True)
def test_logits_images_of_every_aspect(pair):
    """One prompt holding four images of different aspect ratios."""
    hf, ours = pair
    pix, sizes = _images(ours.cfg, SIZES, seed=2)
    ids = _prompt(ours.cfg, SIZES, seed=3)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix, image_sizes=sizes).logits
        got = ours(ids, pix, image_sizes=sizes)
        flipped = ours(ids, pix.flip(-1), image_sizes=sizes)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    assert not torch.allclose(got, flipped)  # the pixels matter


@pytest.mark.parametrize("pair", TEXT_CASES, indirect=True)
def test_left_padded_batch(pair):
    """2 prompts with different images (so different lengths), left-padded: logits at real tokens
    equal the reference's with the same mask and positions, and each row equals it alone."""
    hf, ours = pair
    per_row = [[SIZES[0]], [SIZES[2]]]
    pix, sizes = _images(ours.cfg, [s for r in per_row for s in r], seed=4)
    rows = [_prompt(ours.cfg, r, seed=5 + i) for i, r in enumerate(per_row)]
    ids, mask, pos = _left_padded(rows)
    assert (mask == 0).any()
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix, image_sizes=sizes, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, pix, mask, image_sizes=sizes)
        alone = [ours(r, pix[i:i + 1], image_sizes=sizes[i:i + 1])[0] for i, r in enumerate(rows)]
    valid = mask.bool()
    torch.testing.assert_close(got[valid], ref[valid], atol=ATOL, rtol=0)
    for b, a in enumerate(alone):  # ours vs ours: measured 2.4e-7 (SDPA sums over more, masked, keys)
        torch.testing.assert_close(got[b, -a.shape[0]:], a, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pair", TEXT_CASES, indirect=True)
def test_greedy_generation(pair):
    """vlmkit's engine with the family's adapter (PlaceholderGeneration, which hands image_sizes
    to the model) on a left-padded batch of 2 prompts with different images."""
    hf, ours = pair
    per_row = [[SIZES[1]], [SIZES[3], SIZES[0]]]
    pix, sizes = _images(ours.cfg, [s for r in per_row for s in r], seed=7)
    ids, mask, _ = _left_padded([_prompt(ours.cfg, r, seed=8 + i) for i, r in enumerate(per_row)])
    pc.assert_same_greedy(hf, ours, dict(input_ids=ids, attention_mask=mask, pixel_values=pix, image_sizes=sizes))


@pytest.mark.parametrize("pair", TEXT_CASES, indirect=True)
def test_roundtrip(pair, tmp_path):
    """HF -> ours is strict (load_hf) and equal (logits above); ours -> HF loads strictly in
    transformers with every tensor equal and equal logits; ours -> HF -> ours is bit-identical."""
    hf, ours = pair
    save_hf(ours, tmp_path / "ours")
    hf2, info = tf.LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf_sd = hf.state_dict()
    assert hf2.state_dict().keys() == hf_sd.keys()
    for k, v in hf2.state_dict().items():
        assert torch.equal(v, hf_sd[k]), k
    pix, sizes = _images(ours.cfg, SIZES[:2], seed=9)
    ids = _prompt(ours.cfg, SIZES[:2], seed=10)
    with torch.no_grad():
        torch.testing.assert_close(hf2.eval()(input_ids=ids, pixel_values=pix, image_sizes=sizes).logits,
                                   ours(ids, pix, image_sizes=sizes), atol=ATOL, rtol=0)
    again = load_hf(tmp_path / "ours", dtype="float32")
    assert again.cfg == ours.cfg
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_reads_transformers5_module_names(tmp_path):
    """transformers 5's own names (`model.image_newline`, `model.language_model.*`, top-level
    `lm_head`), sharded, load to the same model as the hub layout."""
    hf = llava_next(mistral_cfg)
    hf.save_pretrained(tmp_path / "hub")
    sd = hf.state_dict()
    assert "model.image_newline" in sd and "lm_head.weight" in sd
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "config.json").write_text((tmp_path / "hub" / "config.json").read_text())
    write_state_dict(sd, tmp_path / "mod", max_shard_bytes=20_000)
    a, b = load_hf(tmp_path / "hub", dtype="float32"), load_hf(tmp_path / "mod", dtype="float32")
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert torch.equal(a.image_newline, sd["model.image_newline"])


def test_bf16_bit_identical(tmp_path):
    """In bf16 our logits equal transformers' bit for bit (measured max |diff| 0.0)."""
    llava_next(mistral_cfg).save_pretrained(tmp_path)
    hf = tf.LlavaNextForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    ours = load_hf(tmp_path, dtype="bfloat16")
    pix, sizes = _images(ours.cfg, SIZES, seed=11)
    ids = _prompt(ours.cfg, SIZES, seed=12)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix.bfloat16(), image_sizes=sizes).logits
        got = ours(ids, pix.bfloat16(), image_sizes=sizes)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, ref, atol=0, rtol=0)


def test_siglip_tower_with_layer_list(tmp_path):
    """A SigLIP tower (no class token: "full" keeps the g x g grid) reading a list of layers
    (concatenated channels), as Granite Vision's LLaVA-NeXT checkpoints do, matches too."""
    cfg = tf.LlavaNextConfig(vision_config=hb.siglip_vision_cfg(use_head=False).to_dict(),
                             text_config=mistral_cfg().to_dict(), image_token_index=hb.IMAGE_TOKEN,
                             image_grid_pinpoints=PINPOINTS, vision_feature_layer=[-2, -1],
                             vision_feature_select_strategy="full")
    hb.randomize(tf.LlavaNextForConditionalGeneration(cfg)).save_pretrained(tmp_path)
    hf = tf.LlavaNextForConditionalGeneration.from_pretrained(tmp_path).eval()
    ours = load_hf(tmp_path, dtype="float32")
    assert not ours.cfg.vision.class_token and ours.cfg.features.layers == (-2, -1)
    pix, sizes = _images(ours.cfg, SIZES, seed=15)
    ids = _prompt(ours.cfg, SIZES, seed=16)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, pix, image_sizes=sizes),
                                   hf(input_ids=ids, pixel_values=pix, image_sizes=sizes).logits, atol=ATOL, rtol=0)


# ---- the processor, end to end -------------------------------------------------------------------


@pytest.fixture
def folder_with_processor(tmp_path, paligemma_tokenizer_dir):
    """A transformers-saved folder: tiny LLaVA-NeXT (Mistral) sized to a real tokenizer + its
    LlavaNextProcessor (PIL image processor, 8-px patches, CLIP's class token dropped)."""
    tok = tf.AutoTokenizer.from_pretrained(str(paligemma_tokenizer_dir))
    hf = llava_next(mistral_cfg, vocab=len(tok), image_token=tok.convert_tokens_to_ids("<image>"))
    image_processor = tf.LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                    image_grid_pinpoints=PINPOINTS)
    proc = tf.LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                 vision_feature_select_strategy="default", num_additional_image_tokens=1)
    hf.save_pretrained(tmp_path / "m")
    proc.save_pretrained(tmp_path / "m")
    return tmp_path / "m", hf, proc


def test_processor_and_generation_end_to_end(folder_with_processor, rng_image):
    """The family's processor builder on the folder: its left-padded batch (2 prompts, different
    images and image counts) equals transformers' processor's, and vlmkit's engine generates
    transformers' greedy tokens from it."""
    folder, hf, proc = folder_with_processor
    ours = load_hf(folder, dtype="float32")
    processor = get_family("llava_next").build_processor(folder, None, ours.cfg)
    prompts = ["[INST] <image>\nWhat is this? [/INST]", "[INST] Compare <image> and <image> [/INST]"]
    images = [rng_image(12, 200, seed=1), rng_image(150, 20, seed=2), rng_image(50, 75, seed=3)]
    theirs = proc(text=prompts, images=images, padding=True, padding_side="left", return_tensors="pt")
    batch = processor(prompts, images, padding_side="left")
    for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes"):
        assert torch.equal(batch[key], theirs[key]), key
    assert (batch["attention_mask"] == 0).any()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = proc.tokenizer.pad_token_id
    with torch.no_grad():
        ref = hf.generate(**theirs, max_new_tokens=8, do_sample=False)[:, theirs["input_ids"].shape[1]:]
    out = generate(ours, pc.IdTokenizer(), batch, SamplingConfig(max_new_tokens=8))
    assert [r.token_ids for r in out] == ref.tolist()


def test_processor_builder_checks_the_model(folder_with_processor):
    """A processor that would expand `<image>` to another count than the model packs, or another
    `<image>` id, is one ConfigError line naming the folder."""
    folder, _, _ = folder_with_processor
    cfg = load_hf(folder, dtype="float32").cfg
    spec = get_family("llava_next")
    with pytest.raises(ConfigError, match="image_token_index 7$"):
        spec.build_processor(folder, None, LlavaNextConfig(**{**vars(cfg), "image_token_id": 7}))
    other = LlavaNextConfig(**{**vars(cfg), "image_grid_pinpoints": ((32, 96), (96, 32))})
    with pytest.raises(ConfigError, match=r"expands a 32x96 image to \d+ tokens but the model packs \d+") as e:
        spec.build_processor(folder, None, other)
    assert "\n" not in str(e.value)


# ---- published shapes, config and errors ----------------------------------------------------------


# llava-hf/llava-v1.6-mistral-7b-hf config.json as NVIDIA TensorRT-LLM's test_modeling_llava_next.py
# reproduces it (num_hidden_layers of the tower restored to the published 24).
PUBLISHED_V16_MISTRAL = {
    "architectures": ["LlavaNextForConditionalGeneration"], "ignore_index": -100,
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "image_token_index": 32000, "model_type": "llava_next", "projector_hidden_act": "gelu",
    "text_config": {"_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2", "architectures": ["MistralForCausalLM"],
                    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
                    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
                    "sliding_window": None, "torch_dtype": "bfloat16", "vocab_size": 32064},
    "torch_dtype": "float16", "use_image_newline_parameter": True,
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                      "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064,
}


def test_preset_is_the_published_config():
    preset = LlavaNextConfig.from_preset("llava-v1.6-mistral-7b-hf")
    assert hf_mapping.config_from_hf(PUBLISHED_V16_MISTRAL) == preset
    assert preset.text.hf_model_type == "mistral" and preset.text.sliding_window is None
    assert preset.num_image_tokens == 576 and preset.grid_side == 24


def test_parameter_count_on_meta():
    """The 7B preset built on the meta device has transformers' parameter count, part by part."""
    cfg = LlavaNextConfig.from_preset("llava-v1.6-mistral-7b-hf")
    hf_cfg = tf.LlavaNextConfig(**{k: v for k, v in PUBLISHED_V16_MISTRAL.items() if k != "model_type"})
    with torch.device("meta"):
        ours = LlavaNext(cfg)
        ref = tf.LlavaNextForConditionalGeneration(hf_cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(ref)
    assert count(ours.vision_tower) == count(ref.model.vision_tower)
    assert count(ours.projector) == count(ref.model.multi_modal_projector)
    assert ours.image_newline.shape == ref.model.image_newline.shape == (4096,)


def test_token_counts_match_transformers_processor():
    """`tokens_for` at the published shape equals LlavaNextProcessor's own count (its
    `_get_number_of_features`, minus the dropped class token) over many sizes, including ones
    whose scaled extent lands near .5 (the 7-decimal rounding)."""
    cfg = LlavaNextConfig.from_preset("llava-v1.6-mistral-7b-hf")
    theirs = object.__new__(tf.LlavaNextProcessor)  # only the counting methods are used
    theirs.image_processor = SimpleNamespace(image_grid_pinpoints=[list(p) for p in cfg.image_grid_pinpoints])
    theirs.patch_size, theirs.num_additional_image_tokens = 14, 1
    sizes = [(h, w) for h in (1, 7, 100, 335, 336, 337, 500, 672, 1000, 2000)
             for w in (1, 9, 224, 336, 640, 1333, 4000)]
    sizes += [(3, 7), (7, 3), (1008, 335), (96, 48 * 7 + 1)]
    for h, w in sizes:
        assert cfg.tokens_for(h, w) == theirs._get_number_of_features(h, w, 336, 336) - 1, (h, w)


def test_debug_preset_and_config_errors():
    cfg = LlavaNextConfig.from_preset("debug")
    model = LlavaNext(cfg)
    assert model.image_newline.shape == (cfg.text.hidden_size,)
    assert get_family("llava_next").preset("debug") is not None
    with pytest.raises(ValueError, match="multiples of the vision image_size 32"):
        LlavaNextConfig.from_preset("debug", image_grid_pinpoints=((32, 48),))
    with pytest.raises(ValueError, match="as a 4 x 4 grid, .* 'full' give 17 tokens"):
        LlavaNextConfig.from_preset("debug", features=type(cfg.features)(vision_feature_select_strategy="full"))
    with pytest.raises(KeyError, match="unknown LLaVA-NeXT preset 'huge'"):
        LlavaNextConfig.from_preset("huge")
    with pytest.raises(ValueError, match=r"image_grid_pinpoints must be \[\[height, width\], ...\]"):
        hf_mapping.config_from_hf({**PUBLISHED_V16_MISTRAL, "image_grid_pinpoints": [336, 672]})


def test_input_errors():
    model = LlavaNext(LlavaNextConfig.from_preset("debug", image_token_id=hb.IMAGE_TOKEN)).eval()
    pix, sizes = _images(model.cfg, SIZES[:2], seed=13)
    ids = _prompt(model.cfg, SIZES[:2], seed=14)
    with pytest.raises(ValueError, match="need image_sizes"):
        model(ids, pix)
    with pytest.raises(ValueError, match="pixel_values must be \\[images, tiles, 3, H, W\\]"):
        model(ids, pix[:, 0], image_sizes=sizes)
    with pytest.raises(ValueError, match=r"need up to 5 tiles per image, pixel_values hold 3"):
        model(ids, pix[:, :3], image_sizes=sizes)
    n = model.cfg.tokens_for(*SIZES[0]) + model.cfg.tokens_for(*SIZES[1])
    with pytest.raises(ValueError, match=rf"{n} <image> tokens in the input but the images give "
                                         rf"{model.cfg.tokens_for(*SIZES[0])} features$"):
        model(ids, pix[:1], image_sizes=sizes[:1])


def test_config_json_round_trip():
    cfg = LlavaNextConfig.from_preset("llava-v1.6-mistral-7b-hf")
    d = hf_mapping.config_to_hf(cfg)
    assert d["model_type"] == "llava_next"
    assert d["image_grid_pinpoints"] == PUBLISHED_V16_MISTRAL["image_grid_pinpoints"]
    assert hf_mapping.config_from_hf(json.loads(json.dumps(d))) == cfg
