"""InternVL3-1B's real shape (`internvl3-1b-hf` preset) with random bf16 weights against
transformers in bf16 (`pytest -m slow`; ~2 GB written and read back).

One 448 px tile (1025 tower positions, 256 image tokens) and 12 text tokens. Measured on the
2-core CPU box: bit-identical logits (max |diff| 0), so the test asserts torch.equal.
"""

import gc

import pytest
import torch

from vlmkit.models.common.init import init_weights
from vlmkit.models.internvl import InternVL, InternVLConfig
from vlmkit.weights.hf import save_hf


@pytest.mark.slow
def test_internvl3_1b_bf16_logits_equal_transformers(tmp_path):
    tf = pytest.importorskip("transformers")
    cfg = InternVLConfig.from_preset("internvl3-1b-hf")
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = InternVL(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    init_weights(model, std=0.02, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial norms and layer scales
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "lambda" in name):
                p.add_((torch.randn(p.shape, generator=g) * 0.1).to(p.dtype))
    save_hf(model.eval(), tmp_path)
    text = torch.randint(0, 151643, (1, 12), generator=g)
    ids = torch.cat([text[:, :4], torch.full((1, 256), cfg.image_token_id), text[:, 4:]], 1)
    pix = torch.randn(1, 3, 448, 448, generator=g).bfloat16()
    with torch.no_grad():
        ours = model(ids, pix)
    del model
    gc.collect()
    hf = tf.InternVLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix).logits
    diff = (ours.float() - ref.float()).abs().max().item()
    print(f"internvl3-1b bf16: max |diff| = {diff:.3e} (max |ref| {ref.float().abs().max().item():.3e})")
    assert torch.equal(ours, ref)
