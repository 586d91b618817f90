"""The web UI's workflow steps as plain functions: exemplar data (uploads, check + prepare, mask previews),
training runs in a background process (start, status, stop, resume) and adapter export.

Training runs as ``python -m dreamrelation.cli train`` in its own session, logging to ``RUN/ui_train.log``;
``RUN/ui_job.json`` records its pid and step count, so a reloaded page (or a restarted UI) finds it again.
Stop sends SIGINT: the trainer finishes the step, saves a checkpoint and exits; resume continues from it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dreamrelation.adapters.interop import export_adapters
from dreamrelation.backbones.loading import model_backbone_dir
from dreamrelation.data.mask_generation import generate_masks, load_grounding_dino, load_sam2_video
from dreamrelation.data.prepare_folder import PrepareConfig, prepare_folder, read_example
from dreamrelation.errors import UserError
from dreamrelation.training.config import PRESET_NAMES, check_optim_config
from dreamrelation.training.official import load_train_config
from dreamrelation.utils.io import RunLock, atomic_path, ensure_output_dir
from dreamrelation.utils.media import overlay_masks, save_png

#: Mask overlay colours of the previews (subject1, subject2) and their names for the legend.
PREVIEW_COLOURS = ((255, 40, 40), (40, 120, 255))
PREVIEW_COLOUR_NAMES = ("red", "blue")
LOG_FILE = "ui_train.log"
JOB_FILE = "ui_job.json"
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif")


def unique_folder(root: str | os.PathLike, stem: str) -> Path:
    """A not yet existing ``root/stem`` (``stem-2``, ``stem-3``... if taken); nothing is created."""
    root = Path(root)
    for n in range(1, 10000):
        path = root / (stem if n == 1 else f"{stem}-{n}")
        if not path.exists():
            return path
    raise UserError(f"cannot find a free folder name under {root}")


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


# ----------------------------------------------------------------------------------------------- data


def _extract(archive: Path, dest: Path) -> None:
    """Unpack a zip into ``dest``, refusing members that would land outside it; a single top folder is
    stripped (``set.zip`` holding ``set/videos/...``)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/") and "__MACOSX" not in n]
            tops = {n.split("/", 1)[0] for n in names}
            strip = len(tops) == 1 and all("/" in n for n in names)
            for name in names:
                rel = name.split("/", 1)[1] if strip else name
                target = (dest / rel).resolve()
                if not target.is_relative_to(dest.resolve()):
                    raise UserError(f"{archive.name}: member {name!r} points outside the folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
    except zipfile.BadZipFile:
        raise UserError(f"{archive.name}: not a readable zip file") from None


def add_uploads(folder: str | os.PathLike, videos: Sequence[str], masks: Sequence[str]) -> list[str]:
    """Copy uploaded files into an exemplar folder in the layout ``prepare`` reads; returns what was added.

    ``videos``: videos and ``.txt`` captions (to ``videos/``) or a zip of a whole exemplar folder.
    ``masks``: mask videos ``NAME.mp4``, or a zip of ``NAME/`` mask folders (to ``masks/``).
    """
    if not videos and not masks:
        raise UserError("no files uploaded; add videos (or a zip of an exemplar folder) first")
    folder = Path(folder)
    added = []
    for kind, files in (("videos", videos), ("masks", masks)):
        for name in files:
            path = Path(name)
            if path.suffix.lower() == ".zip":
                dest = folder if kind == "videos" else folder / "masks"
                dest.mkdir(parents=True, exist_ok=True)
                _extract(path, dest)
            elif kind == "videos" and path.suffix.lower() not in (*VIDEO_SUFFIXES, ".txt"):
                raise UserError(f"{path.name}: not a video or caption (.txt); upload videos or a .zip")
            else:
                (folder / kind).mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, folder / kind / path.name)
            added.append(f"{kind}: {path.name}")
    return added


