"""``dreamrelation ui``: a local Gradio app for the whole workflow: data, training, generation, export.

Tab "Generate": a model directory (default: the toy bundle), an adapters folder or a training run folder,
the active adapter roles with their strengths, prompt, seed, steps and CFG -> the MP4 and its JSON sidecar.
Pipelines are cached per model path, so repeated generations do not reload the weights.

Tab "Training run": a run folder (from ``dreamrelation train``) -> its loss curve (a PNG drawn with PIL) and
the validation samples (contact sheet and videos) per step.

Gradio is an optional extra (``pip install 'dreamrelation[ui]'``); everything above :func:`build_app` is
plain Python and works without it.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import html
import json
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from dreamrelation.adapters.triplet import read_adapter_metadata
from dreamrelation.apps.workflow import (
    TrainRequest,
    add_uploads,
    check_data,
    export_relation_adapter,
    generate_masks_for,
    list_runs,
    mask_weights,
    run_state,
    stamp,
    start_training,
    stop_training,
    unique_folder,
)
from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.backbones.registry import MOCHI, model_dir, model_profile
from dreamrelation.core.roles import PAPER_ROLES
from dreamrelation.errors import UserError
from dreamrelation.inference.generate import GenerationConfig, generate_to_folder, resolve_dtype
from dreamrelation.inference.run import parse_roles
from dreamrelation.training.config import PRESET_NAMES
from dreamrelation.utils.extras import require
from dreamrelation.utils.media import read_video, save_png, write_gif
from dreamrelation.utils.plots import default_font

if TYPE_CHECKING:
    import gradio as gr

__all__ = [
    "GeneratedVideo",
    "LossLog",
    "PipelineCache",
    "ValidationStep",
    "adapter_roles_in",
    "build_app",
    "check_run_folder",
    "generate_one",
    "launch",
    "list_validation_steps",
    "loss_curve_image",
    "loss_curve_png",
    "loss_rows",
    "model_defaults",
    "parse_role_spec",
    "parse_seeds",
    "past_outputs",
    "read_loss_csv",
    "resolve_adapter_folder",
    "role_spec",
    "run_summary",
    "validation_prompts",
]

#: Role-strength slots shown in the Generate tab (the paper uses at most four roles).
MAX_ROLE_SLOTS = 6
#: Seeds per Generate request.
MAX_SEEDS = 16
DEFAULT_OUT = Path("runs/ui")
_STEP_RE = re.compile(r"^step_(\d+)$")


# ----------------------------------------------------------------------------------------------
# adapters and roles
# ----------------------------------------------------------------------------------------------


def resolve_adapter_folder(path: str | os.PathLike | None) -> Path | None:
    """The adapters folder for ``path``: a training run folder (its ``adapters/``) or an adapters folder.

    Empty or ``None`` means no adapters; raises :class:`UserError` for a missing path or a folder without
    ``*.safetensors`` files.
    """
    if path is None or not str(path).strip():
        return None
    folder = Path(str(path).strip()).expanduser()
    if not folder.exists():
        raise UserError(f"adapters path not found: {folder}")
    if folder.is_file():
        raise UserError(f"{folder}: give the folder holding the adapter files (or a run folder)")
    if (folder / "adapters").is_dir() and not any(folder.glob("*.safetensors")):
        folder = folder / "adapters"
    if not any(folder.glob("*.safetensors")):
        raise UserError(f"{folder}: no adapter files (*.safetensors) here or in {folder / 'adapters'}")
    return folder


def adapter_roles_in(folder: str | os.PathLike | None) -> tuple[list[str], list[str]]:
    """``(roles, default_roles)`` of an adapters folder (or run folder): every ``{role}.safetensors`` and the
    inference roles recorded by the trainer (else relation + output where present)."""
    path = resolve_adapter_folder(folder)
    if path is None:
        return [], []
    roles = sorted(p.stem for p in path.glob("*.safetensors"))
    recorded: list[str] = []
    for role in roles:
        try:
            recorded = [
                str(r)
                for r in read_adapter_metadata(path / f"{role}.safetensors").get("inference_roles") or []
            ]
        except Exception:  # an unreadable file is reported when it is used
            continue
        if recorded:
            break
    defaults = [r for r in (recorded or PAPER_ROLES) if r in roles]
    return roles, defaults


def parse_role_spec(text: str | None) -> dict[str, float] | None:
    """``"relation=1, output=0.8"`` -> strengths; ``""``/``"default"`` -> ``None`` (the folder's default
    roles); ``"none"`` -> ``{}`` (the bare model)."""
    spec = (text or "").strip()
    if spec.lower() in ("", "default"):
        return None
    if spec.lower() == "none":
        return {}
    return parse_roles([spec])


def role_spec(roles: Sequence[str], active: Sequence[bool], strengths: Sequence[float]) -> str:
    """The inverse of :func:`parse_role_spec` for the UI's checkbox/slider slots (``"none"`` if none)."""
    items = [f"{r}={float(s):g}" for r, a, s in zip(roles, active, strengths, strict=False) if r and a]
    return ", ".join(items) or "none"


def model_defaults(model: str | os.PathLike | None) -> tuple[int, float]:
    """``(steps, guidance)`` defaults for a model directory without loading it: toy 32 / 4.0, else its
    backbone's (Mochi 64 / 6.0, Wan 50 / 5.0)."""
    try:
        profile = model_profile(model_dir(model))
    except ValueError:  # not (yet) a model directory: the field is still being typed
        profile = MOCHI
    steps, guidance, _ = profile.sampling_defaults
    return steps, guidance


# ----------------------------------------------------------------------------------------------
# generation with a cached pipeline
# ----------------------------------------------------------------------------------------------


