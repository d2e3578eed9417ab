"""The one processor of the image-text families (SigLIP / CLIP-style two-towers, CoCa), used by
training (`vlmkit.training.contrastive`), evaluation and inference (`vlmkit.two_tower`) alike, so
that a caption and an image become the same tensors wherever they are read.

Images, from the checkpoint folder's image processor fields (preprocessor_config.json, or
transformers 5's processor_config.json; else the family's `preprocessor_config`, which `vlmkit
create` and the training export write there). Their `image_processor_type` (the family's when the
folder names none) picks the image side, as transformers' AutoImageProcessor does
(`PROCESSOR_KINDS`): a Siglip2ImageProcessor folder (SigLIP 2 NaFlex: patch_size, max_num_patches)
gets `siglip2.NaflexImages` (aspect-preserving resize, packed patches + spatial_shapes) and
`siglip2.NaflexCaptions` (Siglip2Processor's text); every other one the resize / crop below
(`TwoTowerImageProcessor`):

    RGB uint8 -> PIL resize (SiglipImageProcessor: stretch to size.height x size.width, bicubic;
    a CLIP-style config: shortest edge, then centre crop) -> uint8 [3, H, W]
              -> float64 * rescale_factor -> float32 -> (x - mean) / std  -> float32 [3, H, W]

which is transformers' SiglipImageProcessor / CLIPImageProcessor (PIL backend) bit for bit. The two
steps are separate because training datasets keep the small uint8 image (`to_uint8`, per sample)
and a batch is normalised in `collate` (`normalize`); inference runs both (`__call__`).

Text (`tokenize`), laid out as the model's `text_format` (a typed property of the model) says:
SigLIP: caption <eos>, padded to every text position (its text tower pools the LAST position, so
captions must be padded alike in training and inference, as SigLIP was trained, i.e. transformers'
`padding="max_length"`); CoCa: <bos> caption <eos>, padded to the longest row (it pools a CLS token
of its own). The CLIP-style variant here is the SigLIP tower with CLIP's loss, so it pools the same
way; a real CLIP text tower (pooling at the EOS position) is not an image-text family in vlmkit.
Captions longer than the model's positions are cut, keeping the final <eos>; one that ends in a
written <eos> gets no second one (SiglipTokenizer's rule). Before tokenizing, a caption gets the clean-up its folder's tokenizer class applies
(`TextCleanup`): transformers' SiglipTokenizer (SigLIP's `spiece.model` folders) lowercases,
drops ASCII punctuation and collapses whitespace (`canonicalize_text`), text between special
tokens written in the caption cleaned piece by piece, as transformers splits them off first.

Every image side has `to_uint8` (one image -> resized uint8 [3, H, W], what a training dataset
keeps), `batch` (resized images -> the keyword inputs of `encode_image`) and `inputs` (both).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from vlmkit.data.image import ImageSource
from vlmkit.data.processors import pixels, siglip2
from vlmkit.data.processors.common import read_processor_files
from vlmkit.data.processors.llava import ClipImageConfig
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.errors import CheckpointError, TokenizerError
from vlmkit.models.common.contracts import TextFormat
from vlmkit.models.registry import family_of
from vlmkit.validate import read_json_object

PREPROCESSOR_NAME = "preprocessor_config.json"


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)
_CLEANING_TOKENIZERS = {  # tokenizer_config.json "tokenizer_class" -> its caption clean-up
    "SiglipTokenizer": lambda cfg: TextCleanup(lowercase=bool(cfg.get("do_lower_case", True)), canonicalize=True),
    "Siglip2Tokenizer": lambda cfg: TextCleanup(lowercase=True),
}


@dataclass(frozen=True, kw_only=True)
class TextCleanup:
    """What a folder's tokenizer class does to a caption before tokenizing (module docstring).

    lowercase: str.lower (SiglipTokenizer's do_lower_case, Siglip2Tokenizer's Lowercase normaliser).
    canonicalize: SiglipTokenizer.canonicalize_text: drop ASCII punctuation, every whitespace run
        -> one space, strip.
    """

    lowercase: bool = False
    canonicalize: bool = False

    @classmethod
    def from_folder(cls, folder: str | Path | None) -> "TextCleanup":
        """The clean-up of the tokenizer class named in `folder`'s tokenizer_config.json (none else)."""
        path = None if folder is None else Path(folder) / "tokenizer_config.json"
        if path is None or not path.is_file():
            return cls()
        cfg = read_json_object(path, TokenizerError)
        rule = _CLEANING_TOKENIZERS.get(str(cfg.get("tokenizer_class", "")).removesuffix("Fast"))
        return rule(cfg) if rule else cls()

    @property
    def active(self) -> bool:
        return self.lowercase or self.canonicalize

    def __call__(self, text: str) -> str:
        if self.lowercase:
            text = text.lower()
        if self.canonicalize:
            text = re.sub(r"\s+", " ", text.translate(_NO_PUNCTUATION)).strip()
        return text


