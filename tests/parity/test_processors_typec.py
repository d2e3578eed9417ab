"""Type C processors vs transformers' own (PIL image backends), on folders saved by transformers.

For each family a transformers processor (tiny sizes) is saved with `save_pretrained`; vlmkit's
processor is read back from that folder. input_ids / attention_mask must be equal, pixel_values
bit-identical (torch.equal: both resize uint8 images with PIL and use the same float arithmetic),
and the family's extra outputs (image_sizes, pixel_attention_mask, num_patches) equal.
"""

from __future__ import annotations

import json

import pytest
import torch

from vlmkit.errors import DataError

transformers = pytest.importorskip("transformers")

FAMILY_TOKENS = (["<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<img>", "</img>",
                  "<IMG_CONTEXT>", "<video>", "<image_placeholder>"]
                 + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)])
INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                   "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}


@pytest.fixture(scope="module")
def family_tokenizer_dir(tmp_path_factory, paligemma_tokenizer_dir):
    """The test vocabulary + every family's image tokens, as a Llama-class tokenizer that transformers
    loaded and saved again (so tokenizer.json holds the pipeline transformers 5 itself runs, BOS
    added by its post-processor), like a llava-hf checkpoint folder."""
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_file(str(paligemma_tokenizer_dir / "tokenizer.json"))
    tok.add_special_tokens(FAMILY_TOKENS)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", bos)])
    raw = tmp_path_factory.mktemp("family_tokenizer_raw")
    tok.save(str(raw / "tokenizer.json"))
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
              "pad_token": "<pad>", "unk_token": "<unk>", "extra_special_tokens": INTERNVL_TOKENS}
    (raw / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path_factory.mktemp("family_tokenizer")
    transformers.AutoTokenizer.from_pretrained(str(raw)).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def hf_tokenizer(family_tokenizer_dir):
    return transformers.AutoTokenizer.from_pretrained(str(family_tokenizer_dir))


@pytest.fixture
def images(rng_image):
    """RGB, RGBA, L, tiny and very wide / very tall images."""
    return {"rgb": rng_image(50, 75, seed=1), "rgba": rng_image(90, 60, "RGBA", seed=2),
            "gray": rng_image(40, 90, "L", seed=3), "tiny": rng_image(3, 5, seed=4),
            "wide": rng_image(12, 200, seed=5), "tall": rng_image(150, 20, seed=6)}


def _save(hf_processor, tmp_path):
    hf_processor.save_pretrained(str(tmp_path))
    return tmp_path


def _batch_parity(pair, prompts, images, keys, padding_side=None) -> dict:
    """Run both processors on one padded batch; assert `keys` equal; return ours."""
    ours, theirs = pair
    side = {} if padding_side is None else {"padding_side": padding_side}
    expected = theirs(text=prompts, images=images, padding="longest", return_tensors="pt", **side)
    got = ours(prompts, images, **side)
    _assert_equal(got, expected, keys)
    return got


def _assert_equal(ours: dict, theirs, keys) -> None:
    for key in keys:
        expected = theirs[key]
        expected = torch.as_tensor(expected) if not isinstance(expected, torch.Tensor) else expected
        assert ours[key].dtype == expected.dtype, key
        assert ours[key].shape == expected.shape, (key, ours[key].shape, expected.shape)
        assert torch.equal(ours[key], expected), key


# ---- LLaVA 1.5: CLIP shortest-edge resize + centre crop ----------------------------------------------


def _llava_pair(family: str, image_processor, hf_tokenizer, tmp_path, strategy="default", additional=1):
    """(ours, theirs) for LlavaProcessor / LlavaNextProcessor: 8-px patches, CLIP's class token dropped."""
    from vlmkit.data import processors

    theirs = getattr(transformers, family)(image_processor=image_processor, tokenizer=hf_tokenizer, patch_size=8,
                                           vision_feature_select_strategy=strategy,
                                           num_additional_image_tokens=additional)
    return getattr(processors, family).from_folder(_save(theirs, tmp_path)), theirs


@pytest.fixture
def llava(hf_tokenizer, tmp_path):
    image_processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                         crop_size={"height": 32, "width": 32})
    return _llava_pair("LlavaProcessor", image_processor, hf_tokenizer, tmp_path)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_llava_parity(llava, images, padding_side):
    prompts = ["USER: <image>\nWhat is this? ASSISTANT:", "<image> and <image><image>: compare", "no image"]
    flat = [images["rgb"], images["rgba"], images["gray"], images["wide"]]
    got = _batch_parity(llava, prompts, flat, ["input_ids", "attention_mask", "pixel_values"], padding_side)
    assert (got["input_ids"] == llava[0].image_token_id).sum() == 4 * 16  # (32 / 8)^2 + 1 - 1 per image