class PipelineCache:
    """Loaded pipelines keyed by resolved model path, least recently used dropped beyond ``max_models``.

    The default of one model keeps memory bounded (a real Mochi or Wan pipeline is tens of GB); :attr:`lock`
    serialises generations, which load adapters onto the shared pipeline.
    """

    def __init__(
        self,
        max_models: int = 1,
        device: str | None = None,
        dtype: str = "auto",
        text_encoder: str | os.PathLike | None = None,
    ) -> None:
        import torch

        self.text_encoder = text_encoder  # T5 folder for genmo-layout Mochi directories
        self.max_models = max(1, int(max_models))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        self.loads = 0
        self.lock = threading.RLock()
        self._pipes: OrderedDict[str, Any] = OrderedDict()

    @staticmethod
    def key(model: str | os.PathLike | None) -> str:
        """The cache key: the resolved model path (the toy bundle for ``None``/empty)."""
        path = model_dir(model)
        if not path.exists():
            raise UserError(f"model path not found: {path}")
        return str(path.resolve())

    def get(self, model: str | os.PathLike | None):
        """The pipeline for ``model``, loaded on first use."""
        key = self.key(model)
        with self.lock:
            if key in self._pipes:
                self._pipes.move_to_end(key)
                return self._pipes[key]
            while len(self._pipes) >= self.max_models:
                self._pipes.popitem(last=False)
            dtype = resolve_dtype(self.dtype, self.device)
            pipe = load_pipeline(key, dtype=dtype, device=self.device, text_encoder=self.text_encoder)
            self.loads += 1
            self._pipes[key] = pipe
            return pipe

    def __contains__(self, model: object) -> bool:
        try:
            return self.key(model) in self._pipes  # type: ignore[arg-type]
        except UserError:
            return False


@dataclass
class GeneratedVideo:
    """What :func:`generate_one` made: the first MP4, its JSON sidecar (also parsed), the folder, and every
    video, GIF and sidecar of the request (one per seed)."""

    video: Path
    sidecar: Path
    info: dict
    folder: Path
    videos: list[Path] = field(default_factory=list)
    gifs: list[Path] = field(default_factory=list)
    sidecars: list[Path] = field(default_factory=list)


def _new_folder(root: Path) -> Path:
    """A fresh time-stamped folder name under ``root`` (not created: a failed request leaves nothing)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        folder = root / (stamp if n == 0 else f"{stamp}-{n}")
        if not folder.exists():
            return folder
    raise UserError(f"cannot make a new output folder under {root}")


def parse_seeds(text: str | int | float | None) -> list[int]:
    """``"0, 1, 2"`` -> ``[0, 1, 2]``; ``random`` (or ``r``) draws a seed; at most :data:`MAX_SEEDS`."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = str(int(text)) if math.isfinite(text) else str(text)
    items = [t for t in re.split(r"[,\s]+", str(text or "").strip()) if t]
    if not items:
        raise UserError("no seed given; give whole numbers (e.g. 0, 1, 2) or 'random'")
    if len(items) > MAX_SEEDS:
        raise UserError(f"{len(items)} seeds: at most {MAX_SEEDS} per request")
    seeds = []
    for item in items:
        if item.lower() in ("random", "r"):
            seeds.append(secrets.randbelow(2**31))
        elif re.fullmatch(r"\d+", item):
            seeds.append(int(item))
        else:
            raise UserError(f"seed {item!r}: give whole numbers >= 0 (e.g. 0, 1, 2) or 'random'")
    return seeds


def generate_one(
    prompt: str,
    *,
    model: str | os.PathLike | None = None,
    adapters: str | os.PathLike | None = None,
    roles: dict[str, float] | str | None = None,
    seed: int | str | Sequence[int] = 0,
    out_dir: str | os.PathLike = DEFAULT_OUT,
    cache: PipelineCache | None = None,
    **options: Any,
) -> GeneratedVideo:
    """Generate one video per seed into a new time-stamped folder under ``out_dir`` (nothing on failure).

    ``adapters``: an adapters folder or a training run folder (``None``: the bare model). ``roles``: role ->
    strength or a spec string (see :func:`parse_role_spec`); ``None`` means the folder's default roles.
    ``seed``: an int, a list, or text for :func:`parse_seeds`. ``options``: further
    :class:`GenerationConfig` fields (``steps``, ``guidance``, ``negative_prompt``, ``num_frames``,
    ``height``, ``width``, ``fps``, ``gif``, ``image`` for image-to-video, ``on_step``). ``cache`` reuses
    loaded pipelines; without one the pipeline is loaded for this call.
    """
    if not str(prompt or "").strip():
        raise UserError("empty prompt")
    seeds = list(seed) if isinstance(seed, (list, tuple)) else parse_seeds(seed)
    folder = resolve_adapter_folder(adapters)
    wanted = parse_role_spec(roles) if isinstance(roles, str) or roles is None else dict(roles)
    if folder is None and wanted:
        raise UserError("roles chosen but no adapters folder given")
    for key, cast in (("steps", int), ("guidance", float)):  # a form's "32" -> 32
        if options.get(key) is not None:
            options[key] = cast(options[key])
    cache = cache or PipelineCache()
    with cache.lock:
        out = _new_folder(Path(out_dir))
        cfg = GenerationConfig(
            prompts=[str(prompt).strip()],
            model=model,
            adapters=folder,
            roles=wanted,
            seeds=seeds,
            out_dir=out,
            device=cache.device,
            **options,
        )
        try:
            result = generate_to_folder(cfg, pipe=cache.get(model))
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)  # a failed or cancelled request leaves nothing
            raise
    sidecar = result.sidecars[0]
    return GeneratedVideo(
        result.videos[0],
        sidecar,
        json.loads(sidecar.read_text()),
        out,
        result.videos,
        result.gifs,
        result.sidecars,
    )


# ----------------------------------------------------------------------------------------------
# training runs: loss curve and validation samples
# ----------------------------------------------------------------------------------------------


@dataclass
class LossLog:
    """The numeric columns of a ``loss.csv`` (``steps`` from its ``step`` column, else 1..n)."""

    steps: list[int]
    columns: dict[str, list[float]] = field(default_factory=dict)


def _loss_csv(run: str | os.PathLike) -> Path:
    path = Path(run)
    return path / "loss.csv" if path.is_dir() else path


def read_loss_csv(run: str | os.PathLike) -> LossLog:
    """Read ``loss.csv`` (a run folder or the file); non-numeric columns are dropped, blanks become NaN."""
    path = _loss_csv(run)
    if not path.is_file():
        raise UserError(f"no loss log: {path}")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(fh)]
    names = list(rows[0]) if rows else []
    columns: dict[str, list[float]] = {}
    for name in names:
        values: list[float] = []
        for row in rows:
            text = row.get(name, "")
            try:
                values.append(float(text) if text else math.nan)
            except ValueError:
                break
        else:
            columns[name] = values
    steps = [int(s) if math.isfinite(s) else i + 1 for i, s in enumerate(columns.pop("step", []))]
    return LossLog(steps or list(range(1, len(rows) + 1)), columns)


def _smooth(values: Sequence[float], weight: float) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's smoothing); NaNs are carried through."""
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        if not math.isfinite(v):
            out.append(math.nan)
            continue
        acc = weight * acc + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(acc / norm)
    return out


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(value: float) -> str:
    return f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.1e}"


