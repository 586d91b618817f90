"""``dreamrelation masks``: subject masks for a folder of videos from two text prompts.

Pipeline per video: a :class:`Detector` finds one box per subject text on the first frame where every
subject is found, a :class:`Segmenter` turns those boxes into masks for the whole video (propagating forward
and, when the prompt frame is not frame 0, backward), and the masks are written in the paper's colour-coded
format (``OUT/NAME/00000.png ...`` + ``subjects.json``, see :mod:`dreamrelation.data.mask_io`) with a preview
PNG of the masks overlaid on the video.

Real models: Grounding DINO (:class:`GroundingDinoDetector`) and SAM 2 video (:class:`Sam2VideoSegmenter`),
loaded from local transformers-format folders. Toy stand-ins for checking the pipeline without weights:
:class:`GroundTruthBoxDetector` (boxes of the toy renderer's exact masks) and :class:`ColourTrackSegmenter`
(tracks each subject's flat colour).

SAM 2 frames are preprocessed here (resize to the model's square input size, ImageNet normalisation) instead
of by ``Sam2VideoProcessor``, whose image processors need torchvision (not a dependency of this project).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dreamrelation.data.folder_run import FolderReport, video_files
from dreamrelation.data.mask_io import DEFAULT_MASK_COLOURS, SUBJECTS_FILE, write_colour_masks
from dreamrelation.errors import UserError
from dreamrelation.utils.media import (
    VIDEO_SUFFIXES,  # noqa: E402,I001
    contact_sheet,
    overlay_masks,
    read_video,
    save_png,
)

__all__ = [
    "Box",
    "ColourTrackSegmenter",
    "Detector",
    "GroundTruthBoxDetector",
    "GroundingDinoDetector",
    "MaskReport",
    "Sam2VideoSegmenter",
    "Segmenter",
    "find_prompt_frame",
    "generate_masks",
    "load_grounding_dino",
    "load_sam2_video",
    "mask_box",
]

#: (x0, y0, x1, y1) in pixels; pixel column ``i`` spans ``[i, i + 1)``, so a one-pixel mask is (i, j, i+1, j+1).
Box = tuple[float, float, float, float]

#: Same video suffixes as ``dreamrelation prepare``.
GROUNDING_DINO_HINT = "IDEA-Research/grounding-dino-tiny"
SAM2_HINT = "facebook/sam2.1-hiera-tiny"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class Detector(Protocol):
    """Finds one box per subject text in a frame (``None`` where a subject is not found)."""

    def detect(self, frame: np.ndarray, texts: Sequence[str]) -> list[Box | None]:
        """Boxes for ``texts`` (in order) in ``frame`` (H, W, 3) uint8."""
        ...


@runtime_checkable
class Segmenter(Protocol):
    """Turns one box per subject on frame ``start`` into masks for every frame."""

    def propagate(self, frames: np.ndarray, boxes: Sequence[Box], start: int = 0) -> np.ndarray:
        """Masks (len(boxes), T, H, W) bool for ``frames`` (T, H, W, 3) uint8."""
        ...


def mask_box(mask: np.ndarray) -> Box | None:
    """Tight box of a (H, W) bool mask, or ``None`` when it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _box_iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _clip_box(box: Sequence[float], height: int, width: int) -> Box | None:
    x0, x1 = (min(max(float(v), 0.0), float(width)) for v in (box[0], box[2]))
    y0, y1 = (min(max(float(v), 0.0), float(height)) for v in (box[1], box[3]))
    if not (x1 > x0 and y1 > y0):
        return None
    return x0, y0, x1, y1


def _require_dir(path: str | os.PathLike[str], what: str, hint: str, model_type: str) -> Path:
    """The checkpoint folder, checked to exist and to hold a ``model_type`` transformers config."""
    p = Path(path)
    if not (p.is_dir() and (p / "config.json").is_file()):
        problem = "not found" if not p.exists() else "has no config.json"
        raise UserError(
            f"{what} weights {problem} at {p}; download a transformers-format checkpoint such as {hint} "
            f"(e.g. `huggingface-cli download {hint} --local-dir {p}`) and pass its folder."
        )
    try:
        found = json.loads((p / "config.json").read_text()).get("model_type")
    except (ValueError, AttributeError):
        found = None
    if found != model_type:
        raise UserError(
            f"{p} holds a {found!r} model, not {what} ({model_type!r}); pass a checkpoint folder such as {hint}."
        )
    return p


# ----------------------------------------------------------------------------------------------- detectors


