"""Shared pytest fixtures. Keep each fixture small, documented and deterministic."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

# --- tokenizers ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def spm_base_model() -> Path:
    """A real 32000-piece Llama-style SentencePiece BPE model (shipped with mistral-common)."""
    mistral_common = pytest.importorskip("mistral_common")
    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def paligemma_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, spm_base_model: Path) -> Path:
    """PaliGemma-layout tokenizer folder (tokenizer.json + tokenizer.model + configs), built once.

    Layout: 0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, base pieces, 1024 <locNNNN>, 128 <segNNN>, <image>.
    Treat it as read-only; copy it to a tmp dir before removing or editing files.
    """
    from vlmkit.data.tokenizer_build import build_paligemma_tokenizer

    return build_paligemma_tokenizer(spm_base_model, tmp_path_factory.mktemp("paligemma_tokenizer"))


# --- images --------------------------------------------------------------------------------------


@pytest.fixture
def rng_image() -> Callable[..., Image.Image]:
    """Factory `rng_image(height, width, mode="RGB", seed=0)` -> a deterministic PIL image.

    Smooth colour gradients plus noise, so that resizing is non-trivial; converted to `mode`
    (for "RGBA"/"LA" a random alpha band is added).
    """

    def make(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0:width] / max(height, width, 1)
        smooth = np.stack([np.sin(6 * xx + c) * 0.4 + 0.5 * yy for c in range(3)], axis=-1)
        pixels = np.clip(smooth * 255 + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, mode="RGB")
        if mode in ("RGBA", "LA"):
            base = image.convert(mode[:-1])
            base.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)))
            return base
        return image.convert(mode) if mode != "RGB" else image

    return make


# --- threads -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """Run tests single-threaded: tiny matmuls gain nothing from threads, and on a shared 2-core
    machine extra threads spin-wait. Slow tests (real-size models) keep the default."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
