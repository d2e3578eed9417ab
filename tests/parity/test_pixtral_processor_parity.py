"""Pixtral's processor against transformers' PixtralImageProcessor (PIL) + PixtralProcessor, the
pipeline end to end on a transformers-saved folder, and `vlmkit create --preset pixtral-debug`.
Tiny configs come from test_pixtral_parity.py."""

import sys
import types

import pytest
import torch
import transformers as tf

from tests.parity import hf_builders as hb
from tests.parity.pixtral_checks import assert_created_folder_runs
from tests.parity.placeholder_checks import IdTokenizer
from tests.parity.test_pixtral_parity import PATCH, vision_cfg
from vlmkit.errors import DataError
from vlmkit.generation import SamplingConfig, generate
from vlmkit.models.registry import get_family


# ---- processor: PixtralImageProcessor (PIL) + PixtralProcessor -----------------------------------------


def _hf_pixtral_processor_class(monkeypatch):
    """transformers' PixtralProcessor without torchvision: its module imports one helper from the
    torchvision-backed image processor, which is the same function in the PIL module."""
    import importlib

    from transformers.models.pixtral import image_processing_pil_pixtral as pil

    stub = types.ModuleType("transformers.models.pixtral.image_processing_pixtral")
    stub.get_resize_output_image_size = pil.get_resize_output_image_size
    monkeypatch.setitem(sys.modules, stub.__name__, stub)
    cls = importlib.import_module("transformers.models.pixtral.processing_pixtral").PixtralProcessor
    monkeypatch.setattr(cls, "check_argument_for_proper_class", lambda *a: None)
    return cls