def _panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    steps: Sequence[int],
    series: Sequence[tuple[Sequence[float], tuple[int, int, int], int]],
    title: str,
    robust: bool = True,
) -> None:
    """Draw one line chart (axes, ticks, grid, ``series`` of ``(values, colour, width)``) into ``box``."""
    font = default_font(12)
    left, top, right, bottom = box
    plot = (left + 58, top + 22, right - 12, bottom - 22)
    draw.text((left + 58, top + 3), title, fill=(30, 30, 30), font=default_font(14))
    finite = sorted(v for vals, _, _ in series[:1] for v in vals if math.isfinite(v))
    x_lo, x_hi = (min(steps), max(steps)) if steps else (0, 1)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if not finite:
        draw.rectangle(plot, outline=(160, 160, 160))
        draw.text((plot[0] + 8, plot[1] + 8), "no values", fill=(120, 120, 120), font=font)
        return
    y_lo = finite[0]
    # robust top: a few early spikes should not flatten the rest of the curve
    y_hi = (
        finite[min(len(finite) - 1, int(0.99 * len(finite)))] if robust and len(finite) > 50 else finite[-1]
    )
    pad = (y_hi - y_lo) * 0.05 or abs(y_hi) * 0.05 or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def xy(step: float, value: float) -> tuple[float, float]:
        x = plot[0] + (step - x_lo) / (x_hi - x_lo) * (plot[2] - plot[0])
        v = min(max(value, y_lo), y_hi)
        return x, plot[3] - (v - y_lo) / (y_hi - y_lo) * (plot[3] - plot[1])

    for tick in _nice_ticks(y_lo, y_hi):
        _, y = xy(x_lo, tick)
        draw.line([(plot[0], y), (plot[2], y)], fill=(228, 228, 228))
        label = _fmt(tick)
        width = draw.textlength(label, font=font)
        draw.text((plot[0] - 6 - width, y - 7), label, fill=(70, 70, 70), font=font)
    for tick in _nice_ticks(x_lo, x_hi, 6):
        x, _ = xy(tick, y_lo)
        draw.line([(x, plot[3]), (x, plot[3] + 4)], fill=(90, 90, 90))
        label = f"{tick:g}"
        draw.text(
            (x - draw.textlength(label, font=font) / 2, plot[3] + 6), label, fill=(70, 70, 70), font=font
        )
    draw.rectangle(plot, outline=(90, 90, 90))
    for values, colour, width in series:
        segment: list[tuple[float, float]] = []
        for step, value in [*zip(steps, values, strict=False), (0, math.nan)]:
            if math.isfinite(value):
                segment.append(xy(step, value))
                continue
            if len(segment) > 1:
                draw.line(segment, fill=colour, width=width, joint="curve")
            elif segment:
                x, y = segment[0]
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
            segment = []


def loss_curve_image(
    log: LossLog | str | os.PathLike, width: int = 760, height: int = 420, smoothing: float | None = None
) -> Image.Image:
    """The loss curve (raw light, smoothed dark) and, if logged, the learning rate below it, as a PIL image.

    ``log``: a :class:`LossLog`, a run folder or a ``loss.csv``. ``smoothing``: EMA weight (default ``1 - 3/sqrt(n)``: a lag of about sqrt(n)/3 steps).
    """
    log = log if isinstance(log, LossLog) else read_loss_csv(log)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    loss = log.columns.get("loss")
    if loss is None:
        draw.text((20, 20), "loss.csv has no 'loss' column", fill=(150, 0, 0), font=default_font(14))
        return image
    n = len(loss)
    weight = smoothing if smoothing is not None else (0.0 if n < 10 else min(0.97, 1 - 3 / math.sqrt(n)))
    lr = log.columns.get("lr")
    show_lr = lr is not None and any(math.isfinite(v) and v > 0 for v in lr)
    split = int(height * 0.7) if show_lr else height
    last = next((v for v in reversed(loss) if math.isfinite(v)), math.nan)
    title = f"loss ({n} steps, last {_fmt(last)})" + (f", EMA {weight:.2f}" if weight else "")
    series = [(loss, (160, 190, 230), 1)]
    if weight:
        series.append((_smooth(loss, weight), (20, 80, 180), 2))
    _panel(draw, (0, 0, width, split), log.steps, series, title)
    if show_lr and lr is not None:
        _panel(
            draw,
            (0, split, width, height),
            log.steps,
            [(lr, (200, 110, 20), 2)],
            "learning rate",
            robust=False,
        )
    return image


def loss_curve_png(run: str | os.PathLike, out: str | os.PathLike | None = None, **kwargs: Any) -> Path:
    """Write :func:`loss_curve_image` of a run folder (or ``loss.csv``) as PNG (default ``{run}/loss.png``)."""
    source = _loss_csv(run)
    target = Path(out) if out is not None else source.parent / "loss.png"
    return save_png(target, loss_curve_image(source, **kwargs))


@dataclass
class ValidationStep:
    """The validation samples written at one training step."""

    step: int
    folder: Path
    contact_sheet: Path | None
    videos: list[Path]


def list_validation_steps(run: str | os.PathLike) -> list[ValidationStep]:
    """Every ``validation/step_NNNNNN`` folder of a run, in step order (empty if there are none)."""
    root = Path(run) / "validation"
    steps = []
    for folder in root.iterdir() if root.is_dir() else []:
        m = _STEP_RE.match(folder.name)
        if m and folder.is_dir():
            sheet = folder / "contact_sheet.png"
            videos = sorted(folder.glob("*.mp4"))
            steps.append(ValidationStep(int(m.group(1)), folder, sheet if sheet.is_file() else None, videos))
    return sorted(steps, key=lambda s: s.step)


