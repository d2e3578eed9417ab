"""Create a randomly initialised checkpoint folder of any registered family, with a tokenizer.

This is how a fresh machine gets a model to run before any training, and how tests get a full
HF-format folder (config.json, model.safetensors, tokenizer files, preprocessor_config.json).
The family's record (`vlmkit.models.registry`) gives the preset, how the config takes the
tokenizer's vocabulary and ids, and the image metadata written beside the weights.
"""

import json
import tempfile
from pathlib import Path

from vlmkit.data.tokenizer import Tokenizer
from vlmkit.data.tokenizer_train import DEFAULT_CORPUS, train_paligemma_tokenizer
from vlmkit.models.common.init import init_weights
from vlmkit.models.paligemma.family import preprocessor_config
from vlmkit.models.registry import get_family
from vlmkit.weights.hf import save_hf

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")

__all__ = ["TOKENIZER_FILES", "create_checkpoint", "preprocessor_config"]


def create_checkpoint(out: str | Path, preset: str = "debug", seed: int = 0, texts=DEFAULT_CORPUS,
                      tokenizer_dir: str | Path | None = None, family: str = "paligemma",
                      overwrite: bool = True) -> Path:
    """Write a random-weight `family` `preset` whose vocabulary matches its tokenizer.

    The tokenizer (for families with text) is `tokenizer_dir` if given, else a PaliGemma-layout
    tokenizer trained on `texts`. Unknown family or preset: one ConfigError line listing the choices.
    A non-empty `out` is refused unless `overwrite`; files other than the checkpoint's own are never
    removed (see `save_hf`).
    """
    spec = get_family(family)
    base = spec.preset(preset)
    with tempfile.TemporaryDirectory() as tmp:
        extra = {}
        cfg = base
        if spec.with_tokenizer is not None:
            tok_dir = Path(tokenizer_dir) if tokenizer_dir else train_paligemma_tokenizer(Path(tmp) / "tok", texts)
            cfg = spec.with_tokenizer(base, Tokenizer.from_folder(tok_dir))
            extra = {n: tok_dir / n for n in TOKENIZER_FILES if (tok_dir / n).is_file()}
        model = init_weights(spec.model_class(cfg), seed=seed)
        if spec.preprocessor_config is not None:
            pre = Path(tmp) / "preprocessor_config.json"
            pre.write_text(json.dumps(spec.preprocessor_config(cfg), indent=2))
            extra["preprocessor_config.json"] = pre
        return save_hf(model, out, extra_files=extra, overwrite=overwrite)