def _processor_folder(folder, paligemma_tokenizer_dir, monkeypatch, **processor_kw):
    """A folder with transformers' PixtralProcessor saved (tokenizer with [IMG], [IMG_BREAK],
    [IMG_END] and a BOS post-processor; 8-px patches, 64-px longest edge, `processor_kw` such as
    Mistral 3's spatial_merge_size); returns the processor."""
    from tokenizers import Tokenizer, processors as tp

    tok = Tokenizer.from_file(str(paligemma_tokenizer_dir / "tokenizer.json"))
    tok.add_special_tokens(["[IMG]", "[IMG_BREAK]", "[IMG_END]"])
    bos = tok.token_to_id("<bos>")
    tok.post_processor = tp.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    raw = folder.parent / f"{folder.name}_raw"
    raw.mkdir()
    tok.save(str(raw / "tokenizer.json"))
    (raw / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "LlamaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}')
    hf_tok = tf.AutoTokenizer.from_pretrained(str(raw))
    theirs = _hf_pixtral_processor_class(monkeypatch)(
        image_processor=tf.PixtralImageProcessorPil(size={"longest_edge": 64}), tokenizer=hf_tok, patch_size=PATCH,
        **processor_kw)
    theirs.save_pretrained(str(folder))
    return theirs


@pytest.fixture
def processors(tmp_path, paligemma_tokenizer_dir, monkeypatch):
    """(ours built by the llava record's builder from the saved folder, transformers')."""
    theirs = _processor_folder(tmp_path / "folder", paligemma_tokenizer_dir, monkeypatch)
    cfg = types.SimpleNamespace(image_token_id=theirs.image_token_id, vision=types.SimpleNamespace(patch_size=PATCH))
    return get_family("llava").build_processor(tmp_path / "folder", None, cfg), theirs


@pytest.fixture
def images(rng_image):
    return {"rgb": rng_image(50, 75, seed=1), "rgba": rng_image(90, 60, "RGBA", seed=2),
            "gray": rng_image(40, 90, "L", seed=3), "tiny": rng_image(3, 5, seed=4),
            "wide": rng_image(12, 200, seed=5), "tall": rng_image(150, 20, seed=6), "probe": rng_image(40, 56, seed=7)}


KEYS = ["input_ids", "attention_mask", "pixel_values", "image_sizes"]


def _assert_same(ours: dict, theirs) -> None:
    for key in KEYS:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_processor_batch_parity(processors, images, padding_side):
    """A batch of prompts with images of different sizes (padded to the largest): ids, masks,
    pixel_values and image_sizes identical."""
    ours, theirs = processors
    prompts = ["[INST][IMG]What is this?[/INST]", "[IMG] and [IMG][IMG]: compare", "no image"]
    flat = [images["rgb"], images["rgba"], images["wide"], images["tall"]]
    expected = theirs(text=prompts, images=flat, padding="longest", padding_side=padding_side, return_tensors="pt")
    got = ours(prompts, flat, padding_side=padding_side)
    _assert_same(got, expected)
    assert got["image_sizes"].tolist()[0] == [48, 64]  # 50 x 75 -> fits 42 x 64 -> whole patches


def test_processor_every_image(processors, images):
    """Each image alone (RGBA, grey, extreme aspect ratios; one smaller than a patch is refused); the 40 x 56 probe
    gives 40 tokens: 5 rows of 7 [IMG], 4 [IMG_BREAK], one [IMG_END]."""
    ours, theirs = processors
    for name, image in images.items():
        if name == "tiny":  # smaller than a patch: refused where transformers upscales (processors/native)
            with pytest.raises(DataError, match=r"\(3 x 5 pixels\) is smaller than one 8 x 8 patch"):
                ours("[IMG]", [image])
            continue
        _assert_same(ours("[IMG]", [image]), theirs(text="[IMG]", images=[image], return_tensors="pt"))
    ids = ours("[IMG]", [images["probe"]])["input_ids"][0]
    brk, end = ours.tokenizer.token_id("[IMG_BREAK]"), ours.tokenizer.token_id("[IMG_END]")
    counts = [int((ids == t).sum()) for t in (ours.image_token_id, brk, end)]
    assert counts == [35, 4, 1]


def test_processor_from_the_older_layout(processors, tmp_path, images):
    """A 4.x-style folder (image fields in preprocessor_config.json, which names the processor
    class, and a flat processor_config.json) gives the same processor and outputs."""
    import json
    import shutil

    ours, theirs = processors
    folder = tmp_path / "old"
    shutil.copytree(tmp_path / "folder", folder)
    proc = json.loads((folder / "processor_config.json").read_text())
    image = {**proc.pop("image_processor"), "processor_class": proc.pop("processor_class")}
    (folder / "processor_config.json").write_text(json.dumps(proc))
    (folder / "preprocessor_config.json").write_text(json.dumps(image))
    cfg = types.SimpleNamespace(image_token_id=theirs.image_token_id, vision=types.SimpleNamespace(patch_size=PATCH))
    old = get_family("llava").build_processor(folder, None, cfg)
    assert old.config == ours.config
    _assert_same(old("[IMG] x", [images["rgb"]]), theirs(text="[IMG] x", images=[images["rgb"]], return_tensors="pt"))


def test_processor_builder_checks_the_config(processors, tmp_path):
    from vlmkit.errors import ConfigError

    _, theirs = processors
    build = get_family("llava").build_processor
    bad_id = types.SimpleNamespace(image_token_id=theirs.image_token_id - 1, vision=types.SimpleNamespace(patch_size=PATCH))
    with pytest.raises(ConfigError, match=r"the tokenizer's \[IMG\] id \d+ != config.json image_token_index"):
        build(tmp_path / "folder", None, bad_id)
    bad_patch = types.SimpleNamespace(image_token_id=theirs.image_token_id, vision=types.SimpleNamespace(patch_size=16))
    with pytest.raises(ConfigError, match="processor patch_size 8 != vision_config patch_size 16"):
        build(tmp_path / "folder", None, bad_patch)


def test_processor_rejects_an_empty_side(processors, rng_image):
    ours, _ = processors
    with pytest.raises(DataError, match="has an empty side"):
        ours("[IMG]", [rng_image(1, 300, seed=8)])


def test_pipeline_end_to_end(tmp_path, paligemma_tokenizer_dir, monkeypatch, images):
    """A transformers-saved folder (LlavaForConditionalGeneration with a pixtral tower +
    PixtralProcessor) through `vlmkit.pipeline.load`: our processor's batch drives our model to
    the same greedy tokens as transformers' processor + generate, on a left-padded batch of 2
    prompts whose images differ in size."""
    from vlmkit.pipeline import load

    folder = tmp_path / "model"
    theirs = _processor_folder(folder, paligemma_tokenizer_dir, monkeypatch)
    tok = theirs.tokenizer
    text = tf.MistralConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=tok.pad_token_id,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, sliding_window=None)
    cfg = tf.LlavaConfig(vision_config=vision_cfg().to_dict(), text_config=text.to_dict(),
                         image_token_index=theirs.image_token_id, vision_feature_layer=-1,
                         vision_feature_select_strategy="full")
    hf = hb.randomize(tf.LlavaForConditionalGeneration(cfg), 7)
    hf.save_pretrained(folder)
    pipe = load(folder, dtype="float32")
    prompts, flat = ["[IMG] what is this", "compare [IMG] and [IMG] please"], [images["wide"], images["rgb"], images["tall"]]
    expected = theirs(text=prompts, images=flat, padding="longest", padding_side="left", return_tensors="pt")
    batch = pipe.processor(prompts, [flat[:1], flat[1:]], padding_side="left")
    _assert_same(batch, expected)
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        ref = hf.generate(**expected, max_new_tokens=6, do_sample=False)[:, expected["input_ids"].shape[1]:]
    out = generate(pipe.model, IdTokenizer(), batch, SamplingConfig(max_new_tokens=6))
    assert [r.token_ids for r in out] == ref.tolist()
    assert 1 <= len(pipe.generate(prompts[0], flat[:1], SamplingConfig(max_new_tokens=3)).token_ids) <= 3


