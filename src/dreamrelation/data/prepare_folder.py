"""``dreamrelation prepare``: turn a folder of real videos, captions and masks into encoded training samples.

Input folder (videos may also sit in a ``videos/`` sub-folder)::

    NAME.mp4  NAME.txt                 video (mp4/mov/webm/avi/mkv/gif) and its one-line caption
    masks/NAME/00000.png ...           colour-coded masks (the paper's format) + masks/NAME/subjects.json
    masks/NAME/subject1/*.png, subject2/*.png    or per-subject binary masks
    masks/NAME.mp4                     or a colour-coded mask video (colours in masks/NAME.json)
    masks/NAME/subject1.mp4, subject2.mp4        or per-subject binary mask videos

The per-video ``subjects.json`` (``masks/NAME/subjects.json`` or ``masks/NAME.json``) maps ``subject1`` /
``subject2`` to RGB colours (subject order is never taken from sorting colours) and may name the subjects
(``subject1_name``) for ``caption_template``. Frames are picked at ``fps`` from ``start`` seconds by nearest
timestamp, resized and centre-cropped (or padded); masks get the same frame choice and the same geometric
transform (nearest neighbour). Output folder::

    samples/NAME.safetensors   latents, latent_logvar, prompt_embeds, prompt_mask, masks (2, F, h, w)
    manifest.json              per video: content hashes, caption and settings hash (for incremental runs)
    previews/NAME.png          with ``preview=True``: frames with the masks overlaid
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import string
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreamrelation.backbones.genmo import is_genmo_dir
from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.backbones.registry import (
    MOCHI,
    Backbone,
    backbone_of_model_dir,
    get_backbone,
    model_profile,
)
from dreamrelation.core.samples import TrainingSample
from dreamrelation.data.folder_run import FolderReport, video_files
from dreamrelation.data.latent_masks import latent_frame_count, latent_masks
from dreamrelation.data.mask_io import IMAGE_SUFFIXES, SUBJECTS_FILE, _frame_files
from dreamrelation.data.prepare import encode_prompts, encode_video, null_prompt_for
from dreamrelation.errors import UserError
from dreamrelation.utils.io import atomic_path, atomic_write_json, ensure_output_dir, remove_partial_writes
from dreamrelation.utils.media import (
    VIDEO_SUFFIXES,  # noqa: E402,I001
    contact_sheet,
    overlay_masks,
    save_png,
)

__all__ = [
    "VIDEO_SUFFIXES",
    "PrepareConfig",
    "PrepareReport",
    "load_null_prompt",
    "load_prepared",
    "prepare_folder",
    "read_example",
]

MANIFEST = "manifest.json"
NULL_PROMPT = "null_prompt.safetensors"
FORMAT_VERSION = 1
#: RGB distance within which a mask pixel belongs to black (background) or a subject colour.
MAX_COLOUR_DISTANCE = 100.0
#: Mask timelines this many times longer/shorter than the video's are rejected rather than resampled.
MAX_MASK_FRAME_RATIO = 4.0
#: Relative aspect-ratio difference above which masks cannot be resized onto the video.
MAX_ASPECT_DIFFERENCE = 0.02
#: Above this many output pixels the VAE encodes in tiles (diffusers' tiles are 256 x 256).
TILING_PIXELS = 256 * 256

Resize = Literal["crop", "pad"]


@dataclass
class PrepareReport(FolderReport):
    """What a :func:`prepare_folder` run did: videos encoded, skipped (up to date) and one line per problem."""

    prepared: list[str] = field(default_factory=list)
    frames: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts and time."""
        return (
            f"prepared {len(self.prepared)}, up to date {len(self.skipped)}, problems {len(self.problems)}, "
            f"warnings {len(self.warnings)} "
            f"-> {self.out} ({self.seconds:.1f} s)"
        )


@dataclass
class PrepareConfig:
    """How :func:`prepare_folder` (and :func:`read_example`) turns each video into a clip.

    ``num_frames`` must suit the backbone's VAE (Mochi 6k+1, Wan 4k+1); frames are picked at ``fps`` from
    ``start`` seconds, resized to ``height`` x ``width`` by centre-crop or pad (``resize``). ``caption``
    replaces every caption file; ``caption_template`` (e.g. ``"A {subject1} is high-fiving with a
    {subject2}."``) is filled from the per-video subjects.json's ``subject1_name``/``subject2_name`` (falling
    back to ``subjects``). ``subjects`` (mapping or JSON file) gives defaults for every video's
    subjects.json. ``preview`` writes previews/NAME.png with the masks overlaid.
    """

    num_frames: int
    height: int
    width: int
    fps: float = 30
    start: float = 0.0
    resize: Resize = "crop"
    caption: str | None = None
    caption_template: str | None = None
    subjects: Mapping[str, Any] | str | os.PathLike[str] | None = None
    preview: bool = False

    @classmethod
    def for_model(cls, model: str | os.PathLike[str], **given: Any) -> PrepareConfig:
        """The model's clip geometry and frame rate (the toy world's for a toy model, else the backbone's)
        for every field not ``given`` (``None`` counts as not given)."""
        profile = model_profile(model)
        frames, height, width = profile.default_geometry
        defaults = {"num_frames": frames, "height": height, "width": width, "fps": profile.clip_fps}
        return cls(**{**defaults, **{k: v for k, v in given.items() if v is not None}})


@dataclass
class _Settings:
    num_frames: int
    height: int
    width: int
    fps: float
    start: float
    resize: str


