"""Small PNG charts drawn with Pillow (no matplotlib): grouped bars and loss curves."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _font(size: int = 12) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: identical on every machine


def _axes(d: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, ymax: float) -> None:
    x0, y0, x1, y1 = box
    d.text((x0, y0 - 22), title, fill="black", font=_font(14))
    d.line([(x0, y0), (x0, y1), (x1, y1)], fill="black")
    for k in range(5):
        y = y1 - (y1 - y0) * k / 4
        d.line([(x0 - 4, y), (x0, y)], fill="black")
        d.text((x0 - 40, y - 6), f"{ymax * k / 4:.2f}", fill="black", font=_font(10))


def bar_panel(d: ImageDraw.ImageDraw, box, title: str, groups: list[str], series: dict[str, list[float | None]],
              ymax: float) -> None:
    """Grouped bars: one group per entry of `groups`, one bar per series (None = no bar)."""
    x0, y0, x1, y1 = box
    _axes(d, box, title, ymax)
    width = (x1 - x0) / max(len(groups), 1)
    bar = width * 0.8 / max(len(series), 1)
    for g, name in enumerate(groups):
        gx = x0 + g * width + width * 0.1
        for s, values in enumerate(series.values()):
            v = values[g]
            if v is None:
                continue
            top = y1 - (y1 - y0) * min(max(v, 0.0), ymax) / ymax
            d.rectangle([gx + s * bar, top, gx + (s + 1) * bar - 2, y1], fill=PALETTE[s % len(PALETTE)])
        d.text((gx, y1 + 4), name, fill="black", font=_font(10))


def curve_panel(d: ImageDraw.ImageDraw, box, title: str, curves: dict[str, list[float]]) -> None:
    """Line plots of each curve, x = index, y from 0 to the largest value."""
    x0, y0, x1, y1 = box
    ymax = max((max(c) for c in curves.values() if c), default=1.0) or 1.0
    _axes(d, box, title, ymax)
    for s, c in enumerate(curves.values()):
        if len(c) < 2:
            continue
        pts = [(x0 + (x1 - x0) * i / (len(c) - 1), y1 - (y1 - y0) * v / ymax) for i, v in enumerate(c)]
        d.line(pts, fill=PALETTE[s % len(PALETTE)], width=2)


def legend(d: ImageDraw.ImageDraw, xy: tuple[int, int], names: list[str]) -> None:
    x, y = xy
    for s, name in enumerate(names):
        d.rectangle([x, y + 18 * s, x + 12, y + 18 * s + 12], fill=PALETTE[s % len(PALETTE)])
        d.text((x + 18, y + 18 * s), name, fill="black", font=_font(12))


def new_canvas(width: int, height: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (width, height), "white")
    return image, ImageDraw.Draw(image)


def save_png(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
