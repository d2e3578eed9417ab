"""Every recipe's smoke mode end to end (train, checkpoint, resume, eval, export), through the
CLI, and a LoRA export that transformers loads with the adapter model's logits."""

import json
from pathlib import Path

import pytest
import torch

from vlmkit.data.tokenizer import Tokenizer
from vlmkit.models.paligemma import PaliGemma
from vlmkit.training.checkpoint import latest_checkpoint, load_checkpoint
from vlmkit.training.cli import run_train
from vlmkit.training.config import LoraConfig, apply_overrides
from vlmkit.training.lora import apply_lora
from vlmkit.training.recipes import RECIPES, get_recipe, run
from vlmkit.weights.hf import load_hf


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_smoke_recipe_end_to_end_via_cli(tmp_path: Path, recipe: str, capsys):
    out = tmp_path / "run"
    assert run_train([recipe, "--smoke", "--out", str(out), "--stop_after", "3"]) == 0
    assert latest_checkpoint(out / "checkpoints").name == "step_000003"
    assert not (out / "export").exists()
    assert run_train([recipe, "--smoke", "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "samples/s" in printed and "eta" in printed and "eval_loss" in printed
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[-1]["loss"] < steps[0]["loss"]  # it learns
    assert any("eval_loss" in m for m in lines)

    model = load_hf(out / "export", dtype="float32")
    tok = Tokenizer.from_folder(out / "export")
    assert model.cfg.image_token_id == tok.image_token_id
    pre = json.loads((out / "export" / "preprocessor_config.json").read_text())
    expected_size = 64 if recipe == "resolution" else 32
    assert model.cfg.vision.image_size == pre["size"]["height"] == expected_size
    assert pre["image_seq_length"] == model.cfg.num_image_tokens == (expected_size // 8) ** 2
    # The export holds the trained weights (the last checkpoint's, bit for bit).
    state, _, _, _ = load_checkpoint(latest_checkpoint(out / "checkpoints"))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    frozen_vision = RECIPES[recipe](smoke=True).freeze.vision_tower
    # Task transfer and stage 1 keep the encoder frozen; stage 2 and from-scratch training don't.
    assert frozen_vision == (recipe not in ("resolution", "shapes_tiny"))


def test_lora_export_loads_in_transformers_with_equal_logits(tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    cfg = apply_overrides(get_recipe("finetune", smoke=True), {
        "out_dir": str(tmp_path), "lora.enabled": "true", "lora.rank": "4", "optim.lr": "2e-2", "steps": "4"})
    result = run(cfg)
    # The adapter model, rebuilt from the last checkpoint (adapters unmerged).
    export_cfg = load_hf(result.export).cfg
    adapter_model = PaliGemma(export_cfg)
    apply_lora(adapter_model, LoraConfig(rank=4, alpha=cfg.lora.alpha))
    state, _, _, _ = load_checkpoint(result.checkpoint)
    adapter_model.load_state_dict(state, strict=True)
    assert any(k.endswith("lora_B") and v.abs().max() > 0 for k, v in state.items())  # adapters trained
    assert (tmp_path / "lora_adapters.safetensors").is_file()

    hf = transformers.PaliGemmaForConditionalGeneration.from_pretrained(result.export).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 300, (2, 24), generator=g)
    ids[:, :16] = export_cfg.image_token_id
    types = torch.zeros_like(ids)
    types[:, 20:] = 1
    mask, pix = torch.ones_like(ids), torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix, attention_mask=mask, token_type_ids=types).logits
        ours = adapter_model.eval()(ids, pix, mask, types)
    torch.testing.assert_close(ref, ours, rtol=1e-4, atol=1e-4)
