"""Video inputs of Qwen2-VL and Qwen2.5-VL against transformers (tiny random configs, CPU, fp32):
M-RoPE positions with videos (get_rope_index, Qwen2.5-VL's tokens_per_second * second_per_grid_ts
time scaling included), logits with `pixel_values_videos` for a left-padded batch with an image
and videos of different sizes and lengths, greedy tokens, and the processor's video patches.

transformers' Qwen2VLVideoProcessor imports torchvision, which cannot be installed here. Its
`patchify` (plain torch: temporal padding with the last frame, (t, merge blocks, C, Tp, P, P)
order) is run by importing the module with empty stand-ins for the torchvision modules, undone
after the import; its resize and normalisation (torchvision's) are not compared: our frames go
through the PIL image path, compared with Qwen2VLImageProcessorPil frame by frame.
"""

import importlib.machinery
import sys
import types

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

from tests.parity.placeholder_checks import assert_same_greedy
from tests.parity.qwen2_vl_checks import bf16_pair, max_logit_diff, saved_pair
from tests.parity.test_qwen2_5_vl import reference as reference_2_5
from tests.parity.test_qwen2_vl_parity import IMG, MERGE, _pixels, _reference as reference_2
from vlmkit.data.processors.qwen2_vl import Qwen2VLProcessor, patchify_frames
from vlmkit.data.video import Video, model_inputs
from vlmkit.errors import DataError
from vlmkit.models.common.mrope import IMAGE, TEXT, VIDEO, mrope_positions

VID = 101
# One image (2x2 merged tokens) and two videos: 3 temporal patches of 2x3, 2 of 1x2 merged tokens.
IMAGE_GRIDS = torch.tensor([[1, 4, 4]])
VIDEO_GRIDS = torch.tensor([[3, 4, 6], [2, 2, 4]])
# Seconds per temporal patch: 2 frames at fps 24 (transformers' default) and at fps 3.
SECONDS = torch.tensor([2 / 24, 2 / 3], dtype=torch.float32)


def _hf_patchify():
    """transformers' Qwen2VLVideoProcessor.patchify, imported with torchvision stand-ins that are
    removed again (with every module the import added) so that nothing else sees them."""
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.v2",
                     "torchvision.transforms.v2.functional", "torchvision.io"):
            module = types.ModuleType(name)
            module.__spec__, module.__path__ = importlib.machinery.ModuleSpec(name, None), []
            module.__getattr__ = lambda attr: type(attr, (), {})  # any name the import reads
            mp.setitem(sys.modules, name, module)
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    for name in set(sys.modules) - before:
        del sys.modules[name]
    return Qwen2VLVideoProcessor.patchify


