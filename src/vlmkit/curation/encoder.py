"""Embeddings of rows with a vlmkit image-text checkpoint (SigLIP / CLIP two-tower, CoCa), batched.

Axes: B rows of a batch, E embedding width.

Images are resized to the tower's square input with bilinear filtering and normalised as
`vlmkit train-contrastive` does (`preprocess_images_fast`), and captions are tokenised as in
training (`tokenize_captions`), so scores match the model's training distribution. Embeddings
are cached in the row (``_emb:<folder>:image`` / ``:text``), so the score filter, embedding dedup
and k-means balancing with the same folder encode each row once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vlmkit.curation.rules import RuleBase, chunks, image_of
from vlmkit.errors import CheckpointError


class TwoTowerEncoder:
    """encode(rows, "image" | "text") -> float32 numpy [B, E], L2-normalised."""

    def __init__(self, folder: str, batch_size: int = 64) -> None:
        from vlmkit.data.tokenizer import Tokenizer
        from vlmkit.weights.hf import load_hf, read_config

        path = Path(folder)
        if not path.is_dir():
            raise CheckpointError(f"score model folder {folder} does not exist")
        _, spec = read_config(path)
        if spec.kind != "image-text":
            raise CheckpointError(f"{folder} holds a {spec.name} model; a score model must be an image-text "
                                  "two-tower (siglip) or CoCa checkpoint")
        self.model = load_hf(path, dtype="float32").eval()
        self.tok = Tokenizer.from_folder(path)
        self.folder, self.batch_size = str(folder), batch_size
        self.image_size = self.model.cfg.vision.image_size

    def pixels(self, rows: list[dict]) -> torch.Tensor:
        """The rows' images as the model's pixel_values [B, 3, S, S] float32."""
        from vlmkit.data.image import preprocess_images_fast

        s = self.image_size
        arrays = [np.asarray(image_of(r).resize((s, s), resample=2)) for r in rows]  # 2 = bilinear
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # [B, 3, S, S] uint8
        return preprocess_images_fast(pixels, s, resample="bilinear")

    def tokens(self, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' captions as (input_ids, attention_mask) [B, T] int64, laid out as in training."""
        from vlmkit.training.contrastive import tokenize_captions

        return tokenize_captions(self.tok, [r["text"] for r in rows], self.model)

    @torch.no_grad()
    def _encode(self, rows: list[dict], what: str) -> np.ndarray:
        if what == "image":
            out = self.model.encode_image(self.pixels(rows))
        else:
            out = self.model.encode_text(*self.tokens(rows))
        return out.float().numpy()

    def encode(self, rows: list[dict], what: str) -> np.ndarray:
        """Embeddings [B, E] of `rows` (image or caption); rows already encoded are not redone."""
        key = f"_emb:{self.folder}:{what}"
        todo = [r for r in rows if key not in r]
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i : i + self.batch_size]
            for r, e in zip(chunk, self._encode(chunk, what)):
                r[key] = e
        if not rows:
            return np.zeros((0, 0), np.float32)
        return np.stack([r[key] for r in rows]).astype(np.float32)


class ModelRule(RuleBase):
    """A rule scored with the image-text checkpoint folder `config.model` (loaded once per run)."""

    needs_image = True

    def __init__(self, config, resources) -> None:
        super().__init__(config, resources)
        self.encoder = resources.encoder(config.model)

    def embed_stream(self, rows, what: str) -> np.ndarray:
        """Embeddings [N, E] of a stream of rows, a batch at a time: only the embeddings are held."""
        parts = [self.encoder.encode(chunk, what) for chunk in chunks(rows, self.resources.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
