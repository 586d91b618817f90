"""``dreamrelation ui``: a local Gradio app to generate with adapters and to inspect training runs.

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
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from dreamrelation.errors import UserError
from dreamrelation.utils.extras import require
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
    "generate_one",
    "launch",
    "list_validation_steps",
    "loss_curve_image",
    "loss_curve_png",
    "model_defaults",
    "parse_role_spec",
    "read_loss_csv",
    "resolve_adapter_folder",
    "role_spec",
    "run_summary",
]

#: Role-strength slots shown in the Generate tab (the paper uses at most four roles).
MAX_ROLE_SLOTS = 6
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
    from dreamrelation.adapters.triplet import read_adapter_metadata
    from dreamrelation.core.roles import PAPER_ROLES

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
    from dreamrelation.inference.run import parse_roles

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
    from dreamrelation.backbones.registry import MOCHI, model_dir, model_profile

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
        from dreamrelation.backbones.registry import model_dir

        path = model_dir(model)
        if not path.exists():
            raise UserError(f"model path not found: {path}")
        return str(path.resolve())

    def get(self, model: str | os.PathLike | None):
        """The pipeline for ``model``, loaded on first use."""
        from dreamrelation.backbones.loading import load_pipeline
        from dreamrelation.inference.generate import resolve_dtype

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
    """One video made by :func:`generate_one`: the MP4, its JSON sidecar (also parsed) and the folder."""

    video: Path
    sidecar: Path
    info: dict
    folder: Path


def _new_folder(root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        folder = root / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise UserError(f"cannot make a new output folder under {root}")


def generate_one(
    prompt: str,
    *,
    model: str | os.PathLike | None = None,
    adapters: str | os.PathLike | None = None,
    roles: dict[str, float] | str | None = None,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    out_dir: str | os.PathLike = DEFAULT_OUT,
    cache: PipelineCache | None = None,
) -> GeneratedVideo:
    """Generate one video into a new time-stamped folder under ``out_dir``.

    ``adapters``: an adapters folder or a training run folder (``None``: the bare model). ``roles``: role ->
    strength or a spec string (see :func:`parse_role_spec`); ``None`` means the folder's default roles.
    ``cache`` reuses loaded pipelines; without one the pipeline is loaded for this call only.
    """
    from dreamrelation.inference.generate import GenerationConfig, generate_to_folder

    if not str(prompt or "").strip():
        raise UserError("empty prompt")
    folder = resolve_adapter_folder(adapters)
    wanted = parse_role_spec(roles) if isinstance(roles, str) or roles is None else dict(roles)
    if folder is None and wanted:
        raise UserError("roles chosen but no adapters folder given")
    if steps is not None and int(steps) < 1:
        raise UserError(f"steps must be at least 1 (got {steps})")
    cache = cache or PipelineCache()
    with cache.lock:
        pipe = cache.get(model)
        out = _new_folder(Path(out_dir))
        cfg = GenerationConfig(
            prompts=[str(prompt).strip()],
            model=model,
            adapters=folder,
            roles=wanted,
            seeds=[int(seed)],
            out_dir=out,
            steps=int(steps) if steps else None,
            guidance=None if guidance is None else float(guidance),
            device=cache.device,
        )
        result = generate_to_folder(cfg, pipe=pipe)
    sidecar = result.sidecars[0]
    return GeneratedVideo(result.videos[0], sidecar, json.loads(sidecar.read_text()), out)


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
    from dreamrelation.utils.media import save_png

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


class _Callbacks:
    """The app's event handlers (Gradio errors for user errors), sharing the pipeline cache."""

    def __init__(self, gr: Any, cache: PipelineCache, out_root: Path) -> None:
        self.gr, self.cache, self.out_root = gr, cache, out_root

    def slot_updates(self, roles: Sequence[str], active: Sequence[str]) -> list:
        gr = self.gr
        checks = [
            gr.update(
                visible=i < len(roles),
                label=roles[i] if i < len(roles) else "",
                value=i < len(roles) and roles[i] in active,
            )
            for i in range(MAX_ROLE_SLOTS)
        ]
        sliders = [gr.update(visible=i < len(roles), value=1.0) for i in range(MAX_ROLE_SLOTS)]
        return checks + sliders

    def scan_adapters(self, adapters: str) -> list:
        try:
            roles, active = adapter_roles_in(adapters)
        except UserError as exc:
            raise self.gr.Error(str(exc)) from exc
        roles = roles[:MAX_ROLE_SLOTS]
        spec = role_spec(roles, [r in active for r in roles], [1.0] * len(roles)) if roles else ""
        return [roles, spec, *self.slot_updates(roles, active)]

    @staticmethod
    def spec_from_slots(roles: list[str], *values: Any) -> str:
        active, strengths = values[:MAX_ROLE_SLOTS], values[MAX_ROLE_SLOTS:]
        return role_spec(roles or [], active, strengths) if roles else ""

    @staticmethod
    def on_model(model: str) -> tuple[int, float]:
        return model_defaults(model)

    def generate(
        self, model: str, adapters: str, roles: str, prompt: str, seed: float, steps: float, guidance: float
    ) -> tuple[str, dict, str]:
        try:
            loaded = model in self.cache
            made = generate_one(
                prompt,
                model=model or None,
                adapters=adapters or None,
                roles=roles,
                seed=int(seed),
                steps=int(steps),
                guidance=float(guidance),
                out_dir=self.out_root,
                cache=self.cache,
            )
        except UserError as exc:
            raise self.gr.Error(str(exc)) from exc
        active = (
            ", ".join(f"{a['role']}={a['scale']:g}" for a in made.info["adapters"]) or "none (bare model)"
        )
        note = (
            f"{made.info['seconds']:.1f} s{' (pipeline cached)' if loaded else ' (pipeline loaded)'}; "
            f"adapters: {active}; saved in `{made.folder}`"
        )
        return _servable(made.video), made.info, note

    def load_run(self, run: str) -> tuple[Any, str, Any, list]:
        gr = self.gr
        path = Path(str(run).strip()).expanduser()
        if not str(run).strip() or not path.is_dir():
            raise gr.Error(f"run folder not found: {run!r}")
        curve = None
        if (path / "loss.csv").is_file():
            try:
                curve = loss_curve_image(path)
            except UserError as exc:
                raise gr.Error(str(exc)) from exc
        steps = list_validation_steps(path)
        choices = [str(s.step) for s in steps]
        sheets = [(_servable(s.contact_sheet), f"step {s.step}") for s in steps if s.contact_sheet]
        picked = gr.update(choices=choices, value=choices[-1] if choices else None)
        return curve, run_summary(path), picked, sheets

    @staticmethod
    def show_step(run: str, step: str | None) -> tuple[str | None, list]:
        path = Path(str(run).strip()).expanduser()
        match = [s for s in list_validation_steps(path) if str(s.step) == str(step)]
        if not match:
            return None, []
        s = match[0]
        sheet = _servable(s.contact_sheet) if s.contact_sheet else None
        return sheet, [(_servable(v), v.name) for v in s.videos]


