"""Build a PaliGemma-layout tokenizer folder from a base SentencePiece BPE model.

PaliGemma's vocabulary is Gemma's plus 1024 location tokens, 128 segmentation tokens and `<image>`:

    id:   0      1      2      3      4 ... V-1      V ... V+1023    V+1024 ... V+1151   V+1152
          <pad>  <eos>  <bos>  <unk>  base pieces    <loc0000>...     <seg000>...         <image>

(for the real model V = 256000: `<loc0000>` = 256000, `<seg000>` = 257024, `<image>` = 257152).
`build_paligemma_tokenizer` produces the same layout on any SentencePiece BPE model with byte
fallback, so tests and small bundled models get a tokenizer that behaves exactly like Gemma's:

* `tokenizer.model`  - the edited SentencePiece proto (Gemma's normaliser settings: no dummy prefix,
  no whitespace squashing, identity normalisation; base pieces re-scored so merge priority follows id).
* `tokenizer.json`   - the same vocabulary as a `tokenizers` BPE with Gemma's pipeline
  (" " -> "▁", byte fallback, no prefix space).
* `tokenizer_config.json`, `special_tokens_map.json` - what `transformers.AutoTokenizer` reads.

Why re-score: SentencePiece BPE merges by piece score, while `transformers` builds merges from a
`tokenizer.model` in id order. Sorting the base pieces by score and giving them scores -rank makes the
two orders identical, so all three readers (sentencepiece, tokenizers, transformers) agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vlmkit.errors import TokenizerError

# SentencePiece piece types (sentencepiece_model.proto, ModelProto.SentencePiece.Type).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

PAD, EOS, BOS, UNK, IMAGE = "<pad>", "<eos>", "<bos>", "<unk>", "<image>"


def loc_tokens(num_loc: int = 1024) -> list[str]:
    """`<loc0000>`..`<locNNNN>`: one token per bin of a normalised box coordinate (PaLI detection)."""
    return [f"<loc{i:04d}>" for i in range(num_loc)]


def seg_tokens(num_seg: int = 128) -> list[str]:
    """`<seg000>`..`<segNNN>`: codebook indices of PaLI's segmentation-mask VQ-VAE."""
    return [f"<seg{i:03d}>" for i in range(num_seg)]


@dataclass(kw_only=True, frozen=True)
class _Piece:
    piece: str
    score: float
    type: int


