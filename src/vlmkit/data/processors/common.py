"""Pieces every Type C processor shares: the checkpoint's config files, the prompt tokenizer,
placeholder expansion and batch padding.

Text follows transformers' `ProcessorMixin.__call__`: the images of all prompts form one flat list
in prompt order; the k-th image placeholder in the batch (e.g. `<image>`) is replaced by the k-th
image's expansion string (a run of image tokens, tile markers, ...); the expanded text is then
tokenized with the tokenizer's own special-token post-processing (BOS where the checkpoint adds
one) and padded with the tokenizer's pad token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from vlmkit.data.image import ImageSource
from vlmkit.errors import ConfigError, DataError, TokenizerError


# transformers 5 tokenizer classes whose class-level default padding_side is "left"; save_pretrained
# does not write a class default into tokenizer_config.json, so it is only known from the class name.
LEFT_PADDING_TOKENIZER_CLASSES = frozenset(
    f"{name}{suffix}" for name in ("LlamaTokenizer", "CodeLlamaTokenizer", "GemmaTokenizer", "CohereTokenizer",
                                   "XLNetTokenizer", "Siglip2Tokenizer") for suffix in ("", "Fast"))


def read_processor_files(folder: str | Path) -> tuple[dict, dict]:
    """(image processor fields, processor fields) of a checkpoint folder.

    transformers 5.x writes one processor_config.json with the image processor nested under
    "image_processor"; older checkpoints have preprocessor_config.json (image fields) and a flat
    processor_config.json. Both layouts are read; missing files give empty dicts.
    """
    folder = Path(folder)

    def read(name: str) -> dict:
        path = folder / name
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {str(exc).splitlines()[0][:120]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        return data

    processor = read("processor_config.json")
    image = processor.pop("image_processor", None)
    if image is None:
        image = read("preprocessor_config.json")
    return image, processor


def size_field(d: dict, key: str, name: str, *allowed: str) -> dict[str, int]:
    """A transformers size dict (e.g. {"shortest_edge": 336}) with only `allowed` keys, as ints."""
    value = d.get(key)
    if isinstance(value, int) and "height" in allowed:
        value = {"height": value, "width": value}
    if not isinstance(value, dict) or not value or set(value) - set(allowed):
        raise ConfigError(f"{name}: '{key}' must be a dict with keys among {list(allowed)}, got {value!r}")
    return {k: int(v) for k, v in value.items()}


class PromptTokenizer:
    """A checkpoint's `tokenizer.json`, run with its own post-processor (the BOS transformers adds).

    Args:
        tokenizer: a `tokenizers.Tokenizer`.
        pad_token: the padding token's text (tokenizer_config.json "pad_token"), or None.
        padding_side: the tokenizer's default side (tokenizer_config.json "padding_side", else the
            default of its transformers class).
    """

    def __init__(self, tokenizer, pad_token: str | None = None, padding_side: str = "right",
                 bos_token: str | None = None):
        self.tok = tokenizer
        self.bos_token = bos_token
        self.pad_id = None if pad_token is None else self.token_id(pad_token)
        self.padding_side = padding_side

    @classmethod
    def from_folder(cls, folder: str | Path) -> "PromptTokenizer":
        """Read tokenizer.json (+ the pad token from tokenizer_config.json) from `folder`."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{folder} has no tokenizer.json")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerError(f"cannot read {path}: {str(exc).splitlines()[0][:120]}") from None
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        pad, bos = config.get("pad_token"), config.get("bos_token")
        default_side = "left" if config.get("tokenizer_class") in LEFT_PADDING_TOKENIZER_CLASSES else "right"
        return cls(tok, pad.get("content") if isinstance(pad, dict) else pad,
                   padding_side=config.get("padding_side", default_side),
                   bos_token=bos.get("content") if isinstance(bos, dict) else bos)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def token_id(self, token: str) -> int:
        """Id of a single vocabulary token; TokenizerError naming it when absent."""
        i = self.tok.token_to_id(token)
        if i is None:
            raise TokenizerError(f"the tokenizer has no {token} token")
        return i

    def has_token(self, token: str) -> bool:
        return self.tok.token_to_id(token) is not None


