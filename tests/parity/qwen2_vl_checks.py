"""Helpers of the Qwen2-VL / Qwen2.5-VL parity tests: a reference saved by transformers and loaded
strictly by vlmkit, and the logits comparison on a batch with its mm_token_type_ids."""

import torch

from vlmkit.weights.hf import load_hf


def saved_pair(make, tmp_path, seed: int = 4):
    """(transformers' model `make(seed=seed)`, vlmkit's load of its save_pretrained folder, fp32)."""
    hf = make(seed=seed)
    hf.save_pretrained(tmp_path / "hub")
    return hf, load_hf(tmp_path / "hub", dtype="float32")


def bf16_pair(hf_class, make, tmp_path, seed: int = 4):
    """transformers' `hf_class` and vlmkit, both loaded in bf16 from one save_pretrained folder."""
    make(seed=seed).save_pretrained(tmp_path / "hub")
    hf = hf_class.from_pretrained(tmp_path / "hub", dtype=torch.bfloat16).eval()
    return hf, load_hf(tmp_path / "hub", dtype="bfloat16")


def max_logit_diff(hf, ours, batch: dict, types: torch.Tensor) -> float:
    """Max |ours - transformers'| logits at the real (unpadded) tokens of `batch`."""
    with torch.no_grad():
        ref = hf(**batch, mm_token_type_ids=types).logits
        got = ours(**batch)
    assert got.dtype == ref.dtype
    valid = batch["attention_mask"].bool()
    return (got.float() - ref.float())[valid].abs().max().item()
