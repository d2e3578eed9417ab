"""Mask VQ-VAE: parity with big_vision's formulation, strict .npz loading, mask pasting."""

import numpy as np
import pytest
import torch

from vlmkit.errors import CheckpointError, ConfigError
from vlmkit.tasks.parsing import Box
from vlmkit.tasks.segmentation import (
    MaskVAE,
    crop_mask_to_box,
    decode_object_masks,
    mask_for_box,
    random_vae_arrays,
    to_probs,
    write_random_npz,
)


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "vae-oid.npz"
    write_random_npz(path, seed=0)
    return path


@pytest.fixture(scope="module")
def vae(npz_path):
    return MaskVAE.from_npz(npz_path)


# --- independent numpy re-implementation of big_vision's flax/TF code (NHWC) ------------------


def _conv(x, k_hwio, b, stride=1, pads=((0, 0), (0, 0)), lhs_dilation=1):
    """Cross-correlation like lax.conv_general_dilated: x [B,H,W,I], k [kh,kw,I,O]."""
    if lhs_dilation > 1:
        bsz, h, w, c = x.shape
        xd = np.zeros((bsz, (h - 1) * lhs_dilation + 1, (w - 1) * lhs_dilation + 1, c), x.dtype)
        xd[:, ::lhs_dilation, ::lhs_dilation] = x
        x = xd
    x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw = k_hwio.shape[:2]
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, k_hwio.shape[3]), np.float64)
    for dy in range(kh):
        for dx in range(kw):
            patch = x[:, dy : dy + stride * ho : stride, dx : dx + stride * wo : stride]
            out += np.einsum("bhwi,io->bhwo", patch, k_hwio[dy, dx])
    return out + b


def _k(ck, name):  # big_vision's `transp`: torch [O,I,kh,kw] (or ConvT [I,O,kh,kw]) -> [kh,kw,.,.]
    return np.transpose(ck[name + ".weight"], (2, 3, 1, 0)).astype(np.float64)


def _flax_conv_transpose(x, ck, name):
    # flax ConvTranspose(kernel 4, stride 2, padding=2, transpose_kernel=True): flip the spatial
    # axes and swap in/out of the kernel, then convolve the stride-dilated input.
    k = _k(ck, name)[::-1, ::-1].transpose(0, 1, 3, 2)
    return _conv(x, k, ck[name + ".bias"], pads=((2, 2), (2, 2)), lhs_dilation=2)


def _res(x, ck, name, same):
    h = np.maximum(_conv(x, _k(ck, name + ".0"), ck[name + ".0.bias"], pads=same), 0)
    h = np.maximum(_conv(h, _k(ck, name + ".2"), ck[name + ".2.bias"], pads=same), 0)
    return x + _conv(h, _k(ck, name + ".4"), ck[name + ".4.bias"])


def _reference_decode(ck, codes):
    emb = ck["_vq_vae._embedding"].astype(np.float64)
    x = emb[codes.reshape(-1)].reshape(codes.shape[0], 4, 4, emb.shape[1])
    x = np.maximum(_conv(x, _k(ck, "decoder.0"), ck["decoder.0.bias"]), 0)
    for name in ("decoder.2.net", "decoder.3.net"):
        x = _res(x, ck, name, ((1, 1), (1, 1)))
    for name in ("decoder.4", "decoder.6", "decoder.8", "decoder.10"):
        x = np.maximum(_flax_conv_transpose(x, ck, name), 0)
    return _conv(x, _k(ck, "decoder.12"), ck["decoder.12.bias"])[..., 0]  # [B, 64, 64]


def _reference_encode(ck, masks):
    x = 2.0 * (masks[..., None].astype(np.float64) - 0.5)  # [B, 64, 64, 1]
    for n in range(4):  # TF SAME, stride 2, kernel 4 on an even size: pad 1 on each side
        x = np.maximum(_conv(x, _k(ck, f"encoder.{2 * n}"), ck[f"encoder.{2 * n}.bias"],
                             stride=2, pads=((1, 1), (1, 1))), 0)  # fmt: skip
    for name in ("encoder.8.net", "encoder.9.net"):
        x = _res(x, ck, name, ((1, 1), (1, 1)))
    x = _conv(x, _k(ck, "encoder.10"), ck["encoder.10.bias"]).reshape(-1, 512)
    emb = ck["_vq_vae._embedding"].astype(np.float64)
    d = (x**2).sum(1, keepdims=True) + (emb**2).sum(1) - 2 * x @ emb.T
    return d.argmin(1).reshape(-1, 16)


def test_decoder_matches_big_vision_formulation(vae, npz_path):
    ck = dict(np.load(npz_path))
    codes = np.random.default_rng(3).integers(0, 128, (3, 16))
    with torch.no_grad():
        ours = vae.decode(torch.from_numpy(codes)).numpy()
    assert ours.shape == (3, 64, 64) and ours.dtype == np.float32
    ref = _reference_decode(ck, codes)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    assert (ours > 0).any() and (ours < 0).any()  # random weights give a non-trivial mask


def test_encoder_matches_big_vision_formulation(vae, npz_path):
    ck = dict(np.load(npz_path))
    yy, xx = np.mgrid[:64, :64]
    masks = np.stack([(yy - 30) ** 2 + (xx - 20) ** 2 < 300, xx > yy, yy < 10]).astype(np.float32)
    with torch.no_grad():
        ours = vae.encode(torch.from_numpy(masks))
    assert ours.shape == (3, 16) and ours.dtype == torch.long
    np.testing.assert_array_equal(ours.numpy(), _reference_encode(ck, masks))


