"""PaliGemma's mask VQ-VAE: 16 `<segNNN>` codes <-> a 64x64 mask inside the object's box.

Architecture and weights follow big_vision (`evaluators/proj/paligemma/transfers/segmentation.py`
for the decoder, `pp/proj/paligemma/segmentation.py` for the encoder) and its published
`gs://big_vision/paligemma/vae-oid.npz`, itself a PyTorch state dict (based on Ning et al. 2023,
arXiv:2301.02229). Key names are kept as in that file, so loading is a strict 1:1 copy.

Axis legend: B batch, D code dim (512), C channels, h/w spatial (4x4 grid -> 64x64 mask).

Decoder (codes [B,16] -> logits [B,64,64], nominally in [-1, 1]; big_vision thresholds at 0):
    codebook lookup -> [B,4,4,D] -> conv1x1 D->128, ReLU (decoder.0)
    -> 2 x ResBlock(128): conv3x3, ReLU, conv3x3, ReLU, conv1x1, + skip (decoder.{2,3}.net.{0,2,4})
    -> 4 x [ConvTranspose 4x4 stride 2 pad 1, ReLU]: 128->128->64->32->16 (decoder.{4,6,8,10})
    -> conv1x1 16->1 (decoder.12)
Encoder (masks [B,64,64] in [0,1] -> codes [B,16]), used to build training targets:
    x*2-1 -> 4 x [conv stride 2, ReLU] 1->16->32->64->128 (encoder.{0,2,4,6})
    -> 2 x ResBlock(128) (encoder.{8,9}) -> conv 128->D (encoder.10) -> nearest codebook entry.
The encoder convs use TensorFlow "SAME" padding because big_vision runs them with tf.nn.conv2d.
The encoder channel widths mirror the decoder (the published code reads them from the file and
does not state them); a file whose shapes differ is rejected with the key and both shapes.
Not supported: training the VQ-VAE (no commitment loss / EMA codebook updates).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlmkit.errors import CheckpointError, ConfigError
from vlmkit.tasks.parsing import NUM_SEG_CODES, SEG_TOKENS_PER_OBJECT, Box

MASK_SIZE = 64
_CODEBOOK_KEY = "_vq_vae._embedding"


@dataclass(kw_only=True, frozen=True)
class MaskVAEConfig:
    """Shapes of the published `vae-oid.npz` (big_vision PaliGemma)."""

    codebook_size: int = NUM_SEG_CODES
    code_dim: int = 512
    hidden_dim: int = 128
    num_res_blocks: int = 2
    decoder_dims: tuple[int, ...] = (128, 64, 32, 16)  # ConvTranspose output channels
    encoder_dims: tuple[int, ...] = (16, 32, 64, 128)  # strided conv output channels
    encoder_kernel: int = 4
    encoder_out_kernel: int = 1
    grid: int = 4  # 4x4 codes per mask


class _ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        # Indices 0/2/4 match the checkpoint's "net.0/net.2/net.4" keys (ReLUs at 1 and 3).
        self.net = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(),
            nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(),
            nn.Conv2d(dim, dim, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (extra pixel at the end when the total is odd)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # F.pad order: (w_lo, w_hi, h_lo, h_hi)
        return super().forward(F.pad(x, pads))


def _decoder(cfg: MaskVAEConfig) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, cfg.hidden_dim, 1), nn.ReLU()]
    layers += [_ResBlock(cfg.hidden_dim) for _ in range(cfg.num_res_blocks)]
    c_in = cfg.hidden_dim
    for c_out in cfg.decoder_dims:
        # kernel 4, stride 2, padding 1 doubles h/w exactly (flax padding=2 in big_vision).
        layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        c_in = c_out
    layers.append(nn.Conv2d(c_in, 1, 1))
    return nn.Sequential(*layers)


def _encoder(cfg: MaskVAEConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 1
    for c_out in cfg.encoder_dims:
        layers += [_SameConv2d(c_in, c_out, cfg.encoder_kernel, stride=2), nn.ReLU()]
        c_in = c_out
    layers += [_ResBlock(c_in) for _ in range(cfg.num_res_blocks)]
    layers.append(_SameConv2d(c_in, cfg.code_dim, cfg.encoder_out_kernel))
    return nn.Sequential(*layers)


class MaskVAE(nn.Module):
    """PaliGemma's mask VQ-VAE. `encoder` is None when loaded from a decoder-only file."""

    def __init__(self, config: MaskVAEConfig | None = None, *, with_encoder: bool = True):
        super().__init__()
        self.config = cfg = config or MaskVAEConfig()
        self.codebook = nn.Parameter(torch.zeros(cfg.codebook_size, cfg.code_dim))
        self.decoder = _decoder(cfg)
        self.encoder = _encoder(cfg) if with_encoder else None

    @staticmethod
    def _npz_key(name: str) -> str:
        return _CODEBOOK_KEY if name == "codebook" else name

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: LongTensor [B, 16] in [0, 128) -> float32 logits [B, 64, 64], ~[-1, 1].

        Same values as big_vision's `reconstruct_masks` (which returns [B, 64, 64, 1]);
        a pixel is foreground when the logit is > 0, i.e. `to_probs(x) > 0.5`.
        """
        codes = torch.as_tensor(codes)
        cfg = self.config
        n = cfg.grid * cfg.grid
        if codes.dim() != 2 or codes.shape[1] != n or codes.dtype.is_floating_point:
            shape = tuple(codes.shape)
            raise ConfigError(f"mask codes must be an int tensor [B, {n}], got {shape}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= cfg.codebook_size):
            raise ConfigError(f"mask codes must lie in [0, {cfg.codebook_size})")
        b = codes.shape[0]
        z = self.codebook[codes.long()]  # [B, 16, D]
        z = z.view(b, cfg.grid, cfg.grid, cfg.code_dim).permute(0, 3, 1, 2)  # [B, D, 4, 4]
        return self.decoder(z)[:, 0]  # [B, 1, 64, 64] -> [B, 64, 64]

    forward = decode

    def encode(self, masks: torch.Tensor) -> torch.Tensor:
        """masks: float [B, 64, 64] in [0, 1] (a box crop, `crop_mask_to_box`) -> codes [B, 16]."""
        if self.encoder is None:
            raise ConfigError("this mask VAE was loaded without encoder weights; cannot encode")
        masks = torch.as_tensor(masks, dtype=self.codebook.dtype)
        if masks.dim() != 3 or masks.shape[1:] != (MASK_SIZE, MASK_SIZE):
            raise ConfigError(f"masks must be [B, 64, 64], got {tuple(masks.shape)}")
        x = (2.0 * masks - 1.0)[:, None]  # [B, 1, 64, 64] in [-1, 1], as big_vision's _norm
        z = self.encoder(x)  # [B, D, 4, 4]
        b, d = z.shape[:2]
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # [B*16, D], row-major over the 4x4 grid
        dist = torch.cdist(flat[None], self.codebook[None])[0]  # [B*16, K]
        return dist.argmin(dim=1).view(b, -1)  # [B, 16]

    @classmethod
    def from_npz(cls, path: str | os.PathLike, config: MaskVAEConfig | None = None) -> MaskVAE:
        """Load `vae-oid.npz` strictly: every key used, none missing, every shape checked.

        A file with no `encoder.*` keys loads as a decoder-only model.
        Raises CheckpointError naming missing/extra/mis-shaped keys or an unreadable file.
        """
        arrays = _read_npz(path)
        with_encoder = any(k.startswith("encoder.") for k in arrays)
        model = cls(config, with_encoder=with_encoder)
        targets = {model._npz_key(k): p for k, p in model.state_dict(keep_vars=True).items()}
        missing = sorted(set(targets) - set(arrays))
        extra = sorted(set(arrays) - set(targets))
        if missing or extra:
            raise CheckpointError(
                f"{os.fspath(path)}: mask VAE keys do not match; "
                f"missing {_names(missing)}, unexpected {_names(extra)}"
            )
        with torch.no_grad():
            for key, param in targets.items():
                arr = arrays[key]
                if tuple(arr.shape) != tuple(param.shape):
                    raise CheckpointError(
                        f"{os.fspath(path)}: {key} has shape {tuple(arr.shape)}, "
                        f"expected {tuple(param.shape)}"
                    )
                param.copy_(torch.from_numpy(np.asarray(arr, dtype=np.float32)))
        return model.eval()


def _names(keys: list[str], limit: int = 6) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise CheckpointError(f"mask VAE file not found: {os.fspath(path)}") from None
    except Exception as e:  # zip/pickle/format errors all mean "not a usable .npz"
        raise CheckpointError(f"cannot read mask VAE {os.fspath(path)}: {e}") from None


def to_probs(logits: torch.Tensor) -> torch.Tensor:
    """Decoder logits (~[-1, 1]) -> probabilities in [0, 1], as the PaliGemma demo does."""
    return (logits * 0.5 + 0.5).clamp(0.0, 1.0)


def _pixel_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer (x1, y1, x2, y2), truncated like big_vision's evaluator, clipped to the image."""
    xs = [min(max(int(v), 0), width) for v in (box.x1, box.x2)]
    ys = [min(max(int(v), 0), height) for v in (box.y1, box.y2)]
    return xs[0], ys[0], xs[1], ys[1]