@dataclass
class _Item:
    """One video of the input folder and where its caption and masks are."""

    name: str
    video: Path
    masks: Path | None = None
    meta_file: Path | None = None
    caption: str | None = None
    files: list[Path] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- small helpers


def _sha256_file(path: Path, h: Any = None) -> str:
    """Hex sha256 of a file's bytes (or feed them into ``h`` and return its hex digest)."""
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_files(files: Sequence[Path], root: Path) -> str:
    """One sha256 over the relative names and contents of ``files``."""
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        _sha256_file(p, h)
    return h.hexdigest()


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _one_line(exc: BaseException) -> str:
    """The error's message on one line (FFmpeg errors without the repeated file name)."""
    text = getattr(exc, "strerror", None) if isinstance(exc, av.FFmpegError) else None
    return " ".join(str(text or exc).split()) or type(exc).__name__


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not valid JSON ({_one_line(exc)}); fix or delete it.") from None
    if not isinstance(data, dict):
        raise UserError(f'{path}: must be a JSON object like {{"subject1": [255, 0, 0], ...}}.')
    return data


def _subject_colours(meta: Mapping[str, Any], where: str) -> np.ndarray:
    """(2, 3) RGB colours of subject1/subject2 from a subjects mapping."""
    try:
        cols = np.asarray([[int(c) for c in meta[k]] for k in ("subject1", "subject2")], dtype=np.float64)
        if cols.shape != (2, 3):
            raise ValueError("need three numbers per colour")
    except KeyError:
        raise UserError(
            f"{where}: subject colours unknown; add {SUBJECTS_FILE} like "
            '{"subject1": [255, 0, 0], "subject2": [0, 255, 0]} (or pass subjects=).'
        ) from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: subject colours must be [r, g, b] lists ({_one_line(exc)}).") from None
    if (cols == 0).all(axis=1).any() or (cols[0] == cols[1]).all():
        raise UserError(
            f"{where}: subject colours must be distinct and not black; got {cols.astype(int).tolist()}."
        )
    return cols


def _geometry(src_h: int, src_w: int, height: int, width: int, mode: str) -> tuple[int, int, int, int]:
    """Resized size and offset: ``(rw, rh, dx, dy)``; crop takes ``[dy:dy+height, dx:dx+width]`` of the
    resized frame, pad pastes the resized frame at ``(dx, dy)`` of a black canvas."""
    if mode == "crop":
        s = max(width / src_w, height / src_h)
        rw, rh = max(width, round(src_w * s)), max(height, round(src_h * s))
        return rw, rh, (rw - width) // 2, (rh - height) // 2
    s = min(width / src_w, height / src_h)
    rw, rh = min(width, max(1, round(src_w * s))), min(height, max(1, round(src_h * s)))
    return rw, rh, (width - rw) // 2, (height - rh) // 2


def _place(
    img: Image.Image,
    geo: tuple[int, int, int, int],
    height: int,
    width: int,
    mode: str,
    resample: Image.Resampling,
) -> np.ndarray:
    """Resize ``img`` to the geometry and crop or pad it to ``height x width``; return an array."""
    rw, rh, dx, dy = geo
    if img.size != (rw, rh):
        img = img.resize((rw, rh), resample)
    if mode == "crop":
        return np.asarray(img.crop((dx, dy, dx + width, dy + height)))
    canvas = Image.new(img.mode, (width, height))
    canvas.paste(img, (dx, dy))
    return np.asarray(canvas)


def _video_filter(src_w: int, rw: int) -> Image.Resampling:
    return Image.Resampling.BOX if rw <= src_w else Image.Resampling.BICUBIC


# ------------------------------------------------------------------------------------------------ decoding


def _open(path: Path) -> Any:
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UserError(
            f"{path}: cannot open video (unreadable or truncated: {_one_line(exc)}); re-export or remove it."
        ) from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{path}: no video stream; re-export it as a video or remove it.")
    return container


def _frames(path: Path) -> Iterator[tuple[float | None, Any]]:
    """Decoded ``(time in seconds or None, av.VideoFrame)`` pairs; decoding errors become UserError."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.time, frame
        except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
            raise UserError(
                f"{path}: video is corrupt or truncated ({_one_line(exc)}); re-export or remove it."
            ) from None
    finally:
        container.close()


def _stream_info(path: Path) -> tuple[float, int]:
    """The video stream's frame rate (25 when unknown) and its frame count from the container's header
    (0 when the container does not say)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        fps = fps if fps > 0 and math.isfinite(fps) else 25.0
        expected = int(stream.frames or 0)
        if not expected and stream.duration and stream.time_base:
            expected = round(float(stream.duration * stream.time_base) * fps)
    finally:
        container.close()
    return fps, expected


@dataclass
class _Clip:
    """The frames :func:`_select_video` picked and what it learned about the source on the way."""

    frames: np.ndarray  # uint8 (T, H, W, 3), resized to the settings
    chosen: list[int]  # source frame index per clip frame
    n_video: int  # frames decoded
    size: tuple[int, int]  # source (height, width)
    source_fps: float
    expected: int  # frames the container's header announces (0: unknown)

    def warnings(self, path: Path, st: _Settings) -> list[str]:
        """A truncated source (fewer frames decode than the header announces) and repeated frames (a clip
        rate above the source's), each with the fix."""
        out = []
        if self.expected and self.n_video < self.expected - max(2, 0.02 * self.expected):
            out.append(
                f"{path}: only {self.n_video} of {self.expected} frames decode (truncated file?); prepared from "
                "the decodable part; re-export the video to use the rest."
            )
        repeats = len(self.chosen) - len(set(self.chosen))
        if repeats:
            out.append(
                f"{path}: a {self.source_fps:g} fps source sampled at {st.fps:g} fps repeats {repeats} of "
                f"{len(self.chosen)} frames; pass --fps {self.source_fps:g} (or lower) to use distinct frames."
            )
        return out


