"""Qwen2-VL pieces against transformers' Qwen2VLForConditionalGeneration (tiny random config, CPU, fp32):
the vision RoPE (bit-equal cos / sin), the M-RoPE position index (equal to get_rope_index for a
left-padded batch with images of different sizes), and the shared decoder with `mrope_section`
(logits on 3-D positions, and a cached decode continuing with the rope deltas).
"""

from dataclasses import replace

import pytest
import torch
import transformers as tf
from transformers.vision_utils import get_vision_position_ids

from tests.parity import hf_builders as hb
from vlmkit.generation.decode import advance, decode_one_token, prefill
from vlmkit.models.common.mrope import IMAGE, TEXT, mrope_decode_positions, mrope_positions
from vlmkit.models.common.rope2d import axial_rope_cos_sin, merge_order_positions, qwen2_vl_inv_freq
from vlmkit.models.llama import Llama, hf_mapping
from vlmkit.models.parts.qwen2_vit import Qwen2VisionTower, Qwen2VitConfig
from vlmkit.weights.convert import convert_strict

IMG, MERGE = 100, 2
# Sections 2 + 3 + 1 = head_dim 12 / 2: unequal, so that a swapped axis would show.
_TEXT = dict(vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, pad_token_id=0,
             rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 1]))
_VISION = dict(depth=2, embed_dim=32, hidden_size=48, num_heads=4, mlp_ratio=2, patch_size=8,
               spatial_merge_size=MERGE, temporal_patch_size=2, in_channels=3)
# Patch grids (t, h, w) of three images of different sizes: 2x2, 1x3 and 3x2 merged tokens.
GRIDS = torch.tensor([[1, 4, 4], [1, 2, 6], [1, 6, 4]])


def _reference(seed: int = 0):
    cfg = tf.Qwen2VLConfig(text_config=_TEXT, vision_config=_VISION, image_token_id=IMG, video_token_id=101,
                           vision_start_token_id=102, vision_end_token_id=103)
    return hb.randomize(tf.Qwen2VLForConditionalGeneration(cfg), seed).eval()


def _decoder_from_hf(hf) -> Llama:
    """The text half of the reference in our shared decoder with M-RoPE, through the Qwen2 table."""
    d = {**hf.config.text_config.to_dict(), "model_type": "qwen2"}
    cfg = replace(hf_mapping.config_from_hf(d), mrope_section=tuple(d["rope_parameters"]["mrope_section"]))
    ours = Llama(cfg).eval()
    sd = {k.replace("model.language_model.", "model."): v for k, v in hf.state_dict().items()
          if not k.startswith("model.visual.")}
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ours.load_state_dict(convert_strict(sd, sd.__getitem__, shapes, hf_mapping.table(cfg), reverse=True))
    return ours


def _prompts():
    """Left-padded [2, 14] ids / mask / token types: row 0 has two images, row 1 one image."""
    rows = [[5, 6] + [IMG] * 4 + [7] + [IMG] * 3 + [8, 9], [10, 11, 12, 13, 14] + [IMG] * 6 + [15, 16, 17]]
    T = max(map(len, rows))
    ids = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, T - len(r):] = torch.tensor(r)
        mask[b, T - len(r):] = 1
    types = (ids == IMG).long() * IMAGE + (ids != IMG).long() * TEXT
    return ids, mask, types


def test_vision_rope_bit_equal():
    """cos / sin for two packed images equal transformers' Qwen2VLVisionRotaryEmbedding bit for bit."""
    hf = _reference()
    rot = hf.model.visual.rotary_pos_emb
    ref_pos = get_vision_position_ids(GRIDS[:2], MERGE)  # [N, 2]
    ours_pos = torch.cat([merge_order_positions(*g, MERGE) for g in GRIDS[:2].tolist()])
    assert torch.equal(ours_pos, ref_pos)
    ref_cos, ref_sin = rot(torch.zeros(1), ref_pos)
    hd = _VISION["embed_dim"] // _VISION["num_heads"]
    cos, sin = axial_rope_cos_sin(ours_pos, qwen2_vl_inv_freq(hd, 10000.0), torch.float32)
    assert torch.equal(cos[0], ref_cos) and torch.equal(sin[0], ref_sin)


def test_mrope_positions_equal_get_rope_index():
    hf = _reference()
    ids, mask, types = _prompts()
    ref_pos, ref_delta = hf.model.get_rope_index(ids, types, image_grid_thw=GRIDS, attention_mask=mask)
    pos, delta = mrope_positions(types, mask.bool(), GRIDS, MERGE)
    assert torch.equal(pos, ref_pos) and torch.equal(delta, ref_delta)


