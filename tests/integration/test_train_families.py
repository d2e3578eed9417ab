"""`vlmkit train finetune` on a chat family (LLaVA, through the registry): loss on assistant tokens
only (equal to transformers' assistant mask), loss goes down, freezing per part, LoRA, exact
kill/resume, an export that vlmkit and transformers load, and one-line errors for bad input.

The LLaVA folder is made by transformers (`save_pretrained` of a tiny random LlavaForConditionalGeneration
and of a LlavaProcessor with LLaVA-1.5's chat template, over a small BPE tokenizer), like a
llava-hf checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmkit.models import registry
from vlmkit.training.checkpoint import latest_checkpoint
from vlmkit.training.cli import run_train
from vlmkit.weights.hf import load_hf

transformers = pytest.importorskip("transformers")

TEMPLATES = Path(__file__).parents[1] / "assets" / "chat_templates"
WORDS = ["a red circle", "a blue square", "a green triangle on the left", "what shape is this", "which colour",
         "where is it", "describe the picture", "two shapes", "on the right", "yes", "no"]


def build_llava_processor(folder, tokenizer, cfg):
    """LLaVA's processor builder for a branch whose registry record does not name one yet."""
    from vlmkit.data.processors import LlavaProcessor

    return LlavaProcessor.from_folder(folder)


@pytest.fixture(autouse=True)
def llava_has_a_processor(monkeypatch):
    spec = registry.get_family("llava")
    if spec.processor is None:
        monkeypatch.setitem(registry._FAMILIES, "llava",
                            replace(spec, processor=f"{__name__}:build_llava_processor"))


def make_llava_folder(out: Path, template: str = "llava-1.5") -> Path:
    """A tiny random LLaVA (CLIP 32 px / 8 px patches -> 16 image tokens, 2-layer Llama) saved by transformers."""
    from tokenizers import Tokenizer, processors

    from vlmkit.data.tokenizer_train import train_paligemma_tokenizer

    raw = train_paligemma_tokenizer(out / "raw_tokenizer", WORDS + ["USER ASSISTANT system"], 320)
    tok = Tokenizer.from_file(str(raw / "tokenizer.json"))
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", bos)])
    tok.save(str(raw / "tokenizer.json"))
    (raw / "tokenizer.model").unlink(missing_ok=True)
    config = json.loads((raw / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="LlamaTokenizer", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                  unk_token="<unk>")
    (raw / "tokenizer_config.json").write_text(json.dumps(config))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(raw))
    image_processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=hf_tok, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=(TEMPLATES / f"{template}.jinja").read_text())
    folder = out / "llava"
    processor.save_pretrained(str(folder))
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=32, patch_size=8)
    text = transformers.LlamaConfig(vocab_size=len(hf_tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, pad_token_id=hf_tok.pad_token_id,
                                    bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id)
    cfg = transformers.LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                                   image_token_index=hf_tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    transformers.LlavaForConditionalGeneration(cfg).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory) -> Path:
    """Read-only: copy before changing files."""
    return make_llava_folder(tmp_path_factory.mktemp("llava"))


def image(seed: int, size=(40, 50)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def conversation(i: int) -> dict:
    """Chat row i: one or two images, a system prompt on some, one or two assistant turns."""
    n_images = 1 + i % 2
    user = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": WORDS[3 + i % 4]}]
    messages = ([{"role": "system", "content": "describe the picture"}] if i % 3 == 0 else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": [{"type": "text", "text": WORDS[i % 3]}]}]
    if i % 2:
        messages += [{"role": "user", "content": "where is it"},
                     {"role": "assistant", "content": WORDS[8 + i % 2]}]
    return {"images": [f"img{i}_{k}.png" for k in range(n_images)], "messages": messages}


def write_rows(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        paths = row.get("images") or ([row["image"]] if "image" in row else [])
        for k, name in enumerate(paths):
            image(hash(name) % 1000 + k).save(folder / name)
    manifest = folder / "rows.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture
def chat_rows(tmp_path) -> Path:
    """8 rows: 7 chat conversations and one PaliGemma-style prefix/suffix row."""
    rows = [conversation(i) for i in range(7)] + [{"image": "pfx.png", "prefix": "which colour", "suffix": "a blue square"}]
    return write_rows(tmp_path / "data", rows)


def train(model: Path, data: Path, out: Path, *extra: str) -> int:
    args = ["finetune", "--model", str(model), "--data", str(data), "--out", str(out), "--steps", "10",
            "--data.batch_size", "4", "--optim.lr", "3e-3", "--optim.warmup_steps", "1", "--precision", "fp32",
            "--ckpt_every", "0", "--data.max_length", "200", *extra]
    return run_train(args)


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]