def test_llava_pixels_every_mode(llava, images):
    ours, theirs = llava
    for name, image in images.items():
        expected = theirs.image_processor(image, return_tensors="pt")["pixel_values"]
        assert torch.equal(ours.pixel_values([image]), expected), name


def test_placeholder_count_errors(llava, images):
    ours, _ = llava
    with pytest.raises(DataError, match=r"got 2 image\(s\) but the prompts hold 1 <image> placeholder"):
        ours(["<image> hi"], [images["rgb"], images["gray"]])
    with pytest.raises(DataError, match=r"got 0 image\(s\) but the prompts hold 1"):
        ours("<image> hi")
    with pytest.raises(DataError, match=r"prompt 1 holds 1 <image> placeholder\(s\) but got 2"):
        ours(["<image> a", "<image> b"], [[images["rgb"]], [images["rgb"], images["rgb"]]])


# ---- LLaVA-NeXT: anyres tiles + base image, unpadding, image_newline ---------------------------------


@pytest.fixture
def llava_next(hf_tokenizer, tmp_path):
    pinpoints = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
    image_processor = transformers.LlavaNextImageProcessorPil(size={"shortest_edge": 32},
                                                              crop_size={"height": 32, "width": 32},
                                                              image_grid_pinpoints=pinpoints)
    return _llava_pair("LlavaNextProcessor", image_processor, hf_tokenizer, tmp_path)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_llava_next_parity(llava_next, images, padding_side):
    prompts = ["[INST] <image>\nWhat is this? [/INST]", "<image><image> compare <image>", "<image>"]
    flat = [images["rgb"], images["wide"], images["tall"], images["gray"], images["rgba"]]
    got = _batch_parity(llava_next, prompts, flat, ["input_ids", "attention_mask", "pixel_values", "image_sizes"],
                        padding_side)
    assert got["pixel_values"].shape[1] > 2  # really tiled


def test_llava_next_token_counts(llava_next, images):
    """Tokens per image (base + unpadded tiles + one newline per row) equal transformers' expansion."""
    ours, theirs = llava_next
    for name, image in images.items():
        expected = theirs(text="<image>", images=[image], return_tensors="pt")
        got = ours("<image>", [image])
        n_expected = int((expected["input_ids"] == ours.image_token_id).sum())
        assert int((got["input_ids"] == ours.image_token_id).sum()) == n_expected, name
        assert torch.equal(got["pixel_values"], expected["pixel_values"]), name


def test_llava_next_full_features_and_stretched_base(hf_tokenizer, images, tmp_path):
    """The "full" feature strategy, no class token, size as height/width, 16-px tiles (2 x 2 patches)."""
    image_processor = transformers.LlavaNextImageProcessorPil(
        size={"height": 16, "width": 16}, crop_size={"height": 16, "width": 16},
        image_grid_pinpoints=[[16, 32], [32, 16], [32, 32], [48, 16], [16, 48], [48, 48]])
    pair = _llava_pair("LlavaNextProcessor", image_processor, hf_tokenizer, tmp_path, "full", 0)
    flat = [images["tall"], images["tiny"], images["wide"], images["rgb"]]
    _batch_parity(pair, ["<image><image>", "x <image> y <image>"], flat,
                  ["input_ids", "attention_mask", "pixel_values", "image_sizes"])


# ---- Idefics3 / SmolVLM: longest-edge resize, N x M tiles + global image -----------------------------


IDEFICS3_KEYS = ["input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"]


def _idefics3_image_processor(cls_name="Idefics3ImageProcessorPil", **kw):
    cls = getattr(transformers, cls_name)
    return cls(size={"longest_edge": 96}, max_image_size={"longest_edge": 32}, **kw)


