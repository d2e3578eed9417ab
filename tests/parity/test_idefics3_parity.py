"""Idefics3 / SmolVLM parity with transformers' Idefics3- and SmolVLMForConditionalGeneration
(tiny random configs, fp32, CPU): logits with several frames per prompt, a padded frame slot and
a frame with padded pixels (pixel_attention_mask), a left-padded batch of 2, greedy generation
through vlmkit's engine, both load directions of the weights, bf16, presets, and the processor
builder end to end.

Tiny shape: 32 px frames, 8 px patches (4 x 4), scale factor 2 -> 4 `<image>` tokens per frame.
"""

import json
from dataclasses import replace

import pytest
import torch
import transformers as tf

from tests.parity import hf_builders as hb
from tests.parity import placeholder_checks as pc
from tests.parity.llava_builders import llama_cfg
from tests.parity.test_processors_typec import family_tokenizer_dir, hf_tokenizer  # noqa: F401 (fixtures)
from vlmkit.errors import CheckpointError, ConfigError
from vlmkit.generation import SamplingConfig, generate
from vlmkit.models.idefics3 import Idefics3, Idefics3Config
from vlmkit.models.idefics3 import hf_mapping
from vlmkit.models.registry import get_family
from vlmkit.models.siglip.model import bucket_position_ids
from vlmkit.weights.hf import load_hf, save_hf
from vlmkit.weights.safetensors_io import SafetensorsReader, write_state_dict
from tests.parity.placeholder_checks import IdTokenizer

N_FRAME = 4  # (32 / 8)^2 patches / 2^2
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)
HF_CLASSES = {"idefics3": (tf.Idefics3Config, tf.Idefics3ForConditionalGeneration),
              "smolvlm": (tf.SmolVLMConfig, tf.SmolVLMForConditionalGeneration)}


def hf_model(kind="idefics3", seed=0, **kw):
    config_cls, model_cls = HF_CLASSES[kind]
    cfg = config_cls(vision_config=VISION, text_config=llama_cfg().to_dict(), image_token_id=hb.IMAGE_TOKEN,
                     scale_factor=2, **kw)
    return hb.randomize(model_cls(cfg), seed)


def _row(g, frames: int, before=2, after=3) -> torch.Tensor:
    text = torch.randint(3, hb.IMAGE_TOKEN, (before + after,), generator=g)
    return torch.cat([text[:before], torch.full((frames * N_FRAME,), hb.IMAGE_TOKEN), text[before:]])


def padded_batch(seed=1):
    """Two left-padded prompts: row 0 has 3 frames (2 tiles + global), the last with only its top
    24 pixel rows real; row 1 has 1 frame and 2 all-zero padding frame slots (mask 0), as
    transformers' processor pads them. Returns input_ids, attention_mask, pixel_values [2, 3, 3,
    32, 32], pixel_attention_mask [2, 3, 32, 32], position_ids as generate builds them."""
    g = torch.Generator().manual_seed(seed)
    rows = [_row(g, 3), _row(g, 1, after=5)]
    T = max(len(r) for r in rows)
    ids = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, T - len(r):], mask[b, T - len(r):] = r, 1
    pix = torch.randn(2, 3, 3, 32, 32, generator=g)
    pmask = torch.ones(2, 3, 32, 32, dtype=torch.long)
    pix[0, 2, :, 24:], pmask[0, 2, 24:] = 0, 0
    pix[1, 1:], pmask[1, 1:] = 0, 0
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return ids, mask, pix, pmask, pos


@pytest.fixture(params=["idefics3", "smolvlm"])
def pair(tmp_path, request):
    hf = hf_model(request.param)
    hf.save_pretrained(tmp_path / "hf")
    return hf, load_hf(tmp_path / "hf", dtype="float32")


def test_logits_several_frames(pair):
    """One prompt, 3 full frames, no masks: bit-identical (measured max |diff| 0.0)."""
    hf, ours = pair
    assert type(ours) is Idefics3 and ours.cfg.num_image_tokens == N_FRAME
    g = torch.Generator().manual_seed(2)
    ids = _row(g, 3)[None]
    pix = torch.randn(1, 3, 3, 32, 32, generator=g)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix).logits
        got = ours(ids, pix)
        swapped = ours(ids, pix[:, [1, 0, 2]])
    assert torch.equal(got, ref)
    assert not torch.allclose(got, swapped)  # frame order matters