def _count_frames(path: Path) -> int:
    """Frames of a video, from its packets (no decoding)."""
    container = _open(path)
    try:
        return sum(1 for p in container.demux(container.streams.video[0]) if p.size)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UserError(f"{path}: video is corrupt or truncated ({_one_line(exc)}); re-export it.") from None
    finally:
        container.close()


def _packet_count(path: Path) -> int:
    """Frames of a video from its packets, 0 when they cannot be read to the end (then decode to count)."""
    try:
        return _count_frames(path)
    except UserError:
        return 0


def _select_video(path: Path, st: _Settings) -> _Clip:
    """Pick ``num_frames`` frames at ``fps`` from ``start`` (nearest timestamp), resize/crop them, decoding
    one frame at a time (memory: the clip, not the video)."""
    src_fps, expected = _stream_info(path)
    targets = st.start + np.arange(st.num_frames) / st.fps
    chosen: list[int] = []
    out: list[np.ndarray] = []
    cache: dict[int, np.ndarray] = {}
    geo: tuple[int, int, int, int] | None = None
    size = (0, 0)
    prev: tuple[int, float, Any] | None = None  # index, relative time, frame
    t0: float | None = None
    n = 0
    counted = False

    def take(index: int, frame: Any) -> None:
        nonlocal geo
        if index not in cache:
            cache.clear()
            img = frame.to_image()
            if geo is None:
                geo = _geometry(img.height, img.width, st.height, st.width, st.resize)
            cache[index] = _place(img, geo, st.height, st.width, st.resize, _video_filter(img.width, geo[0]))
        chosen.append(index)
        out.append(cache[index])

    for t, frame in _frames(path):
        if t0 is None:
            t0 = t if t is not None else 0.0
            size = (frame.height, frame.width)
        rel = (t - t0) if t is not None else n / src_fps
        while len(chosen) < st.num_frames and targets[len(chosen)] <= rel + 1e-9:
            target = targets[len(chosen)]
            if prev is not None and abs(target - prev[1]) <= abs(rel - target):
                take(prev[0], prev[2])
            else:
                take(n, frame)
        prev = (n, rel, frame)
        n += 1
        if len(chosen) == st.num_frames and not counted:
            counted = True  # the rest is not decoded when its packets tell its length
            packets = _packet_count(path)
            if packets >= n:
                n = packets
                break
    if n == 0 or prev is None:
        raise UserError(f"{path}: no decodable frames (empty or truncated); re-export or remove it.")
    while len(chosen) < st.num_frames and targets[len(chosen)] <= prev[1] + 0.5 / src_fps + 1e-6:
        take(prev[0], prev[2])
    if len(chosen) < st.num_frames:
        have = prev[1] + 1.0 / src_fps
        need = st.start + st.num_frames / st.fps
        raise UserError(
            f"{path}: too few frames: {n} frames ({have:.2f} s) but {st.num_frames} frames at {st.fps:g} fps "
            f"from {st.start:g} s need {need:.2f} s; use a longer video or lower num_frames/fps/start."
        )
    return _Clip(np.stack(out), chosen, n, size, src_fps, expected)


# --------------------------------------------------------------------------------------------------- masks


