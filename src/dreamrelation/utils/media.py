"""Video/image I/O and previews: MP4/GIF writing and reading, contact sheets, mask overlays, trajectories.

All writers are atomic (temp file in the same directory, then ``os.replace``). Videos are
``uint8`` arrays shaped ``(T, H, W, 3)`` in RGB order.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dreamrelation.errors import UserError
from dreamrelation.utils.io import atomic_path
from dreamrelation.utils.plots import default_font

__all__ = [
    "DEFAULT_MASK_COLOURS",
    "contact_sheet",
    "default_scale",
    "overlay_masks",
    "read_video",
    "save_png",
    "trajectory_frames",
    "trajectory_panel",
    "trajectory_still",
    "upscale_nearest",
    "write_gif",
    "write_video",
]

PathLike = str | os.PathLike[str]
Colour = tuple[int, int, int]

#: Short side (pixels) that small toy videos are nearest-neighbour upscaled to, at least, by default.
MIN_SHORT_SIDE = 256
#: Frame height (pixels) that contact-sheet frames are brought close to by default.
SHEET_FRAME_HEIGHT = 128
#: Contact-sheet layout: padding around/between cells and gap between frames within a strip.
SHEET_PAD = 8
SHEET_GAP = 2

# Video containers the project reads (PyAV/FFmpeg decodes them all).
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".webm", ".avi", ".mkv", ".gif")

DEFAULT_MASK_COLOURS: tuple[Colour, ...] = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (0, 130, 200),  # blue
    (255, 225, 25),  # yellow
    (145, 30, 180),  # purple
    (70, 240, 240),  # cyan
)


# ----------------------------------------------------------------------------------------------
# array helpers
# ----------------------------------------------------------------------------------------------


def _as_video(frames: np.ndarray) -> np.ndarray:
    """Validate/convert ``frames`` into a contiguous ``uint8`` ``(T, H, W, 3)`` array.

    Accepts ``(H, W, 3)`` single frames, ``(T, H, W)`` grey videos and float videos in ``[0, 1]``.
    """
    arr = np.asarray(frames)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[None]
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"expected video frames shaped (T, H, W, 3), got {arr.shape}")
    arr = arr[..., :3]
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"empty video: shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(np.rint(np.nan_to_num(arr) * 255.0), 0, 255)
        else:
            arr = np.clip(arr, 0, 255)
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def default_scale(height: int, width: int, min_short_side: int = MIN_SHORT_SIDE) -> int:
    """Smallest integer factor making the short side ``>= min_short_side`` (1 for large videos)."""
    short = max(1, min(height, width))
    return max(1, math.ceil(min_short_side / short))


def upscale_nearest(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscale of ``(..., H, W, C)`` by an integer ``scale``."""
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    if scale == 1:
        return frames
    return np.repeat(np.repeat(frames, int(scale), axis=-3), int(scale), axis=-2)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """Pad ``(T, H, W, 3)`` by edge replication to even height and width (needed by yuv420p)."""
    ph, pw = frames.shape[1] % 2, frames.shape[2] % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


def _rate(fps: float) -> Fraction:
    """Frame rate as a Fraction (29.97 -> 30000/1001)."""
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps}")
    return Fraction(fps).limit_denominator(1001)


@functools.lru_cache(maxsize=1)
def _pick_codec() -> str:
    """``libx264`` if this PyAV build can encode with it, else ``mpeg4``."""
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # any failure means "not available"
        return "mpeg4"


# ----------------------------------------------------------------------------------------------
# video / gif writing and reading
# ----------------------------------------------------------------------------------------------