def test_decode_is_deterministic_and_batch_independent(vae, npz_path):
    codes = torch.tensor(np.random.default_rng(0).integers(0, 128, (4, 16)))
    with torch.no_grad():
        a, b = vae.decode(codes), MaskVAE.from_npz(npz_path).decode(codes)
        single = vae.decode(codes[2:3])
    assert torch.equal(a, b)
    torch.testing.assert_close(single[0], a[2], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "codes", [torch.zeros(2, 15, dtype=torch.long), torch.full((1, 16), 128), torch.zeros(1, 16)]
)
def test_decode_rejects_bad_codes(vae, codes):
    with pytest.raises(ConfigError):
        vae.decode(codes)


def _save(path, arrays):
    np.savez(path, **arrays)
    return path


def test_strict_loading_names_missing_extra_and_misshaped_keys(tmp_path):
    arrays = random_vae_arrays(1)
    missing = dict(arrays)
    del missing["decoder.6.weight"]
    with pytest.raises(CheckpointError, match=r"missing decoder\.6\.weight, unexpected none"):
        MaskVAE.from_npz(_save(tmp_path / "m.npz", missing))
    with pytest.raises(CheckpointError, match=r"unexpected _vq_vae\._ema_w"):
        MaskVAE.from_npz(_save(tmp_path / "e.npz", {**arrays, "_vq_vae._ema_w": np.zeros(3)}))
    bad = {**arrays, "decoder.12.weight": np.zeros((1, 8, 1, 1), np.float32)}
    with pytest.raises(CheckpointError, match=r"decoder\.12\.weight has shape \(1, 8, 1, 1\)"):
        MaskVAE.from_npz(_save(tmp_path / "s.npz", bad))
    partial_encoder = {k: v for k, v in arrays.items() if k != "encoder.10.bias"}
    with pytest.raises(CheckpointError, match=r"encoder\.10\.bias"):
        MaskVAE.from_npz(_save(tmp_path / "p.npz", partial_encoder))


def test_unreadable_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        MaskVAE.from_npz(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="cannot read"):
        MaskVAE.from_npz(junk)


def test_decoder_only_file_loads_and_cannot_encode(tmp_path, vae):
    path = tmp_path / "dec.npz"
    write_random_npz(path, seed=0, with_encoder=False)
    dec_only = MaskVAE.from_npz(path)
    assert dec_only.encoder is None
    codes = torch.arange(16)[None]
    with torch.no_grad():
        assert torch.equal(dec_only.decode(codes), vae.decode(codes))  # same seed, same decoder
    with pytest.raises(ConfigError, match="without encoder"):
        dec_only.encode(torch.zeros(1, 64, 64))


def test_loaded_tensors_equal_file_contents(vae, npz_path):
    ck = np.load(npz_path)
    np.testing.assert_array_equal(vae.codebook.detach().numpy(), ck["_vq_vae._embedding"])
    np.testing.assert_array_equal(vae.decoder[4].weight.detach().numpy(), ck["decoder.4.weight"])
    assert vae.codebook.shape == (128, 512) and vae.decoder[4].weight.shape == (128, 128, 4, 4)


def test_mask_for_box_pastes_inside_box_only():
    m = np.zeros((64, 64), np.float32)
    m[:, :32] = 1.0  # left half of the box is foreground
    out = mask_for_box(m, Box("x", 10.7, 20.2, 50.9, 60.0), width=80, height=70)
    assert out.shape == (70, 80) and out.dtype == bool
    ys, xs = np.nonzero(out)
    assert ys.min() == 20 and ys.max() == 59  # int() truncation, as big_vision's evaluator
    assert xs.min() == 10 and xs.max() < 10 + 40 // 2 + 1
    assert not out[:, 50:].any() and not out[:20].any()


def test_mask_for_box_threshold_and_degenerate_boxes():
    m = np.full((64, 64), 0.6, np.float32)
    assert mask_for_box(m, Box("x", 0, 0, 8, 8), 8, 8).all()
    assert not mask_for_box(m, Box("x", 0, 0, 8, 8), 8, 8, threshold=0.7).any()
    assert not mask_for_box(m, Box("x", 5, 5, 5, 9), 8, 8).any()  # zero width
    clipped = mask_for_box(m, Box("x", -10, -10, 100, 4), 8, 8)  # clipped to the image
    assert clipped[:4].all() and not clipped[4:].any()
    with pytest.raises(ConfigError):
        mask_for_box(np.zeros((32, 32)), Box("x", 0, 0, 1, 1), 8, 8)


def test_crop_then_encode_then_decode_shapes(vae):
    full = np.zeros((100, 200), bool)
    full[20:60, 50:150] = True
    crop = crop_mask_to_box(full, Box("x", 40, 10, 160, 70))
    assert crop.shape == (64, 64) and crop.dtype == np.float32
    assert 0.0 <= crop.min() and crop.max() <= 1.0 and crop[32, 32] == 1.0 and crop[0, 0] == 0.0
    with torch.no_grad():
        codes = vae.encode(torch.from_numpy(crop)[None])
        probs = to_probs(vae.decode(codes))
    assert codes.shape == (1, 16) and int(codes.max()) < 128
    assert probs.shape == (1, 64, 64) and 0 <= float(probs.min()) and float(probs.max()) <= 1


def test_decode_object_masks_keeps_order_and_none(vae):
    boxes = [Box("a", 0, 0, 10, 10), Box("b", 5, 5, 20, 15)]
    masks = decode_object_masks(vae, [None, tuple(range(16))], boxes, 30, 20)
    assert masks[0] is None
    assert masks[1].shape == (20, 30) and not masks[1][:5].any() and not masks[1][:, 20:].any()
