"""Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747) from Debian's `dataset-fashion-mnist`.

The package installs the four gzipped IDX files of the original release under
``/usr/share/datasets/fashion-mnist/``:

    train-images-idx3-ubyte.gz  60000 x 28 x 28 uint8     t10k-images-idx3-ubyte.gz  10000 x ...
    train-labels-idx1-ubyte.gz  60000 uint8 labels 0..9   t10k-labels-idx1-ubyte.gz  10000

Install with ``sudo apt-get install dataset-fashion-mnist``, or point ``VLMKIT_FASHION_MNIST`` (or
the `root` argument) at a folder holding the same files (gzipped or not). Images are white
garments on black (0 = background).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmkit.errors import DataError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "sudo apt-get install dataset-fashion-mnist"
# The official label names (lower case; "t-shirt/top" shortened to "t-shirt" for captions).
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class FashionMnist:
    """images uint8 [N, 28, 28] (0 = background), labels int64 [N] in 0..9 (`CLASS_NAMES`)."""

    images: np.ndarray
    labels: np.ndarray


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x0000, a dtype byte, a rank byte, then one
    big-endian uint32 per dimension and the row-major data."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file")
    rank = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=rank, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset, count = 4 + 4 * rank, int(np.prod(dims)) if dims else 0
    if len(data) != offset + count * dtype.itemsize:
        raise DataError(f"{path}: {len(data) - offset} data bytes, expected {count * dtype.itemsize} for shape {dims}")
    return np.frombuffer(data, dtype, count=count, offset=offset).reshape(dims)


def fashion_mnist_root(root: str | Path | None = None) -> Path:
    """The folder holding the files: `root`, else $VLMKIT_FASHION_MNIST, else the Debian path.

    Raises DataError naming the install command when the files are not there."""
    folder = Path(root or os.environ.get("VLMKIT_FASHION_MNIST") or DEFAULT_ROOT)
    if not any(_find(folder, name) for name in _FILES["train"]):
        raise DataError(f"Fashion-MNIST not found in {folder}; install it with `{INSTALL_HINT}` "
                        "(or set VLMKIT_FASHION_MNIST to a folder with its IDX files)")
    return folder


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> FashionMnist:
    """The "train" (60000) or "test" (10000) split as uint8 images and int64 labels."""
    if split not in _FILES:
        raise DataError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    folder = fashion_mnist_root(root)
    paths = [_find(folder, name) for name in _FILES[split]]
    missing = [name for name, p in zip(_FILES[split], paths) if p is None]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}; reinstall with `{INSTALL_HINT}`")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{folder}: {split} images {images.shape} do not match labels {labels.shape}")
    return FashionMnist(images=images, labels=labels.astype(np.int64))
