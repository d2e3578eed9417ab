"""Create a randomly initialised PaliGemma checkpoint folder with a working tokenizer.

This is how a fresh machine gets a model to run before any training, and how tests get a full
HF-format folder (config.json, model.safetensors, tokenizer files, preprocessor_config.json).
"""

import json
import tempfile
from dataclasses import replace
from pathlib import Path

from vlmkit.data.tokenizer import Tokenizer
from vlmkit.data.tokenizer_train import DEFAULT_CORPUS, train_paligemma_tokenizer
from vlmkit.models.common.init import init_weights
from vlmkit.models.paligemma import PaliGemma, PaliGemmaConfig
from vlmkit.weights.hf import save_hf

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


def preprocessor_config(cfg: PaliGemmaConfig) -> dict:
    """The image-processing metadata saved beside the weights (transformers' format)."""
    size = cfg.vision.image_size
    return {
        "image_processor_type": "SiglipImageProcessor", "processor_class": "PaliGemmaProcessor",
        "do_resize": True, "size": {"height": size, "width": size}, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True,
        "image_seq_length": cfg.num_image_tokens,
    }


def create_checkpoint(out: str | Path, preset: str = "debug", seed: int = 0, texts=DEFAULT_CORPUS,
                      tokenizer_dir: str | Path | None = None, overwrite: bool = True) -> Path:
    """Write a random-weight PaliGemma `preset` whose vocabulary matches its tokenizer.

    The tokenizer is `tokenizer_dir` if given, else trained on `texts`. A non-empty `out` is refused
    unless `overwrite`; files other than the checkpoint's own are never removed (see `save_hf`).
    """
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tokenizer_dir) if tokenizer_dir else train_paligemma_tokenizer(Path(tmp) / "tok", texts)
        tok = Tokenizer.from_folder(tok_dir)
        base = PaliGemmaConfig.from_preset(preset)
        text = replace(base.text, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                       bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
        cfg = replace(base, text=text, image_token_id=tok.image_token_id)
        model = init_weights(PaliGemma(cfg), seed=seed)
        pre = Path(tmp) / "preprocessor_config.json"
        pre.write_text(json.dumps(preprocessor_config(cfg), indent=2))
        extra = {n: tok_dir / n for n in TOKENIZER_FILES if (tok_dir / n).is_file()}
        extra["preprocessor_config.json"] = pre
        return save_hf(model, out, extra_files=extra, overwrite=overwrite)