@dataclass
class DataCheck:
    """What checking an exemplar folder found: the prepared cache, per-file problems and warnings, one
    preview PNG per good video (with its caption) and the colour legend."""

    prepared: Path
    problems: list[str]
    warnings: list[str]
    previews: list[tuple[Path, str]] = field(default_factory=list)
    legend: str = ""
    summary: str = ""


def _subjects(subject1: str, subject2: str) -> dict[str, str] | None:
    names = {"subject1_name": subject1.strip(), "subject2_name": subject2.strip()}
    names = {k: v for k, v in names.items() if v}
    return names or None


def legend(subject1: str = "", subject2: str = "") -> str:
    """``red = subject1 (man), blue = subject2 (dog)``: the colours of :func:`mask_preview`."""
    parts = []
    for key, colour, name in zip(
        ("subject1", "subject2"), PREVIEW_COLOUR_NAMES, (subject1, subject2), strict=True
    ):
        parts.append(f"{colour} = {key}" + (f" ({name.strip()})" if name and name.strip() else ""))
    return ", ".join(parts)


def mask_preview(frames: np.ndarray, masks: np.ndarray, count: int = 4) -> np.ndarray:
    """``count`` evenly spaced frames side by side, the subjects' masks overlaid in :data:`PREVIEW_COLOURS`."""
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    overlaid = overlay_masks(frames[picks], masks[:, picks], colours=list(PREVIEW_COLOURS), alpha=0.55)
    return np.concatenate(list(overlaid), axis=1)


def check_data(
    src: str | os.PathLike,
    prepared: str | os.PathLike,
    model: str | os.PathLike | None,
    template: str = "",
    subject1: str = "",
    subject2: str = "",
    text_encoder: str | os.PathLike | None = None,
) -> DataCheck:
    """Run ``prepare`` on ``src`` into ``prepared`` (re-runs skip unchanged videos) and draw a mask preview
    of every prepared video into ``prepared/ui_previews``; problems are ``prepare``'s lines."""
    src = Path(str(src).strip()).expanduser()
    if not str(src).strip() or not src.is_dir():
        raise UserError(f"exemplar folder not found: {src}; upload videos or give a folder")
    model_path, backbone = model_backbone_dir(model)
    cfg = PrepareConfig.for_model(
        model_path, caption_template=template.strip() or None, subjects=_subjects(subject1, subject2)
    )
    report = prepare_folder(src, prepared, model_path, cfg, progress=False, text_encoder=text_encoder)
    check = DataCheck(Path(prepared), list(report.problems), list(report.warnings))
    check.legend, check.summary = legend(subject1, subject2), report.summary()
    captions = _captions(Path(prepared))
    for name in sorted(set(report.prepared) | set(report.skipped)):
        try:
            frames, masks, _ = read_example(src, name, cfg, backbone.name)
        except UserError as exc:
            check.problems.append(str(exc))
            continue
        png = save_png(Path(prepared) / "ui_previews" / f"{name}.png", mask_preview(frames, masks))
        check.previews.append((png, f"{name}: {captions.get(name, '')}"))
    return check


