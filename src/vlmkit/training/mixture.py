"""Training on a weighted mixture of sources: per-kind layouts and the mixture's batch stream.

`mixture_batches` reads `data.mixture` (`vlmkit.data.mixture.parse_mixture`), builds one
resumable `BatchStream` per source and joins them in a `MixtureStream` (one source per
micro-batch, drawn by weight; see `vlmkit.data.mixture` for why per micro-batch).

How the rows of each kind are laid out is the family's train format's business:

    kind          prefix_lm (PaliGemma)                     chat formats (LLaVA, Idefics3, ...)
    image-text    the family's own rows and collate, unchanged
    text          <bos> prefix "\\n" | suffix <eos>, no       {text}: raw text, <bos> text <eos>, loss
                  image tokens; {text} is a suffix after      on every text token; {prefix, suffix}: one
                  an empty prefix (loss on all of it)         user / assistant exchange; chat rows as is
    interleaved   all image tokens first, then the texts     each image where it is in the text, as the
                  joined by "\\n" as the suffix (PaliGemma's  chat template writes an image (`image_markup`),
                  only multi-image layout)                   expanded by the processor; loss on the text
                                                             pieces and <eos>, never on image tokens;
                                                             chat rows through the template

Video rows (chat rows with "videos", for a processor that takes videos: Qwen2-VL / Qwen2.5-VL) may
sit in image-text and interleaved sources, manifests or tar shards (frames as members): each
becomes the sample a plain manifest makes of it (`vlmkit.training.chat.chat_sample`), laid out by
the family's chat collator, so the same rows give the same batches. With
`data.max_tokens_per_batch` every source cuts its micro-batches by tokens (`TokenBudgetStream`;
text, image and video tokens, measured up front); the source draw stays one per micro-batch.

A batch without images has no `pixel_values`, so the generation adapter embeds the tokens
alone: the vision tower and projector do not run and get no gradient (their `.grad` stays None,
and AdamW leaves them unchanged on a step of text-only micro-batches).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from vlmkit.data.chat_template import ChatTemplate
from vlmkit.data.datasets import ShuffledStream
from vlmkit.data.mixture import MixtureSource, MixtureStream, parse_mixture
from vlmkit.data.processor import PaliGemmaProcessor
from vlmkit.data.processors.common import TypeCProcessor
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.errors import DataError, VlmkitError
from vlmkit.training.chat import ChatCollator, Span
from vlmkit.training.collate import BATCH_KEYS, BatchStream, manifest_texts
from vlmkit.training.mixture_shards import mixture_reader
from vlmkit.training.token_budget import make_batches

# Joins an interleaved document's pieces (texts and image placeholders).
PIECE_SEPARATOR = "\n"


def pair_messages(prefix: str, suffix: str) -> list[dict]:
    """A prefix/suffix pair as one user turn answered by the assistant (content as items)."""
    return [{"role": "user", "content": [{"type": "text", "text": prefix}]},
            {"role": "assistant", "content": [{"type": "text", "text": suffix}]}]


def image_markup(template: ChatTemplate, placeholder: str) -> str:
    """The text the chat template writes for one image (e.g. Qwen2-VL's
    `<|vision_start|><|image_pad|><|vision_end|>`, LLaVA's `<image>`): what a user turn gains when
    an image item is put before its text, stripped of whitespace. `placeholder` when the template
    does not write the image as one placeholder there (or cannot render such a turn)."""
    text = [{"type": "text", "text": "X"}]
    try:
        plain = template.render([{"role": "user", "content": text}])
        with_image = template.render([{"role": "user", "content": [{"type": "image"}, *text]}])
    except VlmkitError:
        return placeholder
    start = len(os.path.commonprefix([plain, with_image]))
    end = len(os.path.commonprefix([plain[start:][::-1], with_image[start:][::-1]]))
    markup = with_image[start:len(with_image) - end].strip()
    return markup if markup.count(placeholder) == 1 else placeholder


def document_text(pieces: Sequence[str | None], placeholder: str, eos: str) -> tuple[str, list[Span]]:
    """(raw text, trained character spans) of a document: its pieces joined by PIECE_SEPARATOR,
    `placeholder` where a piece is None (an image), `eos` at the end. The spans cover the text
    pieces and `eos`, not the separators or placeholders (image tokens are never targets)."""
    text, spans = "", []
    for i, piece in enumerate(pieces):
        text += PIECE_SEPARATOR if i else ""
        if piece is None:
            text += placeholder
        else:
            spans.append((len(text), len(text) + len(piece)))
            text += piece
    spans.append((len(text), len(text) + len(eos)))
    return text + eos, spans


class PrefixLMRows:
    """PaliGemma batches of text-only and interleaved samples (layout in the module doc):
    input_ids / attention_mask / token_type_ids / labels int64 [B, T] (right-padded), and
    pixel_values float32 [M, 3, H, W] when the samples hold images."""

    def __init__(self, processor: PaliGemmaProcessor):
        self.processor = processor
        # Measures rows for max_len (the training processor refuses longer ones instead).
        self._measure = PaliGemmaProcessor(processor.tokenizer, processor.image_size, processor.num_image_tokens)

    @staticmethod
    def pali_row(sample: dict) -> tuple[str, str, list]:
        """(prefix, suffix, images) of a sample."""
        if "messages" in sample:
            raise DataError("PaliGemma trains from prefix/suffix rows, not chat rows")
        if "document" in sample:
            return "", PIECE_SEPARATOR.join(p for p in sample["document"] if p is not None), sample["images"]
        return sample["prefix"], sample["suffix"], sample["images"]

    def __call__(self, samples: list[dict]):
        rows = [self.pali_row(s) for s in samples]
        images = [r[2] for r in rows] if any(r[2] for r in rows) else None
        batch = self.processor([r[0] for r in rows], images, suffixes=[r[1] for r in rows], padding_side="right")
        return {k: batch[k] for k in BATCH_KEYS if k in batch}

    def length(self, sample: dict) -> int:
        """Tokens of one sample, image tokens included."""
        prefix, suffix, images = self.pali_row(sample)
        ids = self._measure([prefix], None, suffixes=[suffix])["input_ids"]  # [1, T] text tokens
        return ids.shape[1] + len(images) * self.processor.num_image_tokens


class DocumentChatCollator(ChatCollator):
    """`ChatCollator` that also takes raw documents ({"document"}) and prefix/suffix pairs: a
    document is laid out by `document_text` with the template's `image_markup` where each image
    sits (its placeholder expanded like a chat turn's images), a pair becomes one user /
    assistant exchange; chat rows (videos too) as `ChatCollator` lays them out."""

    def __init__(self, processor: TypeCProcessor, template: ChatTemplate, eos_token: str):
        super().__init__(processor, template)
        self.eos_token = eos_token
        self.image_markup = image_markup(template, processor.placeholder)

    def _one(self, sample: dict) -> tuple[str, list[Span]]:
        if "document" in sample:
            return document_text(sample["document"], self.image_markup, self.eos_token)
        if "messages" in sample:
            return super()._one(sample)
        return super()._one({"messages": pair_messages(sample["prefix"], sample["suffix"])})


class MixtureBatches(MixtureStream):
    """`MixtureStream` that also knows its sources' datasets (for the run's summary line)."""

    def __init__(self, streams: list[BatchStream], sources: list[MixtureSource], datasets: list, seed: int,
                 collate: Callable[[list[dict]], dict]):
        super().__init__(streams, [s.weight for s in sources], seed, [s.name for s in sources], collate=collate)
        self.sources, self.datasets = sources, datasets
        self.imageless = any(s.kind == "text" for s in sources)  # some batches run no vision forward

    def __len__(self) -> int:
        """Rows of the map-style sources (tar shards have no length)."""
        return sum(len(d) for d in self.datasets if hasattr(d, "__len__"))


def _rows_collate(inputs, tok: Tokenizer, prefix_lm: bool):
    """The collate function (with `.length`) of text-only and interleaved samples for this format."""
    if prefix_lm:
        return PrefixLMRows(inputs.processor)
    chat = inputs.collate
    return DocumentChatCollator(chat.processor, chat.template, tok.id_to_token(tok.eos_id))


def _dataset(cfg, inputs, source: MixtureSource, rows_collate, prefix_lm: bool):
    """The rows of one source; a bad row's error line starts with the source's name."""
    try:
        if source.kind == "image-text":
            return inputs.dataset(source.source, True)
        reader = mixture_reader(source.kind, source.source)
        return reader(source.source, cfg.data.image_root, cfg.data.validate_images, chat=not prefix_lm,
                      max_len=cfg.data.max_length, length=rows_collate.length, bad_rows=cfg.data.bad_rows,
                      budget=cfg.data.max_tokens_per_batch, processor=rows_collate.processor,
                      video_frames=cfg.data.video_frames, video_fps=cfg.data.video_fps)
    except DataError as e:
        raise DataError(f"data.mixture source {source.name}: {e}") from None


def mixture_batches(cfg, inputs, tok: Tokenizer, info, prefix_lm: bool) -> MixtureBatches:
    """This rank's micro-batches of `cfg.data.mixture` (see the module doc).

    `inputs` is the family's row-to-batch recipe (`recipes._Inputs`): its dataset and collate
    serve the image-text sources; text-only and interleaved sources get `_rows_collate`'s.
    Source i shuffles with seed data.shuffle_seed + i; the source draw uses data.shuffle_seed.
    """
    sources = parse_mixture(cfg.data.mixture)
    rows_collate = _rows_collate(inputs, tok, prefix_lm)
    mbs = cfg.micro_batch_size(info.world_size)
    datasets, streams = [], []
    for i, source in enumerate(sources):
        dataset = _dataset(cfg, inputs, source, rows_collate, prefix_lm)
        if dataset.skipped and info.is_main:
            print(f"data: skipped {sum(dataset.skipped.values())} bad rows of {source.name} ({source.source}: "
                  f"{', '.join(f'{k}={v}' for k, v in sorted(dataset.skipped.items()))})", flush=True)
        stream = ShuffledStream(dataset, seed=cfg.data.shuffle_seed + i, rank=info.rank,
                                world_size=info.world_size, equal_split=True)
        collate = inputs.collate if source.kind == "image-text" else rows_collate
        streams.append(make_batches(stream, inputs.processor, mbs, collate, cfg.data.max_tokens_per_batch))
        datasets.append(dataset)
    default = BatchStream(None, inputs.processor, mbs, collate_fn=inputs.collate)  # eval batches: the family's rows
    return MixtureBatches(streams, sources, datasets, cfg.data.shuffle_seed, default.collate)


def mixture_texts(mixture: str) -> list[str]:
    """Every text of a mixture's sources (for training a small tokenizer)."""
    texts = []
    for source in parse_mixture(mixture):
        if source.kind == "image-text":
            texts += manifest_texts(source.source)
            continue
        reader = mixture_reader(source.kind, source.source)
        for row in reader(source.source, validate=False, chat=True).rows:
            texts += [row[k] for k in ("text", "prefix", "suffix") if isinstance(row.get(k), str)]
            texts += [t for t in row.get("texts", []) if isinstance(t, str)]
            for m in row.get("messages", []):
                items = [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]
                texts += [c["text"] for c in items if c["type"] == "text"]
    return texts