def write_video(
    path: PathLike,
    frames: np.ndarray,
    fps: float,
    scale: int | None = None,
    codec: str | None = None,
    crf: int = 18,
) -> Path:
    """Write ``frames`` (T, H, W, 3) as an MP4 at ``path`` atomically; return the path.

    ``scale`` is an integer nearest-neighbour upscale factor; ``None`` picks one making the
    short side >= 256 (so 64x64 toy videos become 256x256). Odd sizes are edge-padded to even.
    ``codec`` defaults to ``libx264`` (quality ``crf``) when available, else ``mpeg4``.
    """
    video = _as_video(frames)
    if scale is None:
        scale = default_scale(video.shape[1], video.shape[2])
    video = _pad_even(upscale_nearest(video, scale))
    codec = codec or _pick_codec()
    rate = _rate(fps)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width = int(video.shape[2])
        stream.height = int(video.shape[1])
        stream.pix_fmt = "yuv420p"
        if codec in ("libx264", "h264"):
            stream.options = {"crf": str(int(crf)), "preset": "medium"}
        else:
            stream.bit_rate = max(2_000_000, int(video.shape[1] * video.shape[2] * float(rate) * 2))
        for img in video:
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return Path(path)


def write_gif(path: PathLike, frames: np.ndarray, fps: float, scale: int | None = None) -> Path:
    """Write ``frames`` (T, H, W, 3) as a looping GIF at ``path`` atomically; return the path.

    ``scale`` as in :func:`write_video`. Note GIF stores frame delays in 1/100 s, and Pillow
    merges identical consecutive frames (their durations are added).
    """
    video = _as_video(frames)
    if scale is None:
        scale = default_scale(video.shape[1], video.shape[2])
    video = upscale_nearest(video, scale)
    duration = max(20, int(round(1000.0 / float(_rate(fps)))))
    images = [Image.fromarray(f, mode="RGB") for f in video]
    with atomic_path(path) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=duration,
            loop=0,
            optimize=False,
            disposal=1,
        )
    return Path(path)


def _one_line(exc: BaseException) -> str:
    """A one-line description of ``exc``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def read_video(path: PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video file (MP4, GIF, ... anything FFmpeg reads) into ``(frames, fps)``.

    ``frames`` is ``uint8`` ``(T, H, W, 3)``; at most ``max_frames`` frames are decoded.
    Raises :class:`UserError` naming the file when it is missing, unreadable, truncated or
    has no video stream.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"video file not found: {p}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    out: list[np.ndarray] = []
    fps = 0.0
    try:
        with av.open(str(p), mode="r") as container:
            if not container.streams.video:
                raise UserError(f"no video stream in {p}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            for frame in container.decode(stream):
                out.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(out) >= max_frames:
                    break
    except UserError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read video {p} (unreadable or truncated): {_one_line(exc)}") from exc
    if not out:
        raise UserError(f"cannot read video {p}: no decodable frames (empty or truncated file)")
    if not (fps > 0 and math.isfinite(fps)):
        fps = 8.0
    return np.stack(out), fps


# ----------------------------------------------------------------------------------------------
# previews
# ----------------------------------------------------------------------------------------------


def save_png(path: PathLike, image: Image.Image | np.ndarray) -> Path:
    """Save an image (PIL or ``uint8`` (H, W, 3)/(H, W) array) as PNG atomically; return the path."""
    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            arr = _as_video(arr)[0] if arr.ndim == 3 else np.clip(arr, 0, 255).astype(np.uint8)
        image = Image.fromarray(arr)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def overlay_masks(
    frames: np.ndarray,
    masks: np.ndarray,
    colours: Sequence[Colour] | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """Blend semi-transparent coloured ``masks`` (S, T, H, W) bool onto ``frames`` (T, H, W, 3).

    Mask ``i`` uses ``colours[i % len(colours)]`` (default :data:`DEFAULT_MASK_COLOURS`).
    Masks of shape (S, H, W) or (S, 1, H, W) apply to every frame; masks at another spatial
    resolution (e.g. latent masks) are nearest-neighbour resized to the frame size.
    """
    video = _as_video(frames)
    t, h, w, _ = video.shape
    m = np.asarray(masks)
    if m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4:
        raise ValueError(f"expected masks shaped (S, T, H, W), got {m.shape}")
    m = m.astype(bool)
    if m.shape[1] not in (1, t):
        # temporally compressed masks: map each frame to its nearest mask time index
        m = m[:, (np.arange(t) * m.shape[1]) // t]
    if m.shape[2:] != (h, w):
        rows = (np.arange(h) * m.shape[2]) // h
        cols = (np.arange(w) * m.shape[3]) // w
        m = m[:, :, rows][:, :, :, cols]
    palette = list(colours) if colours else list(DEFAULT_MASK_COLOURS)
    out = video.astype(np.float32)
    a = float(np.clip(alpha, 0.0, 1.0))
    for i in range(m.shape[0]):
        colour = np.asarray(palette[i % len(palette)], dtype=np.float32)
        sel = np.broadcast_to(m[i], (t, h, w))
        out[sel] = (1.0 - a) * out[sel] + a * colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _text_size(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont
) -> tuple[int, int]:
    """Pixel width and height of a single line of ``text``."""
    if not text:
        return 0, 0
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(math.ceil(right - min(left, 0))), int(math.ceil(bottom - min(top, 0)))


def _wrap(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int
) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels wide (long words are split)."""
    lines: list[str] = []
    for para in str(text).splitlines() or [""]:
        line = ""
        for word in para.split():
            candidate = f"{line} {word}" if line else word
            if _text_size(draw, candidate, font)[0] <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            # split a word that is longer than the line on its own
            while _text_size(draw, word, font)[0] > width and len(word) > 1:
                cut = len(word)
                while cut > 1 and _text_size(draw, word[:cut], font)[0] > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _fit_frame(frame: np.ndarray, scale: float) -> np.ndarray:
    """Upscale by an integer factor (nearest) or downscale by a fraction (bilinear)."""
    if scale >= 1:
        return upscale_nearest(frame, int(round(scale)))
    h, w = frame.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))