def _without_prefix(tok: Tokenizer, text: str) -> list[int]:
    """Ids of `text` with no SentencePiece dummy prefix ("▁"): encode unk + text and drop the unk
    token's pieces, transformers' SiglipTokenizer._tokenize trick (<unk> is plain text there)."""
    return tok.encode(tok.unk_token + text)[len(tok.encode(tok.unk_token)):]


def encode_clean(tok: Tokenizer, text: str, clean: TextCleanup) -> list[int]:
    """Ids of `text` cleaned by `clean`, as the folder's tokenizer class makes them.

    Lowercase only (Siglip2Tokenizer): the lowercased text. Canonicalize (SiglipTokenizer, slow,
    legacy): "▁" + text, special tokens written in it (e.g. "</s>") split off first with the
    whitespace around them (transformers' added tokens strip left and right) and kept as their ids,
    each piece between them canonicalised and encoded without a dummy prefix; a lone "▁" before a
    leading special token is dropped, as SiglipTokenizer.tokenize does.
    """
    if not clean.canonicalize:
        return tok.encode(clean(text))
    specials = sorted(tok.special_tokens, key=len, reverse=True)
    parts = re.split(r"\s*(" + "|".join(map(re.escape, specials)) + r")\s*", "▁" + text.replace("▁", " "))
    # re.split with one group alternates text (even k) and the matched special token (odd k).
    pieces = [[tok.token_to_id(part)] if k % 2 else _without_prefix(tok, clean(part)) if clean(part) else []
              for k, part in enumerate(parts)]
    if len(parts) > 1 and pieces[0] == [tok.token_to_id("▁")]:  # "▁" then a special token written first
        pieces[0] = []
    return [i for ids in pieces for i in ids]


def tokenize(tok: Tokenizer, texts: Sequence[str], fmt: TextFormat,
             clean: TextCleanup = TextCleanup()) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> (input_ids [B, T] int64, attention_mask [B, T] int64), right-padded as `fmt`
    says (see the module docstring); T = fmt.max_len when `fmt.pad_to_max`, else the longest row."""
    rows = []
    for text in texts:
        body = encode_clean(tok, text, clean)
        if body[-1:] == [tok.eos_id]:  # a caption that ends in a written EOS keeps it, no second one
            body = body[:-1]
        rows.append(([tok.bos_id] if fmt.bos else []) + body[: fmt.max_len - 1 - fmt.bos] + [tok.eos_id])
    T = fmt.max_len if fmt.pad_to_max else max(map(len, rows), default=1)
    ids = torch.full((len(rows), T), tok.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


@dataclass(frozen=True)
class TokenizerCaptions:
    """The caption side of the resize / crop families: `tokenize` with the model's layout and the
    folder tokenizer's clean-up."""

    tokenizer: Tokenizer
    text_format: TextFormat
    cleanup: TextCleanup = TextCleanup()

    @classmethod
    def build(cls, tokenizer: Tokenizer, fmt: TextFormat, folder: str | Path | None) -> "TokenizerCaptions":
        return cls(tokenizer, fmt, TextCleanup.from_folder(folder))

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return tokenize(self.tokenizer, texts, self.text_format, self.cleanup)


