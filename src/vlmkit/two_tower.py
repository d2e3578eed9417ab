"""Image-text models from the library: embeddings, zero-shot classification and retrieval.

    tt = vlmkit.TwoTower.load("runs/siglip/export")          # a siglip, siglip2 (NaFlex) or coca folder
    tt.embed_images(["cat.jpg"])                            # float32 [1, E], L2-normalised
    tt.classify(["cat.jpg"], ["cat", "dog"])                # [[("cat", 0.93), ("dog", 0.07)]]
    tt.retrieve("a red circle", ["a.png", "b.png"], top_k=1)  # [(0, 0.41)]

Axes: I images, T texts, C classes, P prompt templates, E embedding width.

Any registered family of kind "image-text" loads here (its model has `encode_image`,
`encode_text`, `logits` and `text_format`); texts and images go through the same
`TwoTowerProcessor` as in training, whose image side the folder's image processor type picks:
SigLIP 2 NaFlex folders (`siglip2`) read images at their own aspect ratio, packed into one
sequence per batch (`encode_image(pixel_values, spatial_shapes)`), the others a fixed-size batch.
Zero-shot classification scores each image against prompt-ensembled class embeddings (CLIP sec.
3.1.4, `vlmkit.eval.retrieval.zeroshot_weights`) with the model's own logits, exp(t') * cos + b;
the probabilities are a softmax over the classes for a model trained with the softmax (CLIP /
InfoNCE) loss and an independent sigmoid per class for one trained with SigLIP's sigmoid loss, as
each loss defines them (`cfg.contrastive_loss`).
Retrieval ranks by cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vlmkit.data.image import ImageSource
from vlmkit.data.processors.two_tower import TwoTowerProcessor
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.errors import CheckpointError, DataError
from vlmkit.eval.retrieval import build_zeroshot_classifier

DEFAULT_TEMPLATES = ("a photo of a {}.",)
Ranked = list[list[tuple[str, float]]]  # per image: (label, probability), most likely first


def check_labels(labels: Sequence[str], templates: Sequence[str]) -> tuple[list[str], list[str]]:
    """Class names and templates stripped and checked: DataError for none, blanks or duplicates."""
    names = [str(n).strip() for n in labels]
    if not names or any(not n for n in names):
        raise DataError("zero-shot classification needs non-empty class labels (e.g. --labels \"cat,dog\")")
    if len(set(names)) != len(names):
        raise DataError(f"class labels repeat: {sorted({n for n in names if names.count(n) > 1})}")
    templates = list(templates)
    if not templates or any("{}" not in t for t in templates):
        raise DataError("every template needs a '{}' placeholder for the class name, e.g. \"a photo of a {}.\"")
    return names, templates


class TwoTower:
    """A loaded image-text model with its processor; see the module docstring."""

    def __init__(self, model: torch.nn.Module, processor: TwoTowerProcessor, folder: Path | None = None,
                 family: str | None = None, batch_size: int = 32):
        self.model, self.processor, self.folder, self.family = model, processor, folder, family
        self.batch_size = batch_size

    @classmethod
    def load(cls, source: str | Path, dtype=None, device="cpu") -> "TwoTower":
        """A checkpoint folder (or a name `resolve_model` knows) of an image-text family."""
        from vlmkit.weights.hf import load_hf, read_config
        from vlmkit.weights.registry import resolve_model

        folder = resolve_model(source)
        _, fam = read_config(folder)
        if fam.kind != "image-text":
            raise CheckpointError(f"{folder} holds a {fam.name} model ({fam.kind}); embed, classify, retrieve "
                                  "and the zeroshot / retrieval evals need an image-text model (siglip, coca)")
        model = load_hf(folder, dtype=dtype, device=device)
        processor = TwoTowerProcessor.for_model(model, Tokenizer.from_folder(folder), folder)
        return cls(model, processor, folder, fam.name)

    def _to_model(self, x: torch.Tensor, cast: bool = True) -> torch.Tensor:
        """`x` on the model's device (and in its dtype if `cast`: token ids stay int64)."""
        weight = next(self.model.parameters())
        return x.to(weight.device, weight.dtype) if cast else x.to(weight.device)

    @torch.no_grad()
    def embed_images(self, images: Sequence[ImageSource]) -> torch.Tensor:
        """I images -> float32 [I, E] L2-normalised embeddings (`batch_size` at a time)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            inputs = self.processor.images.inputs(images[i:i + self.batch_size])  # pixel_values (+ spatial_shapes)
            inputs = {k: self._to_model(v, v.is_floating_point()) for k, v in inputs.items()}
            out.append(self.model.encode_image(**inputs).float().cpu())
        if not out:
            raise DataError("no images to embed")
        return torch.cat(out)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """T texts -> float32 [T, E] L2-normalised embeddings (`batch_size` at a time)."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            ids, mask = self.processor.tokenize(list(texts[i:i + self.batch_size]))
            out.append(self.model.encode_text(self._to_model(ids, False), self._to_model(mask, False)).float().cpu())
        if not out:
            raise DataError("no texts to embed")
        return torch.cat(out)

    def class_embeddings(self, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
        """C class names x P templates -> float32 [C, E] prompt-ensembled class embeddings."""
        names, templates = check_labels(labels, templates)
        return build_zeroshot_classifier(names, templates, self.embed_texts)

    @torch.no_grad()
    def logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Normalised [I, E] and [T, E] -> the model's logits_per_image [I, T] in float32."""
        return self.model.logits(self._to_model(image_embeds), self._to_model(text_embeds)).float().cpu()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [I, C] -> class probabilities [I, C]: softmax over classes, or a sigmoid per
        class for a model trained with the sigmoid loss (module docstring)."""
        return logits.sigmoid() if self.model.cfg.contrastive_loss == "sigmoid" else logits.softmax(-1)

    def classify(self, images: Sequence[ImageSource], labels: Sequence[str],
                 templates: Sequence[str] = DEFAULT_TEMPLATES, top_k: int | None = None) -> Ranked:
        """Zero-shot: for each image its (label, probability) pairs, most likely first (`top_k` of them)."""
        names, _ = check_labels(labels, templates)
        probs = self.probabilities(self.logits(self.embed_images(images), self.class_embeddings(names, templates)))
        k = len(names) if top_k is None else min(top_k, len(names))
        top = probs.topk(k, dim=-1)
        return [[(names[c], float(p)) for p, c in zip(vals.tolist(), idx.tolist())]
                for vals, idx in zip(top.values, top.indices)]

    def retrieve(self, query: str | torch.Tensor, images: Sequence[ImageSource] | torch.Tensor,
                 top_k: int = 5) -> list[tuple[int, float]]:
        """The `top_k` images most similar to a text query: [(index, cosine similarity)], best first.

        `images` may be their embeddings [I, E] (`embed_images`), so that a folder is embedded once
        for many queries; `query` may be a text embedding [E].
        """
        image_embeds = images if isinstance(images, torch.Tensor) else self.embed_images(images)
        q = query if isinstance(query, torch.Tensor) else self.embed_texts([query])[0]
        scores = image_embeds.float() @ q.float()  # [I]
        top = scores.topk(min(top_k, len(scores)))
        return list(zip(top.indices.tolist(), top.values.tolist()))
