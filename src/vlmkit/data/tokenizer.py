"""Text tokenizer for Gemma/PaliGemma-style vocabularies, backed by `tokenizers` or `sentencepiece`.

`Tokenizer.from_folder` reads a checkpoint's tokenizer folder:

* `tokenizer.json` (preferred) is run by the `tokenizers` library exactly as written. PaliGemma's file
  (and `build_paligemma_tokenizer`'s) has Gemma's pipeline: " " -> "▁", BPE with byte fallback, no
  prefix space.
* `tokenizer.model` (or SigLIP's T5-style `spiece.model`) alone is run by `sentencepiece`. Control
  pieces (`<bos>`, `<image>`, ...) written literally in the text are matched as tokens first, as
  `transformers` does; sentencepiece by itself would spell them out character by character. (SigLIP's
  caption clean-up, SiglipTokenizer's, is the two-tower processor's: `processors.two_tower`.)

Either way the ids equal those of `transformers`' GemmaTokenizer on the same folder
(tests/unit/test_tokenizer.py checks a few hundred strings). `encode` never adds BOS/EOS unless asked:
the PaliGemma processor places them itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol, Sequence

from vlmkit.errors import TokenizerError
from vlmkit.validate import read_json_object

IMAGE_TOKEN = "<image>"


class _Backend(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def token_to_id(self, token: str) -> int | None: ...
    def id_to_token(self, i: int) -> str | None: ...
    def vocab_size(self) -> int: ...
    def special_ids(self) -> set[int]: ...


class _HFBackend:
    """A `tokenizer.json` run by the `tokenizers` library (Rust, fast, batched)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self.tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerError(f"cannot read {path}: {str(exc).splitlines()[0][:120]}") from None

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.tok.id_to_token(i)

    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def special_ids(self) -> set[int]:
        return {i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}


class _SpmBackend:
    """A `tokenizer.model` run by `sentencepiece`, with control pieces matched in text first."""

    def __init__(self, path: Path):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"cannot read {path}: {str(exc).splitlines()[0][:120]}") from None
        n = self.sp.GetPieceSize()
        self._control = {i for i in range(n) if self.sp.IsControl(i)}
        self._special = self._control | {i for i in range(n) if self.sp.IsUnknown(i)}
        pieces = sorted((self.sp.IdToPiece(i) for i in self._control), key=len, reverse=True)
        # Longest first, so that a control piece that is a prefix of another never wins.
        self._split = re.compile("(" + "|".join(map(re.escape, pieces)) + ")") if pieces else None

    def encode(self, text: str) -> list[int]:
        if self._split is None:
            return self.sp.EncodeAsIds(text)
        ids: list[int] = []
        for k, part in enumerate(self._split.split(text)):
            # re.split with one capture group alternates text (even k) and matched piece (odd k).
            if k % 2:
                ids.append(self.sp.PieceToId(part))
            elif part:
                ids.extend(self.sp.EncodeAsIds(part))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        # sentencepiece renders control pieces as ""; spell them out like `tokenizers` does.
        out, run = [], []
        for i in ids:
            if i in self._control:
                out.append(self.sp.DecodeIds(run) + self.sp.IdToPiece(i))
                run = []
            else:
                run.append(i)
        return "".join(out) + self.sp.DecodeIds(run)

    def token_to_id(self, token: str) -> int | None:
        i = self.sp.PieceToId(token)
        # PieceToId maps unknown strings to unk_id; only a real piece named `token` counts.
        return i if self.sp.IdToPiece(i) == token else None

    def id_to_token(self, i: int) -> str | None:
        return self.sp.IdToPiece(i) if 0 <= i < self.sp.GetPieceSize() else None

    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def special_ids(self) -> set[int]:
        return set(self._special)


