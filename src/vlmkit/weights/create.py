"""Create a randomly initialised checkpoint folder of any registered family, with a tokenizer.

This is how a fresh machine gets a model to run before any training, and how tests get a full
HF-format folder (config.json, model.safetensors, tokenizer files, preprocessor_config.json).
The family's record (`vlmkit.models.registry`) gives the preset, how the config takes the
tokenizer's vocabulary and ids, the image metadata written beside the weights and, for families
with a processor of their own (`processor_files`), the tokens their prompts use, the processor's
config and the chat template (in tokenizer_config.json for the tokenizer, chat_template.jinja for
the processor, as transformers 5 saves them): the folder then loads in `vlmkit generate` and in
transformers.
"""

import json
import shutil
import tempfile
from pathlib import Path

from vlmkit.data.tokenizer import Tokenizer
from vlmkit.data.tokenizer_build import extend_tokenizer, pad_vocabulary
from vlmkit.data.tokenizer_train import DEFAULT_CORPUS, train_paligemma_tokenizer
from vlmkit.models.common.init import init_weights
from vlmkit.models.paligemma.family import preprocessor_config
from vlmkit.models.registry import get_family
from vlmkit.weights.hf import save_hf

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")

__all__ = ["TOKENIZER_FILES", "create_checkpoint", "preprocessor_config"]


def _tokenizer_dir(tmp: Path, texts, tokenizer_dir, files) -> Path:
    """The tokenizer folder: `tokenizer_dir` (copied) or one trained on `texts`, with the family's
    special tokens and chat template added when it has `files` (a ProcessorFiles)."""
    if files is None:
        return Path(tokenizer_dir) if tokenizer_dir else train_paligemma_tokenizer(tmp / "tok", texts)
    out = tmp / "tok"
    if tokenizer_dir:  # the tokenizer files only (tokenizer_dir may be a whole checkpoint folder)
        out.mkdir()
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(tokenizer_dir) / name, out / name)
    else:
        train_paligemma_tokenizer(out, texts)
    extend_tokenizer(out, (*files.special_tokens, *files.named_tokens.values()), files.chat_template)
    if files.named_tokens:  # transformers' named special tokens (tokenizer attributes)
        config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
        config["extra_special_tokens"] = dict(files.named_tokens)
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return out


def preset_vocab_size(spec, cfg) -> int:
    """The vocabulary size a preset states (config.json's vocab_size, top level or in
    text_config); 0 if it has none."""
    d = spec.config_to_hf(cfg)
    return d.get("vocab_size") or (d.get("text_config") or {}).get("vocab_size") or 0


def _padded(tmp: Path, tok_dir: Path, size: int) -> tuple[Path, Tokenizer]:
    """(`tok_dir`, or a copy of it in `tmp` grown to `size` ids, and its tokenizer); a user's folder
    is never changed."""
    tok = Tokenizer.from_folder(tok_dir)
    if tok.vocab_size >= size:
        return tok_dir, tok
    if tmp not in tok_dir.parents:
        shutil.copytree(tok_dir, tmp / "tok-padded", ignore=lambda d, names: [n for n in names if n not in TOKENIZER_FILES])
        tok_dir = tmp / "tok-padded"
    pad_vocabulary(tok_dir, size)
    return tok_dir, Tokenizer.from_folder(tok_dir)


def create_checkpoint(out: str | Path, preset: str = "debug", seed: int = 0, texts=DEFAULT_CORPUS,
                      tokenizer_dir: str | Path | None = None, family: str = "paligemma",
                      overwrite: bool = True) -> Path:
    """Write a random-weight `family` `preset` whose vocabulary matches its tokenizer; a preset
    whose vocabulary is larger (one named after a published checkpoint) gets its tokenizer grown
    to that size with filler tokens (`pad_vocabulary`), so the folder has the real shape.

    The tokenizer (for families with text) is `tokenizer_dir` if given, else a PaliGemma-layout
    tokenizer trained on `texts`; a family with `processor_files` gets its special tokens and chat
    template added. Unknown family or preset: one ConfigError line listing the choices.
    A non-empty `out` is refused unless `overwrite`; files other than the checkpoint's own are never
    removed (see `save_hf`).
    """
    spec = get_family(family)
    base = spec.preset(preset)
    files = spec.build_processor_files(base)
    with tempfile.TemporaryDirectory() as tmp:
        extra = {}
        cfg = base
        if spec.with_tokenizer is not None:
            tok_dir = _tokenizer_dir(Path(tmp), texts, tokenizer_dir, files)
            # A published checkpoint's preset keeps its real vocabulary size; debug presets
            # (vocabularies smaller than the tokenizer's) take the tokenizer's.
            tok_dir, tok = _padded(Path(tmp), Path(tok_dir), preset_vocab_size(spec, base))
            cfg = spec.with_tokenizer(base, tok)
            extra = {n: tok_dir / n for n in TOKENIZER_FILES if (tok_dir / n).is_file()}
        model = init_weights(spec.model_class(cfg), seed=seed)
        written = {"preprocessor_config.json": None if spec.preprocessor_config is None else spec.preprocessor_config(cfg),
                   "processor_config.json": files.processor_config if files is not None else None}
        for name, content in written.items():
            if content:
                (Path(tmp) / name).write_text(json.dumps(content, indent=2))
                extra[name] = Path(tmp) / name
        if files is not None and files.chat_template is not None:  # transformers' processors read this file
            extra["chat_template.jinja"] = Path(tmp) / "chat_template.jinja"
            extra["chat_template.jinja"].write_text(files.chat_template, encoding="utf-8")
        return save_hf(model, out, extra_files=extra, overwrite=overwrite)