def _strip(video: np.ndarray, frames_per_cell: int, scale: float) -> np.ndarray:
    """Evenly spaced frames of ``video`` side by side, ``SHEET_GAP`` white pixels apart."""
    k = max(1, min(frames_per_cell, video.shape[0]))
    idx = np.unique(np.round(np.linspace(0, video.shape[0] - 1, k)).astype(int))
    tiles = [_fit_frame(video[i], scale) for i in idx]
    th, tw = tiles[0].shape[:2]
    strip = np.full((th, len(tiles) * tw + (len(tiles) - 1) * SHEET_GAP, 3), 255, np.uint8)
    for j, tile in enumerate(tiles):
        x = j * (tw + SHEET_GAP)
        strip[:, x : x + tw] = tile
    return strip


def contact_sheet(
    rows: Sequence[Sequence[np.ndarray | None]],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    frames_per_cell: int = 4,
    scale: float | None = None,
) -> Image.Image:
    """Grid of videos: cell ``(r, c)`` shows ``frames_per_cell`` evenly spaced frames of ``rows[r][c]``.

    Cells may be a video (T, H, W, 3), a single frame (H, W, 3) or ``None`` (left blank); rows may
    be ragged. ``scale`` defaults to an integer nearest upscale bringing frames to >= 128 px high
    (64x64 toy frames -> x2), or a bilinear downscale to 128 px for big frames.

    Layout (no labels): width ``= SHEET_PAD + n_cols * (cell_w + SHEET_PAD)``, height likewise with
    ``cell_h``; ``cell_w = k * fw + (k - 1) * SHEET_GAP`` for ``k`` frames of scaled width ``fw``.
    Row labels add a left column, column labels (wrapped to the cell width) a header row.
    """
    videos = [[None if v is None else _as_video(v) for v in row] for row in rows]
    present = [v for row in videos for v in row if v is not None]
    n_rows = len(videos)
    n_cols = max((len(r) for r in videos), default=0)
    if col_labels is not None:
        n_cols = max(n_cols, len(col_labels))
    if row_labels is not None:
        n_rows = max(n_rows, len(row_labels))
    if n_rows == 0 or n_cols == 0:
        raise ValueError("contact_sheet needs at least one row and one column")
    if scale is None:
        max_h = max((v.shape[1] for v in present), default=SHEET_FRAME_HEIGHT)
        scale = (
            float(default_scale(max_h, max_h, SHEET_FRAME_HEIGHT))
            if max_h <= SHEET_FRAME_HEIGHT
            else SHEET_FRAME_HEIGHT / max_h
        )
    strips = [[None if v is None else _strip(v, frames_per_cell, scale) for v in row] for row in videos]
    all_strips = [s for row in strips for s in row if s is not None]
    if all_strips:
        cell_w = max(s.shape[1] for s in all_strips)
        cell_h = max(s.shape[0] for s in all_strips)
    else:
        cell_w = cell_h = SHEET_FRAME_HEIGHT

    font = default_font()
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _text_size(scratch, "Ag|", font)[1] + 2
    label_w = 0
    if row_labels:
        label_w = max(_text_size(scratch, str(t), font)[0] for t in row_labels) + SHEET_PAD
        label_w = min(label_w, 240)
    wrapped_row = (
        [_wrap(scratch, str(t), font, label_w - SHEET_PAD) for t in row_labels] if row_labels else []
    )
    wrapped_col = [_wrap(scratch, str(t), font, cell_w) for t in col_labels] if col_labels else []
    header_h = max((len(lines) for lines in wrapped_col), default=0) * line_h
    header_h = header_h + SHEET_PAD if header_h else 0
    if wrapped_row:
        cell_h = max(cell_h, max(len(lines) for lines in wrapped_row) * line_h)

    width = label_w + SHEET_PAD + n_cols * (cell_w + SHEET_PAD)
    height = header_h + SHEET_PAD + n_rows * (cell_h + SHEET_PAD)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x0, y0 = label_w + SHEET_PAD, header_h + SHEET_PAD

    for c, lines in enumerate(wrapped_col):
        x = x0 + c * (cell_w + SHEET_PAD)
        for i, line in enumerate(lines):
            draw.text((x, SHEET_PAD + i * line_h), line, fill=(0, 0, 0), font=font)
    for r, lines in enumerate(wrapped_row):
        y = y0 + r * (cell_h + SHEET_PAD)
        for i, line in enumerate(lines):
            draw.text((SHEET_PAD, y + i * line_h), line, fill=(0, 0, 0), font=font)
    for r, row in enumerate(strips):
        for c, strip in enumerate(row):
            if strip is None:
                continue
            sheet.paste(
                Image.fromarray(strip), (x0 + c * (cell_w + SHEET_PAD), y0 + r * (cell_h + SHEET_PAD))
            )
    return sheet