def _named_tokens(folder: Path) -> dict[str, str]:
    """bos/eos/pad/unk token strings declared by tokenizer_config.json / special_tokens_map.json."""
    named: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later file wins
        path = folder / name
        if not path.is_file():
            continue
        data = read_json_object(path, TokenizerError)
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value = data.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                named[key] = value
            elif value is not None:  # a number or list here would silently fall back to the default
                raise TokenizerError(f"{path}: {key}: expected a token string, got {type(value).__name__}")
    return named


class Tokenizer:
    """Encode/decode text with a Gemma-style vocabulary (see module docstring for the backends)."""

    _DEFAULTS = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}

    def __init__(self, backend: _Backend, *, name: str, named_tokens: dict[str, str] | None = None):
        self._backend = backend
        self.name = name
        self._named = {**self._DEFAULTS, **(named_tokens or {})}
        self._special = backend.special_ids()
        self._vocab_size = backend.vocab_size()

    @classmethod
    def from_folder(cls, path: str | Path) -> "Tokenizer":
        """Load `path/tokenizer.json` (preferred), `path/tokenizer.model` or `path/spiece.model`.

        Raises:
            TokenizerError: the folder has neither file, or the file is unreadable.
        """
        folder = Path(path)
        if (folder / "tokenizer.json").is_file():
            backend: _Backend = _HFBackend(folder / "tokenizer.json")
        elif spm := next((folder / n for n in ("tokenizer.model", "spiece.model") if (folder / n).is_file()), None):
            backend = _SpmBackend(spm)
        else:
            raise TokenizerError(f"no tokenizer.json, tokenizer.model or spiece.model in {folder}")
        return cls(backend, name=str(folder), named_tokens=_named_tokens(folder))

    @property
    def backend_name(self) -> str:
        """'tokenizers' or 'sentencepiece'."""
        return "tokenizers" if isinstance(self._backend, _HFBackend) else "sentencepiece"

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`; special tokens written in `text` (e.g. "<eos>") become their ids."""
        ids = self._backend.encode(text)
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids` (ints or a 1-D tensor). Location/segmentation tokens are text, not special."""
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self._vocab_size), None)
        if bad is not None:
            raise TokenizerError(f"token id {bad} is outside the vocabulary of {self.name} "
                                 f"(size {self._vocab_size})")
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special]
        return self._backend.decode(ids)

    def token_to_id(self, token: str) -> int | None:
        """Id of the single token `token`, or None if it is not in the vocabulary."""
        return self._backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        """Token string of id `i`, or None if out of range."""
        return self._backend.id_to_token(int(i))

    def is_special(self, i: int) -> bool:
        """True for control tokens (pad/eos/bos/unk/<image>...), which decode skips by default."""
        return int(i) in self._special

    def _required_id(self, key: str, what: str) -> int:
        token = self._named[key]
        i = self.token_to_id(token)
        if i is None:
            raise TokenizerError(f"tokenizer in {self.name} has no {token} token ({what})")
        return i

    @property
    def bos_id(self) -> int:
        return self._required_id("bos_token", "beginning of sequence")

    @property
    def eos_id(self) -> int:
        return self._required_id("eos_token", "end of sequence")

    @property
    def pad_id(self) -> int:
        return self._required_id("pad_token", "padding")

    @property
    def image_token_id(self) -> int:
        """Id of `<image>`; raises TokenizerError if the vocabulary has none (not a PaliGemma one)."""
        i = self.token_to_id(IMAGE_TOKEN)
        if i is None:
            raise TokenizerError(f"tokenizer in {self.name} has no {IMAGE_TOKEN} token; PaliGemma needs "
                                 "one (see vlmkit.data.build_paligemma_tokenizer)")
        return i

    @property
    def unk_token(self) -> str:
        """The unknown token's text (tokenizer_config.json / special_tokens_map.json, else "<unk>")."""
        return self._named["unk_token"]

    @property
    def special_tokens(self) -> list[str]:
        """The strings of the special (control / unknown / added special) tokens."""
        return [t for t in map(self.id_to_token, sorted(self._special)) if t]

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the model's embedding table may be padded larger)."""
        return self._vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, backend={self.backend_name}, vocab_size={self.vocab_size})"