@pytest.fixture
def idefics3(hf_tokenizer, tmp_path):
    from vlmkit.data.processors import Idefics3Processor

    theirs = transformers.Idefics3Processor(image_processor=_idefics3_image_processor(), tokenizer=hf_tokenizer,
                                            image_seq_len=4)
    return Idefics3Processor.from_folder(_save(theirs, tmp_path)), theirs


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_idefics3_parity(idefics3, images, padding_side):
    prompts = ["<|im_start|>User:<image>What is this?<end_of_utterance>\nAssistant:",
               "<image> vs <image><image>", "text only"]
    groups = [[images["rgb"]], [images["wide"], images["tiny"], images["rgba"]], []]
    got = _batch_parity(idefics3, prompts, groups, IDEFICS3_KEYS, padding_side)
    text = idefics3[0].tokenizer.tok.decode(got["input_ids"][0].tolist(), skip_special_tokens=False)
    assert "<row_2_col_3>" in text and "\n\n<fake_token_around_image><global-img>" in text


def test_idefics3_every_mode_and_no_splitting(idefics3, images, hf_tokenizer, tmp_path):
    from vlmkit.data.processors import Idefics3Processor

    ours, theirs = idefics3
    for name, image in images.items():
        expected = theirs(text="<image>", images=[image], return_tensors="pt")
        _assert_equal(ours("<image>", [image]), expected, ["input_ids", "pixel_values", "pixel_attention_mask"])
    flat = transformers.Idefics3Processor(image_processor=_idefics3_image_processor(do_image_splitting=False),
                                          tokenizer=hf_tokenizer, image_seq_len=3)
    ours_flat = Idefics3Processor.from_folder(_save(flat, tmp_path / "flat"))
    _batch_parity((ours_flat, flat), ["<image> a", "<image><image> b"], [images["tall"], images["gray"], images["rgb"]],
                  IDEFICS3_KEYS)


def test_smolvlm_processor_parity(hf_tokenizer, images, tmp_path, monkeypatch):
    """SmolVLM's processor (same image maths and strings) against the same vlmkit processor.

    Its video slot would import torchvision's video processor, which cannot load here: the class
    check of the (absent) video processor is skipped; images never touch it."""
    pytest.importorskip("num2words")
    from vlmkit.data.processors import Idefics3Processor

    monkeypatch.setattr(transformers.SmolVLMProcessor, "check_argument_for_proper_class", lambda *a: None)
    image_processor = _idefics3_image_processor("SmolVLMImageProcessorPil")
    theirs = transformers.SmolVLMProcessor(image_processor=image_processor, tokenizer=hf_tokenizer,
                                           video_processor=None, image_seq_len=4)
    # the older checkpoint layout: preprocessor_config.json + a flat processor_config.json
    image_processor.save_pretrained(str(tmp_path))
    hf_tokenizer.save_pretrained(str(tmp_path))
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_seq_len": 4}))
    ours = Idefics3Processor.from_folder(tmp_path)
    prompts = ["User:<image>Describe.<end_of_utterance>\nAssistant:", "<image><image>"]
    _batch_parity((ours, theirs), prompts, [[images["tall"]], [images["rgb"], images["wide"]]], IDEFICS3_KEYS)


def test_idefics3_too_many_tiles(hf_tokenizer, images, tmp_path):
    from vlmkit.data.processors import Idefics3Processor

    big = transformers.Idefics3Processor(
        image_processor=transformers.Idefics3ImageProcessorPil(size={"longest_edge": 8 * 16},
                                                               max_image_size={"longest_edge": 16}),
        tokenizer=hf_tokenizer, image_seq_len=2)
    ours = Idefics3Processor.from_folder(_save(big, tmp_path))
    with pytest.raises(DataError, match=r"image 0 splits into 1x8 tiles but the tokenizer has no <row_1_col_8>"):
        ours("<image>", [images["wide"]])


# ---- InternVL: dynamic tiling with thumbnail (GotOcr2 crop-to-patches) -------------------------------


@pytest.fixture
def internvl(hf_tokenizer, tmp_path, monkeypatch):
    """InternVLProcessor without its (torchvision) video processor; folder in the preprocessor_config layout."""
    from vlmkit.data.processors import InternVLProcessor

    monkeypatch.setattr(transformers.InternVLProcessor, "check_argument_for_proper_class", lambda *a: None)
    image_processor = transformers.GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, max_patches=6,
                                                            image_mean=[0.485, 0.456, 0.406],
                                                            image_std=[0.229, 0.224, 0.225])
    theirs = transformers.InternVLProcessor(image_processor=image_processor, tokenizer=hf_tokenizer,
                                            video_processor=None, image_seq_length=2)
    image_processor.save_pretrained(str(tmp_path))
    hf_tokenizer.save_pretrained(str(tmp_path))
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_seq_length": 2}))
    return InternVLProcessor.from_folder(tmp_path), theirs


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_internvl_parity(internvl, images, padding_side):
    prompts = ["<|im_start|>user\n<IMG_CONTEXT>\nWhat is this?<|im_end|>\n<|im_start|>assistant\n",
               "<IMG_CONTEXT>\n<IMG_CONTEXT>\ncompare", "no image here"]
    flat = [images["rgb"], images["wide"], images["gray"]]
    got = _batch_parity(internvl, prompts, flat, ["input_ids", "attention_mask", "pixel_values"], padding_side)
    processed = internvl[1].image_processor(flat, crop_to_patches=True, return_tensors="pt")
    assert got["num_patches"].tolist() == list(processed["num_patches"])
    assert got["num_patches"].tolist()[1] > 2  # the wide image is tiled (+ thumbnail)


