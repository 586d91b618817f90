"""Read an exemplar folder: ``videos/NAME.mp4`` with ``videos/NAME.txt`` captions and ``masks/NAME/`` PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dreamrelation.data.mask_io import read_colour_masks
from dreamrelation.errors import UserError
from dreamrelation.utils.media import (
    VIDEO_SUFFIXES,  # noqa: E402,I001
    read_video,
)


def load_exemplar_folder(
    folder: str | Path,
) -> tuple[list[np.ndarray], list[str], list[np.ndarray], list[str]]:
    """Videos uint8 ``(T, H, W, 3)``, captions, masks bool ``(2, T, H, W)`` and names, sorted by name.

    Every problem (missing caption, missing mask folder, frame-count mismatch) is collected and reported
    together in one error, one line per file.
    """
    folder = Path(folder)
    video_dir = folder / "videos" if (folder / "videos").is_dir() else folder
    paths = (
        sorted(p for p in video_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if video_dir.is_dir()
        else []
    )
    if not paths:
        raise UserError(f"{video_dir}: no videos ({', '.join(VIDEO_SUFFIXES)}) found")
    videos, captions, masks, names, problems = [], [], [], [], []
    for path in paths:
        caption_file = path.with_suffix(".txt")
        mask_dir = folder / "masks" / path.stem
        if not caption_file.is_file():
            problems.append(f"{caption_file}: missing caption file (one line describing the video)")
            continue
        if not mask_dir.is_dir():
            problems.append(f"{mask_dir}: missing mask folder (one colour-coded PNG per frame)")
            continue
        try:
            frames, _ = read_video(path)
            mask = read_colour_masks(mask_dir)
        except UserError as exc:
            problems.append(str(exc))
            continue
        if mask.shape[1:] != frames.shape[:3]:
            problems.append(f"{mask_dir}: masks {mask.shape[1:]} do not match {path.name} {frames.shape[:3]}")
            continue
        videos.append(frames)
        captions.append(caption_file.read_text().strip())
        masks.append(mask)
        names.append(path.stem)
    if problems:
        raise UserError("; ".join(problems))
    return videos, captions, masks, names