def mask_for_box(
    mask64: np.ndarray | torch.Tensor, box: Box, width: int, height: int, threshold: float = 0.5
) -> np.ndarray:
    """Paste a 64x64 probability mask into `box` of a `height` x `width` image.

    mask64: float [64, 64] probabilities (`to_probs(decode(codes))[i]`).
    Returns bool [height, width]: bilinear-resized mask > `threshold` inside the box, False
    elsewhere (all False for an empty box). Same resize (PIL bilinear) as big_vision's evaluator.
    """
    m = np.asarray(mask64.detach().cpu() if isinstance(mask64, torch.Tensor) else mask64)
    if m.shape != (MASK_SIZE, MASK_SIZE):
        raise ConfigError(f"mask must be [64, 64], got {m.shape}")
    if width <= 0 or height <= 0:
        raise ConfigError(f"image size must be positive, got {width}x{height}")
    out = np.zeros((height, width), dtype=bool)
    x1, y1, x2, y2 = _pixel_box(box, width, height)
    if x2 <= x1 or y2 <= y1:
        return out
    resized = Image.fromarray(m.astype(np.float32)).resize(  # float32 2-D -> PIL mode "F"
        (x2 - x1, y2 - y1), resample=Image.BILINEAR
    )
    out[y1:y2, x1:x2] = np.asarray(resized) > threshold
    return out