# ----------------------------------------------------------------------------------------------
# trajectories
# ----------------------------------------------------------------------------------------------


def trajectory_still(
    background: np.ndarray,
    trajectories: np.ndarray,
    colours: Sequence[Colour] | None = None,
    scale: int = 2,
    fade: float = 0.0,
) -> np.ndarray:
    """Draw centroid ``trajectories`` (S, T, 2) in ``background``'s pixel coordinates (x, y) on it.

    ``background`` is one frame (H, W, 3), or a video (T, H, W, 3) whose mean over time is used (a ghost of
    the motion). It is nearest-upscaled by ``scale`` and blended ``fade`` of the way to white. Each
    trajectory is a polyline in ``colours[i]`` with a black outline, an open circle at its start and a filled
    one at its end; NaN points (lost subject) break the line. Returns ``uint8`` (H*scale, W*scale, 3).
    """
    arr = np.asarray(background)
    frame = _as_video(arr).mean(axis=0) if arr.ndim == 4 else _as_video(arr)[0].astype(np.float64)
    frame = (1.0 - fade) * frame + fade * 255.0
    image = Image.fromarray(upscale_nearest(np.clip(np.rint(frame), 0, 255).astype(np.uint8), scale))
    draw = ImageDraw.Draw(image)
    palette = list(colours) if colours else list(DEFAULT_MASK_COLOURS)
    radius = 2 + scale
    for i, traj in enumerate(np.asarray(trajectories, dtype=np.float64)):
        colour = tuple(int(c) for c in palette[i % len(palette)])
        points = [None if np.isnan(p).any() else ((p[0] + 0.5) * scale, (p[1] + 0.5) * scale) for p in traj]
        for width, fill in ((scale + 3, (0, 0, 0)), (scale + 1, colour)):
            for p, q in zip(points[:-1], points[1:], strict=True):
                if p is not None and q is not None:
                    draw.line([p, q], fill=fill, width=width)
        valid = [p for p in points if p is not None]
        if valid:
            (x0, y0), (x1, y1) = valid[0], valid[-1]
            draw.ellipse([x0 - radius, y0 - radius, x0 + radius, y0 + radius], outline=(0, 0, 0), width=2)
            draw.ellipse([x1 - radius, y1 - radius, x1 + radius, y1 + radius], fill=colour, outline=(0, 0, 0))
    return np.asarray(image)


