"""Pipeline's image-feature cache: cached features equal recomputed ones, hits skip the tower."""

import numpy as np
import pytest
import torch

import vlmkit.pipeline
from vlmkit.generation import SamplingConfig, generate
from vlmkit.weights.create import create_checkpoint


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = create_checkpoint(tmp_path_factory.mktemp("ckpt") / "debug", "debug")
    return vlmkit.pipeline.load(folder)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 52, 3), dtype=np.uint8)


@pytest.fixture
def count_encodes(pipe, monkeypatch):
    """Counts images that go through the vision tower."""
    calls = []
    original = pipe.model.encode_images

    def counting(px):
        calls.append(px.shape[0])
        return original(px)

    monkeypatch.setattr(pipe.model, "encode_images", counting)
    pipe._features.clear()
    return calls


def test_cached_features_equal_recomputed(pipe, count_encodes):
    px = pipe.processor(["caption en"] * 2, [_image(0), _image(1)], padding_side="left")["pixel_values"]
    first = pipe.image_features(px)
    second = pipe.image_features(px)
    assert count_encodes == [1, 1]  # one tower call per distinct image, none on the second pass
    with torch.inference_mode():
        dtype = pipe.model.projector.weight.dtype
        recomputed = torch.cat([pipe.model.encode_images(px[i:i + 1].to(dtype)) for i in range(2)])
    assert first.shape == (2, pipe.model.cfg.num_image_tokens, pipe.model.cfg.text.hidden_size)
    torch.testing.assert_close(second, recomputed, atol=0, rtol=0)
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_changed_pixel_misses_the_cache(pipe, count_encodes):
    px = pipe.processor(["x"], [_image(2)], padding_side="left")["pixel_values"]
    a = pipe.image_features(px)
    px2 = px.clone()
    px2[0, 0, 0, 0] += 0.01
    b = pipe.image_features(px2)
    assert count_encodes == [1, 1]
    assert not torch.equal(a, b)


def test_cache_is_bounded_lru(pipe, count_encodes, monkeypatch):
    monkeypatch.setattr(pipe, "feature_cache_size", 2)
    pxs = [pipe.processor(["x"], [_image(10 + i)], padding_side="left")["pixel_values"] for i in range(3)]
    for px in pxs:
        pipe.image_features(px)
    assert len(pipe._features) == 2
    pipe.image_features(pxs[2])  # most recent: still cached
    assert len(count_encodes) == 3
    pipe.image_features(pxs[0])  # evicted first: recomputed
    assert len(count_encodes) == 4


def test_generation_with_cached_features_equals_uncached(pipe, count_encodes):
    sampling = SamplingConfig(max_new_tokens=5)
    image = _image(3)
    first = pipe.generate("caption en", image, sampling)
    again = pipe.generate("caption en", image, sampling)  # features from the cache
    assert len(count_encodes) == 1
    batch = pipe.processor(["caption en"], [image], padding_side="left")
    uncached = generate(pipe.model, pipe.tokenizer, batch, sampling)[0]
    assert first.token_ids == again.token_ids == uncached.token_ids
    assert len(first.token_ids) >= 1