def _batch():
    """Left-padded [2, 21]: row 0 text, image, text, video 0, text; row 1 text, video 1, text."""
    n0, n1 = (int(g.prod()) // MERGE**2 for g in VIDEO_GRIDS)
    rows = [[5, 102, *[IMG] * 4, 103, 6, 102, *[VID] * n0, 103, 7, 8], [9, 102, *[VID] * n1, 103, 10, 11]]
    T = max(map(len, rows))
    ids, mask = torch.zeros(2, T, dtype=torch.long), torch.zeros(2, T, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, T - len(r):], mask[b, T - len(r):] = torch.tensor(r), 1
    types_ = torch.where(ids == IMG, IMAGE, torch.where(ids == VID, VIDEO, TEXT)) * mask
    return dict(input_ids=ids, attention_mask=mask, pixel_values=_pixels(IMAGE_GRIDS, seed=3),
                image_grid_thw=IMAGE_GRIDS, pixel_values_videos=_pixels(VIDEO_GRIDS, seed=4),
                video_grid_thw=VIDEO_GRIDS, second_per_grid_ts=SECONDS), types_


@pytest.mark.parametrize("make", [reference_2, reference_2_5], ids=["qwen2_vl", "qwen2_5_vl"])
def test_positions_equal_get_rope_index(make):
    hf = make()
    batch, types_ = _batch()
    ref, ref_delta = hf.model.get_rope_index(batch["input_ids"], types_, IMAGE_GRIDS, VIDEO_GRIDS,
                                             attention_mask=batch["attention_mask"],
                                             **({"second_per_grid_ts": SECONDS} if make is reference_2_5 else {}))
    tps = getattr(hf.config.vision_config, "tokens_per_second", None)
    intervals = None if make is reference_2 else tps * SECONDS
    pos, delta = mrope_positions(types_, batch["attention_mask"].bool(), IMAGE_GRIDS, MERGE, VIDEO_GRIDS, intervals)
    assert torch.equal(pos, ref) and torch.equal(delta, ref_delta)
    if make is reference_2_5:  # the time scaling is live: video 1 steps by 2 * 2/3 s -> positions 0, 1
        assert not torch.equal(pos, mrope_positions(types_, batch["attention_mask"].bool(), IMAGE_GRIDS, MERGE,
                                                    VIDEO_GRIDS)[0])


@pytest.mark.parametrize("make", [reference_2, reference_2_5], ids=["qwen2_vl", "qwen2_5_vl"])
def test_logits_and_greedy_with_videos(make, tmp_path):
    hf, ours = saved_pair(make, tmp_path)
    batch, types_ = _batch()
    if make is reference_2:  # Qwen2-VL takes no second_per_grid_ts (its generate refuses it)
        del batch["second_per_grid_ts"]
    diff = max_logit_diff(hf, ours, batch, types_)
    assert diff <= 1e-5, diff
    assert_same_greedy(hf, ours, batch, 6, hf_only=dict(mm_token_type_ids=types_))


def test_patchify_equals_transformers():
    """Odd and even frame counts (the odd one padded with its last frame), several merge blocks."""
    hf_patchify = _hf_patchify()
    g = torch.Generator().manual_seed(0)
    for frames in (1, 4, 5):
        x = torch.randn(frames, 3, 32, 48, generator=g)
        ref, t, h, w = hf_patchify(None, x[None], 8, 2, 2)
        got = patchify_frames(x, 8, 2, 2)
        assert (t, h, w) == (-(-frames // 2), 4, 6) and torch.equal(got, ref[0])


def _frames(n: int, h: int, w: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture
def processor(folder):
    return Qwen2VLProcessor.from_folder(folder)


@pytest.fixture
def folder(tmp_path, paligemma_tokenizer_dir):
    from tests.parity.test_qwen2_vl_processor import _hf_image_processor
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(paligemma_tokenizer_dir / "tokenizer.json"))
    tok.add_special_tokens(["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}')
    _hf_image_processor().save_pretrained(str(tmp_path))
    return tmp_path


def test_video_pixels_follow_the_image_path(processor):
    """Each frame is resized / normalised as transformers' PIL image processor does it, then the
    frames are patchified as its video processor does (5 frames -> 3 temporal patches)."""
    from tests.parity.test_qwen2_vl_processor import _hf_image_processor

    hf_patchify = _hf_patchify()
    frames = _frames(5, 40, 70, seed=1)
    batch = processor(["<|vision_start|><|video_pad|><|vision_end|> what happens"], [[Video(frames, fps=2)]])
    one = processor.video(Video(frames[:1]))  # [1, 3, h', w'] normalised
    ref = _hf_image_processor()([Image.fromarray(frames[0])], return_tensors="pt")
    assert torch.equal(patchify_frames(one, 8, 2, 2), ref["pixel_values"])
    stacked = processor.video(Video(frames))
    expected, t, h, w = hf_patchify(None, stacked[None], 8, 2, 2)
    assert torch.equal(batch["pixel_values_videos"], expected[0])
    assert batch["video_grid_thw"].tolist() == [[t, h, w]] and "pixel_values" not in batch
    assert torch.equal(batch["second_per_grid_ts"], torch.tensor([2 / 2], dtype=torch.float32))
    n_video = int((batch["input_ids"] == processor.tokenizer.token_id("<|video_pad|>")).sum())
    assert n_video == t * h * w // MERGE**2


def test_video_fills_an_image_placeholder_too(processor):
    """A chat template renders an image part as `<|image_pad|>`: a Video there gives the same ids
    as in a `<|video_pad|>` placeholder; a still image next to it stays an image."""
    frames, still = _frames(2, 48, 64, seed=2), _frames(1, 40, 56, seed=3)[0]
    a = processor(["<|image_pad|> and <|video_pad|>"], [[still, Video(frames)]])
    b = processor(["<|image_pad|> and <|image_pad|>"], [[still, Video(frames)]])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["image_grid_thw"].shape == (1, 3) and a["video_grid_thw"].shape == (1, 3)


def test_bad_videos_are_one_line_errors(processor):
    with pytest.raises(DataError, match="zero frames"):
        Video([])
    with pytest.raises(DataError, match="frames differ in size"):
        processor(["<|video_pad|>"], [[Video(_frames(1, 40, 56, 0) + _frames(1, 56, 40, 1))]])


def test_model_inputs_by_processor_capability(processor):
    clip = Video(_frames(3, 40, 56, seed=0), fps=2.0)
    assert model_inputs(processor, clip) == [clip]
    assert model_inputs(object(), clip) == list(clip.frames)


def test_bf16_logits_with_videos_bit_equal(tmp_path):
    """Qwen2.5-VL in bf16 (pixels in bf16, second_per_grid_ts kept in float32): equal logits."""
    hf, ours = bf16_pair(tf.Qwen2_5_VLForConditionalGeneration, reference_2_5, tmp_path)
    batch, types_ = _batch()
    for key in ("pixel_values", "pixel_values_videos"):
        batch[key] = batch[key].bfloat16()
    assert max_logit_diff(hf, ours, batch, types_) == 0.0
