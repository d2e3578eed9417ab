"""Parity checks shared by the Type C families whose images fill `<image>` placeholders (LLaVA,
DeepSeek-VL, ...): a left-padded batch, greedy generation through vlmkit's engine, and the weight
round trips, each against the transformers model the family mirrors.

`images` is `pixel_values` [M, 3, H, W], or a dict of the image inputs a family takes as keywords
(DeepSeek-VL hybrid: pixel_values and high_res_pixel_values)."""

import torch

from vlmkit.generation import SamplingConfig, generate
from vlmkit.weights.hf import load_hf, save_hf


class IdTokenizer:
    """The engine's tokenizer contract with no text: no EOS, tokens decoded as their ids."""

    eos_id = -1

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def _images(images) -> dict:
    return images if isinstance(images, dict) else {"pixel_values": images}


def left_pad(ids: torch.Tensor, n: int, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[2, T] ids -> ([2, n + T] ids, attention mask): row 0 gets n padding slots (id 0, mask 0),
    row 1 n more real tokens `fill`, so the two rows are different prompts of different lengths."""
    ids = torch.cat([torch.zeros(ids.shape[0], n, dtype=torch.long), ids], 1)
    mask = torch.ones_like(ids)
    mask[0, :n] = 0
    ids[1, :n] = fill
    return ids, mask


def assert_left_padding(hf, ours, ids, images, atol: float) -> None:
    """Logits at real tokens equal the reference's with the same mask and the positions generate
    builds (0-based over tokens), and row 0 equals itself unpadded (within 1e-5: other shapes)."""
    ids, mask = left_pad(ids, 3, fill=7)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    images = _images(images)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos, **images).logits
        got = ours(ids, attention_mask=mask, **images)
        alone = ours(ids[:1, 3:], **{k: v[:1] for k, v in images.items()})
    valid = mask.bool()
    torch.testing.assert_close(got[valid], ref[valid], atol=atol, rtol=0 if atol == 0 else 1e-5)
    torch.testing.assert_close(got[0, 3:], alone[0], atol=max(atol, 1e-5), rtol=1e-5)


def assert_same_greedy(hf, ours, batch: dict, max_new_tokens: int = 12, hf_only: dict | None = None) -> list:
    """vlmkit's engine (the family's generation adapter) on `batch` (input_ids, attention_mask and
    the family's image inputs) gives transformers' greedy tokens, with no EOS so every row runs
    `max_new_tokens` steps; `hf_only` goes to transformers alone (e.g. Qwen2-VL's
    mm_token_type_ids). Returns transformers' tokens."""
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    with torch.no_grad():
        ref = hf.generate(**batch, **(hf_only or {}), max_new_tokens=max_new_tokens,
                          do_sample=False)[:, batch["input_ids"].shape[1]:]
    out = generate(ours, IdTokenizer(), batch, SamplingConfig(max_new_tokens=max_new_tokens))
    assert [r.token_ids for r in out] == ref.tolist()
    return ref.tolist()


def assert_greedy_generation(hf, ours, ids, images, max_new_tokens: int = 12) -> None:
    """`assert_same_greedy` on a left-padded batch of 2 made from `ids`."""
    ids, mask = left_pad(ids, 2, fill=9)
    assert_same_greedy(hf, ours, dict(input_ids=ids, attention_mask=mask, **_images(images)), max_new_tokens)


def assert_round_trip(hf_class, hf, ours, folder, ids, images, atol: float) -> None:
    """ours -> HF loads strictly in transformers with the reference's tensors and equal logits;
    ours -> HF -> ours is bit-identical (config and every tensor)."""
    save_hf(ours, folder)
    hf2, info = hf_class.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf_sd = hf.state_dict()
    for k, v in hf2.state_dict().items():
        assert torch.equal(v, hf_sd[k]), k
    images = _images(images)
    with torch.no_grad():
        torch.testing.assert_close(hf2.eval()(input_ids=ids, **images).logits, ours(ids, **images),
                                   atol=atol, rtol=0 if atol == 0 else 1e-5)
    again = load_hf(folder, dtype="float32")
    assert again.cfg == ours.cfg
    assert_same_models(ours, again)


def copy_folder(src, dst, drop: str | None = None, rename=lambda k: k, config: dict | None = None,
                max_shard_bytes: int | None = None):
    """A copy of the saved folder `src` in `dst` without the tensor `drop`, with keys passed through
    `rename` (and sharded when `max_shard_bytes` is given), and `config` as config.json if given."""
    import json

    from vlmkit.weights.safetensors_io import SafetensorsReader, write_state_dict

    reader = SafetensorsReader(src)
    dst.mkdir()
    shards = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}
    write_state_dict({rename(k): reader.get(k) for k in reader.keys() if k != drop}, dst, **shards)
    (dst / "config.json").write_text(json.dumps(config) if config else (src / "config.json").read_text())
    return dst


def assert_same_models(a, b) -> None:
    """Two loaded models hold the same parameter names and bit-identical tensors."""
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def assert_bf16_identical(hf_class, folder, ids, images) -> None:
    """Loaded in bf16 by both, our logits equal transformers' bit for bit."""
    hf = hf_class.from_pretrained(folder, dtype=torch.bfloat16).eval()
    ours = load_hf(folder, dtype="bfloat16")
    images = {k: v.bfloat16() for k, v in _images(images).items()}
    with torch.no_grad():
        ref = hf(input_ids=ids, **images).logits
        got = ours(ids, **images)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, ref, atol=0, rtol=0)
