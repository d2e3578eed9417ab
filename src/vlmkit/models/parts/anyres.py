"""LLaVA-NeXT "anyres" geometry, shared by its processor (vlmkit.data) and its model: which tile
grid an image gets, and which part of the tiled feature grid is the image rather than padding.

Integer maths only, exactly as transformers rounds (its `select_best_resolution`, `unpad_image`
and `LlavaNextProcessor._get_unpadded_features`), so the token count the processor expands
`<image>` to and the features the model packs always agree.

Sizes are (height, width); `pinpoints` are the (H, W) pixel resolutions the tiles may cover.
"""

from collections.abc import Sequence


def select_best_resolution(height: int, width: int, pinpoints: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The (H, W) pinpoint that keeps most of an (height, width) image's pixels when the image is
    scaled to fit it (the downscaled sides floored); ties go to the least wasted area."""
    best, best_effective, best_waste = None, 0, float("inf")
    for h, w in pinpoints:
        scale = min(w / width, h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = w * h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (int(h), int(w)), effective, waste
    return best


def tile_grid(height: int, width: int, pinpoints: Sequence[Sequence[int]], tile: int) -> tuple[int, int]:
    """(rows, cols) of `tile`-pixel tiles that cover the best pinpoint of an (height, width) image."""
    best_h, best_w = select_best_resolution(height, width, pinpoints)
    return best_h // tile, best_w // tile


def unpadded_window(height: int, width: int, grid_h: int, grid_w: int) -> tuple[int, int, int, int]:
    """(top, left, rows, cols) of the part of a grid_h x grid_w feature grid that holds an
    (height, width) image which was fitted into it and centre-padded.

    The side the image fills keeps all its cells; on the other, the image's scaled extent is
    rounded (to 7 decimals first, so 3.4999999999 counts as 3.5, then truncated) and the padding
    split evenly, an odd cell going to the image.
    """
    if width / height > grid_w / grid_h:
        pad = (grid_h - int(round(height * (grid_w / width), 7))) // 2
        return pad, 0, grid_h - 2 * pad, grid_w
    pad = (grid_w - int(round(width * (grid_h / height), 7))) // 2
    return 0, pad, grid_h, grid_w - 2 * pad


def unpadded_grid(height: int, width: int, grid_h: int, grid_w: int) -> tuple[int, int]:
    """(rows, cols) left of a grid_h x grid_w feature grid after removing the padding around an
    (height, width) image (see `unpadded_window`)."""
    return unpadded_window(height, width, grid_h, grid_w)[2:]
