"""PaliGemmaProcessor vs transformers' PaliGemmaProcessor (same tokenizer folder, SigLIP PIL backend).

Every output (input_ids, attention_mask, token_type_ids, labels, pixel_values) must be identical:
pixel values with atol=0.
"""

from __future__ import annotations

import pytest
import torch

from vlmkit.data import IGNORE_INDEX, PaliGemmaProcessor, Tokenizer
from vlmkit.errors import DataError, PromptTooLongError, TokenizerError

transformers = pytest.importorskip("transformers")

NUM_IMAGE_TOKENS = 16

PROMPTS = ["caption en", "detect cat ; dog", "answer en what is  written here?\tand why", "ocr"]
SUFFIXES = ["a cat sitting on a mat", "<loc0001><loc0002><loc0100><loc1023> cat", "blue", ""]


@pytest.fixture(scope="module")
def processors(paligemma_tokenizer_dir):
    from transformers import AutoTokenizer, SiglipImageProcessorPil
    from transformers import PaliGemmaProcessor as HFProcessor

    image_processor = SiglipImageProcessorPil(size={"height": 224, "width": 224})
    image_processor.image_seq_length = NUM_IMAGE_TOKENS
    theirs = HFProcessor(image_processor=image_processor,
                         tokenizer=AutoTokenizer.from_pretrained(str(paligemma_tokenizer_dir)))
    ours = PaliGemmaProcessor(Tokenizer.from_folder(paligemma_tokenizer_dir), 224, NUM_IMAGE_TOKENS)
    return ours, theirs


@pytest.fixture
def images(rng_image):
    # non-square inputs, one with alpha, one already 224x224
    return [rng_image(100, 150, seed=1), rng_image(300, 200, "RGBA", seed=2), rng_image(224, 224, seed=3),
            rng_image(40, 90, "L", seed=4)]


def _assert_same(ours: dict, theirs, with_labels: bool) -> None:
    keys = {"input_ids", "attention_mask", "token_type_ids", "pixel_values"} | ({"labels"} if with_labels else set())
    assert set(ours) == keys
    for key in keys:
        assert ours[key].dtype == theirs[key].dtype, key
        torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("with_suffix", [False, True])
def test_batched_parity(processors, images, padding_side, with_suffix):
    ours, theirs = processors
    suffixes = SUFFIXES if with_suffix else None
    expected = theirs(images=images, text=PROMPTS, suffix=suffixes, padding="longest",
                      padding_side=padding_side, return_tensors="pt")
    got = ours(PROMPTS, images, suffixes, padding_side=padding_side, return_labels=with_suffix)
    _assert_same(got, expected, with_labels=with_suffix)
    assert (got["attention_mask"] == 0).any()  # the batch really is padded


@pytest.mark.parametrize("with_suffix", [False, True])
def test_single_prompt_parity(processors, images, with_suffix):
    ours, theirs = processors
    suffix = "two dogs" if with_suffix else None
    expected = theirs(images=images[0], text="caption es", suffix=suffix, return_tensors="pt")
    got = ours("caption es", images[0], suffix, return_labels=with_suffix)
    _assert_same(got, expected, with_labels=with_suffix)


def test_multi_image_parity(processors, images):
    ours, theirs = processors
    groups = [[images[0], images[1]], [images[2], images[3]]]
    expected = theirs(images=groups, text=PROMPTS[:2], suffix=SUFFIXES[:2], padding="longest",
                      return_tensors="pt")
    got = ours(PROMPTS[:2], groups, SUFFIXES[:2])
    _assert_same(got, expected, with_labels=True)
    assert got["pixel_values"].shape == (4, 3, 224, 224)
    for row, mask in zip(got["input_ids"], got["attention_mask"]):  # left padded: skip the pads
        assert (row[mask.bool()][: 2 * NUM_IMAGE_TOKENS] == ours.image_token_id).all()


def test_layout_and_labels(processors, images):
    ours, _ = processors
    tok = ours.tokenizer
    out = ours(["caption en"], [images[0]], ["a cat"], padding_side="right")
    ids, types, labels = out["input_ids"][0].tolist(), out["token_type_ids"][0].tolist(), out["labels"][0]
    prefix = [ours.image_token_id] * NUM_IMAGE_TOKENS + [tok.bos_id] + tok.encode("caption en\n")
    target = tok.encode("a cat") + [tok.eos_id]
    assert ids == prefix + target
    assert types == [0] * len(prefix) + [1] * len(target)
    assert labels.tolist() == [IGNORE_INDEX] * len(prefix) + target
    assert ours.decode(out["input_ids"]) == ["caption en\na cat"]


def test_errors(processors, images, paligemma_tokenizer_dir):
    ours, _ = processors
    with pytest.raises(DataError, match="2 image entries for 1 prompt"):
        ours("caption en", [images[0], images[1]])
    with pytest.raises(DataError, match="suffixes"):
        ours(PROMPTS[:2], images[:2], ["only one"])
    with pytest.raises(TokenizerError, match="<image>"):
        ours("<image> caption en", images[0])
    short = PaliGemmaProcessor(Tokenizer.from_folder(paligemma_tokenizer_dir), 224, NUM_IMAGE_TOKENS,
                               max_length=NUM_IMAGE_TOKENS + 3)
    short("ocr", images[0])  # image + bos + "ocr\n" fits
    with pytest.raises(PromptTooLongError, match=rf"needs \d+ tokens \({NUM_IMAGE_TOKENS} image"):
        short("a much longer prompt than that", images[0])


def test_fast_images_close_to_reference(paligemma_tokenizer_dir, images):
    from vlmkit.data import FAST_MEAN_LEVEL_DIFF

    tok = Tokenizer.from_folder(paligemma_tokenizer_dir)
    exact = PaliGemmaProcessor(tok, 224, NUM_IMAGE_TOKENS)("ocr", images[0])
    fast = PaliGemmaProcessor(tok, 224, NUM_IMAGE_TOKENS, fast_images=True)("ocr", images[0])
    assert torch.equal(exact["input_ids"], fast["input_ids"])
    levels = (exact["pixel_values"] - fast["pixel_values"]).abs() * 127.5
    assert levels.mean() < FAST_MEAN_LEVEL_DIFF and levels.max() <= 2 + 1e-3
