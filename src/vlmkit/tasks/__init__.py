"""PaLI task interface: prompts, output parsers, the mask VQ-VAE and drawing.

Typical detection round trip::

    prompt = build_prompt("detect", objects=["cat", "dog"])     # "detect cat ; dog"
    text = ...generate(image, prompt)...
    result = parse_detections(text, image.width, image.height)  # .boxes, .errors
    draw_results(image, result.boxes, out_path="out.png")

`segmentation` (torch) and `draw` (Pillow) are imported lazily on first attribute access, so
prompt building and parsing never pay for importing torch or Pillow.
"""

from vlmkit.tasks.parsing import (
    NUM_LOC_BINS,
    Box,
    DetectionResult,
    SegmentationResult,
    SegmentedObject,
    boxes_to_loc_text,
    clean_text,
    coord_to_loc,
    loc_to_coord,
    parse_detections,
    parse_segmentations,
    segments_to_text,
)
from vlmkit.tasks.prompts import LANGUAGES, Task, build_prompt

_LAZY = {
    "MaskVAE": "segmentation",
    "MaskVAEConfig": "segmentation",
    "mask_for_box": "segmentation",
    "to_probs": "segmentation",
    "decode_object_masks": "segmentation",
    "draw_results": "draw",
    "label_color": "draw",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"vlmkit.tasks.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'vlmkit.tasks' has no attribute {name!r}")


__all__ = [
    "LANGUAGES",
    "NUM_LOC_BINS",
    "Box",
    "DetectionResult",
    "SegmentationResult",
    "SegmentedObject",
    "Task",
    "boxes_to_loc_text",
    "build_prompt",
    "clean_text",
    "coord_to_loc",
    "loc_to_coord",
    "parse_detections",
    "parse_segmentations",
    "segments_to_text",
    *_LAZY,
]
