"""Real-video metrics of the paper (CLIP-T, temporal consistency, FVD, VLM relation accuracy).

Every model is loaded from a LOCAL directory in transformers format (nothing is downloaded here); a missing
directory gives a :class:`UserError` naming the path and what to download.

* CLIP-T: cosine similarity of the CLIP text embedding of the prompt and the image embedding of each frame,
  mean over frames.
* Temporal consistency: cosine similarity of consecutive frames' CLIP image embeddings, mean over pairs.
* FVD: Fréchet distance between Gaussians fitted to per-video features of the generated and of a reference
  set. Features are a ``VideoMAEModel``'s last hidden states mean-pooled over tokens (the classic FVD uses
  I3D, which transformers does not ship: numbers are comparable within this project, not with papers). With
  fewer videos than feature dimensions the covariances are singular and FVD is biased upwards; compare sets
  of equal size only.
* Relation accuracy: a vision-language model is asked "Are the two subjects {relation}? Answer yes or no."
  about 5 evenly spaced keyframes (tiled into one image, so single-image VLMs work), ``n_repeats`` times
  with sampling; the score is the fraction of answers that parse as "yes".

Images are preprocessed here (no torchvision): shortest side resized (bicubic) to the model's input size,
centre crop, scaling to [0, 1] and normalisation with the mean/std of ``preprocessor_config.json`` when the
weights directory has one (else the model family's defaults).
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dreamrelation.errors import UserError
from dreamrelation.evaluation.report import markdown_table, mean_ci95, write_report
from dreamrelation.utils.media import VIDEO_SUFFIXES, read_video

__all__ = [
    "METRICS",
    "ClipScorer",
    "VideoFeatureExtractor",
    "VlmJudge",
    "clip_t",
    "evaluate_folder",
    "frechet_distance",
    "frechet_distance_from_stats",
    "keyframes",
    "parse_yes_no",
    "relation_accuracy",
    "temporal_consistency",
]

#: Metric names accepted by :func:`evaluate_folder`.
METRICS = ("clip_t", "temporal_consistency", "fvd", "relation_accuracy")
#: Which weights each metric needs, and what to download into that directory.
WEIGHT_KEYS = {
    "clip_t": "clip",
    "temporal_consistency": "clip",
    "fvd": "videomae",
    "relation_accuracy": "vlm",
}
DOWNLOAD_HINTS = {
    "clip": "a CLIP model in transformers format, e.g. "
    "`huggingface-cli download openai/clip-vit-large-patch14 --local-dir PATH`",
    "videomae": "a VideoMAE model in transformers format, e.g. "
    "`huggingface-cli download MCG-NJU/videomae-base --local-dir PATH`",
    "vlm": "a vision-language model (AutoModelForImageTextToText + AutoProcessor), e.g. "
    "`huggingface-cli download llava-hf/llava-1.5-7b-hf --local-dir PATH`",
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
QUESTION = "Are the two subjects {relation}? Answer yes or no."


# ----------------------------------------------------------------------------------------------
# weights and preprocessing
# ----------------------------------------------------------------------------------------------


def check_weights(path: str | os.PathLike | None, kind: str) -> Path:
    """``path`` as a Path if it is a weights directory with a ``config.json``; else a UserError saying what
    to download (``kind`` is one of :data:`DOWNLOAD_HINTS`)."""
    hint = DOWNLOAD_HINTS[kind]
    if path is None:
        raise UserError(f"no {kind} weights given: pass weights={{'{kind}': PATH}} with {hint}")
    p = Path(path)
    if not (p / "config.json").is_file():
        what = "not found" if not p.exists() else "has no config.json"
        raise UserError(f"{kind} weights {p} {what}: download {hint.replace('PATH', str(p))}")
    return p


def _norm_stats(path: Path, mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """image_mean / image_std from ``preprocessor_config.json`` if present, else the given defaults."""
    cfg_file = path / "preprocessor_config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text())
            mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        except ValueError:
            pass
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def _resize_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of the shortest side to ``size``, then centre crop to ``size x size``; float [0, 1]."""
    img = Image.fromarray(np.asarray(frame, dtype=np.uint8))
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.float32) / 255.0