def images_per_prompt(prompts: Sequence[str], images, placeholder: str) -> list[list[ImageSource]]:
    """Split `images` (one image, a flat list, or one list per prompt) into one list per prompt,
    checking that prompt i holds exactly as many `placeholder`s as it gets images."""
    counts = [p.count(placeholder) for p in prompts]
    if images is None:
        images = []
    elif not isinstance(images, (list, tuple)):
        images = [images]
    if images and all(isinstance(g, (list, tuple)) for g in images):
        groups = [list(g) for g in images]
        if len(groups) != len(prompts):
            raise DataError(f"got {len(groups)} image lists for {len(prompts)} prompt(s)")
    else:
        if len(images) != sum(counts):
            raise DataError(f"got {len(images)} image(s) but the prompts hold {sum(counts)} {placeholder} "
                            "placeholder(s); put one placeholder in the text per image")
        starts = [sum(counts[:i]) for i in range(len(counts))]
        groups = [list(images[s:s + n]) for s, n in zip(starts, counts)]
    for i, (group, n) in enumerate(zip(groups, counts)):
        if len(group) != n:
            raise DataError(f"prompt {i} holds {n} {placeholder} placeholder(s) but got {len(group)} image(s)")
    return groups


def expand(prompt: str, placeholder: str, expansions: Sequence[str]) -> str:
    """Replace the k-th `placeholder` of `prompt` by `expansions[k]` (counts already checked)."""
    pieces = prompt.split(placeholder)
    out = [pieces[0]]
    for expansion, piece in zip(expansions, pieces[1:]):
        out += [expansion, piece]
    return "".join(out)


