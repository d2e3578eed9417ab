"""Mistral 3 parity with transformers (tiny random configs, fp32, CPU): the patch merger and
projector (Mistral3MultiModalProjector), Mistral3ForConditionalGeneration's logits on two images of
different sizes, a left-padded batch, greedy tokens through vlmkit's engine, both load directions,
bf16, the processor (PixtralProcessor with spatial_merge_size 2), presets and `vlmkit create`.
"""

import json
import types

import pytest
import torch
import transformers as tf

from tests.parity import hf_builders as hb
from tests.parity import pixtral_checks as pc
from tests.parity import placeholder_checks
from tests.parity.pixtral_checks import BREAK, END, IMG, padded_pixels
from tests.parity.test_pixtral_parity import PATCH, vision_cfg
from tests.parity.test_pixtral_processor_parity import _assert_same, _processor_folder
from vlmkit.errors import CheckpointError
from vlmkit.models.mistral3.model import Mistral3
from vlmkit.models.parts.patch_merger import merge_blocks
from vlmkit.models.parts.pixtral_vit import PixtralVisionTower
from vlmkit.models.registry import get_family
from vlmkit.weights.hf import load_hf

ATOL = 1e-5  # measured: 0.0 (bit-identical) for every fp32 comparison in this file
MERGE = 2
# Two images of different sizes (multiples of PATCH * MERGE = 16 px): 2 x 4 and 6 x 2 patches
# before merging, 1 x 2 and 3 x 1 tokens after.
SIZES = [(16, 32), (48, 16)]


def text_cfg(**kw):
    return tf.MistralConfig(vocab_size=hb.VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0, bos_token_id=1,
                            eos_token_id=2, sliding_window=None, **kw)


def mistral3(seed=0, tie=False):
    """Untied like the published checkpoint (transformers' own default ties the head)."""
    cfg = tf.Mistral3Config(vision_config=vision_cfg().to_dict(), text_config=text_cfg().to_dict(),
                            image_token_index=IMG, spatial_merge_size=MERGE, tie_word_embeddings=tie)
    return hb.randomize(tf.Mistral3ForConditionalGeneration(cfg), seed)


def _prompt(sizes, seed=2):
    return pc.prompt(sizes, PATCH * MERGE, seed)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mistral3")
    hf = mistral3()
    hf.save_pretrained(folder)
    return hf, load_hf(folder, dtype="float32"), folder