def test_internvl_every_mode_and_left_default(internvl, images):
    ours, theirs = internvl
    for name, image in images.items():
        expected = theirs(text="<IMG_CONTEXT>", images=[image], return_tensors="pt")
        _assert_equal(ours("<IMG_CONTEXT>", [image]), expected, ["input_ids", "pixel_values"])
    got = _batch_parity(internvl, ["<IMG_CONTEXT> a", "b"], [images["tall"]], ["input_ids", "attention_mask"])
    assert got["attention_mask"][1, 0] == 0  # left padded, as InternVLProcessor


# ---- DeepSeek-VL: longest-side resize + pad to a square with the mean colour -------------------------


@pytest.fixture
def deepseek_vl(family_tokenizer_dir, tmp_path):
    """DeepseekVLProcessor reads its placeholder from the tokenizer's extra special "image_token".

    do_convert_rgb=True: transformers' default keeps RGBA / L as 4 / 1 channels and then fails to pad
    them with the 3-channel mean colour; vlmkit always converts to RGB first."""
    import shutil

    from vlmkit.data.processors import DeepseekVLProcessor

    tok_dir = tmp_path / "tok"
    shutil.copytree(family_tokenizer_dir, tok_dir)
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    config["extra_special_tokens"] = {"image_token": "<image_placeholder>"}
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(config))
    image_processor = transformers.DeepseekVLImageProcessorPil(size={"height": 24, "width": 24}, min_size=4,
                                                                 do_convert_rgb=True)
    theirs = transformers.DeepseekVLProcessor(image_processor=image_processor, num_image_tokens=9,
                                              tokenizer=transformers.AutoTokenizer.from_pretrained(str(tok_dir)))
    return DeepseekVLProcessor.from_folder(_save(theirs, tmp_path / "proc")), theirs


def test_deepseek_vl_parity(deepseek_vl, images):
    ours, theirs = deepseek_vl
    prompts = ["User: <image_placeholder>Describe it.\n\nAssistant:", "<image_placeholder><image_placeholder>"]
    _batch_parity(deepseek_vl, prompts, [images["wide"], images["rgba"], images["tiny"]],
                  ["input_ids", "attention_mask", "pixel_values"])
    for name, image in images.items():
        expected = theirs.image_processor(image, return_tensors="pt")["pixel_values"]
        assert torch.equal(ours.pixel_values([image]), expected), name


# ---- chat template -> processor, as processor.apply_chat_template(tokenize=True) ---------------------


@pytest.mark.parametrize("template", ["llava-1.5", "bos-chatml"])
def test_chat_matches_apply_chat_template(llava, images, template):
    """The rendered conversation goes through the processor; no second BOS when the template writes it."""
    from pathlib import Path

    from vlmkit.data.chat_template import ChatTemplate

    ours, theirs = llava
    assets = Path(__file__).parents[1] / "assets" / "chat_templates"
    source = ((assets / "llava-1.5.jinja").read_text() if template == "llava-1.5" else
              "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
              "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    messages = [{"role": "user", "content": [{"type": "image", "image": images["rgb"]},
                                             {"type": "text", "text": "Hi?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
                {"role": "user", "content": [{"type": "image", "image": images["wide"]},
                                             {"type": "text", "text": "And this one?"}]}]
    expected = theirs.apply_chat_template(messages, chat_template=source, tokenize=True, return_dict=True,
                                          add_generation_prompt=True, return_tensors="pt")
    got = ours.chat(ChatTemplate(source=source, special_tokens={"bos_token": "<bos>"}), messages,
                    [images["rgb"], images["wide"]])
    _assert_equal(got, expected, ["input_ids", "attention_mask", "pixel_values"])
    assert (got["input_ids"][0] == ours.tokenizer.token_id("<bos>")).sum() == 1
