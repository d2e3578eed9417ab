"""PaliGemma presets have the shapes of the published checkpoints (the table in docs/paligemma.md).

Sources: google/paligemma-3b-pt-{224,448,896} and google/paligemma2-{3b,10b,28b}-pt-{224,448,896}
config.json (So400m/14 tower: width 1152, 27 layers; Gemma 2B / Gemma 2 2B, 9B, 27B decoders).
"""

import pytest

from vlmkit.models.paligemma.config import PRESETS

TOKENS = {"224": 256, "448": 1024, "896": 4096}
# decoder: (width, layers, query heads, kv heads, head dim, attention / final soft-caps)
DECODERS = {
    "paligemma-3b": (2048, 18, 8, 1, 256, None, None),
    "paligemma2-3b": (2304, 26, 8, 4, 256, 50.0, 30.0),
    "paligemma2-10b": (3584, 42, 16, 8, 256, 50.0, 30.0),
    "paligemma2-28b": (4608, 46, 32, 16, 128, 50.0, 30.0),
}


@pytest.mark.parametrize("name", [f"{d}-{r}" for d in DECODERS for r in TOKENS])
def test_published_shapes(name):
    cfg = PRESETS[name]
    base, res = name.rsplit("-", 1)
    v, t = cfg.vision, cfg.text
    assert (v.hidden_size, v.num_layers, v.patch_size, v.image_size) == (1152, 27, 14, int(res))
    assert cfg.num_image_tokens == TOKENS[res]
    got = (t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads, t.head_dim, t.attn_logit_softcap,
           t.final_logit_softcap)
    assert got == DECODERS[base]
    assert t.vocab_size == 257216