def test_mrope_decoder_logits_and_cached_decode():
    """Logits on 3-D positions equal the reference's (fp32); then a cached decode step at the
    positions transformers' generate forms (sequence index + rope delta) matches a full forward."""
    hf = _reference()
    ours = _decoder_from_hf(hf)
    ids, mask, types = _prompts()
    pos, delta = mrope_positions(types, mask.bool(), GRIDS, MERGE)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        valid = mask.bool()
        got = ours.logits(ours(ours.embed(ids), pos, valid, torch.zeros_like(valid)))
    diff = (got - ref)[valid].abs().max().item()
    assert diff <= 1e-5, diff

    nxt = ref[:, -1].argmax(-1, keepdim=True)  # [B, 1]
    ids2, mask2 = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    seq_index = mask2.sum(1, keepdim=True) - 1  # [B, 1]: the new token's index among real tokens
    pos2 = torch.cat([pos, mrope_decode_positions(seq_index, delta)], dim=2)
    with torch.no_grad():
        ref2 = hf(input_ids=ids2, attention_mask=mask2, position_ids=pos2).logits[:, -1]
        valid = mask.bool()
        first, state = prefill(ours, ours.embed(ids), mask, torch.zeros_like(valid), pos, ids.shape[1] + 4)
        step_pos, slot = advance(state)
        assert torch.equal(step_pos, pos2[..., -1:])  # the engine forms transformers' decode positions
        step = decode_one_token(ours, nxt, step_pos, slot, state.key_valid, state.in_prefix)
        ours.clear_caches()
    assert (first - ref[:, -1]).abs().max().item() <= 1e-5
    diff = (step - ref2).abs().max().item()
    assert diff <= 1e-5, diff


def _tower_from_hf(hf) -> Qwen2VisionTower:
    """The reference's vision tower in ours: the same module names under `model.visual.`, strictly."""
    v = hf.config.vision_config
    cfg = Qwen2VitConfig(embed_dim=v.embed_dim, depth=v.depth, num_heads=v.num_heads, mlp_ratio=v.mlp_ratio,
                         hidden_act=v.hidden_act, patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
                         spatial_merge_size=v.spatial_merge_size, hidden_size=v.hidden_size)
    tower = Qwen2VisionTower(cfg).eval()
    sd = {k.removeprefix("model.visual."): t for k, t in hf.state_dict().items() if k.startswith("model.visual.")}
    tower.load_state_dict(sd, strict=True)
    return tower


def _pixels(grids: torch.Tensor, seed: int = 2) -> torch.Tensor:
    n = int(grids.prod(-1).sum())
    return torch.randn(n, 3 * 2 * 8 * 8, generator=torch.Generator().manual_seed(seed))


def test_vision_tower_matches_reference():
    """Three packed images of different sizes (and a 2-frame clip): last hidden state and merged tokens."""
    hf = _reference()
    tower = _tower_from_hf(hf)
    grids = torch.cat([GRIDS, torch.tensor([[2, 2, 4]])])
    px = _pixels(grids)
    with torch.no_grad():
        ref = hf.model.visual(px, grid_thw=grids)
        hidden, merged = tower.encode(px, grids), tower(px, grids)
    d_hidden = (hidden - ref.last_hidden_state).abs().max().item()
    d_merged = (merged - ref.pooler_output).abs().max().item()
    assert d_hidden <= 1e-5 and d_merged <= 1e-5, (d_hidden, d_merged)
    assert merged.shape == (sum(tower.num_tokens(grids)), 48)


def test_vision_tower_packed_equals_one_at_a_time():
    """Packing 1, 3 and 7 images equals encoding each alone; changing one image changes no other."""
    tower = _tower_from_hf(_reference())
    sizes = [(4, 4), (2, 6), (6, 4), (2, 2), (4, 8), (8, 2), (2, 4)]
    for count in (1, 3, 7):
        grids = torch.tensor([[1, h, w] for h, w in sizes[:count]])
        px = _pixels(grids, seed=count)
        with torch.no_grad():
            packed = tower(px, grids)
            alone = torch.cat([tower(p, g[None]) for p, g in zip(px.split(grids.prod(-1).tolist()), grids)])
        assert (packed - alone).abs().max().item() <= 1e-5
    px2 = px.clone()
    px2[: int(grids[0].prod())] += 1.0  # only the first image's patches
    with torch.no_grad():
        changed = tower(px2, grids)
    n0 = tower.num_tokens(grids)[0]
    assert torch.equal(changed[n0:], packed[n0:]) and not torch.allclose(changed[:n0], packed[:n0])


def test_vision_tower_rejects_mismatched_grid():
    tower = _tower_from_hf(_reference())
    with pytest.raises(ValueError, match="do not match grid_thw"):
        tower(_pixels(GRIDS[:1])[:-1], GRIDS[:1])