def _classify(rgb: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) colour mask -> subject masks (2, H, W) and the pixels matching neither black nor a subject."""
    refs = np.concatenate([np.zeros((1, 3)), cols], axis=0)
    dist = np.linalg.norm(rgb[..., None, :].astype(np.float32) - refs.astype(np.float32), axis=-1)
    nearest = dist.argmin(axis=-1)
    close = dist.min(axis=-1) <= MAX_COLOUR_DISTANCE
    masks = np.stack([(nearest == k + 1) & close for k in range(len(cols))])
    return masks, ~close


@dataclass
class _MaskSource:
    """One subject-mask track: a colour-coded or a binary source, as image files or a video."""

    path: Path
    kind: Literal["colour", "binary"]
    files: list[Path] | None  # image frames; None for a video

    def count(self) -> int:
        return len(self.files) if self.files is not None else _count_frames(self.path)

    def size(self) -> tuple[int, int]:
        if self.files is not None:
            with Image.open(self.files[0]) as im:
                return im.height, im.width
        for _, frame in _frames(self.path):
            return frame.height, frame.width
        raise UserError(f"{self.path}: mask video has no frames; re-export it.")

    def images(self, indices: Sequence[int]) -> dict[int, Image.Image]:
        """The requested frames as RGB/L images (decoded once each)."""
        wanted, mode = set(indices), ("RGB" if self.kind == "colour" else "L")
        got: dict[int, Image.Image] = {}
        if self.files is not None:
            for i in wanted:
                try:
                    with Image.open(self.files[i]) as im:
                        got[i] = im.convert(mode)
                except OSError as exc:
                    raise UserError(
                        f"{self.files[i]}: unreadable mask image ({_one_line(exc)}); re-export it."
                    ) from None
            return got
        for i, (_, frame) in enumerate(_frames(self.path)):
            if i in wanted:
                got[i] = frame.to_image().convert(mode)
            if len(got) == len(wanted):
                break
        return got


def _mask_sources(item: _Item) -> list[_MaskSource]:
    """Find the mask format of one video: a colour source or two binary sources."""
    m = item.masks
    assert m is not None
    if m.is_file():
        return [_MaskSource(m, "colour", None)]
    subdirs = [m / "subject1", m / "subject2"]
    if any(d.is_dir() for d in subdirs):
        missing = [d.name for d in subdirs if not d.is_dir()]
        if missing:
            raise UserError(
                f"{m}: has subject1/ or subject2/ but not {missing[0]}/; add binary masks for both subjects."
            )
        return [_MaskSource(d, "binary", _frame_files(d)) for d in subdirs]
    vids = [
        [p for p in m.glob(f"{s}.*") if p.suffix.lower() in VIDEO_SUFFIXES] for s in ("subject1", "subject2")
    ]
    if any(vids):
        if not all(vids):
            raise UserError(f"{m}: has only one of subject1/subject2 mask videos; add the other one.")
        return [_MaskSource(v[0], "binary", None) for v in vids]
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in m.iterdir()):
        return [_MaskSource(m, "colour", _frame_files(m))]
    raise UserError(
        f"{m}: no masks found; put colour-coded PNGs in it, or subject1/ and subject2/ folders of binary PNGs, "
        "or subject1.mp4 and subject2.mp4."
    )


def _select_masks(
    item: _Item,
    meta: Mapping[str, Any],
    st: _Settings,
    chosen: Sequence[int],
    n_video: int,
    video_size: tuple[int, int],
    warnings: list[str] | None = None,
    announced: int = 0,
) -> np.ndarray:
    """Masks bool (2, T, H, W) on the chosen video frames, with the video's geometric transform; a mask
    track of another length than the video is resampled in time (nearest), with a line in ``warnings``; one
    as long as the ``announced`` frame count of a truncated video maps frame for frame."""
    sources = _mask_sources(item)
    where = str(item.masks)
    cols = _subject_colours(meta, f"{where}") if sources[0].kind == "colour" else None
    vh, vw = video_size
    geo = _geometry(vh, vw, st.height, st.width, st.resize)
    out = np.zeros((2, len(chosen), st.height, st.width), dtype=bool)
    unmatched = non_background = 0
    for k, src in enumerate(sources):
        m = src.count()
        n_video = announced if announced and m == announced else n_video
        if m == 0:
            raise UserError(f"{src.path}: no mask frames; export one mask per video frame.")
        if m != n_video and not (1 / MAX_MASK_FRAME_RATIO <= m / n_video <= MAX_MASK_FRAME_RATIO):
            raise UserError(
                f"{src.path}: {m} mask frames for a video of {n_video} frames; masks must cover the whole "
                f"video (at most {MAX_MASK_FRAME_RATIO:g}x more or fewer frames): export one mask per video frame."
            )
        if m != n_video and warnings is not None:
            warnings.append(
                f"{src.path}: {m} mask frames for {n_video} video frames; resampled in time (nearest frame) - "
                "export one mask per video frame for exact masks."
            )
        mh, mw = src.size()
        if abs((mw / mh) / (vw / vh) - 1) > MAX_ASPECT_DIFFERENCE:
            raise UserError(
                f"{src.path}: masks are {mw}x{mh} but the video is {vw}x{vh} (another aspect ratio); "
                "re-export the masks at the video's resolution."
            )
        idx = [i if m == n_video else min(m - 1, int((i + 0.5) * m / n_video)) for i in chosen]
        images = src.images(idx)
        for t, i in enumerate(idx):
            arr = _place(images[i], geo, st.height, st.width, st.resize, Image.Resampling.NEAREST)
            if cols is not None:
                masks, bad = _classify(arr, cols)
                out[:, t] = masks
                unmatched += int(bad.sum())
                non_background += int(bad.sum() + masks.sum())
            else:
                out[k, t] = arr > 127
    area = out.reshape(2, -1).sum(axis=1)
    if cols is not None and unmatched and (unmatched > 0.25 * non_background or (area == 0).any()):
        raise UserError(
            f"{where}: {100 * unmatched / max(non_background, 1):.0f}% of mask pixels match neither subject1 "
            f"{cols[0].astype(int).tolist()} nor subject2 {cols[1].astype(int).tolist()} (wrong colours); fix "
            f"the colours in {SUBJECTS_FILE} or re-export the masks in those colours."
        )
    if (area == 0).all():
        raise UserError(
            f"{where}: zero-area masks: no subject pixels in the selected frames; check the masks (and start/"
            "resize: a centre crop may cut the subjects out, --resize pad keeps the whole frame)."
        )
    for k in range(2):
        if area[k] == 0:
            raise UserError(
                f"{where}: subject{k + 1} is missing in all selected frames; add its mask (or check start/resize)."
            )
    return out


# ----------------------------------------------------------------------------------------------- discovery


def _discover(src: Path, problems: list[str]) -> list[_Item]:
    """Pair videos with their mask entries; report unpaired names and duplicates."""
    vdir = src / "videos" if (src / "videos").is_dir() else src
    videos = {p.stem: p for p in video_files(vdir, problems)}
    mdir = src / "masks"
    entries: dict[str, Path] = {}
    if mdir.is_dir():
        for p in sorted(mdir.iterdir()):
            if p.is_dir():
                entries[p.name] = p
            elif p.suffix.lower() in VIDEO_SUFFIXES:
                entries.setdefault(p.stem, p)  # a masks/NAME/ folder wins; masks/NAME.mp4 then needs it
    for name, p in entries.items():
        if name not in videos:
            problems.append(
                f"{p}: masks without a video {name}{{{','.join(VIDEO_SUFFIXES)}}}; rename them to match "
                "their video or remove them."
            )
    items = []
    for name, video in videos.items():
        item = _Item(name, video)
        entry = entries.get(name)
        vid_mask = next(
            (mdir / f"{name}{s}" for s in VIDEO_SUFFIXES if (mdir / f"{name}{s}").is_file()), None
        )
        if entry is not None and entry.is_dir() and vid_mask is not None and not _has_mask_content(entry):
            entry = vid_mask  # masks/NAME.mp4 with masks/NAME/subjects.json beside it
        if entry is None:
            problems.append(
                f"{video}: no masks; add masks/{name}/ (one PNG per frame), masks/{name}/subject1/ and "
                f"subject2/, or masks/{name}.mp4."
            )
            continue
        item.masks = entry
        for meta in (mdir / name / SUBJECTS_FILE, mdir / f"{name}.json"):
            if meta.is_file():
                item.meta_file = meta
                break
        items.append(item)
    return items


def _has_mask_content(folder: Path) -> bool:
    return any(p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES for p in folder.iterdir())


def _mask_files(item: _Item) -> list[Path]:
    files = (
        [item.masks]
        if item.masks and item.masks.is_file()
        else sorted(item.masks.rglob("*"))
        if item.masks
        else []
    )
    files = [p for p in files if p.is_file()]
    if item.meta_file and item.meta_file not in files:
        files.append(item.meta_file)
    return files


def _template_fields(template: str) -> set[str]:
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    unknown = fields - {"subject1", "subject2"}
    if unknown:
        raise UserError(
            f"caption template {template!r}: unknown placeholder {{{sorted(unknown)[0]}}}; use {{subject1}} and "
            "{subject2} only."
        )
    return fields


def _captions(
    items: list[_Item],
    metas: dict[str, dict[str, Any]],
    src: Path,
    caption: str | None,
    template: str | None,
    problems: list[str],
) -> list[_Item]:
    """Fill ``item.caption``; every missing caption file or subject name is one problem line."""
    if template is not None:
        _template_fields(template)
    good = []
    for item in items:
        if caption is not None:
            item.caption = caption.strip()
        elif template is not None:
            meta = metas[item.name]
            names = {k: meta.get(f"{k}_name") for k in ("subject1", "subject2")}
            missing = [k for k in _template_fields(template) if not names.get(k)]
            if missing:
                where = item.meta_file or src / "masks" / item.name / SUBJECTS_FILE
                problems.append(
                    f'{where}: no "{missing[0]}_name" for the caption template; add it '
                    '(e.g. "subject1_name": "person") or pass subjects=.'
                )
                continue
            item.caption = template.format(**{k: str(v) for k, v in names.items()})
        else:
            txt = item.video.with_suffix(".txt")
            if not txt.is_file():
                problems.append(f"{txt}: missing caption file; write one line describing the video.")
                continue
            try:
                item.caption = txt.read_text(encoding="utf-8").strip()
            except UnicodeDecodeError as exc:
                problems.append(
                    f"{txt}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the caption as UTF-8."
                )
                continue
            item.files.append(txt)
            if not item.caption:
                problems.append(f"{txt}: empty caption file; write one line describing the video.")
                continue
        good.append(item)
    return good


# ------------------------------------------------------------------------------------------------- model


def _model_fingerprint(model: Any, text_encoder: str | os.PathLike | None = None) -> str:
    """A cheap identity of the VAE + text encoder: file sizes/times of a model folder (genmo layout: its
    VAE files and the T5 folder), else weight statistics."""
    h = hashlib.sha256()
    if text_encoder:
        h.update(str(Path(text_encoder).resolve()).encode())
    folder = Path(model) if isinstance(model, (str, os.PathLike)) else None
    if folder is None:
        name = getattr(model, "name_or_path", None)
        folder = Path(name) if name and Path(name).is_dir() else None
    if folder is not None:
        files = [f for sub in ("vae", "text_encoder", "tokenizer") if (folder / sub).is_dir()
                 for f in sorted((folder / sub).rglob("*"))]  # fmt: skip
        for p in files + sorted(folder.glob("*coder.safetensors")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns};".encode())
        h.update(str(folder.resolve()).encode())
        return h.hexdigest()[:16]
    for part in (model.vae, model.text_encoder):
        config = part.config.to_dict() if hasattr(part.config, "to_dict") else dict(part.config)
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
        with torch.no_grad():
            for p in part.parameters():
                h.update(f"{float(p.double().sum()):.10e};".encode())
    return h.hexdigest()[:16]


def _settings_hash(st: _Settings, fingerprint: str) -> str:
    data = {**st.__dict__, "model": fingerprint, "version": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ outputs


def _save_sample(path: Path, sample: TrainingSample, metadata: dict[str, str]) -> None:
    tensors = {
        "latents": sample.latents.contiguous(),
        "prompt_embeds": sample.prompt_embeds.contiguous(),
        "prompt_mask": sample.prompt_mask.contiguous(),
    }
    if sample.latent_logvar is not None:
        tensors["latent_logvar"] = sample.latent_logvar.contiguous()
    if sample.masks is not None:
        tensors["masks"] = sample.masks.contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _save_null_prompt(out: Path, pipe: Any, run: _Preparer, settings: str) -> None:
    """Write the encoded empty prompt (what a dropped caption becomes in training, for backbones whose
    pipeline encodes the empty negative prompt) unless it is there for these settings."""
    path = out / NULL_PROMPT
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("settings") == settings:
                    return
        except (OSError, ValueError, RuntimeError):
            pass  # unreadable: write it again
    embeds, mask = null_prompt_for(pipe if pipe is not None else run.load())
    tensors = {"prompt_embeds": embeds.contiguous(), "prompt_mask": mask.contiguous()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"settings": settings})


def load_null_prompt(out: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cache's encoded empty prompt ``(embedding (L, D), mask (L,))`` for ``train_adapters(null_prompt=)``,
    or None where training zeroes dropped captions (Mochi)."""
    path = Path(out) / NULL_PROMPT
    if not path.is_file():
        return None
    try:
        t = load_file(str(path))
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: cannot load ({_one_line(exc)}); re-run `dreamrelation prepare`.") from None
    return t["prompt_embeds"], t["prompt_mask"]


