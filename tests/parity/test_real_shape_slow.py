"""The real paligemma-3b-pt-224 shape with random bf16 weights: one forward equals transformers.

Slow (about 6 GB of weights written and read twice); run with `pytest -m slow`.
"""

import gc

import pytest
import torch

from vlmkit.models.common.init import init_weights
from vlmkit.models.paligemma import PaliGemma, PaliGemmaConfig
from vlmkit.weights.hf import save_hf


@pytest.mark.slow
def test_paligemma_3b_224_bf16_forward_matches_transformers(tmp_path):
    tf = pytest.importorskip("transformers")
    cfg = PaliGemmaConfig.from_preset("paligemma-3b-224")
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = PaliGemma(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    init_weights(model, std=0.02, seed=0)
    with torch.no_grad():  # non-trivial norms, so (1 + w) and LayerNorm affine are exercised
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)).to(p.dtype) * 0.1)
    save_hf(model, tmp_path)
    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, 256000, (1, 12), generator=g)
    ids = torch.cat([torch.full((1, 256), cfg.image_token_id), text], 1)
    tt = torch.zeros_like(ids)
    tt[:, -4:] = 1
    pix = torch.randn(1, 3, 224, 224, generator=g)
    with torch.no_grad():
        ours = model(ids, pix.bfloat16(), token_type_ids=tt).float()
    del model
    gc.collect()
    hf = tf.PaliGemmaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix.bfloat16(), token_type_ids=tt,
                 attention_mask=torch.ones_like(ids)).logits.float()
    err = (ours - ref).abs().max() / ref.abs().max()
    agree = (ours.argmax(-1) == ref.argmax(-1)).float().mean()
    print(f"3b bf16: max |diff| / max |ref| = {err:.3e}, argmax agreement = {agree:.4f}")
    assert err < 2e-2
    assert agree > 0.95
