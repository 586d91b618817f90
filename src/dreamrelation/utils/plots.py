"""PIL charts and their shared pieces: the default font, colour maps, labelled heat-maps."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# viridis-like anchors for heat-maps
VIRIDIS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)
# inferno-like anchors for attention overlays
INFERNO = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64
)


@functools.lru_cache(maxsize=4)
def default_font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at ``size`` px (the fixed bitmap font on old Pillow or without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def colour_map(values: np.ndarray, anchors: np.ndarray = VIRIDIS) -> np.ndarray:
    """Map values in [0, 1] (NaN -> grey) through piecewise-linear colour ``anchors``: uint8 ``(..., 3)``."""
    v = np.asarray(values, dtype=np.float64)
    nan = ~np.isfinite(v)
    x = np.clip(np.nan_to_num(v), 0.0, 1.0) * (len(anchors) - 1)
    lo = np.clip(np.floor(x).astype(int), 0, len(anchors) - 2)
    frac = (x - lo)[..., None]
    rgb = anchors[lo] * (1 - frac) + anchors[lo + 1] * frac
    rgb[nan] = 200.0
    return np.rint(rgb).astype(np.uint8)


def heatmap_image(
    values: np.ndarray | Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    vmin: float = 0.0,
    vmax: float = 1.0,
    cell: int = 36,
) -> Image.Image:
    """A labelled heat-map (viridis-like colours, values printed in cells, colour bar) as a PIL image."""
    mat = np.asarray(values, dtype=np.float64)
    if mat.ndim != 2 or mat.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"values {mat.shape} do not match {len(row_labels)} x {len(col_labels)} labels")
    font = default_font(12)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        box = scratch.textbbox((0, 0), text, font=font)
        return box[2] - box[0], box[3] - box[1]

    pad = 8
    left = max((size(t)[0] for t in row_labels), default=0) + 2 * pad
    col_h = max((size(t)[0] for t in col_labels), default=0) + 2 * pad  # labels drawn vertically
    title_h = size(title)[1] + 2 * pad if title else pad
    n_r, n_c = mat.shape
    bar_w = 16
    width = left + n_c * cell + 3 * pad + bar_w + 48
    height = title_h + col_h + n_r * cell + pad
    img = Image.new("RGB", (width, max(height, title_h + col_h + 120)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((pad, pad), title, fill=(0, 0, 0), font=font)
    top = title_h + col_h
    scaled = (mat - vmin) / (vmax - vmin) if vmax > vmin else np.zeros_like(mat)
    colours = colour_map(scaled)
    for i in range(n_r):
        for j in range(n_c):
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=tuple(int(c) for c in colours[i, j]))
            if cell >= 28:
                text = "nan" if not np.isfinite(mat[i, j]) else f"{mat[i, j]:.2f}"
                tw, th = size(text)
                bright = float(np.dot(colours[i, j], [0.299, 0.587, 0.114])) > 140
                draw.text(
                    (x0 + (cell - tw) / 2, y0 + (cell - th) / 2 - 1),
                    text,
                    fill=(0, 0, 0) if bright else (255, 255, 255),
                    font=font,
                )
    for i, label in enumerate(row_labels):
        th = size(label)[1]
        draw.text((pad, top + i * cell + (cell - th) / 2), label, fill=(0, 0, 0), font=font)
    for j, label in enumerate(col_labels):
        tw, th = size(label)
        txt = Image.new("RGB", (tw + 4, th + 6), (255, 255, 255))
        ImageDraw.Draw(txt).text((2, 0), label, fill=(0, 0, 0), font=font)
        rotated = txt.rotate(90, expand=True)
        img.paste(rotated, (left + j * cell + (cell - rotated.width) // 2, top - rotated.height - pad // 2))
    # colour bar
    bx = left + n_c * cell + 2 * pad
    bar_h = max(n_r * cell, 100)
    ramp = colour_map(np.linspace(1.0, 0.0, bar_h))[:, None, :].repeat(bar_w, axis=1)
    img.paste(Image.fromarray(ramp), (bx, top))
    draw.text((bx + bar_w + 4, top), f"{vmax:.2f}", fill=(0, 0, 0), font=font)
    draw.text((bx + bar_w + 4, top + bar_h - size("0")[1] - 2), f"{vmin:.2f}", fill=(0, 0, 0), font=font)
    return img


def scatter_image(
    points: Sequence[tuple[str, float, float, Sequence[float], Sequence[float]]],
    x_label: str,
    y_label: str,
    title: str = "",
    size: int = 420,
) -> Image.Image:
    """A labelled scatter plot on [0, 1] x [0, 1]: ``(label, x, y, x_interval, y_interval)`` per point, the
    intervals drawn as whiskers (NaN bounds are skipped)."""
    font = default_font(12)
    pad, left, bottom = 12, 48, 40
    legend_w = 300
    img = Image.new("RGB", (left + size + 2 * pad + legend_w, size + bottom + 3 * pad + 16), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    top = 2 * pad + 16
    if title:
        draw.text((pad, pad), title, fill=(0, 0, 0), font=font)

    def at(x: float, y: float) -> tuple[float, float]:
        return left + size * min(max(x, 0.0), 1.0), top + size * (1.0 - min(max(y, 0.0), 1.0))

    draw.rectangle([left, top, left + size, top + size], outline=(0, 0, 0))
    for tick in np.linspace(0.0, 1.0, 6):
        x, y = at(tick, tick)
        draw.line([x, top + size, x, top + size + 4], fill=(0, 0, 0))
        draw.line([left - 4, y, left, y], fill=(0, 0, 0))
        draw.text((x - 8, top + size + 6), f"{tick:.1f}", fill=(0, 0, 0), font=font)
        draw.text((pad, y - 7), f"{tick:.1f}", fill=(0, 0, 0), font=font)
    draw.text((left + size // 2 - 40, top + size + 22), x_label, fill=(0, 0, 0), font=font)
    draw.text((left + 4, top + 4), y_label, fill=(0, 0, 0), font=font)
    colours = colour_map(np.linspace(0.0, 0.9, max(len(points), 1)), INFERNO)
    for k, (label, x, y, x_ci, y_ci) in enumerate(points):
        colour = tuple(int(c) for c in colours[k])
        cx, cy = at(x, y)
        for lo, hi, horizontal in ((x_ci[0], x_ci[1], True), (y_ci[0], y_ci[1], False)):
            if np.isfinite(lo) and np.isfinite(hi):
                a, b = (at(lo, y), at(hi, y)) if horizontal else (at(x, lo), at(x, hi))
                draw.line([a, b], fill=colour, width=2)
        draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=colour, outline=(0, 0, 0))
        ly = top + k * 20
        draw.ellipse([left + size + 2 * pad, ly + 3, left + size + 2 * pad + 10, ly + 13], fill=colour)
        draw.text((left + size + 2 * pad + 16, ly), label, fill=(0, 0, 0), font=font)
    return img