def image_config(model, folder: str | Path | None = None) -> dict:
    """The image-processing metadata of `model` (a model or its config): `folder`'s image
    processor fields if it has them (preprocessor_config.json or processor_config.json), else
    what the model's family writes there (`FamilySpec.preprocessor_config`); a folder that names
    no `image_processor_type` gets the family's."""
    spec = family_of(model)
    default = None if spec.preprocessor_config is None else spec.preprocessor_config(getattr(model, "cfg", model))
    found = read_processor_files(folder)[0] if folder is not None else {}
    if found:
        kind = (default or {}).get("image_processor_type")
        return {**({"image_processor_type": kind} if kind else {}), **found}
    if default is None:
        raise CheckpointError(f"{spec.name} models have no image preprocessing; need an image-text model")
    return default


@dataclass(frozen=True)
class TwoTowerImageProcessor:
    """Image side of the processor; `config` holds the resize / crop / normalisation fields."""

    config: ClipImageConfig

    @classmethod
    def from_dict(cls, d: dict, name: str = PREPROCESSOR_NAME) -> "TwoTowerImageProcessor":
        """From a preprocessor_config.json dict (SigLIP's has no centre crop, so none is the default)."""
        return cls(ClipImageConfig.from_dict({"do_center_crop": False, **d}, name))

    @classmethod
    def for_model(cls, model: nn.Module, folder: str | Path | None = None) -> "TwoTowerImageProcessor":
        return cls.from_dict(image_config(model, folder))

    @property
    def nominal_size(self) -> int:
        """The height of the images this processor makes (synthetic scenes are drawn at it)."""
        return (self.config.crop_size if self.config.do_center_crop else self.config.size).get("height")

    def to_uint8(self, image: ImageSource | torch.Tensor) -> torch.Tensor:
        """One image (a source, or a uint8 tensor [3, h, w]) -> the resized uint8 [3, H, W]."""
        if isinstance(image, torch.Tensor):
            rgb = image.permute(1, 2, 0).numpy()  # [3, h, w] -> [h, w, 3]
        else:
            rgb = pixels.load_rgb(image)
        out = self.config.resize_and_crop(np.ascontiguousarray(rgb))
        return torch.from_numpy(np.array(out)).permute(2, 0, 1).contiguous()  # [H, W, 3] -> [3, H, W]

    def normalize(self, images: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """uint8 [3, h, w] images (resized here if they are not yet) -> float32 [B, 3, H, W]."""
        if not len(images):
            raise ValueError("no images to process")
        crop = self.config.crop_size if self.config.do_center_crop else self.config.size
        target = (3, crop.get("height"), crop.get("width"))
        batch = torch.stack([i if tuple(i.shape) == target else self.to_uint8(i) for i in images])  # [B, 3, H, W]
        B, _, H, W = batch.shape
        # The B images as one tall [B*H, W, 3] image: `to_pixel_values` is elementwise per channel,
        # so this is its arithmetic exactly, in one pass instead of B.
        tall = batch.permute(0, 2, 3, 1).reshape(B * H, W, 3).numpy()
        return pixels.to_pixel_values(tall, self.config.norm).view(3, B, H, W).transpose(0, 1).contiguous()

    def __call__(self, images: Sequence[ImageSource]) -> torch.Tensor:
        """B image sources -> pixel_values float32 [B, 3, H, W]."""
        return self.normalize([self.to_uint8(image) for image in images])

    def batch(self, images: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """uint8 [3, h, w] images -> {"pixel_values": float32 [B, 3, H, W]} (`normalize`)."""
        return {"pixel_values": self.normalize(images)}

    def inputs(self, images: Sequence[ImageSource]) -> dict[str, torch.Tensor]:
        """B image sources -> {"pixel_values": float32 [B, 3, H, W]}."""
        return {"pixel_values": self(images)}


class ImageSide(Protocol):
    """What the two-tower processor asks of an image processor (module docstring)."""

    nominal_size: int

    def to_uint8(self, image: ImageSource | torch.Tensor) -> torch.Tensor: ...
    def batch(self, images: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]: ...
    def inputs(self, images: Sequence[ImageSource]) -> dict[str, torch.Tensor]: ...


Captions = Callable[[Sequence[str]], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass(frozen=True)
class ProcessorKind:
    """An image processor type's two sides: `images(fields, name)` and
    `captions(tokenizer, text_format, tokenizer folder)`."""

    images: Callable[[dict, str], ImageSide]
    captions: Callable[[Tokenizer, TextFormat, Path | None], Captions]


def _naflex_captions(tok: Tokenizer, fmt: TextFormat, folder: Path | None) -> Captions:
    if folder is None:
        raise TokenizerError("SigLIP 2 NaFlex captions need the tokenizer folder (its tokenizer.json)")
    return siglip2.NaflexCaptions(folder, fmt.max_len)


# image_processor_type (without transformers' "Fast" / "Pil" suffix) -> its processor; others: DEFAULT_KIND.
PROCESSOR_KINDS = {"Siglip2ImageProcessor": ProcessorKind(siglip2.NaflexImages.from_dict, _naflex_captions)}
DEFAULT_KIND = ProcessorKind(TwoTowerImageProcessor.from_dict, TokenizerCaptions.build)


def processor_kind(fields: dict) -> ProcessorKind:
    """The processor of image processor `fields` (their image_processor_type, see above)."""
    name = str(fields.get("image_processor_type", "")).removesuffix("Fast").removesuffix("Pil")
    return PROCESSOR_KINDS.get(name, DEFAULT_KIND)


def image_processor(fields: dict, name: str = PREPROCESSOR_NAME) -> ImageSide:
    """The image side for image processor `fields` (a preprocessor_config.json dict)."""
    return processor_kind(fields).images(fields, name)


@dataclass(frozen=True)
class TwoTowerProcessor:
    """Texts and images -> the inputs of an image-text model (`encode_text`, `encode_image`).

    captions: texts -> (input_ids, attention_mask); images: an `ImageSide`."""

    captions: Captions
    images: ImageSide

    @classmethod
    def for_model(cls, model: nn.Module, tokenizer: Tokenizer, folder: str | Path | None = None, *,
                  fields: dict | None = None, tokenizer_folder: str | Path | None = None) -> "TwoTowerProcessor":
        """The processor of a loaded model (its `text_format`) and its folder: image `fields` (default
        `image_config(model, folder)`) pick the kind; captions read `tokenizer_folder` (default the
        folder `tokenizer` was read from)."""
        fields = image_config(model, folder) if fields is None else fields
        kind = processor_kind(fields)
        tok_folder = Path(tokenizer_folder or tokenizer.name)
        return cls(kind.captions(tokenizer, model.text_format, tok_folder if tok_folder.is_dir() else None),
                   kind.images(fields, PREPROCESSOR_NAME))

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (input_ids, attention_mask), each int64 [B, T]."""
        return self.captions(list(texts))

    def __call__(self, texts: Sequence[str] = (), images: Sequence[ImageSource] = ()) -> dict[str, torch.Tensor]:
        """{"input_ids", "attention_mask"} for `texts` and/or the image inputs of `images`
        ({"pixel_values"}, + "spatial_shapes" for NaFlex)."""
        batch = {}
        if texts:
            batch["input_ids"], batch["attention_mask"] = self.tokenize(texts)
        if images:
            batch |= self.images.inputs(images)
        return batch
