"""Colour-coded subject masks on disk (the paper's format).

One folder per video, one RGB PNG per frame (``00000.png``, ``00001.png``, ...), black background and one
colour per subject. ``subjects.json`` ({"subject1": [r, g, b], "subject2": [r, g, b]}) fixes subject order.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dreamrelation.errors import UserError
from dreamrelation.utils.io import atomic_directory

DEFAULT_MASK_COLOURS: tuple[tuple[int, int, int], ...] = ((255, 0, 0), (0, 255, 0))
SUBJECTS_FILE = "subjects.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_NUMBER = re.compile(r"\d+")


def write_colour_masks(
    folder: str | os.PathLike[str],
    masks: np.ndarray,
    colours: Sequence[Sequence[int]] = DEFAULT_MASK_COLOURS,
) -> Path:
    """Write masks (N,T,H,W) bool as colour PNGs plus ``subjects.json``, atomically replacing ``folder``.

    Where masks overlap, the earlier subject (subject1) wins the pixel.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 4:
        raise UserError(f"Masks must have shape (subjects, frames, height, width); got {masks.shape}.")
    if len(colours) < masks.shape[0]:
        raise UserError(f"Need one colour per subject: {masks.shape[0]} subjects, {len(colours)} colours.")
    cols = [tuple(int(c) for c in colour) for colour in colours[: masks.shape[0]]]
    if any(c == (0, 0, 0) for c in cols) or len(set(cols)) != len(cols):
        raise UserError(f"Mask colours must be distinct and not black; got {cols}.")
    folder = Path(folder)
    with atomic_directory(folder) as tmp:
        num_subjects, num_frames = masks.shape[:2]
        for t in range(num_frames):
            img = np.zeros((*masks.shape[2:], 3), dtype=np.uint8)
            for k in reversed(range(num_subjects)):  # subject1 painted last = on top
                img[masks[k, t]] = cols[k]
            Image.fromarray(img).save(tmp / f"{t:05d}.png")
        subjects = {f"subject{k + 1}": list(cols[k]) for k in range(num_subjects)}
        (tmp / SUBJECTS_FILE).write_text(json.dumps(subjects, indent=2) + "\n")
    return folder


def _frame_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UserError(
            f"Mask folder {folder} has no frame images; put one PNG per frame in it (00000.png, 00001.png, ...)."
        )
    unnumbered = [p.name for p in files if not _NUMBER.search(p.stem)]
    if unnumbered:
        raise UserError(
            f"Mask folder {folder} has frame files without a frame number ({unnumbered[:3]}); "
            "name frames by number, e.g. 00000.png."
        )
    return sorted(files, key=lambda p: (int(_NUMBER.findall(p.stem)[-1]), p.name))


def _subject_colours(folder: Path, colours: Sequence[Sequence[int]] | None) -> np.ndarray:
    if colours is not None:
        return np.asarray([[int(c) for c in col] for col in colours], dtype=np.float64).reshape(-1, 3)
    path = folder / SUBJECTS_FILE
    if not path.is_file():
        raise UserError(
            f"Mask folder {folder} has no {SUBJECTS_FILE} and no subject colours were given; add {SUBJECTS_FILE} "
            'like {"subject1": [255, 0, 0], "subject2": [0, 255, 0]} or pass the colours explicitly.'
        )
    try:
        data = json.loads(path.read_text())
        keys = sorted((k for k in data if re.fullmatch(r"subject\d+", k)), key=lambda k: int(k[7:]))
        cols = np.asarray([[int(c) for c in data[k]] for k in keys], dtype=np.float64).reshape(-1, 3)
    except (ValueError, TypeError, AttributeError) as exc:
        raise UserError(
            f"{path} is not valid; it must map subject1, subject2, ... to [r, g, b] lists ({exc})."
        ) from None
    if len(cols) == 0:
        raise UserError(f"{path} names no subjects; it must map subject1, subject2, ... to [r, g, b] lists.")
    return cols


def read_colour_masks(
    folder: str | os.PathLike[str],
    colours: Sequence[Sequence[int]] | None = None,
    max_distance: float = 100.0,
) -> np.ndarray:
    """Read colour-coded masks as bool (N,T,H,W), N = number of subjects (2 in this project).

    Subject colours come from ``colours`` or ``subjects.json`` (never from sorting colour values). Frames are
    ordered by the number in their file name. Each pixel goes to the nearest of black (background) and the
    subject colours, if within ``max_distance`` (RGB Euclidean) of that subject colour.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"Mask folder {folder} does not exist; point to a folder of per-frame mask PNGs.")
    cols = _subject_colours(folder, colours)
    files = _frame_files(folder)
    frames = []
    for path in files:
        with Image.open(path) as im:
            frames.append(np.asarray(im.convert("RGB")))
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        sizes = sorted(f"{s[1]}x{s[0]}" for s in shapes)
        raise UserError(
            f"Mask folder {folder} has frames of different sizes ({', '.join(sizes)}); "
            "re-export all masks at the video's resolution."
        )
    video = np.stack(frames).astype(np.float64)  # (T,H,W,3)
    refs = np.concatenate([np.zeros((1, 3)), cols], axis=0)  # background first
    dist = np.linalg.norm(video[..., None, :] - refs, axis=-1)  # (T,H,W,1+N)
    nearest = dist.argmin(axis=-1)
    out = np.zeros((len(cols), *video.shape[:3]), dtype=bool)
    for k in range(len(cols)):
        out[k] = (nearest == k + 1) & (dist[..., k + 1] <= max_distance)
    return out
