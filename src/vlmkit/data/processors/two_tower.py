"""The one processor of the image-text families (SigLIP / CLIP-style two-towers, CoCa), used by
training (`vlmkit.training.contrastive`), evaluation and inference (`vlmkit.two_tower`) alike, so
that a caption and an image become the same tensors wherever they are read.

Images (`TwoTowerImageProcessor`), from the checkpoint folder's preprocessor_config.json (else the
family's `preprocessor_config`, which `vlmkit create` and the training export write there):

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
Captions longer than the model's positions are cut, keeping the final <eos>.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from vlmkit.data.image import ImageSource
from vlmkit.data.processors import pixels
from vlmkit.data.processors.llava import ClipImageConfig
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.errors import CheckpointError
from vlmkit.models.common.contracts import TextFormat
from vlmkit.models.registry import family_of
from vlmkit.validate import read_json_object

PREPROCESSOR_NAME = "preprocessor_config.json"


def tokenize(tok: Tokenizer, texts: Sequence[str], fmt: TextFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> (input_ids [B, T] int64, attention_mask [B, T] int64), right-padded as `fmt`
    says (see the module docstring); T = fmt.max_len when `fmt.pad_to_max`, else the longest row."""
    rows = []
    for text in texts:
        body = tok.encode(text)[: fmt.max_len - 1 - fmt.bos]
        rows.append(([tok.bos_id] if fmt.bos else []) + body + [tok.eos_id])
    T = fmt.max_len if fmt.pad_to_max else max(map(len, rows), default=1)
    ids = torch.full((len(rows), T), tok.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def image_config(model, folder: str | Path | None = None) -> dict:
    """The image-processing metadata of `model` (a model or its config): `folder`'s
    preprocessor_config.json if it has one, else what the model's family writes there
    (`FamilySpec.preprocessor_config`)."""
    path = None if folder is None else Path(folder) / PREPROCESSOR_NAME
    if path is not None and path.is_file():
        return read_json_object(path)
    spec = family_of(model)
    if spec.preprocessor_config is None:
        raise CheckpointError(f"{spec.name} models have no image preprocessing; need an image-text model")
    return spec.preprocessor_config(getattr(model, "cfg", model))


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


@dataclass(frozen=True)
class TwoTowerProcessor:
    """Texts and images -> the inputs of an image-text model (`encode_text`, `encode_image`)."""

    tokenizer: Tokenizer
    text_format: TextFormat
    images: TwoTowerImageProcessor

    @classmethod
    def for_model(cls, model: nn.Module, tokenizer: Tokenizer,
                  folder: str | Path | None = None) -> "TwoTowerProcessor":
        """The processor of a loaded model (its `text_format`) and its folder (see `image_config`)."""
        return cls(tokenizer, model.text_format, TwoTowerImageProcessor.for_model(model, folder))

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (input_ids, attention_mask), each int64 [B, T]."""
        return tokenize(self.tokenizer, texts, self.text_format)

    def __call__(self, texts: Sequence[str] = (), images: Sequence[ImageSource] = ()) -> dict[str, torch.Tensor]:
        """{"input_ids", "attention_mask"} for `texts` and/or {"pixel_values"} for `images`."""
        batch = {}
        if texts:
            batch["input_ids"], batch["attention_mask"] = self.tokenize(texts)
        if images:
            batch["pixel_values"] = self.images(images)
        return batch