@dataclass
class _Start:
    """What the app shows when it opens."""

    model: str
    run: str
    roles: list[str]
    active: list[str]
    steps: int
    guidance: float


def _role_slots(gr: Any, start: _Start) -> tuple[list, list]:
    """One checkbox and strength slider per role slot (hidden beyond the run's roles)."""
    checks, sliders = [], []
    for i in range(MAX_ROLE_SLOTS):
        with gr.Row():
            name = start.roles[i] if i < len(start.roles) else ""
            checks.append(gr.Checkbox(name in start.active, label=name, visible=bool(name), scale=1))
            sliders.append(gr.Slider(0.0, 2.0, 1.0, step=0.05, label="strength", visible=bool(name), scale=3))
    return checks, sliders


def _generate_tab(gr: Any, cb: _Callbacks, start: _Start) -> tuple[Any, list]:
    """The Generate tab and its events; returns the adapters box and what a scan updates."""
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Textbox(
                start.model, label="Model directory (diffusers Mochi or Wan; default: toy bundle)"
            )
            adapters = gr.Textbox(
                start.run, label="Adapters folder or training run folder (empty: bare model)"
            )
            scan = gr.Button("Scan adapters", size="sm")
            role_names = gr.State(start.roles[:MAX_ROLE_SLOTS])
            checks, sliders = _role_slots(gr, start)
            spec = role_spec(start.roles, [r in start.active for r in start.roles], [1.0] * len(start.roles))
            roles = gr.Textbox(
                spec if start.roles else "",
                label="Active roles (role=strength, ...; 'none' = bare model; empty = the folder's default)",
            )
            prompt = gr.Textbox("A red circle is high-fiving a blue square.", label="Prompt", lines=2)
            with gr.Row():
                seed = gr.Number(0, label="Seed", precision=0)
                steps = gr.Slider(1, 128, start.steps, step=1, label="Steps")
                guidance = gr.Slider(1.0, 12.0, start.guidance, step=0.1, label="CFG")
            go = gr.Button("Generate", variant="primary")
        with gr.Column(scale=1):
            video = gr.Video(label="Video", autoplay=True, loop=True)
            status = gr.Markdown()
            sidecar = gr.JSON(label="Sidecar (JSON)")
    scan_outputs = [role_names, roles, *checks, *sliders]
    scan.click(cb.scan_adapters, adapters, scan_outputs, api_visibility="private")
    adapters.submit(cb.scan_adapters, adapters, scan_outputs, api_visibility="private")
    for widget in (*checks, *sliders):
        widget.input(  # user edits only, not the updates made by a scan
            cb.spec_from_slots, [role_names, *checks, *sliders], roles, api_visibility="private"
        )
    model.submit(cb.on_model, model, [steps, guidance], api_visibility="private")
    go.click(
        cb.generate,
        [model, adapters, roles, prompt, seed, steps, guidance],
        [video, sidecar, status],
        api_name="generate",
    )
    return adapters, scan_outputs


