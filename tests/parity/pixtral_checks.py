"""Parity checks shared by the families with the Pixtral-ViT tower (Pixtral as LLaVA, Mistral 3):
prompts whose images are rows of `[IMG]` ended by `[IMG_BREAK]` / `[IMG_END]`, logits on two
images of different sizes, a left-padded batch, greedy tokens through vlmkit's engine, bf16, and a
`vlmkit create` folder, each against the transformers model the family mirrors.

`patch` is the pixels per `[IMG]` token: the tower's patch (times Mistral 3's merge size)."""

import torch

from tests.parity import hf_builders as hb
from tests.parity.placeholder_checks import assert_same_greedy
from vlmkit.generation import SamplingConfig
from vlmkit.weights.hf import load_hf

ATOL = 1e-5
IMG, BREAK, END = hb.IMAGE_TOKEN, 297, 298


def expansion(h: int, w: int, patch: int) -> list[int]:
    """PixtralProcessor's tokens for an h x w image: rows of [IMG] + [IMG_BREAK], the last [IMG_END]."""
    tokens = ([IMG] * (w // patch) + [BREAK]) * (h // patch)
    return tokens[:-1] + [END]


def padded_pixels(sizes, seed=1):
    """Random images of the given (height, width) sizes zero-padded to the largest, and image_sizes [M, 2]."""
    g = torch.Generator().manual_seed(seed)
    px = torch.zeros(len(sizes), 3, max(h for h, _ in sizes), max(w for _, w in sizes))
    for out, (h, w) in zip(px, sizes):
        out[:, :h, :w] = torch.randn(3, h, w, generator=g)
    return px, torch.tensor(sizes)


def prompt(sizes, patch: int, seed=2) -> torch.Tensor:
    """[1, T]: BOS, text, image 0, text, image 1, text."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, BREAK, (6,), generator=g).tolist()
    ids = [1, *text[:2]]
    for i, (h, w) in enumerate(sizes):
        ids += expansion(h, w, patch) + text[2 + 2 * i: 4 + 2 * i]
    return torch.tensor([ids])


def assert_two_images(hf, ours, sizes, patch: int) -> None:
    """One prompt with two images of different sizes: logits equal; swapping the images changes them."""
    ids = prompt(sizes, patch)
    px, image_sizes = padded_pixels(sizes)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=px, image_sizes=image_sizes).logits
        got = ours(ids, px, image_sizes=image_sizes)
        swapped = ours(prompt(sizes[::-1], patch), px[[1, 0]], image_sizes=image_sizes[[1, 0]])
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=1e-5)
    assert not torch.allclose(got[0, -1], swapped[0, -1])  # image order matters


def left_padded_batch(sizes, patch: int):
    """Row 0: the first image; row 1: the second image and a longer prompt; left-padded with 0."""
    rows = [prompt(sizes[:1], patch, seed=3)[0], prompt(sizes[1:], patch, seed=4)[0]]
    T = max(len(r) for r in rows)
    ids = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, T - len(r):], mask[b, T - len(r):] = r, 1
    px, image_sizes = padded_pixels(sizes, seed=6)
    return ids, mask, px, image_sizes


def assert_left_padded(hf, ours, sizes, patch: int) -> None:
    """Logits at real tokens equal transformers' with generate's positions; row 0 equals itself alone."""
    ids, mask, px, image_sizes = left_padded_batch(sizes, patch)
    assert mask[0].sum() < mask[1].sum()
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    (h, w), n = sizes[0], int(mask[0].sum())
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=px, attention_mask=mask, position_ids=pos, image_sizes=image_sizes).logits
        got = ours(ids, px, mask, image_sizes=image_sizes)
        alone = ours(ids[:1, -n:], px[:1, :, :h, :w], image_sizes=image_sizes[:1])
    valid = mask.bool()
    torch.testing.assert_close(got[valid], ref[valid], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(got[0, -n:], alone[0], atol=ATOL, rtol=1e-5)


def assert_greedy(hf, ours, sizes, patch: int, max_new_tokens: int = 10) -> None:
    """vlmkit's engine through the family's adapter (which hands image_sizes to the tower) gives
    transformers' greedy tokens on that left-padded batch."""
    ids, mask, px, image_sizes = left_padded_batch(sizes, patch)
    assert_same_greedy(hf, ours, dict(input_ids=ids, attention_mask=mask, pixel_values=px, image_sizes=image_sizes),
                       max_new_tokens)


def assert_bf16(hf_class, folder, sizes, patch: int) -> None:
    """Loaded in bf16 by both, the logits are as close to transformers' float32 logits as
    transformers' own bf16 logits are (within 2x their largest error; image_sizes stay int64).

    Not bit-identical: vlmkit's tower attends per image (packing.packed_attention) where
    transformers runs one SDPA call under an N x N block mask; the kernels round bf16 differently."""
    hf16 = hf_class.from_pretrained(folder, dtype=torch.bfloat16).eval()
    hf32 = hf_class.from_pretrained(folder, dtype=torch.float32).eval()
    ours16 = load_hf(folder, dtype="bfloat16")
    ids = prompt(sizes, patch)
    px, image_sizes = padded_pixels(sizes)
    with torch.no_grad():
        exact = hf32(input_ids=ids, pixel_values=px, image_sizes=image_sizes).logits
        ref = hf16(input_ids=ids, pixel_values=px.bfloat16(), image_sizes=image_sizes).logits
        got = ours16(ids, px.bfloat16(), image_sizes=image_sizes)
    assert got.dtype == torch.bfloat16
    theirs, mine = ((x.float() - exact).abs().max() for x in (ref, got))
    assert 0 < mine <= 2 * theirs, (float(mine), float(theirs))


def assert_created_folder_runs(folder, hf_class, images, probe) -> None:
    """A `vlmkit create` folder: transformers loads it strictly with equal logits on our processor's
    batch (prompts with 1 and 2 of `images`), and vlmkit's pipeline generates for `probe`."""
    from vlmkit.pipeline import load

    pipe = load(folder, dtype="float32")
    hf = hb.load_strictly(hf_class, folder)
    batch = pipe.processor(["[IMG] hi", "[IMG][IMG] two"], [images[:1], images[1:]])
    with torch.no_grad():
        ref = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"]).logits
        got = pipe.model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                         image_sizes=batch["image_sizes"])
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(got[valid], ref[valid], atol=ATOL, rtol=1e-5)
    assert 1 <= len(pipe.generate("[IMG] what", [probe], SamplingConfig(max_new_tokens=3)).token_ids) <= 3
