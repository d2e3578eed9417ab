"""Greedy generation against transformers' generate: tokens and every step's logits (tiny PaliGemma).

A left-padded batch of two prompts, 16 new tokens, compared with
`generate(..., do_sample=False, output_logits=True, return_dict_in_generate=True)`. transformers
numbers the padded row's positions from 1 in generate (as vlmkit does), so the only differences
left are reduction orders; each case states its measured maximum (logits ~5) and why.
"""

import pytest
import torch
import transformers as tf

from tests.parity import hf_builders as hb
from vlmkit.generation import SamplingConfig, generate
from vlmkit.weights.hf import load_hf
from tests.parity.placeholder_checks import IdTokenizer

NEW_TOKENS = 16


# (version, dtype, transformers' cache, atol). vlmkit attends over a static cache of T + 16 slots
# (unwritten ones masked). transformers' default dynamic cache holds only the written slots, so
# the attention reductions have other lengths: fp32 max 4.3e-6 (Gemma 1, SDPA, at the prefill
# step) and 1.9e-6 (Gemma 2, explicit soft-capped attention); in bf16 Gemma 2 is exact (0 over
# all 16 steps), while Gemma 1 is not compared with the dynamic cache: its prefill logits differ
# by 3.9e-2 (bf16 rounding of SDPA over T vs T + 16 keys), which on this batch turns a one-ulp
# lead of row 1's top token into a tie, so greedy takes another token.
# With `cache_implementation="static"` transformers also attends over T + 16 slots, and Gemma 1
# is exact in fp32 and bf16 over all 16 steps: for a one-token query with grouped KV heads and a
# mask, vlmkit folds each KV group's query heads into the query axis as transformers does
# (sdpa_attention.pack_gqa); with SDPA's enable_gqa instead the fp32 decode steps were 3.0e-6 off.
# transformers 5.24 cannot run PaliGemma 2 with a static cache (its sliding-window mask dict is
# passed back into create_causal_mask), so that case is absent.
CASES = [
    (1, "float32", "dynamic", 5e-6),
    (2, "float32", "dynamic", 4e-6),
    (2, "bfloat16", "dynamic", 0.0),
    (1, "float32", "static", 0.0),
    (1, "bfloat16", "static", 0.0),
]


@pytest.mark.parametrize("version,dtype,cache,atol", CASES)
def test_greedy_logits_match_transformers(tmp_path, version, dtype, cache, atol):
    hb.paligemma(version, 32).save_pretrained(tmp_path)
    torch_dtype = getattr(torch, dtype)
    hf = tf.PaliGemmaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch_dtype).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    ours = load_hf(tmp_path, dtype=dtype)
    ids, tt, mask, pix = hb.paligemma_inputs(hf, text_len=6, pad=2, suffix_len=0)
    pix = pix.to(torch_dtype)
    kw = {"cache_implementation": "static"} if cache == "static" else {}
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, pixel_values=pix, attention_mask=mask, token_type_ids=tt,
                          max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True,
                          return_dict_in_generate=True, **kw)
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=tt, pixel_values=pix)
    out = generate(ours, IdTokenizer(), batch, SamplingConfig(max_new_tokens=NEW_TOKENS), output_logits=True)
    assert [r.token_ids for r in out] == ref.sequences[:, ids.shape[1]:].tolist()
    got = torch.stack([r.logits for r in out])  # [B, steps, V] float32
    want = torch.stack(ref.logits, 1)  # [B, steps, V] float32
    assert got.shape == want.shape == (2, NEW_TOKENS, hb.VOCAB)
    if atol == 0.0:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, atol=atol, rtol=0)
    if cache == "static" or version == 2:  # the prefill step attends over the same keys
        assert torch.equal(got[:, 0], want[:, 0])