def tokenize_batch(tokenizer: PromptTokenizer, texts: Sequence[str], padding_side: str,
                   add_special_tokens: bool = True) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask int64 [B, T], padded to the longest text on `padding_side`."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    rows = [tokenizer.encode(t, add_special_tokens) for t in texts]
    longest = max(len(r) for r in rows)
    if tokenizer.pad_id is None and any(len(r) != longest for r in rows):
        raise TokenizerError("prompts of different lengths need a pad token (tokenizer_config.json 'pad_token')")
    ids = torch.full((len(rows), longest), tokenizer.pad_id or 0, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for b, row in enumerate(rows):
        cols = slice(longest - len(row), longest) if padding_side == "left" else slice(0, len(row))
        ids[b, cols] = torch.tensor(row, dtype=torch.long)
        mask[b, cols] = 1
    return {"input_ids": ids, "attention_mask": mask}


def prompts_list(prompts: str | Sequence[str]) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise DataError("no prompts given")
    return prompts


def build_text(tokenizer: PromptTokenizer, prompts: Sequence[str], placeholder: str, expansions: Sequence[str],
               padding_side: str, add_special_tokens: bool = True) -> dict[str, torch.Tensor]:
    """Replace the k-th `placeholder` of the batch by `expansions[k]`, then tokenize and pad."""
    texts, k = [], 0
    for prompt in prompts:
        n = prompt.count(placeholder)
        texts.append(expand(prompt, placeholder, expansions[k:k + n]))
        k += n
    return tokenize_batch(tokenizer, texts, padding_side, add_special_tokens)


class TypeCProcessor:
    """Base of the family processors: (prompts with image placeholders, images) -> model inputs.

    A family sets `config_class` (with `from_folder`), `placeholder_field` (the config field naming
    the text placeholder), `extra_tokens` (config fields of other tokens its expansion uses) and
    implements `encode_images`; this class does the rest as transformers' ProcessorMixin does.
    """

    config_class: type
    placeholder_field: str = "image_token"
    extra_tokens: tuple[str, ...] = ()
    # Config fields of other placeholders that stand for an input like `placeholder` does (Qwen2-VL's
    # `<|video_pad|>`): the input filling one says what it is, so they count as `placeholder` in order.
    alias_fields: tuple[str, ...] = ()
    padding_side: str | None = None  # None: the tokenizer's own default

    def __init__(self, config, tokenizer: PromptTokenizer):
        self.config, self.tokenizer = config, tokenizer
        self.placeholder = getattr(config, self.placeholder_field)
        self.image_token_id = tokenizer.token_id(self.placeholder)
        self.aliases = tuple(getattr(config, name) for name in self.alias_fields)  # may be absent: then unused
        for name in self.extra_tokens:  # fail at construction, with one line naming the token
            tokenizer.token_id(getattr(config, name))

    @classmethod
    def from_folder(cls, folder: str | Path):
        """Read the processor config and tokenizer.json that transformers saved in `folder`."""
        return cls(cls.config_class.from_folder(folder), PromptTokenizer.from_folder(folder))

    def check_image_token(self, folder, cfg):
        """`self` if the tokenizer's placeholder id is the model config's `image_token_id` (a
        processor builder's check); ConfigError naming both ids otherwise."""
        if self.image_token_id != cfg.image_token_id:
            raise ConfigError(f"{folder}: the tokenizer's {self.placeholder} id {self.image_token_id} != config.json "
                              f"image_token_index {cfg.image_token_id}")
        return self

    def unaliased(self, text: str) -> str:
        """`text` with every alias placeholder written as `placeholder` (see `alias_fields`)."""
        for alias in self.aliases:
            text = text.replace(alias, self.placeholder)
        return text

    @property
    def media_token_ids(self) -> frozenset[int]:
        """Ids of the tokens that image (and video) expansions fill with features: never trained on."""
        return frozenset({self.image_token_id, *(self.tokenizer.token_id(a) for a in self.aliases
                                                 if self.tokenizer.has_token(a))})

    def encode_images(self, groups: list[list[ImageSource]]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """(image tensors, one expansion string per image in batch order) for per-prompt image lists."""
        raise NotImplementedError

    def __call__(self, prompts: str | Sequence[str], images=None, padding_side: str | None = None,
                 add_special_tokens: bool = True) -> dict[str, torch.Tensor]:
        """Build a padded batch.

        Args:
            prompts: B prompts, each with one placeholder per image it refers to.
            images: a flat list in placeholder order, one list per prompt, or one image.
            padding_side: "left" / "right"; default: the family's, else the tokenizer's.
            add_special_tokens: let the tokenizer's post-processor add BOS etc. (as transformers).
        Returns:
            input_ids, attention_mask: int64 [B, T], plus the family's image tensors when there are
            images (see the family module).
        Raises:
            DataError: images and placeholders do not match up (or a family-specific limit).
        """
        prompts = [self.unaliased(p) for p in prompts_list(prompts)]
        groups = images_per_prompt(prompts, images, self.placeholder)
        out, expansions = self.encode_images(groups) if any(groups) else ({}, [])
        side = padding_side or self.padding_side or self.tokenizer.padding_side
        return {**build_text(self.tokenizer, prompts, self.placeholder, expansions, side, add_special_tokens), **out}

    def chat(self, template, messages: Sequence[dict], images=None,
             add_generation_prompt: bool = True) -> dict[str, torch.Tensor]:
        """One conversation rendered with `template` (a `ChatTemplate`) and processed with its images
        in order, as transformers' `processor.apply_chat_template(tokenize=True)`: the tokenizer adds
        no BOS when the rendered prompt already starts with it."""
        prompt = template.render(messages, add_generation_prompt=add_generation_prompt)
        bos = self.tokenizer.bos_token
        return self(prompt, images, add_special_tokens=not (bos is not None and prompt.startswith(bos)))