def trajectory_panel(
    video: np.ndarray,
    trajectories: np.ndarray,
    colours: Sequence[Colour] | None = None,
    frames: int = 4,
    scale: int = 2,
) -> np.ndarray:
    """One image: ``frames`` evenly spaced frames of ``video`` and, last, its :func:`trajectory_still`.

    All tiles are nearest-upscaled by ``scale`` and ``SHEET_GAP`` white pixels apart; the result is a
    single frame that :func:`contact_sheet` accepts as a cell.
    """
    video = _as_video(video)
    strip = _strip(video, frames, float(scale))
    still = trajectory_still(video, trajectories, colours, scale, fade=0.25)
    gap = np.full((strip.shape[0], SHEET_GAP, 3), 255, np.uint8)
    return np.concatenate([strip, gap, still], axis=1)


def trajectory_frames(
    video: np.ndarray, trajectories: np.ndarray, colours: Sequence[Colour] | None = None, scale: int = 4
) -> np.ndarray:
    """The video upscaled by ``scale`` with each subject's trajectory so far drawn on every frame (for GIFs)."""
    video = _as_video(video)
    traj = np.asarray(trajectories, dtype=np.float64)
    return np.stack([trajectory_still(video[t], traj[:, : t + 1], colours, scale) for t in range(len(video))])


def read_image(source: PathLike | Image.Image) -> Image.Image:
    """An RGB photo from a file (PNG, JPEG, ... anything Pillow reads) or a PIL image; a missing or
    unreadable file is a :class:`UserError` naming it."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    path = Path(source)
    if not path.is_file():
        raise UserError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: not a readable image ({_one_line(exc)})") from None


def fit_image(image: Image.Image, height: int, width: int) -> tuple[Image.Image, str | None]:
    """``image`` at exactly ``width`` x ``height``: scaled to cover it (aspect ratio kept), then centre-cropped.
    Returns the fitted image and a sentence saying what changed (None when it already had that size)."""
    w, h = image.size
    if (w, h) == (width, height):
        return image, None
    scale = max(width / w, height / h)
    rw, rh = max(width, round(w * scale)), max(height, round(h * scale))
    left, top = (rw - width) // 2, (rh - height) // 2
    fitted = image.resize((rw, rh), Image.Resampling.LANCZOS).crop((left, top, left + width, top + height))
    note = f"resized from {w}x{h} to {rw}x{rh}"
    if (rw, rh) != (width, height):
        note += f" and centre-cropped to {width}x{height}"
    return fitted, note