def _write_preview(path: Path, frames: np.ndarray, masks: np.ndarray, caption: str) -> None:
    """Frames above the same frames in dimmed grey with subject1 (red) / subject2 (blue) masks on top."""
    grey = np.repeat(frames.mean(axis=-1, keepdims=True) * 0.6, 3, axis=-1).astype(np.uint8)
    overlaid = overlay_masks(grey, masks, colours=[(255, 40, 40), (40, 120, 255)], alpha=0.75)
    sheet = contact_sheet(
        [[frames], [overlaid]], row_labels=["video", "masks"], col_labels=[caption], frames_per_cell=6
    )
    save_png(path, sheet)


def _read_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    if not path.is_file():
        return {"version": FORMAT_VERSION, "videos": {}}
    data = _read_json(path)
    if data.get("version") != FORMAT_VERSION or not isinstance(data.get("videos"), dict):
        return {"version": FORMAT_VERSION, "videos": {}}
    return data


def _normalise_subjects(subjects: Mapping[str, Any] | str | os.PathLike[str] | None) -> dict[str, Any]:
    if subjects is None:
        return {}
    if isinstance(subjects, (str, os.PathLike)):
        return _read_json(Path(subjects))
    return dict(subjects)


# -------------------------------------------------------------------------------------------------- main