def _load_proto(path: Path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except FileNotFoundError:
        raise TokenizerError(f"base SentencePiece model {path} does not exist") from None
    except Exception as exc:  # protobuf raises DecodeError or RuntimeError depending on backend
        raise TokenizerError(f"{path} is not a SentencePiece model ({type(exc).__name__})") from None
    if not proto.pieces:
        raise TokenizerError(f"{path} is not a SentencePiece model (no pieces)")
    return proto


def _new_pieces(proto, path: Path, num_loc: int, num_seg: int) -> list[_Piece]:
    """The full PaliGemma-layout piece list (see module docstring) built from `proto`'s pieces."""
    if proto.trainer_spec.model_type != 2:  # ModelProto.TrainerSpec.ModelType.BPE
        raise TokenizerError(f"base model {path} is not a BPE SentencePiece model (Gemma's is BPE)")
    if not proto.trainer_spec.byte_fallback:
        raise TokenizerError(f"base model {path} has no byte fallback (Gemma's tokenizer needs it)")
    # The base's own control/unknown pieces (<s>, </s>, <unk>, ...) are replaced by Gemma's four.
    base = [p for p in proto.pieces if p.type not in (_CONTROL, _UNKNOWN)]
    normal = sorted((p for p in base if p.type == _NORMAL), key=lambda p: -p.score)  # stable
    others = [p for p in base if p.type != _NORMAL]
    added = loc_tokens(num_loc) + seg_tokens(num_seg)
    clash = {PAD, EOS, BOS, UNK, IMAGE, *added} & {p.piece for p in base}
    if clash:
        raise TokenizerError(f"base model {path} already has reserved piece(s) {sorted(clash)[:3]}")

    pieces = [_Piece(piece=t, score=0.0, type=_CONTROL) for t in (PAD, EOS, BOS)]
    pieces.append(_Piece(piece=UNK, score=0.0, type=_UNKNOWN))
    # Byte and user-defined pieces keep their place before the normal pieces, as SentencePiece
    # trainers lay them out; normal pieces get strictly decreasing scores -rank (why: module doc).
    pieces += [_Piece(piece=p.piece, score=0.0, type=p.type) for p in others]
    pieces += [_Piece(piece=p.piece, score=-float(r), type=_NORMAL) for r, p in enumerate(normal)]
    pieces += [_Piece(piece=t, score=0.0, type=_USER_DEFINED) for t in added]
    pieces.append(_Piece(piece=IMAGE, score=0.0, type=_CONTROL))
    return pieces


def _write_spm(proto, pieces: list[_Piece], out: Path) -> None:
    del proto.pieces[:]
    for p in pieces:
        proto.pieces.add(piece=p.piece, score=p.score, type=p.type)
    spec = proto.trainer_spec
    spec.vocab_size = len(pieces)
    spec.pad_id, spec.eos_id, spec.bos_id, spec.unk_id = 0, 1, 2, 3
    spec.pad_piece, spec.eos_piece, spec.bos_piece, spec.unk_piece = PAD, EOS, BOS, UNK
    # Gemma's normaliser: text is used as is ("▁" only replaces " "), no leading "▁" is added and
    # runs of spaces are kept - this is also the only behaviour `transformers`' GemmaTokenizer has.
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.precompiled_charsmap = b""
    norm.add_dummy_prefix = False
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    proto.ClearField("denormalizer_spec")
    out.write_bytes(proto.SerializeToString())


def bpe_merges(vocab: dict[str, int], mergeable: set[str]) -> list[tuple[str, str]]:
    """BPE merge list equivalent to SentencePiece BPE on a vocabulary whose ids follow score order.

    Every split `left + right` of a mergeable piece with both halves in `vocab` is a merge; merges are
    ranked by the id of the merged piece (lower id = higher SentencePiece score = merged first), then
    by shorter left half - the order `transformers` uses when it converts a `tokenizer.model`.
    """
    ranked: list[tuple[int, int, str, str]] = []
    for piece in mergeable:
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((vocab[piece], cut, left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def _tokenizer_json(pieces: list[_Piece]) -> str:
    """Serialise the vocabulary as a `tokenizers` BPE with GemmaTokenizer's exact pipeline."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab = {p.piece: i for i, p in enumerate(pieces)}
    mergeable = {p.piece for p in pieces if p.type == _NORMAL}
    model = BPE(vocab=vocab, merges=bpe_merges(vocab, mergeable), unk_token=UNK, fuse_unk=True,
                byte_fallback=True, dropout=None)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", "▁")
    # A no-op after the normaliser (no " " is left), kept because GemmaTokenizer declares it.
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    # Added tokens are matched in raw text before BPE; ids are their vocab ids since all are in vocab.
    tok.add_tokens([AddedToken(p.piece, special=p.type in (_CONTROL, _UNKNOWN), normalized=False)
                    for p in pieces if p.type in (_CONTROL, _UNKNOWN, _USER_DEFINED)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, 2)])
    return tok.to_str(pretty=False)


def _config_files(pieces: list[_Piece], out: Path) -> None:
    added = {
        str(i): {"content": p.piece, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": p.type in (_CONTROL, _UNKNOWN)}
        for i, p in enumerate(pieces) if p.type in (_CONTROL, _UNKNOWN, _USER_DEFINED)
    }
    named = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    config = {
        "tokenizer_class": "GemmaTokenizer",
        **named,
        "mask_token": None,  # Gemma reserves <mask>; PaliGemma never uses it, so it is not in vocab
        "additional_special_tokens": [IMAGE],
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "padding_side": "left",
        "model_max_length": 1_000_000_000,
        "added_tokens_decoder": added,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    special_map = {**named, "additional_special_tokens": [IMAGE]}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))


def build_paligemma_tokenizer(base_model: Path, out_dir: Path, *, num_loc: int = 1024,
                              num_seg: int = 128) -> Path:
    """Write a PaliGemma-layout tokenizer folder built from a base SentencePiece BPE model.

    Args:
        base_model: a SentencePiece `.model` file of type BPE with byte fallback.
        out_dir: folder to write (created if needed; existing tokenizer files are overwritten).
        num_loc, num_seg: number of `<locNNNN>` / `<segNNN>` tokens (PaliGemma: 1024 / 128).
    Returns:
        `out_dir`, holding tokenizer.model, tokenizer.json, tokenizer_config.json and
        special_tokens_map.json; its vocabulary size is `4 + base_pieces + num_loc + num_seg + 1`.
    Raises:
        TokenizerError: the base model is missing, unreadable, not BPE, lacks byte fallback, or
            already contains one of the reserved pieces.
    """
    base_model, out_dir = Path(base_model), Path(out_dir)
    if not 0 < num_loc <= 10_000 or not 0 <= num_seg <= 1_000:
        raise TokenizerError(f"num_loc={num_loc}/num_seg={num_seg} out of range (1..10000 / 0..1000)")
    proto = _load_proto(base_model)
    pieces = _new_pieces(proto, base_model, num_loc, num_seg)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_spm(proto, pieces, out_dir / "tokenizer.model")
    (out_dir / "tokenizer.json").write_text(_tokenizer_json(pieces), encoding="utf-8")
    _config_files(pieces, out_dir)
    return out_dir


def extend_tokenizer(folder: Path, special_tokens: tuple[str, ...] = (), chat_template: str | None = None) -> Path:
    """Add `special_tokens` (those not yet in the vocabulary, at the next ids) and a chat template
    to the tokenizer folder `folder`, in place.

    tokenizer.json, tokenizer_config.json ("added_tokens_decoder", "additional_special_tokens",
    "chat_template") and special_tokens_map.json are rewritten; tokenizer.model is removed when
    tokens were added, since its vocabulary would no longer match (readers prefer tokenizer.json).
    """
    from tokenizers import AddedToken, Tokenizer

    folder = Path(folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    new = [t for t in dict.fromkeys(special_tokens) if tok.token_to_id(t) is None]
    if new:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in new])
        (folder / "tokenizer.json").write_text(tok.to_str(pretty=False), encoding="utf-8")
        (folder / "tokenizer.model").unlink(missing_ok=True)
    config_path, map_path = folder / "tokenizer_config.json", folder / "special_tokens_map.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for t in new:
        config.setdefault("added_tokens_decoder", {})[str(tok.token_to_id(t))] = {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}
    extra = [t for t in new if t not in config.get("additional_special_tokens", [])]
    config["additional_special_tokens"] = [*config.get("additional_special_tokens", []), *extra]
    if chat_template is not None:
        config["chat_template"] = chat_template
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    if map_path.is_file():
        special_map = json.loads(map_path.read_text(encoding="utf-8"))
        special_map["additional_special_tokens"] = config["additional_special_tokens"]
        map_path.write_text(json.dumps(special_map, indent=2), encoding="utf-8")
    return folder


def pad_vocabulary(folder: Path, size: int) -> int:
    """Grow the tokenizer in `folder` (tokenizer.json, in place) to `size` ids with filler tokens
    `<vlmkit_pad_N>` (added tokens, not special), and return how many were added.

    Why: a preset named after a published checkpoint has that checkpoint's vocabulary (257,216
    ids for paligemma-3b-224) while `vlmkit create` writes a small trained tokenizer; without the
    fillers the folder would have the wrong embedding shape, or a random model would emit ids the
    tokenizer cannot decode. The fillers take the ids after the tokenizer's own, so every id the
    tokenizer had keeps its meaning.
    """
    from tokenizers import AddedToken, Tokenizer

    folder = Path(folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    missing = size - tok.get_vocab_size(with_added_tokens=True)
    if missing <= 0:
        return 0
    tok.add_tokens([AddedToken(f"<vlmkit_pad_{i}>", special=False, normalized=False) for i in range(missing)])
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=False), encoding="utf-8")
    (folder / "tokenizer.model").unlink(missing_ok=True)  # its vocabulary would no longer match
    return missing