def _captions(prepared: Path) -> dict[str, str]:
    """Caption per video name from a prepared cache's manifest (empty if unreadable)."""
    try:
        manifest = json.loads((prepared / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    videos = manifest.get("videos", {})
    return {str(k): str(v.get("caption", "")) for k, v in videos.items() if isinstance(v, dict)}


def mask_weights(root: str | os.PathLike = "weights") -> tuple[Path, Path] | None:
    """The local Grounding DINO and SAM 2 folders ``dreamrelation masks`` uses, if both exist."""
    dino, sam = Path(root) / "grounding-dino-tiny", Path(root) / "sam2.1-hiera-tiny"
    return (dino, sam) if dino.is_dir() and sam.is_dir() else None


def generate_masks_for(
    src: str | os.PathLike, subject1: str, subject2: str, weights: tuple[Path, Path]
) -> list[str]:
    """Masks for every video of ``src`` from two subject texts (Grounding DINO + SAM 2); problem lines."""
    import torch

    if not subject1.strip() or not subject2.strip():
        raise UserError("masks from text need both subject names (e.g. man, dog)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    detector = load_grounding_dino(weights[0], device=device)
    segmenter = load_sam2_video(weights[1], device=device)
    src = Path(src)
    report = generate_masks(src, src / "masks", subject1.strip(), subject2.strip(), detector, segmenter)
    return list(report.problems)


# ------------------------------------------------------------------------------------------- training


@dataclass
class TrainRequest:
    """The fields the Train tab offers; ``extra``: further ``key=value`` trainer overrides."""

    data: str
    model: str | None = None
    method: str = "dreamrelation"
    steps: int = 500
    lr: float = 2e-4
    rank: int = 16
    lambda_m: float = 50.0
    validate_every: int = 0
    prompt: str = ""
    extra: str = ""
    text_encoder: str | None = None

    def overrides(self) -> list[str]:
        """The trainer overrides (``optim.log_every=1``: the page's progress and chart are per step)."""
        items = [
            f"optim.steps={int(self.steps)}",
            f"optim.lr={float(self.lr)}",
            f"adapter.rank={int(self.rank)}",
            f"hmt.lambda_m={float(self.lambda_m)}",
            "optim.log_every=1",
            f"monitor.validate_every={int(self.validate_every)}",
        ]
        if self.validate_every and self.prompt.strip():
            items.append(f"monitor.prompts={json.dumps([self.prompt.strip()])}")
        return items + self.extra.split()


def check_request(req: TrainRequest, run: Path, resume: bool) -> None:
    """What ``dreamrelation train`` checks before it starts (same messages), here before a process starts."""
    if req.method not in PRESET_NAMES:
        raise UserError(f"--method {req.method!r}: unknown preset; choose one of {', '.join(PRESET_NAMES)}")
    data = Path(req.data.strip()).expanduser()
    if not req.data.strip() or not data.is_dir():
        raise UserError(f"training data not found: {req.data!r}; check and prepare the exemplars first")
    for value, name in ((req.steps, "steps"), (req.rank, "rank")):
        if value is None or int(value) < 1:
            raise UserError(f"{name}={value}: must be at least 1")
    cfg, _ = load_train_config(req.method, None, req.overrides())
    check_optim_config(cfg.optim)
    if cfg.monitor.validate_every and not cfg.monitor.prompts:
        raise UserError("validation every N steps needs a validation prompt")
    model_backbone_dir(req.model)
    if resume and not any((run / "checkpoints").glob("step_*.safetensors")):
        raise UserError(f"{run}: no checkpoint to resume from; start a new run")
    if not resume and (run / "checkpoints").is_dir():
        raise UserError(f"{run}: already has a run; resume it or start a new run")
    if run_state(run).state == "running":
        raise UserError(f"{run}: a training process is running there; stop it first")
    ensure_output_dir(run, "run folder")
    with RunLock(run):  # a lock held by a command-line run is reported as the CLI does
        pass


def train_command(req: TrainRequest, run: Path, resume: bool) -> list[str]:
    """The ``dreamrelation train`` command line for ``req`` (the same interpreter as this process)."""
    cmd = [sys.executable, "-m", "dreamrelation.cli", "train", req.data.strip(), *req.overrides()]
    cmd += ["--method", req.method, "--out", str(run)]
    if req.model:
        cmd += ["--model", str(req.model)]
    if req.text_encoder:
        cmd += ["--text-encoder", str(req.text_encoder)]
    return cmd + (["--resume"] if resume else [])


_CHILDREN: dict[str, subprocess.Popen] = {}  # processes this UI started (reaped when they end)


def start_training(req: TrainRequest, run: str | os.PathLike, resume: bool = False) -> int:
    """Check ``req`` and start training into ``run`` in a background process; returns its pid."""
    run = Path(run)
    check_request(req, run, resume)
    cmd = train_command(req, run, resume)
    log = open(run / LOG_FILE, "a", encoding="utf-8")  # noqa: SIM115 - the child keeps it open
    with log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    _CHILDREN[str(run.resolve())] = proc
    job = {"pid": proc.pid, "steps": int(req.steps), "command": cmd, "started": time.time(), "resume": resume}
    (run / JOB_FILE).write_text(json.dumps(job, indent=2))
    return proc.pid


@dataclass
class RunState:
    """A run folder's training state: ``new``, ``running``, ``stopped``, ``finished`` or ``failed``."""

    state: str
    step: int = 0
    total: int = 0
    message: str = ""


def _alive(run: Path, pid: int) -> bool:
    """Whether ``pid`` still runs (an exited child of ours that is not yet reaped counts as ended)."""
    proc = _CHILDREN.get(str(run.resolve()))
    if proc is not None and proc.pid == pid and proc.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _last_line(run: Path) -> str:
    try:
        text = (run / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln.split("\r")[-1].strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _logged_steps(run: Path) -> int:
    try:
        with open(run / "loss.csv", encoding="utf-8") as fh:
            return max(0, sum(1 for line in fh if line.strip()) - 1)
    except OSError:
        return 0


def read_job(run: str | os.PathLike) -> dict:
    try:
        return json.loads((Path(run) / JOB_FILE).read_text())
    except (OSError, ValueError):
        return {}


def run_state(run: str | os.PathLike) -> RunState:
    """The state of the training in ``run`` from its job file, process, log and ``loss.csv``."""
    run = Path(run)
    job = read_job(run)
    step = _logged_steps(run)
    total = int(job.get("steps") or 0)
    if not job:
        return RunState("finished" if (run / "adapters").is_dir() else "new", step, total or step)
    if _alive(run, int(job["pid"])):
        return RunState("running", step, total, _last_line(run))
    last = _last_line(run)
    if last.startswith("adapters:"):
        return RunState("finished", step, total, "finished")
    if any((run / "checkpoints").glob("step_*.safetensors")) and last.startswith("interrupted"):
        return RunState("stopped", step, total, f"stopped at step {step}; a checkpoint is saved")
    return RunState("failed", step, total, last.removeprefix("error: ") or "the training process ended")


def stop_training(run: str | os.PathLike) -> str:
    """Ask the run's training process (started by this UI) to stop: SIGINT, so it saves a checkpoint."""
    run = Path(run)
    state = run_state(run)
    if state.state != "running":
        raise UserError(f"{run}: no training is running there ({state.state})")
    os.kill(int(read_job(run)["pid"]), signal.SIGINT)
    return f"stopping after step {state.step + 1}; a checkpoint will be saved"


def list_runs(root: str | os.PathLike) -> list[str]:
    """Run folders under ``root`` (newest first): folders with a job file, ``loss.csv`` or adapters."""
    root = Path(root)
    found = [
        p
        for p in (root.iterdir() if root.is_dir() else [])
        if p.is_dir() and any((p / f).exists() for f in (JOB_FILE, "loss.csv", "adapters"))
    ]
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


# --------------------------------------------------------------------------------------------- export

EXPORT_FORMATS = ("diffusers", "comfyui", "genmo")


def export_relation_adapter(adapters: str | os.PathLike, fmt: str, out_dir: str | os.PathLike) -> Path:
    """One downloadable file of a run's adapters: ``diffusers`` (a zip of the per-role PEFT files), or
    the merged relation adapter for ComfyUI / genmo (:func:`export_adapters`). Nothing is left on failure."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    folder = Path(adapters)
    name = folder.parent.name if folder.name == "adapters" else folder.name
    target = Path(out_dir) / f"{name}_{fmt}.{'zip' if fmt == 'diffusers' else 'safetensors'}"
    if fmt != "diffusers":
        return export_adapters(folder, target, format=fmt).path
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder}: no adapter files (*.safetensors)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for f in files:
            zf.write(f, f"adapters/{f.name}")
    return target