@dataclass
class _Cache:
    """The output folder's manifest: entries of this run, and old entries kept while their video may stay."""

    out: Path
    manifest: dict[str, Any]
    settings: str
    entries: dict[str, Any] = field(default_factory=dict)
    keep: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.old: dict[str, Any] = self.manifest["videos"]  # as found: saving replaces the manifest's

    def save(self) -> None:
        self.manifest["videos"] = {**{k: v for k, v in self.old.items() if k in self.keep}, **self.entries}
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / MANIFEST, self.manifest)


def _inputs(
    src: Path, cfg: PrepareConfig, problems: list[str]
) -> tuple[list[_Item], dict[str, dict[str, Any]]]:
    """The usable videos of ``src`` with their captions, and each one's subjects metadata."""
    defaults = _normalise_subjects(cfg.subjects)
    metas: dict[str, dict[str, Any]] = {}
    valid = []
    for item in _discover(src, problems):
        try:
            metas[item.name] = {**defaults, **(_read_json(item.meta_file) if item.meta_file else {})}
            valid.append(item)
        except UserError as exc:
            problems.append(str(exc))
    return _captions(valid, metas, src, cfg.caption, cfg.caption_template, problems), metas


def _entry(item: _Item, prev: dict[str, Any], src: Path, settings: str) -> dict[str, Any]:
    """The manifest entry of ``item`` (the video's hash reused while its size and time are unchanged)."""
    stat = item.video.stat()
    vstat = [stat.st_size, stat.st_mtime_ns]
    vsha = prev.get("video_sha256") if prev.get("video_stat") == vstat else None
    return {
        "video": _rel(item.video, src),
        "video_sha256": vsha or _sha256_file(item.video),
        "video_stat": vstat,
        "masks": _rel(item.masks, src) if item.masks else None,
        "masks_sha256": _sha256_files(_mask_files(item), src),
        "caption": item.caption,
        "settings": settings,
        "file": f"samples/{item.name}.safetensors",
    }


