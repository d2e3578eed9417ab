"""Regenerate tests/assets/mask_vae_golden.npz (mask VQ-VAE regression golden file).

Run only when a change to `vlmkit.tasks.segmentation` is MEANT to change its outputs:

    python scripts/regen_golden_masks.py

The file holds the inputs (fixed codes, synthetic masks, a box) and the outputs of a VQ-VAE with
seeded random weights (`write_random_npz(path, SEED)`: numpy PCG64, so no torch RNG is involved).
tests/regression/test_mask_golden.py recomputes the outputs and compares them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from vlmkit.tasks.parsing import Box
from vlmkit.tasks.segmentation import MaskVAE, mask_for_box, to_probs, write_random_npz

SEED = 20240514
GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "assets" / "mask_vae_golden.npz"
BOX = (13.0, 7.0, 101.0, 66.0)  # x1, y1, x2, y2 on a WIDTH x HEIGHT image
WIDTH, HEIGHT = 120, 80


def golden_inputs() -> dict[str, np.ndarray]:
    """Fixed codes [4, 16] and three synthetic 64x64 masks (disc, triangle, stripe)."""
    codes = np.random.default_rng(7).integers(0, 128, size=(4, 16)).astype(np.int64)
    codes[0] = np.arange(16)  # one row that is easy to read in a diff
    yy, xx = np.mgrid[:64, :64]
    masks = np.stack([(yy - 30) ** 2 + (xx - 22) ** 2 < 17**2, xx > yy, (yy > 20) & (yy < 30)])
    return {"codes": codes, "masks": masks.astype(np.float32)}


def compute_outputs(vae: MaskVAE, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Decoder logits for `codes`, encoder codes for `masks`, and one pasted full-image mask."""
    with torch.no_grad():
        logits = vae.decode(torch.from_numpy(inputs["codes"]))  # [4, 64, 64]
        enc_codes = vae.encode(torch.from_numpy(inputs["masks"]))  # [3, 16]
        probs = to_probs(logits)
    pasted = mask_for_box(probs[1].numpy(), Box("x", *BOX), WIDTH, HEIGHT)  # [80, 120] bool
    return {
        "logits": logits.numpy().astype(np.float32),
        "enc_codes": enc_codes.numpy().astype(np.int64),
        "pasted": pasted,
    }


def model() -> MaskVAE:
    """Seeded random VQ-VAE, loaded through the production `.npz` loader."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vae-oid.npz"
        write_random_npz(path, seed=SEED)
        return MaskVAE.from_npz(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GOLDEN)
    out = parser.parse_args().out
    torch.manual_seed(0)
    inputs = golden_inputs()
    outputs = compute_outputs(model(), inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, seed=np.int64(SEED), **inputs, **outputs)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