def _pixels(frames: np.ndarray, size: int, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> normalised float ``(T, 3, size, size)``."""
    arr = np.stack([(_resize_crop(f, size) - mean) / std for f in np.asarray(frames)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _free(*objs: Any) -> None:
    """Drop model references and release cached GPU memory."""
    del objs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# CLIP-T and temporal consistency
# ----------------------------------------------------------------------------------------------


class ClipScorer:
    """A local ``CLIPModel`` + tokenizer giving L2-normalised text and image embeddings."""

    def __init__(
        self, path: str | os.PathLike, device: str | None = None, dtype: torch.dtype = torch.float32
    ) -> None:
        from transformers import AutoTokenizer, CLIPModel

        p = check_weights(path, "clip")
        self.device = _device(device)
        self.model = CLIPModel.from_pretrained(p, dtype=dtype).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(p)
        self.size = int(self.model.config.vision_config.image_size)
        self.mean, self.std = _norm_stats(p, CLIP_MEAN, CLIP_STD)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, D)`` unit-norm text embeddings (float32, CPU)."""
        tok = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        out = self.model.text_model(
            input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
        )
        emb = self.model.text_projection(out.pooler_output).float().cpu()
        return torch.nn.functional.normalize(emb, dim=-1)

    @torch.no_grad()
    def image_embeds(self, frames: np.ndarray, batch: int = 16) -> torch.Tensor:
        """``(T, D)`` unit-norm image embeddings of uint8 frames ``(T, H, W, 3)`` (float32, CPU)."""
        dtype = next(self.model.parameters()).dtype
        chunks = []
        for i in range(0, len(frames), batch):
            px = _pixels(frames[i : i + batch], self.size, self.mean, self.std).to(self.device, dtype)
            pooled = self.model.vision_model(pixel_values=px).pooler_output
            chunks.append(self.model.visual_projection(pooled).float().cpu())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


def clip_t(scorer: ClipScorer, frames: np.ndarray, prompt: str) -> float:
    """Mean over frames of the cosine similarity between the prompt's and each frame's CLIP embedding."""
    return float((scorer.image_embeds(frames) @ scorer.text_embeds([prompt])[0]).mean())


def temporal_consistency(scorer: ClipScorer, frames: np.ndarray) -> float:
    """Mean cosine similarity of consecutive frames' CLIP image embeddings (NaN for a single frame)."""
    emb = scorer.image_embeds(frames)
    if emb.shape[0] < 2:
        return math.nan
    return float((emb[1:] * emb[:-1]).sum(-1).mean())


# ----------------------------------------------------------------------------------------------
# FVD
# ----------------------------------------------------------------------------------------------


def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues of a PSD matrix that are round-off (negative or below 1e-12 of the largest)."""
    top = float(np.max(np.abs(w))) if w.size else 0.0
    return np.where(w > 1e-12 * top, w, 0.0)


def _sqrt_psd(mat: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (round-off eigenvalues clipped to zero)."""
    w, v = np.linalg.eigh((mat + mat.T) / 2)
    return (v * np.sqrt(_clip_eigenvalues(w))) @ v.T


def frechet_distance_from_stats(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between two Gaussians.

    ``Tr((S1 S2)^(1/2))`` is the sum of square roots of the eigenvalues of the symmetric PSD matrix
    ``S1^(1/2) S2 S1^(1/2)``, which has the same eigenvalues as ``S1 S2`` (no non-symmetric sqrtm).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    root = _sqrt_psd(s1)
    inner = root @ s2 @ root
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(_clip_eigenvalues(eig)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance(features1: np.ndarray | torch.Tensor, features2: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(n_i, d)`` (sample covariance)."""
    a = np.asarray(torch.as_tensor(features1).double().cpu().numpy())
    b = np.asarray(torch.as_tensor(features2).double().cpu().numpy())
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected feature sets (n, d) with equal d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise UserError("FVD needs at least 2 videos in each set")
    return frechet_distance_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


class VideoFeatureExtractor:
    """A local ``VideoMAEModel``: one feature vector per video (last hidden state mean over tokens)."""

    def __init__(
        self, path: str | os.PathLike, device: str | None = None, dtype: torch.dtype = torch.float32
    ) -> None:
        from transformers import VideoMAEModel

        p = check_weights(path, "videomae")
        self.device = _device(device)
        self.model = VideoMAEModel.from_pretrained(p, dtype=dtype).to(self.device).eval()
        self.size = int(self.model.config.image_size)
        self.num_frames = int(self.model.config.num_frames)
        self.mean, self.std = _norm_stats(p, IMAGENET_MEAN, IMAGENET_STD)

    @torch.no_grad()
    def features(self, frames: np.ndarray) -> torch.Tensor:
        """``(hidden,)`` float32 features of a uint8 video ``(T, H, W, 3)`` (``num_frames`` evenly sampled)."""
        idx = np.round(np.linspace(0, len(frames) - 1, self.num_frames)).astype(int)
        dtype = next(self.model.parameters()).dtype
        px = _pixels(np.asarray(frames)[idx], self.size, self.mean, self.std)[None].to(self.device, dtype)
        hidden = self.model(pixel_values=px).last_hidden_state
        return hidden.float().mean(dim=1)[0].cpu()


def fvd(
    extractor: VideoFeatureExtractor, videos: Sequence[np.ndarray], reference: Sequence[np.ndarray]
) -> float:
    """Fréchet video distance between two sets of uint8 videos (see the module note on the features)."""
    a = torch.stack([extractor.features(v) for v in videos])
    b = torch.stack([extractor.features(v) for v in reference])
    return frechet_distance(a, b)


# ----------------------------------------------------------------------------------------------
# VLM relation accuracy
# ----------------------------------------------------------------------------------------------


def keyframes(frames: np.ndarray, n: int = 5) -> np.ndarray:
    """``n`` evenly spaced frames (first and last included) of a ``(T, H, W, 3)`` video."""
    idx = np.round(np.linspace(0, len(frames) - 1, min(n, len(frames)))).astype(int)
    return np.asarray(frames)[idx]


def _tile(frames: np.ndarray, gap: int = 4) -> Image.Image:
    """Frames side by side, ``gap`` white pixels apart, as one RGB image."""
    t, h, w = frames.shape[:3]
    canvas = np.full((h, t * w + (t - 1) * gap, 3), 255, np.uint8)
    for i, f in enumerate(frames):
        canvas[:, i * (w + gap) : i * (w + gap) + w] = f
    return Image.fromarray(canvas)


_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_yes_no(text: str) -> bool | None:
    """True for an answer whose first yes/no word is "yes", False for "no", None when there is neither."""
    m = _YES_NO.search(str(text))
    return None if m is None else m.group(1).lower() == "yes"


class VlmJudge:
    """A local vision-language model (``AutoModelForImageTextToText`` + ``AutoProcessor``) asked yes/no.

    ``generate_kwargs`` go to ``model.generate`` (e.g. ``top_p``, ``suppress_tokens``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        max_new_tokens: int = 8,
        temperature: float = 1.0,
        generate_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        p = check_weights(path, "vlm")
        self.device = _device(device)
        dtype = dtype or (torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
        self.processor = AutoProcessor.from_pretrained(p)
        self.model = AutoModelForImageTextToText.from_pretrained(p, dtype=dtype).to(self.device).eval()
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.generate_kwargs = dict(generate_kwargs or {})

    def _prompt(self, question: str) -> str:
        """The processor's chat template with one image and the question, else a LLaVA-style prompt."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        token = getattr(self.processor, "image_token", "<image>")
        return f"USER: {token}\n{question} ASSISTANT:"

    @torch.no_grad()
    def answers(self, frames: np.ndarray, relation: str, n_repeats: int = 10, seed: int = 0) -> list[str]:
        """``n_repeats`` sampled answers (seeds ``seed..seed+n-1``) about the keyframes of ``frames``."""
        image = _tile(keyframes(frames))
        text = self._prompt(QUESTION.format(relation=relation))
        inputs = self.processor(images=image, text=text, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        inputs = {
            k: (v.to(self.device, dtype) if torch.is_floating_point(v) else v.to(self.device))
            for k, v in inputs.items()
        }
        start = inputs["input_ids"].shape[1]
        out = []
        for i in range(n_repeats):
            torch.manual_seed(seed + i)
            ids = self.model.generate(
                **inputs,
                do_sample=True,
                temperature=self.temperature,
                max_new_tokens=self.max_new_tokens,
                **self.generate_kwargs,
            )
            out.append(self.processor.batch_decode(ids[:, start:], skip_special_tokens=True)[0])
        return out


def relation_accuracy(answers: Sequence[str]) -> float:
    """Fraction of answers that parse as "yes" (unparseable answers count as not yes)."""
    if not answers:
        return math.nan
    return sum(parse_yes_no(a) is True for a in answers) / len(answers)


# ----------------------------------------------------------------------------------------------
# evaluate_folder
# ----------------------------------------------------------------------------------------------


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def list_videos(folder: str | os.PathLike) -> list[Path]:
    """Video files directly in ``folder`` in natural order (``2`` before ``10``); UserError if none."""
    p = Path(folder)
    if not p.is_dir():
        raise UserError(f"video folder not found: {p}")
    files = sorted((f for f in p.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES), key=_natural_key)
    if not files:
        raise UserError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {p}")
    return files


def _sidecar_prompt(video: Path) -> str | None:
    """Prompt from ``NAME.json`` (``dreamrelation generate``'s sidecar) or ``NAME.txt`` next to a video."""
    js, txt = video.with_suffix(".json"), video.with_suffix(".txt")
    if js.is_file():
        try:
            prompt = json.loads(js.read_text()).get("prompt")
        except (ValueError, AttributeError):
            prompt = None
        if prompt:
            return str(prompt)
    if txt.is_file():
        return txt.read_text().strip() or None
    return None


def _per_video(
    values: Mapping[str, str] | Sequence[str] | str | None, videos: Sequence[Path], what: str
) -> list[str | None]:
    """Per-video strings from a mapping (by stem or file name), a list aligned with the videos, or one str."""
    if values is None:
        return [None] * len(videos)
    if isinstance(values, str):
        return [values] * len(videos)
    if isinstance(values, Mapping):
        return [values.get(v.stem, values.get(v.name)) for v in videos]
    values = list(values)
    if len(values) != len(videos):
        raise UserError(f"{len(values)} {what} for {len(videos)} videos; give one per video")
    return values


def _summary(values: Sequence[float]) -> dict[str, float | int]:

    mean, low, high = mean_ci95(values)
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": sum(not math.isnan(v) for v in values)}


@dataclass
class EvaluationConfig:
    """What :func:`evaluate_folder` scores and with what.

    ``prompts`` (for CLIP-T): mapping by file stem, a list in the folder's natural order, or None to read
    each video's ``.json`` sidecar / ``.txt`` caption. ``weights``: ``{"clip": dir, "videomae": dir,
    "vlm": dir}`` as the chosen ``metrics`` need. ``relation`` (for relation accuracy): the relation phrase,
    e.g. "shaking hands", one for all videos or per video. FVD compares with the videos in
    ``reference_dir``. ``out_dir`` defaults to ``VIDEOS/evaluation``; ``vlm_options`` are keyword arguments
    of :class:`VlmJudge` (``temperature``, ``max_new_tokens``, ``generate_kwargs``).
    """

    prompts: Mapping[str, str] | Sequence[str] | None = None
    metrics: Sequence[str] = ("clip_t", "temporal_consistency")
    weights: Mapping[str, str | os.PathLike] | None = None
    reference_dir: str | os.PathLike | None = None
    relation: Mapping[str, str] | Sequence[str] | str | None = None
    out_dir: str | os.PathLike | None = None
    n_repeats: int = 10
    seed: int = 0
    device: str | None = None
    max_frames: int | None = None
    vlm_options: Mapping[str, Any] | None = None


@dataclass
class _Inputs:
    """A checked evaluation: metrics, weight folders, videos with their prompts and relations, references."""

    metrics: list[str]
    paths: dict[str, Path | None]
    videos: list[Path]
    rows: list[dict[str, Any]]
    references: list[Path]


def _check_inputs(videos_dir: str | os.PathLike, cfg: EvaluationConfig) -> _Inputs:
    """Everything the chosen metrics need, checked before any model is loaded."""
    metrics = list(dict.fromkeys(cfg.metrics))
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise UserError(f"unknown metrics {bad}; choose from {', '.join(METRICS)}")
    weights = dict(cfg.weights or {})
    paths = {key: check_weights(weights.get(key), key) for key in {WEIGHT_KEYS[m] for m in metrics}}
    videos = list_videos(videos_dir)
    prompt_list = _per_video(cfg.prompts, videos, "prompts")
    prompt_list = [
        p if p is not None else _sidecar_prompt(v) for p, v in zip(prompt_list, videos, strict=True)
    ]
    if "clip_t" in metrics:
        missing = [v.name for v, p in zip(videos, prompt_list, strict=True) if not p]
        if missing:
            raise UserError(
                f"CLIP-T needs a prompt per video; none for {missing[:5]} (pass prompts or .txt files)"
            )
    relations = _per_video(cfg.relation, videos, "relations")
    if "relation_accuracy" in metrics and any(not r for r in relations):
        raise UserError("relation accuracy needs the relation phrase (e.g. relation='shaking hands')")
    reference_dir = cfg.reference_dir
    references = list_videos(reference_dir) if "fvd" in metrics and reference_dir is not None else []
    if "fvd" in metrics and reference_dir is None:
        raise UserError("FVD needs reference_dir: a folder of real videos of the relation")
    rows = [
        {"video": v.name, "prompt": p, "relation": r}
        for v, p, r in zip(videos, prompt_list, relations, strict=True)
    ]
    return _Inputs(metrics, paths, videos, rows, references)


def _score(run: _Inputs, cfg: EvaluationConfig) -> float | None:
    """Fill each row's per-video metrics (one model at a time, freed after use); returns the FVD."""
    metrics, paths, videos, rows, device = run.metrics, run.paths, run.videos, run.rows, cfg.device

    def load(path: Path) -> np.ndarray:
        return read_video(path, max_frames=cfg.max_frames)[0]

    if "clip_t" in metrics or "temporal_consistency" in metrics:
        scorer = ClipScorer(paths["clip"], device=device)
        for row, v in zip(rows, videos, strict=True):
            emb = scorer.image_embeds(load(v))
            if "clip_t" in metrics:
                row["clip_t"] = float((emb @ scorer.text_embeds([row["prompt"]])[0]).mean())
            if "temporal_consistency" in metrics:
                row["temporal_consistency"] = (
                    float((emb[1:] * emb[:-1]).sum(-1).mean()) if len(emb) > 1 else math.nan
                )
        _free(scorer)
        scorer = None
    fvd_value = None
    if "fvd" in metrics:
        extractor = VideoFeatureExtractor(paths["videomae"], device=device)
        gen = torch.stack([extractor.features(load(v)) for v in videos])
        ref = torch.stack([extractor.features(load(v)) for v in run.references])
        fvd_value = frechet_distance(gen, ref)
        _free(extractor)
        extractor = None
    if "relation_accuracy" in metrics:
        judge = VlmJudge(paths["vlm"], device=device, **dict(cfg.vlm_options or {}))
        for k, (row, v) in enumerate(zip(rows, videos, strict=True)):
            answers = judge.answers(
                load(v), row["relation"], n_repeats=cfg.n_repeats, seed=cfg.seed + 1000 * k
            )
            row["relation_accuracy"] = relation_accuracy(answers)
            row["vlm_answers"] = answers
        _free(judge)
        judge = None
    return fvd_value


def evaluate_folder(videos_dir: str | os.PathLike, cfg: EvaluationConfig | None = None) -> dict[str, Any]:
    """Score every video in ``videos_dir``; write ``report.md``/``report.json`` to ``cfg.out_dir``; return
    the data. Per-video metrics get a mean with a 95% t-interval; FVD is one number for the set."""
    cfg = cfg or EvaluationConfig()
    run = _check_inputs(videos_dir, cfg)
    fvd_value = _score(run, cfg)
    metrics, rows, videos = run.metrics, run.rows, run.videos
    summary: dict[str, Any] = {}
    for m in metrics:
        if m == "fvd":
            summary[m] = {"mean": fvd_value, "ci_low": math.nan, "ci_high": math.nan, "n": len(videos)}
        else:
            summary[m] = _summary([row[m] for row in rows])
    data = {
        "videos_dir": str(Path(videos_dir)),
        "reference_dir": None if cfg.reference_dir is None else str(Path(cfg.reference_dir)),
        "n_videos": len(videos),
        "n_reference": len(run.references),
        "weights": {k: str(v) for k, v in run.paths.items()},
        "metrics": summary,
        "per_video": rows,
        "settings": {
            "n_repeats": cfg.n_repeats,
            "seed": cfg.seed,
            "max_frames": cfg.max_frames,
            "question": QUESTION,
        },
    }
    table = markdown_table(
        [{"metric": m, **s} for m, s in summary.items()],
        ["metric", "mean", "ci_low", "ci_high", "n"],
        {"mean": ".4f", "ci_low": ".4f", "ci_high": ".4f"},
    )
    cols = ["video", *[m for m in metrics if m != "fvd"]]
    per_video = markdown_table(rows, cols, dict.fromkeys(cols[1:], ".4f"))
    notes = (
        "Mean with 95% Student-t interval over videos. FVD: Fréchet distance of mean-pooled VideoMAE "
        "features against the reference folder (one value for the set). Relation accuracy: fraction of "
        f"'yes' answers over {cfg.n_repeats} sampled VLM answers per video."
    )
    out = Path(cfg.out_dir) if cfg.out_dir is not None else Path(videos_dir) / "evaluation"
    write_report(out, "Evaluation", [("Summary", table), ("Per video", per_video), ("Notes", notes)], data)
    data["report_dir"] = str(out)
    return data
