"""A tiny PaliGemma (debug preset, small BPE tokenizer) memorises 16 synthetic examples.

End to end through `recipes.run`: synthetic data -> tokenizer -> training -> HF export; the
exported folder is then reloaded with `load_hf` and decoded greedily with a local loop.
"""

import json
from pathlib import Path

import pytest
import torch

from vlmkit.data.datasets import JsonlDataset
from vlmkit.data.processor import PaliGemmaProcessor
from vlmkit.data.synth import SynthConfig, write_dataset
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.training.config import apply_overrides
from vlmkit.training.recipes import get_recipe, run
from vlmkit.weights.hf import load_hf


LOSS_THRESHOLD = 0.05  # mean suffix-token NLL in nats; chance level is ln(1474) = 7.3


@torch.no_grad()
def greedy(model, processor: PaliGemmaProcessor, prompt: str, image, max_new: int = 64) -> list[int]:
    """Greedy decode by re-running the full forward on the growing sequence (no cache)."""
    batch = processor([prompt], [image])
    ids, types = batch["input_ids"], batch["token_type_ids"]
    out: list[int] = []
    for _ in range(max_new):
        logits = model(ids, batch["pixel_values"], torch.ones_like(ids), types)  # [1, T, V]
        nxt = int(logits[0, -1].argmax())
        if nxt == processor.eos_id:
            break
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        types = torch.cat([types, torch.ones(1, 1, dtype=types.dtype)], dim=1)  # generated = suffix
    return out


def test_overfits_16_examples_and_greedy_reproduces_targets(tmp_path: Path):
    manifest = write_dataset(tmp_path / "data", 4, SynthConfig(seed=3, examples_per_scene=4))
    cfg = get_recipe("finetune", smoke=True)
    cfg = apply_overrides(cfg, {
        "data.manifest": str(manifest), "data.eval_manifest": str(manifest), "out_dir": str(tmp_path / "run"),
        "data.batch_size": "16", "data.grad_accum": "1", "steps": "150", "optim.lr": "4e-3",
        "optim.warmup_steps": "10", "freeze.vision_tower": "false", "ckpt_every": "0", "log_every": "50",
    })
    result = run(cfg)
    assert result.step == 150
    assert result.losses[0] > 5.0  # starts near chance
    assert result.losses[-1] < LOSS_THRESHOLD, result.losses[-10:]
    assert result.eval["eval_loss"] < LOSS_THRESHOLD  # the same 16 examples, evaluated

    model = load_hf(result.export, dtype="float32")
    tok = Tokenizer.from_folder(result.export)
    processor = PaliGemmaProcessor(tok, model.cfg.vision.image_size, model.cfg.num_image_tokens)
    data = JsonlDataset(manifest)
    assert len(data) == 16
    for i in range(len(data)):
        row = data[i]
        got = greedy(model, processor, row["prefix"], row["image"])
        assert got == tok.encode(row["suffix"]), (row["prefix"], tok.decode(got), row["suffix"])
    cfg_saved = json.loads((result.export / "config.json").read_text())
    assert cfg_saved["vocab_size"] == tok.vocab_size
