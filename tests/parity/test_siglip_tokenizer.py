"""SigLIP (1) captions from a `spiece.model` folder equal transformers' SiglipProcessor with the
slow, sentencepiece SiglipTokenizer (lowercase, punctuation removed, whitespace collapsed, </s>
appended, truncated and padded with </s> to 64: `padding="max_length", max_length=64`), on a
T5-style SentencePiece model trained here."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import sentencepiece as spm
import torch
import transformers as tf
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from vlmkit.data.processors.two_tower import TextCleanup, TwoTowerProcessor
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.models.siglip.config import SiglipConfig
from vlmkit.models.siglip.two_tower import SiglipTwoTower

CORPUS = ["a photo of a cat sitting on a red sofa", "two dogs playing in the snow", "numbers 123 456 and 7890",
          "the quick brown fox jumps over the lazy dog", "café naïve résumé über straße", "A Photo Of Cats!",
          "a man riding a bicycle down the street, next to a bus"] * 3
CAPTIONS = [
    "A Photo of a CAT!!", "hello,world", "  two   dogs\tplaying\n in  the SNOW  ", "a-b_c (d) [e] {f} <g> 'h' \"i\"",
    "Café NAÏVE Résumé", "Über-straße 123,456.78", "ﬁ ligature ½ and ① circled", "日本語 text 😀 emoji",
    "▁weird▁pieces", "a </s> in the middle", "</s>", "x <unk> y", "", "   ", "!!!", "...a...b...",
    "what's up? it's 5 o'clock", "a " * 100, "the quick brown fox " * 20,
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("siglip_spm")
    model = io.BytesIO()  # T5's layout: <pad> 0, </s> 1, <unk> 2, no BOS; unigram, NFKC, dummy prefix
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=120, model_type="unigram", pad_id=0,
        eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        character_coverage=1.0, num_threads=1, hard_vocab_limit=False, minloglevel=2)
    (root / "spiece.model").write_bytes(model.getvalue())
    tf.SiglipTokenizer(vocab_file=str(root / "spiece.model")).save_pretrained(root / "hf")
    return root / "hf"


def _model(positions: int = 64) -> SiglipTwoTower:
    cfg = SiglipConfig.from_preset("debug")
    with torch.device("meta"):
        return SiglipTwoTower(replace(cfg, text=replace(cfg.text, max_position_embeddings=positions)))


def test_from_folder_reads_spiece_model(folder):
    tok = Tokenizer.from_folder(folder)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))
    assert tok.backend_name == "sentencepiece" and tok.vocab_size == sp.GetPieceSize()
    assert (tok.eos_id, tok.pad_id) == (1, 1)  # tokenizer_config.json: </s> is both, as SiglipTokenizer
    assert tok.encode("a photo of a cat") == sp.EncodeAsIds("a photo of a cat")


def test_captions_equal_siglip_processor(folder):
    ref = tf.SiglipProcessor(image_processor=SiglipImageProcessorPil(), tokenizer=tf.SiglipTokenizer.from_pretrained(
        folder))(text=CAPTIONS, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    processor = TwoTowerProcessor.for_model(_model(64), Tokenizer.from_folder(folder), folder)
    assert processor.captions.cleanup == TextCleanup(lowercase=True, canonicalize=True)
    ids, mask = processor.tokenize(CAPTIONS)
    assert ids.shape == ref["input_ids"].shape == (len(CAPTIONS), 64)
    for i, caption in enumerate(CAPTIONS):
        assert ids[i].tolist() == ref["input_ids"][i].tolist(), caption
    if "attention_mask" in ref:
        for i, caption in enumerate(CAPTIONS):
            assert mask[i].tolist() == ref["attention_mask"][i].tolist(), caption
    assert ids[CAPTIONS.index("a " * 100), -1] == 1  # truncated to 63 tokens + </s>


def test_cleanup_follows_the_tokenizer_class(folder, tmp_path):
    assert TextCleanup.from_folder(folder)("A  Cat, (sitting)!") == "a cat sitting"
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "SiglipTokenizer", "do_lower_case": false}')
    assert TextCleanup.from_folder(tmp_path)("A  Cat!") == "A Cat"
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "GemmaTokenizerFast"}')
    assert not TextCleanup.from_folder(tmp_path).active