def _from_pretrained(load: Callable[[Path], Any], path: Path, what: str, hint: str) -> Any:
    """``load(path)``, a one-line :class:`UserError` naming the expected checkpoint when it fails."""
    try:
        return load(path)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"Cannot load {what} from {path} ({' '.join(str(exc).split())[:300]}); it must hold a "
            f"transformers-format checkpoint such as {hint}."
        ) from None


class GroundingDinoDetector:
    """Text-prompted boxes from Grounding DINO (``GroundingDinoForObjectDetection`` + its processor).

    All subject texts go into one prompt (``"red star. blue circle."``); a query's score for a subject is
    its highest token probability over that subject's tokens. Subjects are assigned greedily (best score
    first) to distinct queries whose boxes overlap an already chosen box by at most ``max_overlap`` IoU, so two
    subjects with the same text (``person`` / ``person``) get two different boxes.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        box_threshold: float = 0.35,
        max_overlap: float = 0.7,
        device: str = "cpu",
    ) -> None:
        self.model = model.to(device).eval()
        self.processor = processor
        self.box_threshold = box_threshold
        self.max_overlap = max_overlap
        self.device = device

    @staticmethod
    def prompt(texts: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
        """The joint prompt and each subject's character span in it."""
        parts, spans, pos = [], [], 0
        for text in texts:
            clean = " ".join(text.replace(".", " ").lower().split())
            if not clean:
                raise UserError("Subject texts must not be empty; pass e.g. --subject1 'person'.")
            parts.append(clean + ".")
            spans.append((pos, pos + len(clean)))
            pos += len(clean) + 2  # ". "
        return " ".join(parts), spans

    def scores_and_boxes(self, frame: np.ndarray, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per-query subject scores (Q, len(texts)) and boxes (Q, 4) in pixels (x0, y0, x1, y1)."""
        import torch
        from PIL import Image

        text, spans = self.prompt(texts)
        tok = self.processor.tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
        offsets = tok.pop("offset_mapping")[0].tolist()
        pix = self.processor.image_processor(images=Image.fromarray(frame), return_tensors="pt")
        inputs = {**dict(tok), "pixel_values": pix["pixel_values"]}
        if "pixel_mask" in pix:
            inputs["pixel_mask"] = pix["pixel_mask"]
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.no_grad():
            out = self.model(**inputs)
        probs = out.logits[0].sigmoid().float().cpu().numpy()  # (Q, max_text_len)
        scores = np.zeros((probs.shape[0], len(texts)), dtype=np.float32)
        for k, (a, b) in enumerate(spans):
            idx = [
                i for i, (s, e) in enumerate(offsets) if e > s and s >= a and e <= b and i < probs.shape[1]
            ]
            if idx:
                scores[:, k] = probs[:, idx].max(axis=1)
        cx, cy, w, h = out.pred_boxes[0].float().cpu().numpy().T
        height, width = frame.shape[:2]
        boxes = np.stack(
            [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], axis=1
        )
        return scores, boxes

    def detect(self, frame: np.ndarray, texts: Sequence[str]) -> list[Box | None]:
        """One box per text, ``None`` where no query scores at least ``box_threshold``."""
        scores, boxes = self.scores_and_boxes(frame, texts)
        height, width = frame.shape[:2]
        result: list[Box | None] = [None] * len(texts)
        used: set[int] = set()
        for k in np.argsort(-scores.max(axis=0), kind="stable"):
            for q in np.argsort(-scores[:, k], kind="stable"):
                if scores[q, k] < self.box_threshold:
                    break
                box = _clip_box(boxes[q], height, width)
                chosen = [b for b in result if b is not None]
                if q in used or box is None or any(_box_iou(box, b) > self.max_overlap for b in chosen):
                    continue
                result[int(k)] = box
                used.add(int(q))
                break
        return result


def load_grounding_dino(
    path: str | os.PathLike[str], device: str = "cpu", box_threshold: float = 0.35
) -> GroundingDinoDetector:
    """Load a Grounding DINO detector (model + processor) from a local folder."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    p = _require_dir(path, "Grounding DINO", GROUNDING_DINO_HINT, "grounding-dino")
    model, processor = _from_pretrained(
        lambda d: (AutoModelForZeroShotObjectDetection.from_pretrained(d), AutoProcessor.from_pretrained(d)),
        p,
        "Grounding DINO",
        f"{GROUNDING_DINO_HINT} (model and processor files)",
    )
    return GroundingDinoDetector(model, processor, box_threshold=box_threshold, device=device)


class GroundTruthBoxDetector:
    """Toy stand-in detector: boxes of the renderer's exact masks on the matching frame.

    ``references`` are (frames (T, h, w, 3), masks (N, T, h, w)) pairs, e.g. from ``render_video``. A query
    frame (any size, e.g. a decoded, upscaled MP4 frame) is matched to the nearest reference frame by mean
    squared difference at the reference size, and the boxes are scaled to the query size. Texts are ignored:
    subjects come in the renderer's order.
    """

    def __init__(self, references: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self.references = [
            (np.asarray(f, dtype=np.float32), np.asarray(m, dtype=bool)) for f, m in references
        ]

    def detect(self, frame: np.ndarray, texts: Sequence[str]) -> list[Box | None]:
        """Boxes of the matching reference frame's masks, scaled to ``frame``."""
        best: tuple[float, int, int] = (math.inf, -1, -1)
        for r, (frames, _) in enumerate(self.references):
            h, w = frames.shape[1:3]
            rows = (np.arange(h) * frame.shape[0]) // h
            cols = (np.arange(w) * frame.shape[1]) // w
            small = frame[rows][:, cols].astype(np.float32)
            err = ((frames - small) ** 2).mean(axis=(1, 2, 3))
            t = int(err.argmin())
            if err[t] < best[0]:
                best = (float(err[t]), r, t)
        frames, masks = self.references[best[1]]
        sy, sx = frame.shape[0] / frames.shape[1], frame.shape[1] / frames.shape[2]
        out: list[Box | None] = []
        for k in range(len(texts)):
            box = mask_box(masks[k, best[2]]) if k < len(masks) else None
            out.append(None if box is None else (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
        return out


# ---------------------------------------------------------------------------------------------- segmenters


def _json_stats(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation mean/std from the checkpoint's processor files (ImageNet if none)."""
    for name in ("video_preprocessor_config.json", "preprocessor_config.json", "processor_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        for cfg in (data, data.get("video_processor", {}), data.get("image_processor", {})):
            if isinstance(cfg, dict) and "image_mean" in cfg and "image_std" in cfg:
                return tuple(map(float, cfg["image_mean"])), tuple(map(float, cfg["image_std"]))
    return IMAGENET_MEAN, IMAGENET_STD


class Sam2VideoSegmenter:
    """SAM 2 video propagation (``Sam2VideoModel``) from one box per subject on frame ``start``.

    Subject ``k`` is object id ``k + 1``. Frames are resized (bilinear, antialiased) to the model's square
    input size and normalised like ``Sam2VideoVideoProcessor``; boxes are scaled the same way; mask logits
    are resized back to the frame size and thresholded at 0.
    """

    def __init__(
        self,
        model: Any,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        device: str = "cpu",
    ) -> None:
        self.model = model.to(device).eval()
        self.size = int(model.config.prompt_encoder_config.image_size)
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.device = device

    def _pixels(self, frames: np.ndarray) -> Any:
        import torch
        import torch.nn.functional as F

        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        out = torch.empty(len(frames), 3, self.size, self.size)
        for t, frame in enumerate(frames):
            x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 255.0
            x = F.interpolate(x, (self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
            out[t] = ((x - mean) / std)[0]
        return out

    def propagate(self, frames: np.ndarray, boxes: Sequence[Box], start: int = 0) -> np.ndarray:
        """Masks (len(boxes), T, H, W) bool: prompt on ``start``, track forward, then backward."""
        import torch
        import torch.nn.functional as F
        from transformers import Sam2VideoInferenceSession

        frames = np.asarray(frames)
        num_frames, height, width = frames.shape[:3]
        session = Sam2VideoInferenceSession(
            video=self._pixels(frames),
            video_height=height,
            video_width=width,
            inference_device=self.device,
            inference_state_device=self.device,
            video_storage_device="cpu",
            dtype=torch.float32,
        )
        scale = torch.tensor([self.size / width, self.size / height] * 2, dtype=torch.float32)
        obj_ids = list(range(1, len(boxes) + 1))
        for obj_id, box in zip(obj_ids, boxes, strict=True):
            coords = (torch.tensor(box, dtype=torch.float32) * scale).view(1, 1, 2, 2)
            labels = torch.tensor([[[2, 3]]], dtype=torch.int32)  # box corners
            session.add_point_inputs(
                session.obj_id_to_idx(obj_id), start, {"point_coords": coords, "point_labels": labels}
            )
        session.obj_with_new_inputs = list(obj_ids)  # the model consumes this list
        masks = np.zeros((len(boxes), num_frames, height, width), dtype=bool)
        done = np.zeros(num_frames, dtype=bool)
        with torch.no_grad():
            self.model(inference_session=session, frame_idx=start)
            for reverse in (False, True):
                for out in self.model.propagate_in_video_iterator(
                    session, start_frame_idx=start, reverse=reverse
                ):
                    t = int(out.frame_idx)
                    if done[t]:
                        continue
                    logits = F.interpolate(
                        out.pred_masks.float().cpu(), (height, width), mode="bilinear", align_corners=False
                    )
                    for row, obj_id in enumerate(out.object_ids):
                        masks[obj_ids.index(obj_id), t] = (logits[row, 0] > 0).numpy()
                    done[t] = True
        return masks


def load_sam2_video(path: str | os.PathLike[str], device: str = "cpu") -> Sam2VideoSegmenter:
    """Load a SAM 2 video segmenter from a local transformers-format folder."""
    from transformers import Sam2VideoModel

    p = _require_dir(path, "SAM 2 video", SAM2_HINT, "sam2_video")
    model = _from_pretrained(Sam2VideoModel.from_pretrained, p, "SAM 2 video", SAM2_HINT)
    mean, std = _json_stats(p)
    return Sam2VideoSegmenter(model, mean, std, device=device)


class ColourTrackSegmenter:
    """Toy stand-in segmenter: tracks each subject's flat colour (toy subjects have distinct flat colours).

    On frame ``start``, pixels inside the box that differ by more than ``tolerance`` (RGB distance) from the
    background (median colour of a ``ring``-pixel band around the box) are candidates; the subject colour is
    the mean of the densest candidate cluster (so another subject reaching into the box is outvoted). The mask
    on every frame is the pixels within ``tolerance`` of that colour. Only meaningful for the toy world.
    """

    def __init__(self, tolerance: float = 60.0, ring: int = 3, max_candidates: int = 500) -> None:
        self.tolerance = tolerance
        self.ring = ring
        self.max_candidates = max_candidates

    def subject_colour(self, frame: np.ndarray, box: Box) -> np.ndarray | None:
        """The tracked colour for ``box`` on ``frame`` (float RGB), or ``None`` if nothing stands out."""
        img = np.asarray(frame, dtype=np.float32)
        h, w = img.shape[:2]
        x0, y0 = max(int(math.floor(box[0])), 0), max(int(math.floor(box[1])), 0)
        x1, y1 = min(int(math.ceil(box[2])), w), min(int(math.ceil(box[3])), h)
        outer = np.zeros((h, w), dtype=bool)
        outer[max(y0 - self.ring, 0) : y1 + self.ring, max(x0 - self.ring, 0) : x1 + self.ring] = True
        outer[y0:y1, x0:x1] = False
        crop = img[y0:y1, x0:x1].reshape(-1, 3)
        if len(crop) == 0:
            return None
        if outer.any():
            background = np.median(img[outer], axis=0)
            crop = crop[np.linalg.norm(crop - background, axis=1) > self.tolerance]
        if len(crop) == 0:
            return None
        cand = crop[:: max(1, len(crop) // self.max_candidates)]
        near = np.linalg.norm(cand[:, None] - cand[None], axis=-1) <= self.tolerance / 2
        return cand[near[near.sum(axis=1).argmax()]].mean(axis=0)

    def propagate(self, frames: np.ndarray, boxes: Sequence[Box], start: int = 0) -> np.ndarray:
        """Masks (len(boxes), T, H, W) bool."""
        video = np.asarray(frames)
        masks = np.zeros((len(boxes), *video.shape[:3]), dtype=bool)
        for k, box in enumerate(boxes):
            colour = self.subject_colour(video[start], box)
            if colour is not None:
                masks[k] = np.linalg.norm(video.astype(np.float32) - colour, axis=-1) <= self.tolerance
        return masks


# ------------------------------------------------------------------------------------------------ pipeline


@dataclass
class MaskReport(FolderReport):
    """What a :func:`generate_masks` run did: videos written, skipped (masks exist), problems, warnings."""

    written: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    prompt_frames: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: counts and time."""
        return (
            f"masks written {len(self.written)}, already there {len(self.skipped)}, problems "
            f"{len(self.problems)}, warnings {len(self.warnings)} -> {self.out} ({self.seconds:.1f} s)"
        )


def find_prompt_frame(
    frames: np.ndarray, texts: Sequence[str], detector: Detector
) -> tuple[int, list[Box]] | list[int]:
    """First frame where every text is found and its boxes; else the indices of texts never found."""
    found = [False] * len(texts)
    for t, frame in enumerate(frames):
        boxes = detector.detect(frame, texts)
        found = [f or b is not None for f, b in zip(found, boxes, strict=True)]
        if all(b is not None for b in boxes):
            return t, [b for b in boxes if b is not None]
    return [k for k, f in enumerate(found) if not f]


def _preview(path: Path, frames: np.ndarray, masks: np.ndarray, label: str) -> None:
    overlay = overlay_masks(frames, masks, colours=[tuple(c) for c in DEFAULT_MASK_COLOURS])
    save_png(path, contact_sheet([[frames, overlay]], col_labels=["video", label], frames_per_cell=6))


class _NotFound(Exception):
    """A subject found in no frame of a video (the message is the report line)."""


def _track(
    path: Path, texts: Sequence[str], detector: Detector, segmenter: Segmenter, max_frames: int | None
) -> tuple[np.ndarray, int, np.ndarray]:
    """``(frames, prompt frame, masks (subjects, T, H, W))`` of one video: detect every subject on the first
    frame that shows them all, then propagate the boxes through the video."""
    frames, _ = read_video(path, max_frames=max_frames)
    found = find_prompt_frame(frames, texts, detector)
    if isinstance(found, list):
        missing = ", ".join(f"subject{k + 1} {texts[k]!r}" for k in found) or "subject1 and subject2 together"
        raise _NotFound(
            f"{path}: {missing} not found in any of its {len(frames)} frames; check the subject text "
            "or lower the detection threshold."
        )
    start, boxes = found
    masks = np.asarray(segmenter.propagate(frames, boxes, start=start), dtype=bool)
    if masks.shape != (len(texts), *frames.shape[:3]):
        raise ValueError(
            f"segmenter returned masks of shape {masks.shape}, expected {(len(texts), *frames.shape[:3])}"
        )
    return frames, start, masks


@dataclass(frozen=True)
class MaskOptions:
    """What :func:`generate_masks` writes besides the masks and what it redoes.

    ``preview``: a ``NAME.png`` per video with the masks overlaid, in ``preview_dir`` (None: ``OUT_previews``
    beside ``OUT``); ``overwrite``: redo videos whose masks exist; ``max_frames``: only each video's first N.
    """

    preview: bool = True
    preview_dir: str | os.PathLike[str] | None = None
    overwrite: bool = False
    max_frames: int | None = None


def generate_masks(
    videos_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    subject1: str,
    subject2: str,
    detector: Detector,
    segmenter: Segmenter,
    options: MaskOptions = MaskOptions(),
) -> MaskReport:
    """Write ``OUT/NAME/`` colour masks (subject1 red, subject2 green) for every video in ``videos_dir``.

    Videos may sit in ``videos_dir/videos/`` (as for ``dreamrelation prepare``). Videos whose masks exist
    (``OUT/NAME/subjects.json``) are skipped unless ``options.overwrite``. Each unusable video (unreadable, a
    subject found in no frame, a model failure) adds one line to ``report.problems``; the others proceed.
    """
    start_time = time.perf_counter()
    src = Path(videos_dir)
    if not src.is_dir():
        raise UserError(
            f"Video folder {src} does not exist; pass a folder of videos (mp4, mov, webm, avi, mkv, gif)."
        )
    if (src / "videos").is_dir():
        src = src / "videos"
    out = Path(out_dir)
    previews = (
        Path(options.preview_dir) if options.preview_dir is not None else out.parent / f"{out.name}_previews"
    )
    texts = [subject1, subject2]
    report = MaskReport(out)
    videos = video_files(src, report.problems)
    if not videos and not report.problems:
        report.problems.append(f"{src}: no videos ({', '.join(VIDEO_SUFFIXES)}).")
    for path in videos:
        name = path.stem
        if not options.overwrite and (out / name / SUBJECTS_FILE).is_file():
            report.skipped.append(name)
            continue
        try:
            frames, start, masks = _track(path, texts, detector, segmenter, options.max_frames)
        except _NotFound as exc:
            report.problems.append(str(exc))
            continue
        except (UserError, RuntimeError, ValueError) as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            report.problems.append(message if str(path) in message else f"{path}: {message}")
            continue
        for k in range(len(texts)):
            empty = int((~masks[k].any(axis=(1, 2))).sum())
            if empty:
                report.warnings.append(
                    f"{path}: subject{k + 1} {texts[k]!r} mask is empty in {empty} of {len(frames)} frames."
                )
        write_colour_masks(out / name, masks, DEFAULT_MASK_COLOURS)
        if options.preview:
            _preview(
                previews / f"{name}.png",
                frames,
                masks,
                f"red: {subject1}, green: {subject2} (prompt frame {start})",
            )
        report.written.append(name)
        report.prompt_frames[name] = start
    report.seconds = time.perf_counter() - start_time
    return report