def test_left_padded_batch_with_padded_frames(pair):
    """Left padding, a padded frame slot and a frame with padded pixels: logits at real tokens
    bit-identical to the reference given the same mask and positions (measured 0.0); row 1
    alone (1 frame, no slot padding) equals its padded-batch row to 1e-5 (measured 3.0e-7: the
    batch runs the tower with a key mask, alone it runs without, as transformers does)."""
    hf, ours = pair
    ids, mask, pix, pmask, pos = padded_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=pix,
                 pixel_attention_mask=pmask).logits
        got = ours(ids, pix, mask, pmask)
        start = int((mask[1] == 0).sum())
        alone = ours(ids[1:, start:], pix[1:, :1], pixel_attention_mask=pmask[1:, :1])
        unmasked = ours(ids, pix, mask)  # without pixel_attention_mask the padded pixels count
    valid = mask.bool()
    assert torch.equal(got[valid], ref[valid])
    torch.testing.assert_close(got[1, start:], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[0], unmasked[0])


def test_greedy_generation(pair):
    """vlmkit's engine with the family's adapter: the left-padded batch of 2 (different frame
    counts, padded pixels) generates the same 12 greedy tokens as transformers' generate."""
    hf, ours = pair
    ids, mask, pix, pmask, _ = padded_batch(seed=3)
    pc.assert_same_greedy(hf, ours, dict(input_ids=ids, attention_mask=mask, pixel_values=pix,
                                         pixel_attention_mask=pmask))


@pytest.mark.parametrize("kind,tie", [("idefics3", False), ("smolvlm", False), ("idefics3", True)])
def test_roundtrip(tmp_path, kind, tie):
    """transformers -> ours strict and equal; ours -> HF loads strictly in transformers (same
    class) with equal tensors and logits; ours -> HF -> ours bit-identical."""
    hf = hf_model(kind, tie_word_embeddings=tie)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf", dtype="float32")
    assert ours.cfg.hf_model_type == kind and ours.cfg.text.tie_embeddings == tie
    save_hf(ours, tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["model_type"] == kind and written["vision_config"]["model_type"] == f"{kind}_vision"
    hf2, info = HF_CLASSES[kind][1].from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf_sd = hf.state_dict()
    for k, v in hf2.state_dict().items():
        assert torch.equal(v, hf_sd[k]), k
    ids, mask, pix, pmask, pos = padded_batch()
    with torch.no_grad():
        ref = hf2.eval()(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=pix,
                         pixel_attention_mask=pmask).logits
        assert torch.equal(ours(ids, pix, mask, pmask)[mask.bool()], ref[mask.bool()])
    again = load_hf(tmp_path / "ours", dtype="float32")
    assert again.cfg == ours.cfg
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_smolvlm_keeps_a_frame_when_all_are_padding(tmp_path):
    """SmolVLM's one behavioural difference: with every frame all-zero it still encodes the
    first; Idefics3 encodes none (then the `<image>` tokens have no features)."""
    g = torch.Generator().manual_seed(5)
    ids = _row(g, 1)[None]
    pix = torch.zeros(1, 2, 3, 32, 32)
    for kind in ("smolvlm", "idefics3"):
        hf_model(kind).save_pretrained(tmp_path / kind)
    smol, idefics = load_hf(tmp_path / "smolvlm", dtype="float32"), load_hf(tmp_path / "idefics3", dtype="float32")
    hf = tf.SmolVLMForConditionalGeneration.from_pretrained(tmp_path / "smolvlm").eval()
    assert smol.cfg.keep_first_frame and not idefics.cfg.keep_first_frame
    with torch.no_grad():
        assert torch.equal(smol(ids, pix), hf(input_ids=ids, pixel_values=pix).logits)
    with pytest.raises(ValueError, match="4 <image> tokens in the input but the images give 0 features"):
        idefics(ids, pix)


def test_bf16(tmp_path):
    """bf16 weights and inputs on the padded batch: bit-identical to transformers (measured 0.0)."""
    hf_model().save_pretrained(tmp_path)
    hf = tf.Idefics3ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    ours = load_hf(tmp_path, dtype="bfloat16")
    ids, mask, pix, pmask, pos = padded_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=pix.bfloat16(),
                 pixel_attention_mask=pmask).logits
        got = ours(ids, pix.bfloat16(), mask, pmask)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got[mask.bool()], ref[mask.bool()])


def test_bucket_positions_match_transformers():
    """Our bucketed position ids equal Idefics3VisionEmbeddings' for full, partial and
    non-square real grids, with a 27-patch table (1/27 is inexact in float32)."""
    emb = tf.models.idefics3.modeling_idefics3.Idefics3VisionEmbeddings(
        tf.Idefics3VisionConfig(hidden_size=8, image_size=27 * 2, patch_size=2))
    seen = {}
    emb.position_embedding.forward = lambda ids: seen.setdefault("ids", ids)[..., None] * 0  # capture
    mask = torch.zeros(3, 27, 27, dtype=torch.bool)
    mask[0], mask[1, :13, :27], mask[2, :20, :7] = True, True, True
    emb(torch.zeros(3, 3, 54, 54), mask)
    assert torch.equal(bucket_position_ids(mask, 27), seen["ids"])
    assert torch.equal(bucket_position_ids(mask[:1], 27)[0], torch.arange(27 * 27))