class _Preparer:
    """One :func:`prepare_folder` run: the model (loaded when first needed), the cache and the report."""

    def __init__(self, src: Path, model: Any, st: _Settings, cache: _Cache, report: PrepareReport) -> None:
        self.src, self.model, self.st, self.cache, self.report = src, model, st, cache, report
        self.pipe = None if isinstance(model, (str, os.PathLike)) else model
        self.device: str | None = None
        self.text_encoder: str | os.PathLike | None = None
        self.preview = False

    def load(self) -> Any:
        """The VAE and text encoder of the model path (see :func:`_load`)."""
        return _load(self.model, self.device, self.text_encoder)

    def one(self, item: _Item, meta: dict[str, Any]) -> str:
        """Encode ``item`` unless it is up to date (previews written as asked); returns a progress note."""
        cache, out = self.cache, self.cache.out
        prev = cache.old.get(item.name, {})
        entry = _entry(item, prev, self.src, cache.settings)
        up_to_date = all(
            prev.get(k) == entry[k] for k in ("video_sha256", "masks_sha256", "caption", "settings")
        )
        up_to_date = up_to_date and (out / entry["file"]).is_file()
        need_preview = self.preview and not (out / "previews" / f"{item.name}.png").is_file()
        if up_to_date and not need_preview:
            cache.entries[item.name] = {**prev, **entry}
            self.report.skipped.append(item.name)
            self.report.warnings += prev.get("warnings", [])
            return "up to date"
        t = time.perf_counter()
        clip = _select_video(item.video, self.st)
        warnings = clip.warnings(item.video, self.st)
        masks = _select_masks(
            item, meta, self.st, clip.chosen, clip.n_video, clip.size, warnings, announced=clip.expected
        )
        if need_preview or (self.preview and not up_to_date):
            caption = f"{item.caption or ''} ({clip.source_fps:g} -> {self.st.fps:g} fps)"
            _write_preview(out / "previews" / f"{item.name}.png", clip.frames, masks, caption)
        if up_to_date:
            cache.entries[item.name] = {**prev, **entry}
            self.report.skipped.append(item.name)
            self.report.warnings += prev.get("warnings", [])
            return ""
        if self.pipe is None:
            self.pipe = self.load()
        sample = _encode(self.pipe, clip.frames, masks, item.caption or "", item.name, self.st)
        metadata = {"name": item.name, "caption": item.caption or "", "settings": cache.settings}
        _save_sample(out / entry["file"], sample, metadata)
        entry.update(
            source_frames=[int(i) for i in clip.chosen],
            source_fps=clip.source_fps,
            clip_fps=self.st.fps,
            warnings=warnings,
            latent_shape=list(sample.latents.shape),
            prepared_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        cache.entries[item.name] = entry
        self.report.prepared.append(item.name)
        self.report.warnings += warnings
        self.report.frames += self.st.num_frames
        cache.save()
        return f"encoded in {time.perf_counter() - t:.1f} s"

    def finish(self, backbone: Backbone) -> None:
        """Drop samples whose source disappeared or became bad (stale data), write the null prompt, save."""
        cache, out = self.cache, self.cache.out
        for name in cache.old:
            if name not in cache.entries:
                (out / "samples" / f"{Path(name).name}.safetensors").unlink(missing_ok=True)
        if backbone.empty_prompt_zeroed or not cache.entries:
            (out / NULL_PROMPT).unlink(missing_ok=True)  # training zeroes dropped captions
        else:
            _save_null_prompt(out, self.pipe, self, cache.settings)
        cache.keep = set()
        cache.save()


def prepare_folder(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    pipe_or_model_path: Any,
    cfg: PrepareConfig,
    *,
    progress: bool = True,
    device: str | None = None,
    text_encoder: str | os.PathLike | None = None,
) -> PrepareReport:
    """Encode every good video of ``src`` into ``out`` as ``cfg`` says; one line per bad input in the report.

    ``pipe_or_model_path`` is a loaded pipeline (``MochiPipeline``, ``WanPipeline``) or a diffusers-format
    directory of a registered backbone or a genmo-layout Mochi directory with T5 from ``text_encoder``
    (loaded only if something needs encoding). Re-running skips videos
    whose video, masks, caption and settings are unchanged (content hashes) and drops samples whose source
    disappeared or turned bad.
    """
    began = time.perf_counter()
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UserError(
            f"{src}: input folder not found; point to a folder of videos with masks/ beside them."
        )
    backbone = _model_backbone(pipe_or_model_path)
    st = _check_settings(cfg, backbone.temporal_compression, backbone.size_multiple)
    report = PrepareReport(out=out)
    log: Callable[[str], None] = (
        (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)
    )
    items, metas = _inputs(src, cfg, report.problems)
    if not items and not report.problems:
        report.problems.append(
            f"{src}: no videos ({', '.join(VIDEO_SUFFIXES)}) found; put the exemplar videos (and masks/) in it."
        )
    fingerprint = _model_fingerprint(pipe_or_model_path, text_encoder)
    cache = _Cache(out, _read_manifest(out), _settings_hash(st, fingerprint))
    if not items and not cache.old:
        return report  # nothing to prepare and nothing to update: write nothing
    _check_same_settings(cache, {**st.__dict__, "model": fingerprint})
    ensure_output_dir(out, "output folder")
    remove_partial_writes(out / "samples")
    cache.manifest["settings"] = {**st.__dict__, "model": fingerprint}
    cache.keep = {item.name for item in items}
    run = _Preparer(src, pipe_or_model_path, st, cache, report)
    run.device, run.preview, run.text_encoder = device, cfg.preview, text_encoder
    for n, item in enumerate(items, 1):
        try:
            note = run.one(item, metas[item.name])
            if note:
                log(f"[{n}/{len(items)}] {item.name}: {note}")
        except _ModelLoadError:
            raise
        except (UserError, OSError, ValueError, av.FFmpegError) as exc:
            report.problems.append(
                str(exc) if isinstance(exc, UserError) else f"{item.video}: {_one_line(exc)}"
            )
            cache.keep.discard(item.name)
            log(f"[{n}/{len(items)}] {item.name}: {exc}")
    run.finish(backbone)
    report.seconds = time.perf_counter() - began
    return report  # the caller prints report.summary() (the CLI does, once)


def _check_same_settings(cache: _Cache, settings: dict[str, Any]) -> None:
    """A cache holds one clip geometry and model: refuse to mix (or silently replace) samples made otherwise."""
    other = {e["settings"] for e in cache.old.values()} - {cache.settings}
    if not other:
        return
    before = cache.manifest.get("settings") or {}
    changed = ", ".join(
        f"{k} {before[k]} -> {v}" for k, v in settings.items() if k in before and before[k] != v
    )
    raise UserError(
        f"{cache.out}: holds {len(cache.old)} samples prepared with other settings ({changed or 'an older version'}); "
        "prepare into a new folder, or delete this one to re-prepare everything."
    )


def _model_backbone(pipe_or_model_path: Any) -> Backbone:
    """The backbone of a loaded pipeline or of a diffusers-format directory (a one-line error otherwise)."""
    if not isinstance(pipe_or_model_path, (str, os.PathLike)):
        return get_backbone(pipe_or_model_path)
    path = Path(pipe_or_model_path)
    if not (path / "model_index.json").is_file() and not is_genmo_dir(path):
        raise UserError(
            f"{path}: not a diffusers pipeline directory (no model_index.json); check the model path."
        )
    try:
        return backbone_of_model_dir(path)
    except ValueError as exc:
        raise UserError(f"{exc}; use a Mochi 1 or Wan 2.1 diffusers directory.") from None


def _check_settings(
    cfg: PrepareConfig, temporal: int = MOCHI.temporal_compression, multiple: int = MOCHI.size_multiple
) -> _Settings:
    num_frames, height, width, fps, start, resize = (
        cfg.num_frames,
        cfg.height,
        cfg.width,
        cfg.fps,
        cfg.start,
        cfg.resize,
    )
    if resize not in ("crop", "pad"):
        raise UserError(f"resize={resize!r}: choose 'crop' or 'pad'.")
    try:
        latent_frame_count(num_frames, temporal)
    except ValueError as exc:
        raise UserError(f"num_frames={num_frames}: {exc}.") from None
    if height % multiple or width % multiple or height <= 0 or width <= 0:
        raise UserError(f"size {width}x{height}: width and height must be positive multiples of {multiple}.")
    if not (fps > 0 and math.isfinite(fps)) or start < 0:
        raise UserError(f"fps={fps}, start={start}: fps must be positive and start >= 0.")
    return _Settings(int(num_frames), int(height), int(width), float(fps), float(start), resize)


def read_example(
    src: str | os.PathLike[str], name: str, cfg: PrepareConfig, backbone: str = "mochi"
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One video of ``src`` as :func:`prepare_folder` sees it with ``cfg``, before encoding (``num_frames``
    checked against ``backbone``'s VAE).

    Returns frames uint8 ``(T, H, W, 3)``, masks bool ``(2, T, H, W)`` (same frames, same resize) and the
    chosen source frame indices.
    """
    chosen = get_backbone(backbone)
    st = _check_settings(cfg, chosen.temporal_compression, chosen.size_multiple)
    src = Path(src)
    item = next((i for i in _discover(src, []) if i.name == name), None)
    if item is None:
        raise UserError(
            f"{src}: no video {name!r} with masks; check the names of the video and masks/{name}."
        )
    meta = {**_normalise_subjects(cfg.subjects), **(_read_json(item.meta_file) if item.meta_file else {})}
    clip = _select_video(item.video, st)
    masks = _select_masks(item, meta, st, clip.chosen, clip.n_video, clip.size, announced=clip.expected)
    return clip.frames, masks, clip.chosen


class _ModelLoadError(UserError):
    """The model could not be loaded: stop the run instead of blaming each video."""


def _load(model: Any, device: str | None, text_encoder: str | os.PathLike | None = None) -> Any:
    """VAE, text encoder and tokenizer of a model directory (the transformer is not needed to prepare
    data); ``pipe.prompt_length`` is the text length the transformer reads."""
    path = Path(model)
    backbone = backbone_of_model_dir(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return load_pipeline(path, dtype, device, text_encoder=text_encoder, with_transformer=False)
    except UserError as exc:
        raise _ModelLoadError(str(exc)) from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise _ModelLoadError(
            f"{path}: cannot load the {backbone.name} VAE/text encoder ({_one_line(exc)})."
        ) from None


def _prompt(pipe: Any, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-encoder embedding ``(L, D)`` and mask ``(L,)`` at the transformer's sequence length."""
    embeds, mask = encode_prompts(pipe, [caption])
    return embeds[0], mask[0]


def _encode(
    pipe: Any, frames: np.ndarray, masks: np.ndarray, caption: str, name: str, st: _Settings
) -> TrainingSample:
    """Encode one clip with the pipeline's VAE (tiled for large frames) and its caption with T5."""
    tiled = st.height * st.width > TILING_PIXELS
    was_tiling = bool(getattr(pipe.vae, "use_tiling", False))
    if tiled and not was_tiling:
        pipe.vae.enable_tiling()
    try:
        latent, logvar = encode_video(pipe.vae, frames)
    finally:
        if tiled and not was_tiling:
            pipe.vae.disable_tiling()
    embeds, prompt_mask = _prompt(pipe, caption)
    return TrainingSample(
        latents=latent,
        latent_logvar=logvar,
        prompt_embeds=embeds,
        prompt_mask=prompt_mask,
        masks=latent_masks(torch.from_numpy(masks), backbone=pipe),
        name=name,
    )


def load_prepared(out: str | os.PathLike[str]) -> list[TrainingSample]:
    """The samples listed in ``out/manifest.json`` (sorted by name), ready for ``train_adapters``."""
    out = Path(out)
    if not (out / MANIFEST).is_file():
        raise UserError(f"{out}: no {MANIFEST}; run `dreamrelation prepare` into this folder first.")
    videos = _read_manifest(out)["videos"]
    if not videos:
        raise UserError(
            f"{out / MANIFEST}: lists no prepared videos; fix the problems prepare reported and re-run it."
        )
    samples = []
    for name in sorted(videos):
        path = out / videos[name]["file"]
        try:
            t = load_file(str(path))
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(
                f"{path}: cannot load ({_one_line(exc)}); re-run `dreamrelation prepare`."
            ) from None
        samples.append(
            TrainingSample(
                latents=t["latents"],
                latent_logvar=t.get("latent_logvar"),
                prompt_embeds=t["prompt_embeds"],
                prompt_mask=t["prompt_mask"],
                masks=t.get("masks"),
                name=name,
            )
        )
    settings = {v["settings"] for v in videos.values()}
    if len(settings) > 1:
        raise UserError(f"{out / MANIFEST}: samples were prepared with different settings; re-run prepare.")
    return samples
