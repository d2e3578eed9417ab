"""Detection / segmentation / text parsers: conventions, round trips and robustness to junk."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmkit.errors import ConfigError, ParseError
from vlmkit.tasks.parsing import (
    Box,
    SegmentedObject,
    boxes_to_loc_text,
    clean_text,
    coord_to_loc,
    loc_to_coord,
    parse_detections,
    parse_segmentations,
    segments_to_text,
)

SEGS = "".join(f"<seg{c:03d}>" for c in (0, 5, 127, 64, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12))


def test_bin_start_convention_non_square():
    # y uses the height, x the width; edges decode to the START of their bin (k / 1024 * size).
    r = parse_detections("<loc0512><loc0256><loc1023><loc0768> cat", 1000, 500)
    assert r.errors == []
    (b,) = r.boxes
    assert (b.label, b.x1, b.y1, b.x2, b.y2) == ("cat", 250.0, 250.0, 750.0, 1023 / 1024 * 500)
    assert b.score is None


def test_encode_picks_bin_containing_coordinate():
    assert coord_to_loc(0.0, 640) == 0
    assert coord_to_loc(640.0, 640) == 1023  # right edge clips into the last bin
    assert coord_to_loc(0.624, 640) == 0 and coord_to_loc(0.625, 640) == 1  # bin width 0.625
    assert coord_to_loc(-5, 640) == 0 and coord_to_loc(1e9, 640) == 1023
    for k in (0, 1, 511, 1023):
        assert coord_to_loc(loc_to_coord(k, 333), 333) == k


def test_reference_style_output_with_several_objects():
    text = (
        "<loc0100><loc0200><loc0300><loc0400> cat ; "
        "<loc0000><loc0000><loc1023><loc1023> big dog ; <loc0010><loc0020><loc0030><loc0040> cat"
    )
    r = parse_detections(text, 1024, 2048)
    assert r.errors == []
    assert [b.label for b in r.boxes] == ["cat", "big dog", "cat"]
    assert r.boxes[0] == Box("cat", 200.0, 200.0, 400.0, 600.0)


def test_objects_without_separator_and_special_tokens():
    text = "<loc0001><loc0002><loc0003><loc0004> a<loc0005><loc0006><loc0007><loc0008> b<eos><pad>"
    r = parse_detections(text, 1024, 1024)
    assert [(b.label, b.y1) for b in r.boxes] == [("a", 1.0), ("b", 5.0)]
    assert r.errors == []


def test_everything_after_eos_is_ignored():
    r = parse_detections("<loc0001><loc0002><loc0003><loc0004> a<eos> junk <loc>", 10, 10)
    assert len(r.boxes) == 1 and r.errors == []


def test_prompt_echo_is_stripped():
    text = "<bos>detect cat\n<loc0001><loc0002><loc0003><loc0004> cat<eos>"
    assert parse_detections(text, 100, 100, prompt="detect cat").errors == []
    assert parse_detections(text, 100, 100).errors  # without the prompt the echo is junk


@pytest.mark.parametrize(
    ("text", "n_boxes", "fragment"),
    [
        ("<loc0001><loc0002><loc0003> cat", 0, "expected 4 <loc>"),
        ("<loc0001><loc0002><loc0003><loc1024> cat", 0, "[0, 1023]"),
        ("<loc0001><loc0002><loc0003><loc12> cat", 0, "4 digits"),
        ("<loc0500><loc0002><loc0100><loc0004> cat", 0, "inverted"),
        ("<loc0001><loc0002><loc0003><loc0004>", 1, "missing label"),
        ("<loc0001><loc0002><loc0003><loc0004> ca<loc00", 0, "truncated"),
        ("hello <loc0001><loc0002><loc0003><loc0004> cat", 1, "without <loc>"),
        ("<loc0001><loc0002><loc0003><loc0004> c<unused7>at", 0, "unexpected token"),
        ("<seg001> x", 0, "stray <seg>"),
    ],
)
def test_malformed_inputs_are_reported_not_raised(text, n_boxes, fragment):
    r = parse_detections(text, 64, 64)
    assert len(r.boxes) == n_boxes
    assert any(fragment in e for e in r.errors), r.errors
    assert all("\n" not in e for e in r.errors)
    with pytest.raises(ParseError):
        parse_detections(text, 64, 64, strict=True)


def test_strict_passes_clean_output():
    r = parse_detections("<loc0001><loc0002><loc0003><loc0004> cat", 8, 8, strict=True)
    assert len(r.boxes) == 1


def test_segmentation_parse_codes_and_partial_objects():
    text = (
        f"<loc0000><loc0000><loc0512><loc0512>{SEGS} cat ; "
        "<loc0000><loc0000><loc0512><loc0512> no mask ; "
        "<loc0000><loc0000><loc0512><loc0512><seg001><seg002> short ; "
        "<loc0000><loc0000><loc0512><loc0512>" + SEGS.replace("<seg127>", "<seg128>") + " bad"
    )
    r = parse_segmentations(text, 200, 100)
    assert [o.box.label for o in r.objects] == ["cat", "no mask"]
    assert r.objects[0].codes == (0, 5, 127, 64, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
    assert r.objects[0].box == Box("cat", 0.0, 0.0, 100.0, 50.0)
    assert r.objects[1].codes is None
    assert len(r.errors) == 3
    # The same text parses as detections: <seg> tokens ignored, all four boxes kept.
    assert len(parse_detections(text, 200, 100).boxes) == 4


def test_segments_to_text_round_trip():
    obj = SegmentedObject(Box("cat", 10, 20, 110, 90), tuple(range(100, 116)))
    text = segments_to_text([obj], 200, 100)
    r = parse_segmentations(text, 200, 100)
    assert r.errors == []
    assert r.objects[0].codes == obj.codes
    assert segments_to_text(r.objects, 200, 100) == text


@pytest.mark.parametrize(
    "box",
    [
        Box("a;b", 0, 0, 1, 1),
        Box("x", 5, 0, 1, 1),
        Box("x", math.nan, 0, 1, 1),
        Box("<x>", 0, 0, 1, 1),
    ],
)
def test_boxes_to_loc_text_rejects_bad_boxes(box):
    with pytest.raises(ConfigError):
        boxes_to_loc_text([box], 10, 10)


@pytest.mark.parametrize(("w", "h"), [(0, 10), (10, -1), (1.5, 3), (True, 3)])
def test_bad_image_size_is_config_error(w, h):
    with pytest.raises(ConfigError):
        parse_detections("", w, h)


def test_clean_text():
    raw = "<image><image><bos>caption en\n  A  cat\n on a mat. <eos><pad><pad>"
    assert clean_text(raw, prompt="caption en") == "A cat on a mat."
    assert clean_text("<bos>ocr\nLINE 1 \n\n  line  2<eos>", prompt="ocr", keep_newlines=True) == (
        "LINE 1\nline 2"
    )
    assert clean_text("  plain  ") == "plain"
    # A prompt that is not echoed is not removed from the answer.
    assert clean_text("cats are nice", prompt="answer en are cats nice?") == "cats are nice"


# --- properties --------------------------------------------------------------------------------

_sizes = st.integers(min_value=1, max_value=5000)


@st.composite
def _image_and_boxes(draw, square: bool):
    w = draw(_sizes)
    h = w if square else draw(_sizes)
    boxes = []
    for i in range(draw(st.integers(1, 4))):
        xs = sorted(draw(st.floats(0, w, allow_nan=False)) for _ in range(2))
        ys = sorted(draw(st.floats(0, h, allow_nan=False)) for _ in range(2))
        boxes.append(Box(f"obj {i}", xs[0], ys[0], xs[1], ys[1]))
    return w, h, boxes


def _check_round_trip(w, h, boxes):
    text = boxes_to_loc_text(boxes, w, h)
    r = parse_detections(text, w, h, strict=True)
    assert [b.label for b in r.boxes] == [b.label for b in boxes]
    for orig, back in zip(boxes, r.boxes):
        pairs = ((orig.x1, back.x1, w), (orig.y1, back.y1, h),
                 (orig.x2, back.x2, w), (orig.y2, back.y2, h))  # fmt: skip
        for o, b, size in pairs:
            # Decoded edge is the start of the bin containing the original: within one bin below.
            assert o - size / 1024 - 1e-6 <= b <= o + 1e-6
    # Bins themselves survive exactly: re-encoding the parsed boxes gives the same text.
    assert boxes_to_loc_text(r.boxes, w, h) == text


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(_image_and_boxes(square=True))
def test_round_trip_square(case):
    _check_round_trip(*case)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(_image_and_boxes(square=False))
def test_round_trip_non_square(case):
    _check_round_trip(*case)


_FRAGMENTS = [
    "<loc0000>", "<loc1023>", "<loc0512>", "<loc1024>", "<loc9999>", "<loc12>", "<loc>", "<loc",
    "<loc00", "<seg000>", "<seg127>", "<seg128>", "<seg1>", "<seg", ";", " ; ", " ", "\n", "cat",
    "red car", "<eos>", "<pad>", "<bos>", "<image>", "<", ">", "<<", ">>", "<unused0>", "0123",
    "<loc" + "9" * 5000 + ">", "<loc٠١٢٣>", "ñ", "🐈", "\x00", "detect cat\n",
]  # fmt: skip


def _check_never_raises(text, w=37, h=53):
    for parse in (parse_detections, parse_segmentations):
        r = parse(text, w, h)
        boxes = r.boxes if hasattr(r, "boxes") else [o.box for o in r.objects]
        for b in boxes:
            assert 0 <= b.x1 <= b.x2 <= w and 0 <= b.y1 <= b.y2 <= h
            assert "<" not in b.label and ";" not in b.label
        try:
            parse(text, w, h, strict=True)
            assert not r.errors
        except ParseError:
            assert r.errors
    clean_text(text, prompt="detect cat")


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=8), max_size=40).map("".join))
def test_random_fragment_strings_never_raise(text):
    _check_never_raises(text)


def test_seeded_garbage_and_truncations_never_raise():
    rng = random.Random(1234)
    valid = boxes_to_loc_text([Box("cat", 1, 2, 30, 40), Box("dog", 0, 0, 37, 53)], 37, 53)
    for _ in range(250):
        n = rng.randint(0, 30)
        _check_never_raises("".join(rng.choice(_FRAGMENTS) for _ in range(n)))
        # Random single-character corruption of a valid output.
        i = rng.randrange(len(valid))
        _check_never_raises(valid[:i] + rng.choice("<>;0x ") + valid[i + 1 :])
    full = parse_detections(valid, 37, 53).boxes
    for cut in range(len(valid) + 1):  # every truncation point of a generation
        part = parse_detections(valid[:cut], 37, 53).boxes
        assert len(part) <= len(full)
        for p, f in zip(part, full):
            assert (p.x1, p.y1, p.x2, p.y2) == (f.x1, f.y1, f.x2, f.y2)
            assert f.label.startswith(p.label)


def test_round_trip_through_paligemma_tokenizer(paligemma_tokenizer_dir):
    """Targets survive encode -> decode with a PaliGemma vocabulary (1 id per <loc>/<seg>)."""
    from vlmkit.data.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(paligemma_tokenizer_dir)
    obj = SegmentedObject(Box("red car", 1, 2, 30, 40), tuple(range(16)))
    cat = boxes_to_loc_text([Box("cat", 3, 4, 50, 47)], 64, 48)
    text = segments_to_text([obj], 64, 48) + " ; " + cat
    ids = tok.encode(text, add_eos=True)
    assert sum(tok.decode([i], skip_special_tokens=False).startswith("<loc") for i in ids) == 8
    decoded = tok.decode(ids, skip_special_tokens=False)
    assert parse_segmentations(decoded, 64, 48) == parse_segmentations(text, 64, 48)
    boxes = parse_detections(decoded, 64, 48, strict=True).boxes
    assert [b.label for b in boxes] == ["red car", "cat"]