def test_patch_merger_matches_transformers(pair):
    """Norm + unfold-order merge + linear_1 / GELU / linear_2 on packed features of three images
    (non-square grids) equal Mistral3MultiModalProjector's; and the merge is unfold's layout."""
    hf, ours, _ = pair
    sizes = torch.tensor([(16, 32), (48, 16), (32, 32)])
    grids = [(h // PATCH, w // PATCH) for h, w in sizes.tolist()]
    x = torch.randn(sum(h * w for h, w in grids), 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf.model.multi_modal_projector(x, sizes)
        got = ours.projector(ours.merger(x[None], grids))
    assert got.shape == (2 + 3 + 4, 48)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    grid = torch.randn(6, 4, 5)  # [h, w, Dv]
    unfolded = torch.nn.functional.unfold(grid.permute(2, 0, 1)[None], MERGE, stride=MERGE)[0].T
    assert torch.equal(merge_blocks(grid, MERGE), unfolded)
    # A remainder row / column is dropped, as unfold drops it: 5 x 3 -> the blocks (0, 0), (1, 0).
    assert torch.equal(merge_blocks(grid[:5, :3], MERGE), unfolded[[0, 2]])


def test_logits_two_images_of_different_sizes(pair):
    hf, ours, _ = pair
    assert type(ours) is Mistral3 and isinstance(ours.vision_tower, PixtralVisionTower)
    ids = _prompt(SIZES)
    assert int((ids == IMG).sum()) == 2 + 3 and int((ids == BREAK).sum()) == 0 + 2 and int((ids == END).sum()) == 2
    pc.assert_two_images(hf, ours, SIZES, PATCH * MERGE)


def test_left_padded_batch(pair):
    hf, ours, _ = pair
    pc.assert_left_padded(hf, ours, SIZES, PATCH * MERGE)


def test_greedy_generation(pair):
    """vlmkit's engine through the mistral3 record's adapter (pixel_values + image_sizes): a
    left-padded batch of 2 prompts with different image sizes, tokens identical."""
    hf, ours, _ = pair
    pc.assert_greedy(hf, ours, SIZES, PATCH * MERGE)


def test_roundtrip(pair, tmp_path):
    """ours -> HF loads strictly in transformers (every tensor equal, equal logits); ours -> HF ->
    ours is bit-identical; the keys on disk are transformers' save_pretrained names."""
    hf, ours, folder = pair
    px, sizes = padded_pixels(SIZES)
    placeholder_checks.assert_round_trip(tf.Mistral3ForConditionalGeneration, hf, ours, tmp_path, _prompt(SIZES),
                         {"pixel_values": px, "image_sizes": sizes}, atol=ATOL)
    from vlmkit.weights.safetensors_io import SafetensorsReader
    assert set(SafetensorsReader(tmp_path).keys()) == set(SafetensorsReader(folder).keys())


def test_bf16_as_close_as_transformers(pair):
    pc.assert_bf16(tf.Mistral3ForConditionalGeneration, pair[2], SIZES, PATCH * MERGE)


def test_tied_head_and_the_published_layout(tmp_path):
    """transformers' default (tied, no lm_head on disk) loads tied; a config.json without the key
    (as the published ones) with a separate head loads untied, as transformers does."""
    hf = mistral3(seed=1, tie=True)
    hf.save_pretrained(tmp_path / "tied")
    assert load_hf(tmp_path / "tied", dtype="float32").cfg.text.tie_embeddings
    folder = tmp_path / "untied"
    mistral3(seed=2).save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["tie_word_embeddings"], cfg["text_config"]["tie_word_embeddings"]
    (folder / "config.json").write_text(json.dumps(cfg))
    ours = load_hf(folder, dtype="float32")
    ref = hb.load_strictly(tf.Mistral3ForConditionalGeneration, folder)
    assert not ours.cfg.text.tie_embeddings
    ids = _prompt(SIZES)
    px, sizes = padded_pixels(SIZES)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, px, image_sizes=sizes),
                                   ref(input_ids=ids, pixel_values=px, image_sizes=sizes).logits, atol=ATOL, rtol=1e-5)


def test_reads_module_layout_and_shards(tmp_path):
    hb.assert_module_layout_loads(mistral3(), tmp_path)


def test_strict_loading_names_the_keys(pair, tmp_path):
    _, _, folder = pair
    key = "multi_modal_projector.patch_merger.merging_layer.weight"
    bad = placeholder_checks.copy_folder(folder, tmp_path / "bad", rename=lambda k: "extra." + k if k == key else k)
    with pytest.raises(CheckpointError, match=r"merger\.merging_layer\.weight.*extra\.") as e:
        load_hf(bad)
    assert "\n" not in str(e.value)


# ---- processor: PixtralImageProcessor (PIL) + PixtralProcessor with spatial_merge_size 2 --------------


@pytest.fixture
def processors(tmp_path, paligemma_tokenizer_dir, monkeypatch):
    """(ours built by the mistral3 record's builder from the saved folder, transformers')."""
    theirs = _processor_folder(tmp_path / "folder", paligemma_tokenizer_dir, monkeypatch, spatial_merge_size=MERGE)
    cfg = types.SimpleNamespace(image_token_id=theirs.image_token_id, vision=types.SimpleNamespace(patch_size=PATCH),
                                merger=types.SimpleNamespace(spatial_merge_size=MERGE))
    return get_family("mistral3").build_processor(tmp_path / "folder", None, cfg), theirs, cfg


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_processor_batch_parity(processors, rng_image, padding_side):
    """A batch of prompts with images of different sizes: ids, masks, pixel_values, image_sizes
    identical; images are resized to whole 16-px merged patches; the 40 x 56 probe gives 15 tokens."""
    ours, theirs, _ = processors
    flat = [rng_image(50, 75, seed=1), rng_image(90, 60, "RGBA", seed=2), rng_image(12, 200, seed=5),
            rng_image(150, 20, "L", seed=6)]
    prompts = ["[INST][IMG]What is this?[/INST]", "[IMG] and [IMG][IMG]: compare", "no image"]
    expected = theirs(text=prompts, images=flat, padding="longest", padding_side=padding_side, return_tensors="pt")
    got = ours(prompts, flat, padding_side=padding_side)
    _assert_same(got, expected)
    assert got["image_sizes"].tolist()[0] == [48, 64]  # 50 x 75 -> 42 x 64 -> whole 16-px patches
    probe = rng_image(40, 56, seed=7)
    _assert_same(ours("[IMG]", [probe]), theirs(text="[IMG]", images=[probe], return_tensors="pt"))
    probe = ours("[IMG]", [probe])["input_ids"][0]
    brk, end = ours.tokenizer.token_id("[IMG_BREAK]"), ours.tokenizer.token_id("[IMG_END]")
    assert [int((probe == t).sum()) for t in (ours.image_token_id, brk, end)] == [12, 2, 1]  # 15 tokens


def test_processor_builder_checks_the_merge(processors, tmp_path):
    from vlmkit.errors import ConfigError

    _, _, cfg = processors
    unmerged = types.SimpleNamespace(**{**vars(cfg), "merger": types.SimpleNamespace(spatial_merge_size=1)})
    with pytest.raises(ConfigError, match="processor patch_size 16 != vision_config patch_size 8$"):
        get_family("mistral3").build_processor(tmp_path / "folder", None, unmerged)
    with pytest.raises(ConfigError, match="16 != vision_config patch_size 16 x spatial_merge_size 2$"):
        wide = types.SimpleNamespace(**{**vars(cfg), "vision": types.SimpleNamespace(patch_size=16)})
        get_family("mistral3").build_processor(tmp_path / "folder", None, wide)


# ---- presets, parameter count, `vlmkit create` ----------------------------------------------------------


def test_presets():
    """mistral-small-3.1-24b-instruct-2503: the published shapes; transformers' parameter count."""
    spec = get_family("mistral3")
    cfg = spec.preset("mistral-small-3.1-24b-instruct-2503")
    v, t = cfg.vision, cfg.text
    assert (v.hidden_size, v.num_layers, v.num_heads, v.patch_size, v.image_size, v.hidden_act) == (
        1024, 24, 16, 14, 1540, "silu")
    assert (t.num_layers, t.hidden_size, t.intermediate_size, t.num_kv_heads, t.head_dim, t.vocab_size) == (
        40, 5120, 32768, 8, 128, 131072)
    assert cfg.merger.spatial_merge_size == 2 and cfg.image_token_id == 10 and not cfg.projector.bias
    with torch.device("meta"):
        big = Mistral3(cfg)
    hf_cfg = spec.config_to_hf(cfg)
    with torch.device("meta"):
        ref = tf.Mistral3ForConditionalGeneration(
            tf.Mistral3Config(**{k: v for k, v in hf_cfg.items() if k != "model_type"}))
    n = sum(p.numel() for p in big.parameters())
    assert n == sum(p.numel() for p in ref.parameters())
    assert 24.0e9 < n < 24.1e9, n
    assert tuple(big.merger.merging_layer.weight.shape) == (1024, 4096)
    assert spec.config_from_hf(hf_cfg) == cfg
    debug = Mistral3(spec.preset("debug"))
    px, sizes = padded_pixels(SIZES)
    with torch.no_grad():
        assert debug.encode_images(px, sizes).shape == (5, 64)


def test_create_debug(tmp_path, rng_image):
    """`vlmkit create --family mistral3 --preset debug` writes a folder that transformers loads
    strictly (equal logits) and that vlmkit's pipeline runs with the merged Pixtral processor."""
    from vlmkit.data.processors.pixtral import PixtralProcessor
    from vlmkit.pipeline import load
    from vlmkit.weights.create import create_checkpoint

    folder = create_checkpoint(tmp_path / "model", "debug", family="mistral3")
    processor = load(folder, dtype="float32").processor
    assert isinstance(processor, PixtralProcessor) and processor.config.patch == 16
    images = [rng_image(150, 20, seed=6), rng_image(50, 75, seed=1), rng_image(12, 200, seed=5)]
    pc.assert_created_folder_runs(folder, tf.Mistral3ForConditionalGeneration, images, rng_image(40, 56, seed=7))