def test_create_pixtral_debug(tmp_path, images):
    """`vlmkit create --family llava --preset pixtral-debug` writes a folder that transformers
    loads strictly (equal logits) and that vlmkit's pipeline runs with the Pixtral processor."""
    from vlmkit.data.processors.pixtral import PixtralProcessor
    from vlmkit.pipeline import load
    from vlmkit.weights.create import create_checkpoint

    folder = create_checkpoint(tmp_path / "model", "pixtral-debug", family="llava")
    assert isinstance(load(folder, dtype="float32").processor, PixtralProcessor)
    assert_created_folder_runs(folder, tf.LlavaForConditionalGeneration,
                               [images["tall"], images["rgb"], images["wide"]], images["probe"])


def test_chat_with_two_images_matches_apply_chat_template(processors, images):
    """pixtral-12b's chat template (bundled for `vlmkit create`) through `.chat` equals transformers'
    `apply_chat_template(tokenize=True)` on a 2-image, multi-turn chat with a system prompt: the same ids, so
    each image's rows of [IMG] with [IMG_BREAK] between rows and [IMG_END] last sit where transformers puts them."""
    from vlmkit.data.chat_template import ChatTemplate
    from vlmkit.data.processor_files import bundled_chat_template

    ours, theirs = processors
    source = bundled_chat_template("pixtral")
    text = lambda t: {"type": "text", "content": t}  # noqa: E731 - the template reads "content"
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image", "image": images["wide"]}, text("What is it?")]},
                {"role": "assistant", "content": "A strip."},
                {"role": "user", "content": [text("Compare "), {"type": "image", "image": images["probe"]},
                                             text(" with the first.")]}]
    expected = theirs.apply_chat_template(messages, chat_template=source, tokenize=True, return_dict=True,
                                          return_tensors="pt")
    special = {"bos_token": "<bos>", "eos_token": "<eos>"}
    got = ours.chat(ChatTemplate(source=source, special_tokens=special), messages, [images["wide"], images["probe"]],
                    add_generation_prompt=False)
    _assert_same(got, expected)
    ids = got["input_ids"][0].tolist()
    img, brk, end = (ours.tokenizer.token_id(t) for t in ("[IMG]", "[IMG_BREAK]", "[IMG_END]"))
    marks = "".join({img: "i", brk: "b", end: "e"}.get(t, "") for t in ids)
    # wide 12 x 200 -> 8 x 64: one row of 8; probe 40 x 56 -> 40 x 56: 5 rows of 7.
    assert marks == "i" * 8 + "e" + "b".join(["i" * 7] * 5) + "e"
    assert ids.count(ours.tokenizer.token_id("<bos>")) == 1
