"""Tokenizer builder layout, both Tokenizer backends, and agreement with transformers' GemmaTokenizer."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from sentencepiece import sentencepiece_model_pb2 as pb

from vlmkit.data import PaliGemmaProcessor, Tokenizer, build_paligemma_tokenizer
from vlmkit.errors import TokenizerError

BASE_PIECES = 32000 - 3  # mistral v1 minus its <unk>, <s>, </s>
V = 4 + BASE_PIECES  # first <loc> id


def _only(folder: Path, tmp_path: Path, keep: str) -> Path:
    """A copy of `folder` without the tokenizer file that is not `keep`."""
    out = tmp_path / keep.replace(".", "_")
    shutil.copytree(folder, out)
    (out / ("tokenizer.model" if keep == "tokenizer.json" else "tokenizer.json")).unlink()
    return out


@pytest.fixture(scope="module")
def folders(paligemma_tokenizer_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok_variants")
    return {"tokenizers": _only(paligemma_tokenizer_dir, tmp, "tokenizer.json"),
            "sentencepiece": _only(paligemma_tokenizer_dir, tmp, "tokenizer.model")}


# --- builder -----------------------------------------------------------------------------------


def test_builder_layout(paligemma_tokenizer_dir):
    proto = pb.ModelProto()
    proto.ParseFromString((paligemma_tokenizer_dir / "tokenizer.model").read_bytes())
    pieces = [p.piece for p in proto.pieces]
    assert pieces[:4] == ["<pad>", "<eos>", "<bos>", "<unk>"]
    assert pieces[V] == "<loc0000>" and pieces[V + 1023] == "<loc1023>"
    assert pieces[V + 1024] == "<seg000>" and pieces[V + 1151] == "<seg127>"
    assert pieces[V + 1152] == "<image>" and len(pieces) == V + 1153
    assert "<s>" not in pieces and "</s>" not in pieces
    types = {p.piece: p.type for p in proto.pieces}
    assert types["<bos>"] == types["<image>"] == 3 and types["<unk>"] == 2  # control / unknown
    assert types["<loc0007>"] == types["<seg100>"] == 4  # user-defined: decoded as text
    assert not proto.normalizer_spec.add_dummy_prefix
    scores = [p.score for p in proto.pieces if p.type == 1]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (paligemma_tokenizer_dir / name).is_file()


def test_builder_small_layout(spm_base_model, tmp_path):
    tok = Tokenizer.from_folder(build_paligemma_tokenizer(spm_base_model, tmp_path, num_loc=8, num_seg=2))
    assert tok.token_to_id("<loc0007>") == V + 7 and tok.token_to_id("<loc0008>") is None
    assert tok.token_to_id("<seg001>") == V + 9 and tok.image_token_id == V + 10 == tok.vocab_size - 1


def test_builder_errors(spm_base_model, tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        build_paligemma_tokenizer(tmp_path / "missing.model", tmp_path / "a")
    (tmp_path / "junk.model").write_bytes(b"\x00\xffnot a proto")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        build_paligemma_tokenizer(tmp_path / "junk.model", tmp_path / "b")
    for field, value, message in [("model_type", 1, "not a BPE"), ("byte_fallback", False, "byte fallback")]:
        proto = pb.ModelProto()
        proto.ParseFromString(spm_base_model.read_bytes())
        setattr(proto.trainer_spec, field, value)
        (tmp_path / "edited.model").write_bytes(proto.SerializeToString())
        with pytest.raises(TokenizerError, match=message):
            build_paligemma_tokenizer(tmp_path / "edited.model", tmp_path / "c")


# --- Tokenizer ---------------------------------------------------------------------------------


def test_from_folder_prefers_json(paligemma_tokenizer_dir, folders, tmp_path):
    assert Tokenizer.from_folder(paligemma_tokenizer_dir).backend_name == "tokenizers"
    assert Tokenizer.from_folder(folders["sentencepiece"]).backend_name == "sentencepiece"
    with pytest.raises(TokenizerError, match=str(tmp_path)):
        Tokenizer.from_folder(tmp_path)


@pytest.mark.parametrize("backend", ["tokenizers", "sentencepiece"])
def test_special_ids_and_loc_seg_tokens(folders, backend):
    tok = Tokenizer.from_folder(folders[backend])
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.image_token_id) == (0, 1, 2, V + 1152)
    assert tok.vocab_size == V + 1153
    for i in range(1024):
        assert tok.encode(f"<loc{i:04d}>") == [V + i]
    for i in range(128):
        assert tok.encode(f"<seg{i:03d}>") == [V + 1024 + i]
    ids = tok.encode("<loc0001><loc0999> cat<seg005>", add_bos=True, add_eos=True)
    assert ids[:3] == [2, V + 1, V + 999] and ids[-2:] == [V + 1024 + 5, 1]
    assert tok.is_special(tok.bos_id) and tok.is_special(tok.image_token_id) and not tok.is_special(V)
    assert tok.decode(ids) == "<loc0001><loc0999> cat<seg005>"  # loc/seg survive skip_special_tokens
    assert tok.decode(ids, skip_special_tokens=False).startswith("<bos><loc0001>")
    assert tok.id_to_token(V + 1152) == "<image>" and tok.token_to_id("<nonexistent>") is None
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_missing_image_token(spm_base_model, tmp_path):
    shutil.copy(spm_base_model, tmp_path / "tokenizer.model")
    tok = Tokenizer.from_folder(tmp_path)
    with pytest.raises(TokenizerError, match=r"has no <image> token"):
        tok.image_token_id
    with pytest.raises(TokenizerError, match="has no"):
        PaliGemmaProcessor(tok, image_size=224, num_image_tokens=4)


def _varied_strings(n: int = 300) -> list[str]:
    rng = random.Random(1234)
    atoms = list("abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,;:!?'\"()-_/\\@#") + [
        " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "é", "ü", "ß", "ñ", "Ω", "日本",
        "語", "한국", "ا", "ה", "😀", "🎉", "👍🏽", "—", "“", "”", "ﬁ", "½", "1000000", "3.14159",
        "<loc0000>", "<loc1023>", "<seg042>", "<image>", "<bos>", "<eos>", "caption en", "detect",
        " ; ", "\u200b", "\U0001f9ea", "ǅ", "İ",
    ]
    fixed = ["", " ", "hello world", " leading space", "trailing space ", "a  b   c", "tab\tsep",
             "new\nline\n", "12345678901234567890", "Ünïcödé façade naïve", "日本語のテキストです",
             "emoji 😀🎉👍🏽", "<loc0001><loc0002><loc0003><loc0004> cat ; <loc0010> dog",
             "segment <seg001><seg127>", "answer en What is written?\n"]
    return fixed + ["".join(rng.choice(atoms) for _ in range(rng.randint(1, 30))) for _ in range(n)]


@pytest.mark.parametrize("backend", ["tokenizers", "sentencepiece"])
def test_agrees_with_transformers(folders, backend):
    transformers = pytest.importorskip("transformers")
    ours = Tokenizer.from_folder(folders[backend])
    theirs = transformers.AutoTokenizer.from_pretrained(str(folders[backend]))
    assert type(theirs).__name__ == "GemmaTokenizer"
    for text in _varied_strings():
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False), repr(text)
        for skip in (True, False):
            assert ours.decode(ids, skip) == theirs.decode(ids, skip_special_tokens=skip), repr(text)
