"""Greedy generation is token-identical to transformers' generate (tiny random PaliGemma 1/2)."""

import pytest
import torch

from tests.parity import hf_builders as hb
from vlmkit.generation import SamplingConfig, generate
from vlmkit.weights.hf import load_hf


class IdTokenizer:
    """Decodes ids as space-separated numbers; no EOS (so runs are full length)."""

    eos_id = -1

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.mark.parametrize("version", [1, 2])
def test_greedy_matches_transformers(tmp_path, version):
    hf = hb.paligemma(version, 32)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    n_img = 16
    g = torch.Generator().manual_seed(3)
    text = torch.randint(3, hb.IMAGE_TOKEN, (2, 6), generator=g)
    ids = torch.cat([torch.full((2, n_img), hb.IMAGE_TOKEN), text], 1)
    ids = torch.cat([torch.zeros(2, 2, dtype=torch.long), ids], 1)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # row 0 left-padded by 2
    ids[1, :2] = text[1, :2]  # row 1 uses the slots for real tokens
    tt = torch.zeros_like(ids)
    pix = torch.randn(2, 3, 32, 32, generator=g)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, pixel_values=pix, attention_mask=mask, token_type_ids=tt,
                          max_new_tokens=12, do_sample=False)[:, ids.shape[1]:]
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=tt, pixel_values=pix)
    out = generate(ours, IdTokenizer(), batch, SamplingConfig(max_new_tokens=12))
    assert [r.token_ids for r in out] == ref.tolist()