def run_summary(run: str | os.PathLike) -> str:
    """A few lines of Markdown about a run folder: steps, last loss, method, adapters, validation steps."""
    path = Path(run)
    lines = [f"**{path}**"]
    if (path / "loss.csv").is_file():
        log = read_loss_csv(path)
        loss = [v for v in log.columns.get("loss", []) if math.isfinite(v)]
        if loss:
            tail = loss[-max(1, len(loss) // 10) :]
            lines.append(
                f"- {len(log.steps)} logged steps (last step {log.steps[-1]}), last loss {_fmt(loss[-1])}, "
                f"mean of last {len(tail)}: {_fmt(sum(tail) / len(tail))}"
            )
    else:
        lines.append("- no loss.csv")
    if (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text())
        except (ValueError, OSError):
            config = {}
        bits = [f"{k}: `{config[k]}`" for k in ("method", "relation", "backbone") if k in config]
        if bits:
            lines.append("- " + ", ".join(bits))
    if (path / "adapters").is_dir():
        roles = sorted(p.stem for p in (path / "adapters").glob("*.safetensors"))
        lines.append(f"- adapters: {', '.join(roles) or 'none'}")
    steps = list_validation_steps(path)
    lines.append(
        f"- validation: {len(steps)} step(s)" + (f" ({steps[0].step} .. {steps[-1].step})" if steps else "")
    )
    return "\n".join(lines)


def check_run_folder(run: str | os.PathLike | None) -> Path:
    """``run`` as a training run folder; a missing path or an ordinary folder is one :class:`UserError` line."""
    path = Path(str(run or "").strip()).expanduser()
    if not str(run or "").strip() or not path.is_dir():
        raise UserError(f"run folder not found: {str(run or '').strip()!r}")
    marks = ("loss.csv", "config.json", "checkpoints", "adapters", "ui_job.json")
    if not any((path / m).exists() for m in marks):
        raise UserError(
            f"{path}: not a training run folder (no loss.csv, config.json, checkpoints or adapters)"
        )
    return path


#: loss.csv columns drawn in the loss chart, with their names there.
LOSS_SERIES = {"loss": "total", "mse": "mse", "mask_mse": "mask", "rcl": "rcl"}


def loss_rows(run: str | os.PathLike) -> list[dict]:
    """``loss.csv`` in long form for a line chart: ``{"step", "value", "series"}`` per finite value of
    the total loss and its components (mse, mask, rcl)."""
    if not (Path(run) / "loss.csv").is_file():
        return []
    log = read_loss_csv(run)
    rows = []
    for column, name in LOSS_SERIES.items():
        for step, value in zip(log.steps, log.columns.get(column, []), strict=False):
            if math.isfinite(value):
                rows.append({"step": step, "value": value, "series": name})
    return rows


def validation_prompts(run: str | os.PathLike) -> list[tuple[str, int]]:
    """``(prompt, seed)`` of each validation video index, from the run's ``config.json`` (as the monitor
    orders them: every seed of each prompt)."""
    try:
        monitor = json.loads((Path(run) / "config.json").read_text()).get("monitor", {})
    except (OSError, ValueError):
        return []
    return [(str(p), int(s)) for p in monitor.get("prompts") or [] for s in monitor.get("seeds") or [0]]


def validation_caption(video: Path, jobs: Sequence[tuple[str, int]], step: int) -> str:
    """``step 20 - seed 0: A man is ...`` for ``NN_seedS.mp4`` (the file name when the prompt is unknown)."""
    m = re.match(r"^(\d+)_seed(\d+)$", video.stem)
    if m and int(m.group(1)) < len(jobs):
        prompt, seed = jobs[int(m.group(1))]
        return f"step {step} - seed {seed}: {prompt}"
    return f"step {step} - {video.name}"


def preview_gif(video: Path, max_frames: int = 64) -> Path:
    """An animated GIF of ``video`` in the temp dir (cached by path and time), which galleries play inline."""
    key = hashlib.sha1(f"{video.resolve()}:{video.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    gif = Path(tempfile.gettempdir()) / "dreamrelation-ui" / "gif" / f"{key}.gif"
    if not gif.is_file():
        frames, fps = read_video(video, max_frames=max_frames)
        write_gif(gif, frames, fps=fps or 8)
    return gif


def past_outputs(root: str | os.PathLike, limit: int = 24) -> list[tuple[Path, Path, str]]:
    """Earlier generations under ``root``, newest first: ``(video, sidecar, caption)``."""
    found = []
    for sidecar in Path(root).glob("*/*.json"):
        if sidecar.name == "manifest.json":
            continue
        video = sidecar.with_suffix(".mp4")
        if not video.is_file():
            continue
        try:
            info = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        found.append((video, sidecar, f"seed {info.get('seed')}: {info.get('prompt', '')}"))
    found.sort(key=lambda item: item[0].stat().st_mtime, reverse=True)
    return found[:limit]


# ----------------------------------------------------------------------------------------------
# the Gradio app
# ----------------------------------------------------------------------------------------------


def _servable(path: Path) -> str:
    """``path`` if Gradio serves it as is (under the working or temp directory), else a copy in the temp dir.

    Gradio refuses to return files from elsewhere unless the folder was allowed at launch; copying keeps
    the server from exposing whole run folders.
    """
    resolved = path.resolve()
    if any(resolved.is_relative_to(root.resolve()) for root in (Path.cwd(), Path(tempfile.gettempdir()))):
        return str(resolved)
    digest = hashlib.sha1(str(resolved.parent).encode()).hexdigest()[:12]
    copy = Path(tempfile.gettempdir()) / "dreamrelation-ui" / digest / resolved.name
    if not copy.is_file() or copy.stat().st_mtime < resolved.stat().st_mtime:
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(resolved, copy)
    return str(copy)


def _import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: no usage reporting
    return require("gradio", "the web UI needs Gradio: pip install 'dreamrelation[ui]'")


class _Cancelled(Exception):
    """Raised from the per-step callback when the user cancels a generation."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _friendly(gr: Any, fn: Any) -> Any:
    """``fn`` with user errors as one-line toasts (no traceback in the log) and any other error as a toast
    that names no Python internals (its traceback goes to the server log)."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except gr.Error:
            raise
        except Exception as exc:
            traceback.print_exc()
            raise gr.Error(
                f"failed: {_one_line(exc)} (details in the server log)", print_exception=False
            ) from None

    return wrapped


def _progress_html(step: int, total: int, state: str, message: str) -> str:
    value = f'value="{step}" max="{max(total, 1)}"' if total else ""
    text = html.escape(f"{state}: step {step}/{total or '?'}" + (f" - {message}" if message else ""))
    return f'<div id="train-progress"><progress {value} style="width:100%"></progress><p>{text}</p></div>'


class _Callbacks:
    """The app's event handlers, sharing the pipeline cache and the output folders."""

    def __init__(
        self, gr: Any, cache: PipelineCache, out_root: Path, text_encoder: str | None = None
    ) -> None:
        self.gr, self.cache, self.out_root = gr, cache, out_root
        self.text_encoder = text_encoder
        self.cancel_event = threading.Event()
        self.seen: dict[str, tuple] = {}

    @property
    def generated(self) -> Path:
        return self.out_root / "generate"

    @property
    def runs_root(self) -> Path:
        return self.out_root / "train"

    # ------------------------------------------------------------------ roles (one source of truth: the text)

    def slot_updates(self, roles: Sequence[str], strengths: dict[str, float]) -> list:
        gr = self.gr
        checks = [
            gr.update(
                visible=i < len(roles),
                label=roles[i] if i < len(roles) else "",
                value=i < len(roles) and roles[i] in strengths,
            )
            for i in range(MAX_ROLE_SLOTS)
        ]
        sliders = [
            gr.update(visible=i < len(roles), value=strengths.get(roles[i], 1.0) if i < len(roles) else 1.0)
            for i in range(MAX_ROLE_SLOTS)
        ]
        return checks + sliders

    def scan_adapters(self, adapters: str) -> list:
        roles, active = adapter_roles_in(adapters)
        roles = roles[:MAX_ROLE_SLOTS]
        strengths = dict.fromkeys(active, 1.0)
        spec = role_spec(roles, [r in active for r in roles], [1.0] * len(roles)) if roles else ""
        return [roles, spec, *self.slot_updates(roles, strengths)]

    @staticmethod
    def spec_from_slots(roles: list[str], *values: Any) -> str:
        active, strengths = values[:MAX_ROLE_SLOTS], values[MAX_ROLE_SLOTS:]
        return role_spec(roles or [], active, strengths) if roles else ""

    def slots_from_spec(self, roles: list[str], spec: str, adapters: str) -> list:
        """The checkboxes and sliders as the roles text says (left as they are while it does not parse)."""
        try:
            wanted = parse_role_spec(spec)
            if wanted is None:
                wanted = dict.fromkeys(adapter_roles_in(adapters)[1], 1.0) if adapters else {}
        except (UserError, ValueError):
            return [self.gr.skip()] * (2 * MAX_ROLE_SLOTS)
        return self.slot_updates(roles or [], wanted)

    # ------------------------------------------------------------------------------------------ generate

    def generate(self, *values: Any, progress: Any = None) -> tuple:
        *fields, image = values  # image: the first frame (image-to-video) as a PIL image, or None
        model, adapters, roles, prompt, negative, seeds, steps, guidance, frames, height, width, fps, gif = (
            fields
        )
        self.cancel_event.clear()
        total = int(steps or 0) * max(1, len(str(seeds).split(",")))

        shown = [0.0]

        def on_step(video: int, step: int) -> None:
            if self.cancel_event.is_set():
                raise _Cancelled
            if progress is not None and time.monotonic() - shown[0] > 0.25:  # fast models: not every step
                shown[0] = time.monotonic()
                progress(
                    (video * int(steps) + step, total), desc=f"video {video + 1}, step {step}/{int(steps)}"
                )

        numbers = {"num_frames": frames, "height": height, "width": width, "fps": fps}
        loaded = model in self.cache
        try:
            made = generate_one(
                prompt,
                model=model or None,
                adapters=adapters or None,
                roles=roles,
                seed=seeds,
                steps=int(steps),
                guidance=float(guidance),
                out_dir=self.generated,
                cache=self.cache,
                negative_prompt=str(negative or "").strip(),
                gif=bool(gif),
                image=image,
                on_step=on_step,
                **{k: (None if v in (None, "", 0) else v) for k, v in numbers.items()},
            )
        except _Cancelled:
            raise UserError("generation cancelled; nothing was saved") from None
        active = (
            ", ".join(f"{a['role']}={a['scale']:g}" for a in made.info["adapters"]) or "none (bare model)"
        )
        still = made.info["settings"].get("image")
        from_still = "" if still is None else f"from the first frame ({still['fitted']}); "
        note = (
            f"{len(made.videos)} video(s) in {made.info['seconds']:.1f} s per video"
            f"{' (pipeline cached)' if loaded else ' (pipeline loaded)'}; adapters: {active}; "
            f"{from_still}saved in `{made.folder}`"
        )
        files = [_servable(p) for p in [*made.videos, *made.gifs, *made.sidecars]]
        return _servable(made.video), made.info, note, files, self.history()

    def cancel(self) -> str:
        self.cancel_event.set()
        self.gr.Info("generation cancelled; nothing was saved")
        return "cancelled; nothing was saved"

    def history(self) -> list:
        return [(_servable(preview_gif(v)), caption) for v, _, caption in past_outputs(self.generated)]

    def show_past(self, evt: Any) -> tuple:
        items = past_outputs(self.generated)
        if evt is None or evt.index is None or evt.index >= len(items):
            return self.gr.skip(), self.gr.skip()
        video, sidecar, _ = items[evt.index]
        return _servable(video), json.loads(sidecar.read_text())

    # ------------------------------------------------------------------------------------------ data

    def add_uploads(self, folder: str, videos: list | None, masks: list | None) -> tuple:

        data_root = self.out_root / "data"
        target = Path(str(folder or "").strip())
        if not str(folder or "").strip() or not target.resolve().is_relative_to(data_root.resolve()):
            target = unique_folder(data_root, stamp())  # uploads never go into a folder of the user's
        try:
            added = add_uploads(target, [str(f) for f in videos or []], [str(f) for f in masks or []])
        except BaseException:
            if target.is_dir() and not any(target.rglob("*.*")):
                shutil.rmtree(target, ignore_errors=True)
            raise
        choices = [str(p) for p in sorted(data_root.iterdir()) if p.is_dir()]
        return self.gr.update(choices=choices, value=str(target)), f"added {len(added)} file(s) to `{target}`"

    def check_data(self, folder: str, model: str, template: str, subject1: str, subject2: str) -> tuple:

        src = Path(str(folder or "").strip()).expanduser()
        digest = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:8]
        prepared = self.out_root / "prepared" / f"{src.name or 'data'}-{digest}"
        check = check_data(
            src, prepared, model or None, template or "", subject1 or "", subject2 or "", self.text_encoder
        )
        lines = [f"- **problem:** {html.escape(p)}" for p in check.problems]
        lines += [f"- warning: {html.escape(w)}" for w in check.warnings]
        report = "\n".join([check.summary, "", *lines]) if lines else f"{check.summary}\n\nno problems"
        gallery = [(_servable(p), caption) for p, caption in check.previews]
        ready = str(check.prepared) if check.previews else self.gr.skip()
        return report, f"Mask colours: {check.legend}", gallery, ready

    def masks_from_text(self, folder: str, subject1: str, subject2: str) -> str:

        weights = mask_weights()
        if weights is None:
            raise UserError("no local Grounding DINO / SAM 2 weights in weights/; upload masks instead")
        problems = generate_masks_for(str(folder).strip(), subject1, subject2, weights)
        return "\n".join(f"- {p}" for p in problems) or "masks written to masks/"

    # ------------------------------------------------------------------------------------------ train

    def start_run(self, run: str, resume: bool, *fields: Any) -> tuple:

        data, model, method, steps, lr, rank, lambda_m, every, prompt, extra = fields
        req = TrainRequest(
            str(data or ""),
            model or None,
            method,
            steps,
            lr,
            rank,
            lambda_m,
            int(every or 0),
            prompt or "",
            extra or "",
        )
        req.text_encoder = self.text_encoder
        path = check_run_folder(run) if resume else unique_folder(self.runs_root, stamp())
        for value, name in ((lr, "learning rate"), (lambda_m, "lambda_m")):
            if value is None or not math.isfinite(float(value)) or float(value) < 0:
                raise UserError(f"{name}={value}: must be a finite number >= 0")
        try:
            start_training(req, path, resume=resume)
        except BaseException:
            if not resume and path.is_dir() and not any(path.iterdir()):
                path.rmdir()  # a refused start writes nothing
            raise
        self.gr.Info(("resumed " if resume else "started ") + str(path))
        return self.gr.update(choices=list_runs(self.runs_root), value=str(path))

    def stop_run(self, run: str) -> str:

        message = stop_training(check_run_folder(run))
        self.gr.Info(message)
        return message

    def load_run(self, run: str) -> tuple:

        path = check_run_folder(run)
        signature = self._signature(path)  # before reading: a change while this runs shows at the next tick
        state = run_state(path)
        steps = list_validation_steps(path)
        jobs = validation_prompts(path)
        videos = [
            (_servable(preview_gif(v)), validation_caption(v, jobs, s.step))
            for s in reversed(steps)
            for v in s.videos
        ]
        sheets = [(_servable(s.contact_sheet), f"step {s.step}") for s in reversed(steps) if s.contact_sheet]
        self.seen[str(path)] = signature
        return (
            _progress_html(state.step, state.total, state.state, state.message),
            self._chart(path),
            run_summary(path),
            videos,
            sheets,
        )

    def _chart(self, path: Path) -> Any:
        """The loss chart's data; None until the run has logged a step (an empty frame sent to a LinePlot
        leaves it drawing axes without lines for every later update - seen in Chromium, gradio 6)."""
        import pandas as pd

        rows = loss_rows(path)
        if not rows:
            return None
        frame = pd.DataFrame(rows, columns=["step", "value", "series"])
        return frame.astype({"step": "int64", "value": "float64", "series": "str"})  # numeric axes

    @staticmethod
    def _signature(path: Path) -> tuple:

        files = [path / "loss.csv", path / "ui_train.log", path / "validation"]
        return (run_state(path).state, *(f.stat().st_mtime_ns if f.exists() else 0 for f in files))

    def tick(self, run: str) -> tuple:
        """Refresh the Train tab while its run changes (nothing is sent otherwise)."""
        path = Path(str(run or "").strip())
        try:
            if not str(run or "").strip() or self.seen.get(str(path)) == self._signature(path):
                return (self.gr.skip(),) * 5
            return self.load_run(run)
        except (UserError, OSError):
            return (self.gr.skip(),) * 5

    def use_adapters(self, run: str) -> tuple:
        path = check_run_folder(run)
        roles = self.scan_adapters(str(path))
        self.gr.Info(f"Generate now uses the adapters of {path} ({roles[1] or 'no roles'})")
        return (str(path), self.gr.Tabs(selected="generate"), *roles)

    # ------------------------------------------------------------------------------------------ share

    def export(self, adapters: str, fmt: str) -> tuple:

        folder = resolve_adapter_folder(adapters)
        if folder is None:
            raise UserError("choose a run (or an adapters folder) to export")
        out = self.out_root / "export"
        existed = out.exists()
        try:
            path = export_relation_adapter(folder, fmt, out)
        except BaseException:
            if not existed and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise
        return _servable(path), f"exported `{path.name}` ({path.stat().st_size / 1e6:.2f} MB) from `{folder}`"


@dataclass
class _Start:
    """What the app shows when it opens."""

    model: str
    run: str
    roles: list[str]
    active: list[str]
    steps: int
    guidance: float
    runs: list[str] = field(default_factory=list)


def _role_slots(gr: Any, start: _Start) -> tuple[list, list]:
    """One checkbox and strength slider per role slot (hidden beyond the run's roles)."""
    checks, sliders = [], []
    for i in range(MAX_ROLE_SLOTS):
        with gr.Row():
            name = start.roles[i] if i < len(start.roles) else ""
            checks.append(gr.Checkbox(name in start.active, label=name, visible=bool(name), scale=1))
            sliders.append(gr.Slider(0.0, 2.0, 1.0, step=0.05, label="strength", visible=bool(name), scale=3))
    return checks, sliders


def _data_tab(gr: Any, cb: _Callbacks, model: Any) -> Any:
    """The Data tab; returns the prepared-folder box the Train tab reads."""
    with gr.Row():
        with gr.Column():
            folder = gr.Dropdown(
                [],
                value="",
                label="Exemplar folder (videos/ + masks/; pick, type a path, or upload below)",
                allow_custom_value=True,
                elem_id="data-folder",
            )
            videos = gr.File(
                file_count="multiple",
                label="Videos + .txt captions, or a .zip of an exemplar folder",
                elem_id="data-videos",
            )
            masks = gr.File(
                file_count="multiple",
                label="Masks: NAME.mp4 mask videos or a .zip of masks/NAME/ folders",
                elem_id="data-masks",
            )
            upload = gr.Button("Add uploads", elem_id="data-add")
            uploaded = gr.Markdown()
        with gr.Column():
            template = gr.Textbox(
                "",
                label="Caption template (empty: the .txt captions), e.g. A {subject1} is high-fiving a {subject2}.",
                elem_id="data-template",
            )
            with gr.Row():
                subject1 = gr.Textbox("", label="subject1", elem_id="data-subject1")
                subject2 = gr.Textbox("", label="subject2", elem_id="data-subject2")
            weights = mask_weights()
            gen_masks = gr.Button(
                "Masks from the subject names (Grounding DINO + SAM 2)", interactive=weights is not None
            )
            if weights is None:
                gr.Markdown(
                    "Masks from text need local weights in `weights/grounding-dino-tiny` and `weights/sam2.1-hiera-tiny`."
                )
            check = gr.Button("Check and prepare", variant="primary", elem_id="data-check")
            prepared = gr.Textbox(
                "", label="Prepared training data", interactive=False, elem_id="data-prepared"
            )
    report = gr.Markdown(elem_id="data-report")
    legend = gr.Markdown(elem_id="data-legend")
    previews = gr.Gallery(
        label="Mask overlays", columns=2, height=320, object_fit="contain", elem_id="data-previews"
    )
    upload.click(
        _friendly(gr, cb.add_uploads), [folder, videos, masks], [folder, uploaded], api_visibility="private"
    )
    check.click(
        _friendly(gr, cb.check_data),
        [folder, model, template, subject1, subject2],
        [report, legend, previews, prepared],
        api_name="check_data",
    )
    gen_masks.click(
        _friendly(gr, cb.masks_from_text), [folder, subject1, subject2], report, api_visibility="private"
    )
    return prepared


def _train_tab(gr: Any, cb: _Callbacks, start: _Start, model: Any, prepared: Any) -> tuple[Any, Any]:
    """The Train tab; returns the run box and the "use its adapters" button."""
    with gr.Row():
        with gr.Column(scale=1):
            data = gr.Textbox(
                "", label="Training data (prepared folder or exemplar folder)", elem_id="train-data"
            )
            method = gr.Dropdown(list(PRESET_NAMES), value="dreamrelation", label="Method preset")
            with gr.Row():
                steps = gr.Number(500, label="Steps", precision=0, elem_id="train-steps")
                lr = gr.Number(2e-4, label="Learning rate")
            with gr.Row():
                rank = gr.Number(16, label="Adapter rank", precision=0)
                lambda_m = gr.Number(50.0, label="lambda_m (mask loss weight)")
            with gr.Row():
                every = gr.Number(
                    0, label="Validate every N steps (0: never)", precision=0, elem_id="train-every"
                )
                vprompt = gr.Textbox("", label="Validation prompt", elem_id="train-vprompt")
            with gr.Accordion("Advanced: more trainer overrides (key=value ...)", open=False):
                extra = gr.Textbox("", label="Overrides", elem_id="train-extra")
        with gr.Column(scale=1):
            run = gr.Dropdown(
                start.runs, value=start.run, label="Run folder", allow_custom_value=True, elem_id="train-run"
            )
            with gr.Row():
                new = gr.Button("Start new run", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop (saves a checkpoint)", variant="stop", elem_id="train-stop")
                resume = gr.Button("Resume", elem_id="train-resume")
            use = gr.Button("Use its adapters in Generate", elem_id="train-use")
            progress = gr.HTML(elem_id="train-status")
            summary = gr.Markdown()
    chart = gr.LinePlot(
        x="step",
        y="value",
        color="series",
        title="Loss and its components",
        height=320,
        elem_id="train-chart",
    )
    videos = gr.Gallery(
        label="Validation samples", columns=4, height=320, object_fit="contain", elem_id="train-videos"
    )
    sheets = gr.Gallery(label="Validation contact sheets", columns=2, height=320, object_fit="contain")
    fields = [data, model, method, steps, lr, rank, lambda_m, every, vprompt, extra]
    loaded = [progress, chart, summary, videos, sheets]
    prepared.change(lambda p: p, prepared, data, api_visibility="private")
    new.click(_friendly(gr, lambda *v: cb.start_run("", False, *v)), fields, run, api_name="start_training")
    resume.click(
        _friendly(gr, lambda r, *v: cb.start_run(r, True, *v)), [run, *fields], run, api_visibility="private"
    )
    stop.click(_friendly(gr, cb.stop_run), run, summary, api_name="stop_training")
    run.change(_friendly(gr, cb.load_run), run, loaded, api_name="load_run")
    gr.Timer(1.0).tick(cb.tick, run, loaded, api_visibility="private", show_progress="hidden")
    return run, use


def _sampling_fields(gr: Any, start: _Start) -> list:
    """Seeds, steps, CFG, frames, height, width, fps and the GIF switch (in the order ``generate`` takes)."""
    with gr.Row():
        seeds = gr.Textbox("0", label="Seeds (0, 1, 2 or random)", elem_id="gen-seeds")
        steps = gr.Slider(2, 128, start.steps, step=1, label="Steps", elem_id="gen-steps")
        guidance = gr.Slider(1.0, 12.0, start.guidance, step=0.1, label="CFG")
    with gr.Row():
        frames = gr.Number(None, label="Frames (empty: model default)", precision=0)
        height = gr.Number(None, label="Height", precision=0)
        width = gr.Number(None, label="Width", precision=0)
        fps = gr.Number(None, label="fps")
        gif = gr.Checkbox(True, label="also GIF")
    return [seeds, steps, guidance, frames, height, width, fps, gif]


def _generate_tab(gr: Any, cb: _Callbacks, start: _Start, model: Any) -> tuple[Any, list]:
    """The Generate tab and its events; returns the adapters box and what a scan updates."""
    with gr.Row():
        with gr.Column(scale=1):
            adapters = gr.Dropdown(
                start.runs,
                value=start.run,
                allow_custom_value=True,
                label="Adapters folder or training run folder (empty: bare model)",
                elem_id="gen-adapters",
            )
            role_names = gr.State(start.roles[:MAX_ROLE_SLOTS])
            checks, sliders = _role_slots(gr, start)
            spec = role_spec(start.roles, [r in start.active for r in start.roles], [1.0] * len(start.roles))
            roles = gr.Textbox(
                spec if start.roles else "",
                elem_id="gen-roles",
                label="Active roles (role=strength, ...; 'none' = bare model; empty = the folder's default)",
            )
            prompt = gr.Textbox(
                "A red circle is high-fiving a blue square.", label="Prompt", lines=2, elem_id="gen-prompt"
            )
            negative = gr.Textbox("", label="Negative prompt", elem_id="gen-negative")
            image = gr.Image(
                None,
                type="pil",
                label="First frame (image-to-video, Wan 2.2 TI2V-5B; empty: text-to-video)",
                elem_id="gen-image",
            )
            sampling = _sampling_fields(gr, start)
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="gen-go")
                cancel = gr.Button("Cancel", variant="stop", elem_id="gen-cancel")
        with gr.Column(scale=1):
            video = gr.Video(label="Video", autoplay=True, loop=True, elem_id="gen-video")
            status = gr.Markdown(elem_id="gen-status")
            files = gr.File(label="Files (MP4, GIF, sidecars)", file_count="multiple", elem_id="gen-files")
            sidecar = gr.JSON(label="Sidecar (JSON)")
    past = gr.Gallery(
        cb.history,
        label="Earlier outputs (select one for its sidecar)",
        columns=6,
        height="auto",
        object_fit="contain",
        elem_id="gen-past",
    )
    scan_outputs = [role_names, roles, *checks, *sliders]
    adapters.change(_friendly(gr, cb.scan_adapters), adapters, scan_outputs, api_visibility="private")
    for widget in (*checks, *sliders):
        widget.input(cb.spec_from_slots, [role_names, *checks, *sliders], roles, api_visibility="private")
    roles.input(
        cb.slots_from_spec, [role_names, roles, adapters], [*checks, *sliders], api_visibility="private"
    )
    model.submit(model_defaults, model, sampling[1:3], api_visibility="private")  # steps, CFG

    def run(*values: Any, progress: Any = gr.Progress()) -> tuple:
        return cb.generate(*values, progress=progress)

    inputs = [model, adapters, roles, prompt, negative, *sampling, image]
    busy = go.click(lambda: gr.update(interactive=False), None, go, api_visibility="private", queue=False)
    job = busy.then(_friendly(gr, run), inputs, [video, sidecar, status, files, past], api_name="generate")
    for after in (job.then, job.failure):  # enabled again after success and after a refused request
        after(lambda: gr.update(interactive=True), None, go, api_visibility="private", queue=False)
    cancel.click(cb.cancel, None, status, cancels=[job], api_visibility="private").then(
        lambda: gr.update(interactive=True), None, go, api_visibility="private", queue=False
    )

    def pick(evt: Any) -> tuple:
        return cb.show_past(evt)

    pick.__annotations__ = {"evt": gr.SelectData, "return": tuple}  # Gradio passes the selection by type
    past.select(pick, None, [video, sidecar], api_visibility="private")
    return adapters, scan_outputs


def _share_tab(gr: Any, cb: _Callbacks, start: _Start) -> None:
    """The Share tab: export a run's relation adapter as a downloadable file."""
    source = gr.Dropdown(
        start.runs,
        value=start.run,
        allow_custom_value=True,
        label="Run or adapters folder",
        elem_id="share-source",
    )
    fmt = gr.Radio(
        ["diffusers", "comfyui", "genmo"],
        value="comfyui",
        elem_id="share-format",
        label="Format: diffusers (zip of the per-role PEFT files), comfyui (Mochi LoRA loader), genmo (genmo's LoRA)",
    )
    go = gr.Button("Export", variant="primary", elem_id="share-go")
    out = gr.File(label="Download", elem_id="share-file")
    note = gr.Markdown(elem_id="share-note")
    go.click(_friendly(gr, cb.export), [source, fmt], [out, note], api_name="export")


def build_app(
    default_model: str | os.PathLike | None = None,
    default_run: str | os.PathLike | None = None,
    out_dir: str | os.PathLike = DEFAULT_OUT,
    cache: PipelineCache | None = None,
    text_encoder: str | os.PathLike | None = None,
) -> gr.Blocks:
    """The app: Data -> Train -> Generate -> Share tabs. API endpoints: ``/check_data``,
    ``/start_training``, ``/stop_training``, ``/load_run``, ``/generate`` and ``/export``."""
    gr = _import_gradio()

    for name, path in (("model", default_model), ("run folder", default_run)):
        if path and not Path(path).is_dir():
            raise UserError(f"{name} not found: {path}")
    model0 = str(model_dir(default_model))
    run0 = str(default_run or "")
    try:
        roles0, active0 = adapter_roles_in(run0) if run0 else ([], [])
    except UserError:
        roles0, active0 = [], []
    cb = _Callbacks(gr, cache or PipelineCache(), Path(out_dir), str(text_encoder) if text_encoder else None)
    runs = list_runs(cb.runs_root)
    runs = [run0, *runs] if run0 and run0 not in runs else runs
    start = _Start(model0, run0, list(roles0), list(active0), *model_defaults(model0), runs=runs)
    with gr.Blocks(title="DreamRelation") as app:
        gr.Markdown("## DreamRelation: your videos -> a relation adapter -> new videos")
        model = gr.Textbox(
            model0, label="Model directory (diffusers Mochi or Wan; default: toy bundle)", elem_id="model"
        )
        with gr.Tabs() as tabs:
            with gr.Tab("1 Data", id="data"):
                prepared = _data_tab(gr, cb, model)
            with gr.Tab("2 Train", id="train"):
                run, use = _train_tab(gr, cb, start, model, prepared)
            with gr.Tab("3 Generate", id="generate"):
                adapters, scan_outputs = _generate_tab(gr, cb, start, model)
            with gr.Tab("4 Share", id="share"):
                _share_tab(gr, cb, start)
        use.click(
            _friendly(gr, cb.use_adapters), run, [adapters, tabs, *scan_outputs], api_visibility="private"
        )
    return app


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    default_model: str | os.PathLike | None = None,
    default_run: str | os.PathLike | None = None,
    out_dir: str | os.PathLike = DEFAULT_OUT,
    open_browser: bool = False,
    block: bool = True,
    text_encoder: str | os.PathLike | None = None,
) -> tuple[gr.Blocks, str]:
    """Build and serve the app on ``host:port`` (loopback by default; there is no login).

    ``text_encoder``: the T5 folder of a genmo-layout Mochi model. ``block=False`` returns at once with the
    server running in a thread (stop it with ``app.close()``); otherwise this returns when the server stops
    (Ctrl-C). Returns ``(app, local_url)``.
    """
    if host not in ("127.0.0.1", "localhost", "::1"):
        warnings.warn(
            f"serving on {host}: anyone who can reach it can run the model (no login)", stacklevel=2
        )
    app = build_app(
        default_model,
        default_run,
        out_dir,
        cache=PipelineCache(text_encoder=text_encoder),
        text_encoder=text_encoder,
    )
    app.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(
        server_name=host,
        server_port=int(port),
        share=False,
        inbrowser=open_browser,
        prevent_thread_lock=not block,
        ssr_mode=False,
        show_error=True,
        quiet=not block,  # blocking: Gradio prints the URL
    )
    return app, url
