"""Packed vision encoding: images of different sizes in one sequence with a block-diagonal mask
(models/common/packing) through the Pixtral-ViT tower, for inference and training."""

import pytest
import torch

from vlmkit.models.common.init import init_weights
from vlmkit.models.common.packing import block_diagonal_mask, pack, segment_ids, unpack
from vlmkit.models.parts.pixtral_vit import PixtralVisionTower
from vlmkit.models.pixtral.config import VISION_PRESETS

ATOL = 1e-5
# (height, width) in pixels, multiples of the debug tower's 8-px patch; all different.
SIZES = [(16, 24), (40, 8), (8, 8), (32, 32), (24, 56), (64, 16), (8, 40)]


@pytest.fixture(scope="module")
def tower():
    return init_weights(PixtralVisionTower(VISION_PRESETS["debug"]), std=0.2, seed=0).eval()


def _images(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, h, w, generator=g) for h, w in sizes]


def test_mask_is_the_worked_example():
    expected = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1]])
    assert torch.equal(block_diagonal_mask([2, 3])[0, 0], expected.bool())
    assert segment_ids([2, 3]).tolist() == [0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="non-empty"):
        block_diagonal_mask([2, 0])


def test_pack_unpack_round_trip():
    seqs = [torch.randn(n, 4) for n in (3, 1, 5)]
    packed, lengths = pack(seqs)
    assert packed.shape == (1, 9, 4) and lengths == [3, 1, 5]
    assert all(torch.equal(a, b) for a, b in zip(unpack(packed, lengths), seqs))


@pytest.mark.parametrize("n", [1, 3, 7])
def test_packed_equals_one_at_a_time(tower, n):
    images = _images(SIZES[:n], seed=n)
    with torch.no_grad():
        packed = tower(images)  # [1, N, D]
        alone = [tower([img])[0] for img in images]  # [n_i, D] each
    assert packed.shape[1] == sum(tower.num_patches(SIZES[:n]))
    for got, ref in zip(unpack(packed, tower.num_patches(SIZES[:n])), alone):
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_padded_batch_equals_list(tower):
    """The processor's layout (zero-padded to the largest image + image_sizes) gives the same
    features as the unpadded list: the padding never reaches the tower."""
    images = _images(SIZES[:4], seed=2)
    padded = torch.zeros(4, 3, 40, 32)
    for out, img in zip(padded, images):
        out[:, : img.shape[1], : img.shape[2]] = img
    padded[0, :, 20:] = 7.0  # garbage in the padding
    with torch.no_grad():
        assert torch.equal(tower(padded, torch.tensor(SIZES[:4])), tower(images))


def test_mask_is_block_diagonal(tower):
    """Changing one image's pixels changes its own features and no other image's."""
    images = _images(SIZES[:3], seed=3)
    changed = [images[0], images[1] + 1.0, images[2]]
    lengths = tower.num_patches(SIZES[:3])
    with torch.no_grad():
        a, b = unpack(tower(images), lengths), unpack(tower(changed), lengths)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert not torch.allclose(a[1], b[1])


def test_gradients_flow_through_the_packed_path(tower):
    """Training uses the same packed forward: pixel and weight gradients equal the per-image ones."""
    images = [img.requires_grad_() for img in _images(SIZES[:3], seed=4)]
    tower.zero_grad()
    tower(images).square().sum().backward()
    packed_pix = [img.grad.clone() for img in images]
    packed_w = {k: p.grad.clone() for k, p in tower.named_parameters()}
    tower.zero_grad()
    for img in images:
        img.grad = None
        tower([img]).square().sum().backward()
    for img, g in zip(images, packed_pix):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, img.grad, atol=ATOL, rtol=1e-4)
    for k, p in tower.named_parameters():  # per-image gradients summed
        torch.testing.assert_close(packed_w[k], p.grad, atol=1e-4, rtol=1e-4)
    tower.zero_grad()


def test_bad_inputs(tower):
    with pytest.raises(ValueError, match="smaller than one 8-pixel patch"):
        tower([torch.zeros(3, 4, 16)])
    with pytest.raises(ValueError, match="do not fit pixel_values"):
        tower(torch.zeros(2, 3, 16, 16), torch.tensor([[16, 16], [24, 8]]))
    with pytest.raises(ValueError, match="do not fit pixel_values"):
        tower(torch.zeros(2, 3, 16, 16), torch.tensor([[16, 16]]))