# Total parameters of the published checkpoints: 256M and 500M as counted from their safetensors
# (figures quoted by public write-ups found with the `search` tool); for SmolVLM-Instruct the hub
# rounds to 2.25B and the exact figure is transformers' count for the preset's config.
PUBLISHED_PARAMS = {
    "SmolVLM-256M-Instruct": 256_484_928,
    "SmolVLM-500M-Instruct": 507_482_304,
    "SmolVLM-Instruct": 2_246_272_880,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_presets_build_with_published_counts(name):
    """Each preset builds on the meta device with the published parameter count, which is also
    what transformers builds from our config_to_hf (both on the meta device)."""
    cfg = Idefics3Config.from_preset(name)
    with torch.device("meta"):
        ours = Idefics3(cfg)
        hf = tf.Idefics3ForConditionalGeneration(tf.Idefics3Config(**hf_mapping.config_to_hf(cfg)))
    count = sum(p.numel() for p in ours.parameters())
    assert count == PUBLISHED_PARAMS[name] == sum(p.numel() for p in hf.parameters())
    assert cfg.num_image_tokens == (81 if name == "SmolVLM-Instruct" else 64)
    assert hf_mapping.config_from_hf(hf_mapping.config_to_hf(cfg)) == cfg


def test_reads_a_published_style_config():
    """A config.json as transformers 4.4x wrote SmolVLM-256M-Instruct's (4.x `rope_theta`, extra
    keys of the training code, vision `model_type` "idefics3") reads as the preset."""
    text = dict(model_type="llama", architectures=["VLlama3ForCausalLM"], vocab_size=49280, hidden_size=576,
                intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                head_dim=64, rms_norm_eps=1e-5, rope_theta=100000, rope_scaling=None, max_position_embeddings=8192,
                tie_word_embeddings=False, pad_token_id=2, bos_token_id=1, eos_token_id=2, is_llama_config=True,
                pixel_shuffle_factor=4, use_resampler=False, qk_layer_norms=False)
    vision = dict(model_type="idefics3", hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, image_size=512, patch_size=16, use_base_siglip=True,
                  size={"longest_edge": 2048}, max_image_size={"longest_edge": 512})
    d = dict(architectures=["Idefics3ForConditionalGeneration"], model_type="idefics3", image_token_id=49190,
             scale_factor=4, tie_word_embeddings=False, vocab_size=49280, text_config=text, vision_config=vision)
    assert hf_mapping.config_from_hf(d) == Idefics3Config.from_preset("SmolVLM-256M-Instruct")


def test_config_errors():
    cfg = get_family("idefics3").preset("debug")
    with pytest.raises(ValueError, match="pixel shuffle by 3 needs a patch grid divisible by it"):
        Idefics3Config.from_preset("debug", connector=hf_mapping.idefics3_connector(3))
    with pytest.raises(ConfigError, match="keep_first_frame=True has no transformers idefics3 equivalent"):
        hf_mapping.config_to_hf(Idefics3Config.from_preset("debug", keep_first_frame=True))
    with pytest.raises(ValueError, match="unsupported Idefics3 model_type 'idefics2'"):
        hf_mapping.config_from_hf({"model_type": "idefics2"})
    assert hf_mapping.config_from_hf(hf_mapping.config_to_hf(cfg)) == cfg


def test_missing_connector_is_one_line(tmp_path):
    hf_model().save_pretrained(tmp_path / "hub")
    reader = SafetensorsReader(tmp_path / "hub")
    keep = {k: reader.get(k) for k in reader.keys() if "connector" not in k}
    (tmp_path / "short").mkdir()
    write_state_dict(keep, tmp_path / "short")
    (tmp_path / "short" / "config.json").write_text((tmp_path / "hub" / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"missing keys: connector\.linear_1\.weight$"):
        load_hf(tmp_path / "short")


def test_processor_builder_end_to_end(hf_tokenizer, rng_image, tmp_path):
    """The registry record's processor on a folder transformers saved (model + Idefics3Processor):
    two prompts with 1 and 2 images (tiles + global; row 0's frame slots padded) give the batch of
    transformers' processor, logits bit-identical to its model's, and the same greedy tokens."""
    theirs = tf.Idefics3Processor(
        image_processor=tf.Idefics3ImageProcessorPil(size={"longest_edge": 96}, max_image_size={"longest_edge": 32}),
        tokenizer=hf_tokenizer, image_seq_len=N_FRAME)
    theirs.save_pretrained(tmp_path)
    text = {**llama_cfg().to_dict(), "vocab_size": len(hf_tokenizer)}
    cfg = tf.Idefics3Config(vision_config=VISION, text_config=text, scale_factor=2,
                            image_token_id=hf_tokenizer.convert_tokens_to_ids("<image>"))
    hf = hb.randomize(tf.Idefics3ForConditionalGeneration(cfg))
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    processor = get_family("idefics3").build_processor(tmp_path, None, ours.cfg)
    prompts = ["User:<image>What is this?<end_of_utterance>\nAssistant:", "<image> and <image>"]
    images = [[rng_image(50, 75, seed=1)], [rng_image(40, 90, seed=3), rng_image(20, 20, seed=4)]]
    batch = processor(prompts, images, padding_side="left")
    expected = theirs(text=prompts, images=images, padding="longest", padding_side="left", return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"):
        assert torch.equal(batch[key], expected[key]), key
    ids, mask = batch["input_ids"], batch["attention_mask"]
    frames0 = int((ids[0] == ours.cfg.image_token_id).sum()) // N_FRAME  # row 0's real frames
    assert frames0 < batch["pixel_values"].shape[1] and not batch["pixel_values"][0, frames0:].any()  # padded slots
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        ref = hf(**expected, position_ids=pos).logits
        got = ours(ids, batch["pixel_values"], mask, batch["pixel_attention_mask"])
        ref_tokens = hf.generate(**expected, max_new_tokens=6, do_sample=False)[:, ids.shape[1]:]
    assert torch.equal(got[mask.bool()], ref[mask.bool()])
    out = generate(ours, IdTokenizer(), batch, SamplingConfig(max_new_tokens=6))
    assert [r.token_ids for r in out] == ref_tokens.tolist()
    with pytest.raises(ConfigError, match="tokenizer's <image> id .* != config.json image_token_index 5"):
        get_family("idefics3").build_processor(tmp_path, None, replace(ours.cfg, image_token_id=5))
    with pytest.raises(CheckpointError, match="processor image_seq_len 4 != the model's 1 tokens per frame"):
        other = replace(ours.cfg, connector=hf_mapping.idefics3_connector(4))
        get_family("idefics3").build_processor(tmp_path, None, other)


@pytest.mark.slow
def test_smolvlm_256m_shape_bf16(tmp_path):
    """The real SmolVLM-256M-Instruct shape (our preset through config_to_hf) with random bf16
    weights, one 512 px frame (64 image tokens) and a 24-token prompt: logits bit-identical to
    transformers' (measured max |diff| 0.0, about 1 minute on 2 CPU cores)."""
    cfg = Idefics3Config.from_preset("SmolVLM-256M-Instruct")
    hf = tf.Idefics3ForConditionalGeneration(tf.Idefics3Config(**hf_mapping.config_to_hf(cfg)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02 + (1.0 if "norm" in name and p.dim() == 1 else 0.0))
    hf.to(torch.bfloat16).save_pretrained(tmp_path)
    del hf
    hf = tf.Idefics3ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    ours = load_hf(tmp_path, dtype="bfloat16")
    text = torch.randint(3, 49000, (24,), generator=g)
    ids = torch.cat([text[:4], torch.full((64,), cfg.image_token_id), text[4:]])[None]
    pix = torch.randn(1, 1, 3, 512, 512, generator=g).bfloat16()
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix).logits
        got = ours(ids, pix)
    print("max |diff|", (got.float() - ref.float()).abs().max().item())
    assert torch.equal(got, ref)


def test_pipeline_generates_like_the_engine(family_tokenizer_dir, rng_image, tmp_path):
    """`vlmkit create --family idefics3` + `Pipeline.load` (what `vlmkit generate` runs) gives the
    tokens of the engine on the processor batch (whose logits and tokens equal transformers',
    above). Idefics3's frames are padded per batch and masked, so its processor does not lay out
    pixels per image and the pipeline hands the batch to the family's adapter uncached."""
    from vlmkit.pipeline import Pipeline
    from vlmkit.weights.create import create_checkpoint

    folder = create_checkpoint(tmp_path / "m", "debug", seed=1, family="idefics3", tokenizer_dir=family_tokenizer_dir)
    pipe = Pipeline.load(folder)
    prompts = ["<image> hi", "<image><image> yo"]
    images = [[rng_image(50, 75, seed=1)], [rng_image(20, 20, seed=2), rng_image(40, 90, seed=3)]]
    sampling = SamplingConfig(max_new_tokens=5)
    got = pipe.generate_batch(prompts, images, sampling)
    expected = generate(pipe.model, pipe.tokenizer, pipe.processor(prompts, images, padding_side="left"), sampling)
    assert [r.token_ids for r in got] == [r.token_ids for r in expected]
    assert not getattr(pipe.processor, "per_image_pixels", False) and len(pipe._features) == 0