def crop_mask_to_box(mask: np.ndarray, box: Box) -> np.ndarray:
    """Full-image mask [H, W] (bool or [0, 1]) -> float32 [64, 64] crop of `box`, for `encode`.

    Box edges are rounded as big_vision's `refcoco_mask2str` does; PIL's bilinear resize is
    antialiased when shrinking, like its `tf.image.resize(..., antialias=True)` (not bit-exact).
    """
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim != 2:
        raise ConfigError(f"mask must be [H, W], got {m.shape}")
    h, w = m.shape
    x1, x2 = (min(max(round(v), 0), w) for v in (box.x1, box.x2))
    y1, y2 = (min(max(round(v), 0), h) for v in (box.y1, box.y2))
    if x2 <= x1 or y2 <= y1:
        raise ConfigError(f"box {box} is empty on a {w}x{h} mask")
    crop = Image.fromarray(np.ascontiguousarray(m[y1:y2, x1:x2]))  # float32 -> PIL mode "F"
    return np.array(crop.resize((MASK_SIZE, MASK_SIZE), resample=Image.BILINEAR))


def random_vae_arrays(
    seed: int = 0, config: MaskVAEConfig | None = None, *, with_encoder: bool = True
) -> dict[str, np.ndarray]:
    """Seeded random weights with the published key names and shapes (for tests / goldens).

    Uses numpy's PCG64 so the values do not depend on torch's RNG. Scales keep activations O(1)
    through the ReLU stack so decoded masks have both signs.
    """
    rng = np.random.default_rng(seed)
    model = MaskVAE(config, with_encoder=with_encoder)
    transposed = {f"{n}.weight" for n, m in model.named_modules()
                  if isinstance(m, nn.ConvTranspose2d)}  # fmt: skip
    arrays = {}
    for name, param in sorted(model.state_dict().items()):
        shape = tuple(param.shape)
        if name == "codebook":
            scale = 1.0
        elif len(shape) == 1:  # bias
            scale = 0.05
        elif name in transposed:  # [in, out, 4, 4], stride 2: each output sees in * 2 * 2 taps
            scale = math.sqrt(2.0 / (shape[0] * 4))
        else:  # He init: fan_in = in_channels * kernel area
            scale = math.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
        arrays[MaskVAE._npz_key(name)] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return arrays


def write_random_npz(path: str | os.PathLike, seed: int = 0, *, with_encoder: bool = True) -> None:
    """Write `random_vae_arrays(seed)` as an .npz in the published format."""
    np.savez(path, **random_vae_arrays(seed, with_encoder=with_encoder))


def decode_object_masks(
    vae: MaskVAE, codes: list[tuple[int, ...] | None], boxes: list[Box], width: int, height: int
) -> list[np.ndarray | None]:
    """Full-image bool masks for parsed objects (None where an object had no codes)."""
    idx = [i for i, c in enumerate(codes) if c is not None]
    out: list[np.ndarray | None] = [None] * len(codes)
    if not idx:
        return out
    batch = torch.tensor([codes[i] for i in idx], dtype=torch.long)  # [B, 16]
    if batch.shape[1] != SEG_TOKENS_PER_OBJECT:
        raise ConfigError(f"each object needs {SEG_TOKENS_PER_OBJECT} codes")
    with torch.no_grad():
        probs = to_probs(vae.decode(batch))  # [B, 64, 64]
    for j, i in enumerate(idx):
        out[i] = mask_for_box(probs[j].numpy(), boxes[i], width, height)
    return out