def _run_tab(gr: Any, cb: _Callbacks, start: _Start, adapters: Any, scan_outputs: list) -> tuple[Any, list]:
    """The Training run tab and its events; returns the run box and what loading a run updates."""
    with gr.Row():
        run = gr.Textbox(start.run, label="Run folder (from `dreamrelation train`)", scale=4)
        load = gr.Button("Load", variant="primary", scale=1)
        use = gr.Button("Use its adapters in Generate", scale=1)
    with gr.Row():
        curve = gr.Image(label="Loss", type="pil", format="png", interactive=False)
        summary = gr.Markdown()
    sheets = gr.Gallery(label="Validation contact sheets", columns=3, height="auto")
    with gr.Row():
        step = gr.Dropdown([], label="Validation step", interactive=True, scale=1)
        sheet = gr.Image(label="Contact sheet", type="filepath", interactive=False, scale=3)
    videos = gr.Gallery(label="Validation videos", columns=4, height="auto")
    loaded = [curve, summary, step, sheets]
    load.click(cb.load_run, run, loaded, api_name="load_run")
    run.submit(cb.load_run, run, loaded, api_visibility="private")
    step.change(cb.show_step, [run, step], [sheet, videos], api_name="show_step")
    use.click(lambda r: r, run, adapters, api_visibility="private").then(
        cb.scan_adapters, adapters, scan_outputs, api_visibility="private"
    )
    return run, loaded


def build_app(
    default_model: str | os.PathLike | None = None,
    default_run: str | os.PathLike | None = None,
    out_dir: str | os.PathLike = DEFAULT_OUT,
    cache: PipelineCache | None = None,
) -> gr.Blocks:
    """The two-tab Gradio app. API endpoints: ``/generate``, ``/load_run`` and ``/show_step``."""
    gr = _import_gradio()
    from dreamrelation.backbones.registry import model_dir

    for name, path in (("model", default_model), ("run folder", default_run)):
        if path and not Path(path).is_dir():
            raise UserError(f"{name} not found: {path}")
    model0 = str(model_dir(default_model))
    run0 = str(default_run or "")
    try:
        roles0, active0 = adapter_roles_in(run0) if run0 else ([], [])
    except UserError:
        roles0, active0 = [], []
    start = _Start(model0, run0, list(roles0), list(active0), *model_defaults(model0))
    cb = _Callbacks(gr, cache or PipelineCache(), Path(out_dir))
    with gr.Blocks(title="DreamRelation") as app:
        gr.Markdown("## DreamRelation: relation adapters on Mochi 1 and Wan 2.1 video models")
        with gr.Tab("Generate"):
            adapters, scan_outputs = _generate_tab(gr, cb, start)
        with gr.Tab("Training run"):
            run, loaded = _run_tab(gr, cb, start, adapters, scan_outputs)
        if run0:
            app.load(cb.load_run, run, loaded, api_visibility="private")
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

    ``text_encoder``: the T5 folder of a genmo-layout Mochi model. ``block=False`` returns at once with the server running in a thread (stop it with ``app.close()``);
    otherwise this returns when the server stops (Ctrl-C). Returns ``(app, local_url)``.
    """
    if host not in ("127.0.0.1", "localhost", "::1"):
        warnings.warn(
            f"serving on {host}: anyone who can reach it can run the model (no login)", stacklevel=2
        )
    app = build_app(default_model, default_run, out_dir, cache=PipelineCache(text_encoder=text_encoder))
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
