"""Generation: set a pipeline (a toy bundle, Mochi 1 or Wan 2.1) up to sample as its release does, pick
adapters, generate, write outputs with sidecars (:class:`GenerationConfig`, :func:`generate_to_folder`).

Each backbone samples as its release does (:func:`prepare_sampling`), with classifier-free guidance
(optionally a per-step schedule, applied through ``callback_on_step_end``), unless ``Sampling.sampler``
asks for the ancestral sampler (:mod:`dreamrelation.inference.samplers`; the toy Mochi's default):

* Mochi, as in the paper and genmo's code: ``FlowMatchEulerDiscreteScheduler(invert_sigmas=True)`` (timestep
  = (1 - sigma) * 1000), the pipeline's linear-quadratic sigma schedule (threshold 0.025), an empty negative
  prompt whose embedding is zeroed (``force_zeros_for_empty_prompt``); 64 steps, CFG 6.0.
* Wan 2.1: ``WanPipeline`` with its own flow-prediction UniPC scheduler (timestep = sigma * 1000) and its
  encoded empty negative prompt; 50 steps, CFG 5.0.
* Wan 2.2 TI2V-5B: as Wan 2.1 (``WanPipeline`` with ``expand_timesteps``); given an image
  (``GenerationConfig.image``) the same components sample through ``WanImageToVideoPipeline`` (first latent
  frame = the encoded image, kept clean at timestep 0), with the same adapters.

diffusers zeroes an empty negative prompt's token ids and attention mask (``force_zeros_for_empty_prompt``)
where genmo zeroes its embedding and mask; with the mask all zero the embedding never enters attention
or the caption pooler, so both give the same latents (checked: max difference 1.4e-6 on a tiny model).

Several processes (``dreamrelation generate --num-gpus N`` or ``accelerate launch -m dreamrelation.cli
generate ...``): the (prompt, seed) jobs are split into contiguous chunks over the processes (accelerate's
``split_between_processes``), each process samples its chunk on its own GPU and writes those videos and
sidecars under their single-process names; every video depends only on its prompt and seed, so the folder
is the one a single process writes. Rank 0 then writes the contact sheet and manifest (the frames reach it
through accelerate's ``gather_object``). With ``context_parallel`` (``--context-parallel``) the processes
instead sample every video together, each holding a slice of its tokens (diffusers' context parallelism,
Ulysses attention over the processes: :func:`enable_context_parallel`), and rank 0 writes the same folder -
for one long video that is too slow or too large for one GPU. diffusers has a plan for it on Wan
(``WanTransformer3DModel._cp_plan``), not on Mochi.
"""

from __future__ import annotations

import atexit
import csv
import functools
import hashlib
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamrelation.adapters.interop import check_adapter_file, import_checkpoint, is_foreign_checkpoint
from dreamrelation.adapters.triplet import read_adapter_metadata, role_of
from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.backbones.registry import (
    TOY,
    backbone_of_model_dir,
    get_backbone,
    model_dir,
    model_profile,
)
from dreamrelation.core.roles import PAPER_ROLES
from dreamrelation.errors import UserError, warn_user
from dreamrelation.inference.samplers import check_sampler, resolve_sampler, sampler_installed
from dreamrelation.utils.io import atomic_write_json, ensure_output_dir
from dreamrelation.utils.media import (
    contact_sheet,
    fit_image,
    read_image,
    save_png,
    write_gif,
    write_video,
)

#: CPU offloading on a GPU machine (diffusers' hooks): ``model`` moves whole components to the GPU in turn,
#: ``group`` streams every component one block at a time with the next block prefetched on a CUDA stream
#: (diffusers' group offloading: block swapping for sampling, between model and sequential in speed and
#: memory), ``sequential`` one layer at a time (least memory, slowest).
OFFLOAD_MODES = ("none", "model", "group", "sequential")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
#: A CFG value of exactly 1 inside a schedule that uses CFG elsewhere is run as this (see `guidance_values`).
CFG_ONE = 1.0 + 1e-6


def video_geometry(pipe) -> tuple[int, int, int]:
    """Default ``(num_frames, height, width)`` of a loaded pipeline: the toy world's (25 x 64 x 64) for a toy
    model, else its backbone's (Mochi 61 x 480 x 848, Wan 81 x 480 x 832); see :func:`model_profile`."""
    return model_profile(pipe).default_geometry


def prepare_mochi_sampling(pipe) -> None:
    """Make ``pipe`` sample as genmo does: inverted-sigma flow-matching Euler, zeroed empty negative prompt."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = pipe.scheduler
    if not isinstance(sched, FlowMatchEulerDiscreteScheduler) or not sched.config.get("invert_sigmas", False):
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(sched.config, invert_sigmas=True)
    if not pipe.config.get("force_zeros_for_empty_prompt", False):
        pipe.register_to_config(force_zeros_for_empty_prompt=True)


def prepare_sampling(pipe, sampler: str | None = None) -> dict:
    """Set ``pipe`` up to sample as its backbone's release does; returns the sampler settings to record,
    ``sampler`` resolved (None: the model's default, see :mod:`dreamrelation.inference.samplers`).

    Mochi: :func:`prepare_mochi_sampling`. Wan: the pipeline's own scheduler (flow-prediction UniPC) and
    its encoded empty negative prompt, unchanged.
    """
    backbone = get_backbone(pipe)
    sampler = resolve_sampler(pipe, sampler)
    if backbone.name == "mochi":
        prepare_mochi_sampling(pipe)
        return {
            "sampler": sampler,
            "scheduler": type(pipe.scheduler).__name__,
            "invert_sigmas": bool(pipe.scheduler.config.get("invert_sigmas", False)),
            "sigma_schedule": "linear_quadratic(threshold_noise=0.025)",
            "negative_prompt_zeroed": bool(pipe.config.get("force_zeros_for_empty_prompt", False)),
        }
    config = pipe.scheduler.config
    return {
        "sampler": sampler,
        "scheduler": type(pipe.scheduler).__name__,
        "prediction_type": config.get("prediction_type"),
        "flow_shift": config.get("flow_shift"),
        "negative_prompt_zeroed": False,
    }


def guidance_values(schedule: str | Sequence[float] | None, steps: int, guidance: float) -> list[float]:
    """Per-step CFG scales: ``None`` (constant ``guidance``), a list of ``steps`` values, a comma-separated
    string, or ``"linear:a->b"`` (linearly from a at the first step to b at the last).

    diffusers' pipeline decides at the start whether to batch the unconditional branch (scale > 1), so a
    schedule must be all > 1, or constant <= 1 (no CFG). Inside a CFG schedule a value of exactly 1 is run as
    ``1 + 1e-6`` (the conditional prediction up to 1e-6 of the guidance term); values below 1 are refused.
    """
    if schedule is None or (isinstance(schedule, str) and not schedule.strip()):
        return [float(guidance)] * steps
    if isinstance(schedule, str):
        text = schedule.strip()
        m = re.fullmatch(r"linear:\s*([-+0-9.eE]+)\s*->\s*([-+0-9.eE]+)", text)
        try:
            if m:
                values = np.linspace(float(m[1]), float(m[2]), steps).tolist()
            else:
                values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
        except ValueError as exc:
            raise UserError(
                f"guidance schedule {schedule!r}: use 'linear:6->3' or comma-separated numbers"
            ) from exc
    else:
        values = [float(v) for v in schedule]
    if len(values) != steps:
        raise UserError(f"guidance schedule has {len(values)} values but there are {steps} steps")
    if not all(np.isfinite(values)):
        raise UserError("guidance schedule: values must be finite numbers")
    if any(v > 1 for v in values):
        if any(v < 1 for v in values):
            raise UserError(
                "guidance schedule: mixing values above and below 1 is not supported (CFG on/off)"
            )
        values = [CFG_ONE if v == 1 else v for v in values]
    elif len(set(values)) > 1:
        raise UserError("guidance schedule: values <= 1 (no CFG) must be constant")
    return values


class GuidanceSchedule:
    """``callback_on_step_end`` that sets the pipeline's CFG scale for the next step and reports the step
    done to ``on_step(step)`` (1-based; it may raise to stop sampling, e.g. a cancel in the UI)."""

    def __init__(self, values: Sequence[float], on_step: Callable[[int], None] | None = None) -> None:
        self.values = list(values)
        self.on_step = on_step

    def __call__(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if step + 1 < len(self.values):
            pipe._guidance_scale = self.values[step + 1]
        if self.on_step is not None:
            self.on_step(step + 1)
        return {}


@dataclass(frozen=True)
class Sampling:
    """How each video is sampled: denoising steps, CFG scale (or a per-step ``guidance_schedule``, see
    :func:`guidance_values`), the negative prompt and the geometry (None: the model's own)."""

    steps: int = 64
    guidance: float = 6.0
    guidance_schedule: str | Sequence[float] | None = None
    negative_prompt: str = ""
    sampler: str | None = None  # "release" or "ancestral" (see inference.samplers); None: the model's default
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None


@torch.no_grad()
def generate_videos(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    sampling: Sampling = Sampling(),
    *,
    batch_size: int = 1,
    image: Image.Image | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """One uint8 ``(T, H, W, 3)`` video per (prompt, seed) pair, in order; the active adapters apply.

    ``image``: the first frame (at the video's size, see :func:`~dreamrelation.utils.media.fit_image`) for a
    backbone that takes one (:func:`image_pipeline`); None: text-to-video.

    The initial noise comes from a CPU generator seeded with ``seed``: the same seed gives the same video
    on the same device, whatever the batch it is in (up to float rounding, within 1/255); ``batch_size``
    pairs go through the pipeline per call (on a CPU 16 is 1.2-1.5x faster than 1 for toy models).
    ``on_step(step)``: called after each denoising step.
    """
    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must have equal length")
    backbone = get_backbone(pipe)
    if sampling.steps < backbone.min_sampling_steps:
        raise UserError(
            f"steps={sampling.steps}: must be at least {backbone.min_sampling_steps} ({backbone.name}'s "
            "sampling schedule needs that many steps)"
        )
    values = guidance_values(sampling.guidance_schedule, sampling.steps, sampling.guidance)
    sampler_name = resolve_sampler(pipe, sampling.sampler)
    default_frames, default_height, default_width = video_geometry(pipe)
    text_length = backbone.text_length(pipe)
    negative_prompt = sampling.negative_prompt
    step = max(1, int(batch_size))
    videos = []
    for start in range(0, len(prompts), step):
        chunk = range(start, min(start + step, len(prompts)))
        texts = [prompts[i] for i in chunk]
        call, inputs = pipe, {"prompt": texts, "negative_prompt": [negative_prompt] * len(chunk)}
        if image is not None:
            call = image_pipeline(pipe)
            inputs = {
                "image": image,
                **_prompt_embeds(pipe, texts, text_length, values[0] > 1, negative_prompt),
            }
        generators = [torch.Generator().manual_seed(int(seeds[i])) for i in chunk]
        with sampler_installed(call, sampler_name, generators):
            out = call(
                **inputs,
                num_frames=sampling.num_frames or default_frames,
                height=sampling.height or default_height,
                width=sampling.width or default_width,
                num_inference_steps=sampling.steps,
                guidance_scale=values[0],
                generator=generators,
                max_sequence_length=text_length,
                output_type="np",
                callback_on_step_end=(
                    GuidanceSchedule(values, on_step) if len(set(values)) > 1 or on_step else None
                ),
            )
        videos += [(np.clip(v, 0, 1) * 255).round().astype(np.uint8) for v in out.frames]
    return videos


def image_pipeline(pipe):
    """The backbone's image-to-video pipeline on ``pipe``'s components (shared, adapters included):
    ``WanImageToVideoPipeline`` for Wan 2.2 TI2V-5B; :class:`UserError` for a backbone without one."""
    import diffusers

    backbone = get_backbone(pipe)
    if not backbone.takes_image:
        raise UserError(
            f"a {backbone.name} model cannot take an image (image-to-video needs Wan 2.2 TI2V-5B)"
        )
    cls = getattr(diffusers, backbone.image_pipeline_class)
    if isinstance(pipe, cls):
        return pipe
    sampler = cls.from_pipe(pipe)
    sampler.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return sampler


def _prompt_embeds(pipe, prompts: Sequence[str], length: int, cfg: bool, negative: str = "") -> dict:
    """Prompt and negative-prompt embeddings from the text pipeline's own ``encode_prompt`` (the image
    pipeline's text cleaning needs ``ftfy``; the text pipeline's does not), so both encode text alike."""
    embeds, negative = pipe.encode_prompt(
        prompt=list(prompts),
        negative_prompt=[negative] * len(prompts),
        do_classifier_free_guidance=cfg,
        max_sequence_length=length,
        device=pipe._execution_device,
    )
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}


def model_takes_image(model: str | os.PathLike | None) -> bool:
    """Whether a model directory (None: the shipped toy bundle) generates from an image (Wan 2.2 TI2V-5B);
    False for a directory that is not a registered backbone."""
    try:
        return backbone_of_model_dir(model_dir(model)).takes_image
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------
# prompts and adapters for generate_to_folder
# ----------------------------------------------------------------------------------------------


def read_jobs(prompts: Sequence[str] | os.PathLike, seeds: Sequence[int] = (0,)) -> list[tuple[str, int]]:
    """``(prompt, seed)`` pairs. ``prompts`` is a list of prompts, or a path (``os.PathLike``) to a text file
    with one prompt per line (blank lines and ``#`` comments skipped) or a CSV file with a ``prompt`` column
    and an optional ``seed`` column. A row's own seed gives one video; otherwise every seed in ``seeds``.
    """
    seeds = [int(s) for s in seeds] or [0]
    rows: list[tuple[str, int | None]] = []
    if isinstance(prompts, os.PathLike):
        path = Path(prompts)
        if not path.is_file():
            raise UserError(f"prompts file not found: {path}")
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(text.splitlines())
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            if "prompt" not in fields:
                raise UserError(f"{path}: a CSV prompts file needs a 'prompt' column (found {fields})")
            for n, row in enumerate(reader, start=2):
                row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
                if not row.get("prompt"):
                    continue
                seed = row.get("seed", "")
                try:
                    rows.append((row["prompt"], int(seed) if seed else None))
                except ValueError as exc:
                    raise UserError(f"{path}:{n}: seed {seed!r} is not an integer") from exc
        else:
            rows = [
                (line.strip(), None)
                for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
    else:
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = [(str(p).strip(), None) for p in prompts if str(p).strip()]
    if not rows:
        raise UserError("no prompts given")
    return [(p, s) for p, seed in rows for s in ([seed] if seed is not None else seeds)]


@dataclass
class AdapterChoice:
    """One adapter to load: its role, file and strength."""

    role: str
    path: Path
    scale: float
    metadata: dict = field(default_factory=dict)


def resolve_adapters(
    adapters: str | os.PathLike | Sequence[str | os.PathLike] | None,
    roles: dict[str, float] | Sequence[str] | None = None,
) -> list[AdapterChoice]:
    """Which adapter files to load with which strength; raises :class:`UserError` naming a missing file.

    ``adapters``: a directory with ``{role}.safetensors`` files, or a list of files (role from the file's
    metadata, else its name). ``roles``: role -> strength (a list means strength 1). Default for a
    directory: the inference roles recorded by the trainer, else relation + output (the paper), strength 1;
    for a list of files: every file. An official DreamRelation / genmo LoRA checkpoint (``model_2000.lora.pt``)
    given alone is imported on the fly (:func:`imported_checkpoint`) and used as that folder.
    """
    adapters = imported_checkpoint(adapters)

    if adapters is None:
        if roles:
            raise UserError("roles given but no adapters (a directory or files)")
        return []
    wanted = (
        None if roles is None else (dict(roles) if isinstance(roles, dict) else dict.fromkeys(roles, 1.0))
    )
    single = isinstance(adapters, (str, os.PathLike))
    if single and Path(adapters).is_dir():
        folder = Path(adapters)
        if wanted is None:
            recorded: list[str] = []
            for f in sorted(folder.glob("*.safetensors")):
                try:
                    recorded = list(read_adapter_metadata(f).get("inference_roles") or [])
                except Exception:  # unreadable files are reported when chosen
                    continue
                if recorded:
                    break
            wanted = dict.fromkeys(recorded or PAPER_ROLES, 1.0)
        choices = []
        for role, scale in wanted.items():
            path = folder / f"{role}.safetensors"
            if not path.is_file():
                raise UserError(f"adapter file missing for role {role!r}: {path}")
            choices.append(AdapterChoice(role, path, float(scale)))
    else:
        files = [Path(adapters)] if single else [Path(a) for a in adapters]
        by_role: dict[str, Path] = {}
        for f in files:
            if not f.is_file():
                raise UserError(f"adapter file not found: {f}")
            try:
                role = role_of(f, read_adapter_metadata(f))
            except Exception as exc:
                raise UserError(f"{f}: not a readable adapter file ({exc})") from exc
            if role in by_role:
                raise UserError(f"two adapter files for role {role!r}: {by_role[role]} and {f}")
            by_role[role] = f
        wanted = wanted if wanted is not None else dict.fromkeys(by_role, 1.0)
        missing = [r for r in wanted if r not in by_role]
        if missing:
            raise UserError(f"no adapter file for role(s) {missing} among {sorted(by_role)}")
        choices = [AdapterChoice(role, by_role[role], float(scale)) for role, scale in wanted.items()]
    for choice in choices:
        if not np.isfinite(choice.scale):
            raise UserError(f"adapter {choice.role!r}: strength must be a finite number")
        choice.metadata = read_adapter_metadata(choice.path)
    return choices


def imported_checkpoint(
    adapters: str | os.PathLike | Sequence[str | os.PathLike] | None,
) -> str | os.PathLike | Sequence[str | os.PathLike] | None:
    """``adapters`` unchanged, or for one official / genmo checkpoint the temporary folder of its import
    (deleted at exit; ``dreamrelation import`` keeps one)."""
    items = [adapters] if isinstance(adapters, (str, os.PathLike)) else list(adapters or [])
    foreign = [Path(a) for a in items if Path(a).is_file() and is_foreign_checkpoint(a)]
    if not foreign:
        return adapters
    if len(items) > 1:
        raise UserError(
            f"{foreign[0]}: give an official / genmo LoRA checkpoint alone as --adapters, "
            "or convert it first with `dreamrelation import`"
        )
    folder = Path(tempfile.mkdtemp(prefix="dreamrelation-import-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    import_checkpoint(foreign[0], folder)
    return folder


def load_adapter_choices(pipe, choices: Sequence[AdapterChoice]) -> None:
    """Check every file against the pipeline's transformer (shapes, ranks, target modules), then load them
    as named adapters and activate exactly them with their strengths (``pipe.set_adapters``)."""

    transformer = pipe.transformer
    for choice in choices:  # all checks before any load: fail early, leave the model untouched
        check_adapter_file(choice.path, transformer)
    present = set(getattr(transformer, "peft_config", {}) or {})
    clash = [c.role for c in choices if c.role in present]
    if clash:
        transformer.delete_adapters(clash)
    for choice in choices:
        try:
            transformer.load_lora_adapter(
                str(choice.path.parent),
                weight_name=choice.path.name,
                adapter_name=choice.role,
                prefix="transformer",
            )
        except (ValueError, RuntimeError, KeyError) as exc:
            raise UserError(f"{choice.path}: cannot load as adapter {choice.role!r}: {exc}") from exc
    if choices:
        pipe.set_adapters([c.role for c in choices], [c.scale for c in choices])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "video"


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class GenerationResult:
    """What :func:`generate_to_folder` wrote."""

    out_dir: Path
    videos: list[Path]
    sidecars: list[Path]
    gifs: list[Path]
    contact_sheet: Path
    manifest: Path
    frames: list[np.ndarray] = field(repr=False, default_factory=list)


@dataclass
class GenerationConfig:
    """One ``generate`` run: what the CLI, the UI and :func:`generate_to_folder` share.

    ``prompts``: a list, or a path (``os.PathLike``) to a .txt / .csv file (see :func:`read_jobs`).
    ``model``: a diffusers Mochi 1 or Wan 2.1 directory, or a genmo-layout Mochi directory with T5 from
    ``text_encoder`` (None: the shipped toy bundle). ``adapters``: a
    folder or files (see :func:`resolve_adapters`), ``roles``: role -> strength (None: the recorded
    inference roles). Sampling settings left None take the model's defaults (:func:`model_profile`:
    Mochi 64 steps / CFG 6.0 / 30 fps, Wan 50 / 5.0 / 16, toy 32 / 4.0 / 8; geometry likewise).
    ``image``: a photo file or PIL image to start every video from (image-to-video; models that take one,
    :func:`model_takes_image`), resized and centre-cropped to the video's size with one warning; None:
    text-to-video.
    """

    prompts: Sequence[str] | os.PathLike = ()
    model: str | os.PathLike | None = None
    adapters: str | os.PathLike | Sequence[str | os.PathLike] | None = None
    roles: dict[str, float] | None = None
    seeds: Sequence[int] = (0,)
    text_encoder: str | os.PathLike | None = None
    out_dir: str | os.PathLike = "runs/generate"
    steps: int | None = None
    guidance: float | None = None
    guidance_schedule: str | Sequence[float] | None = None
    sampler: str | None = None  # "release" or "ancestral" (inference.samplers); None: the model's default
    gif: bool = False
    offload: str = "none"
    vae_tiling: bool = False
    dtype: str | torch.dtype = "auto"
    device: str | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    fps: float | None = None
    progress: bool = False  # a per-step progress bar on stderr (the CLI's)
    image: str | os.PathLike | Image.Image | None = None
    negative_prompt: str = ""
    #: several processes sample each video together (Wan; see the module docstring) instead of sharing the jobs
    context_parallel: bool = False
    #: ``on_step(video_index, step)`` after each denoising step (the UI's progress; raising stops the run)
    on_step: Callable[[int, int], None] | None = None


@dataclass
class _Run:
    """A checked :class:`GenerationConfig`: resolved device, dtype, model path, jobs and adapter choices."""

    cfg: GenerationConfig
    device: str
    dtype: torch.dtype
    model_path: Path
    jobs: list[tuple[str, int]]
    choices: list[AdapterChoice]
    out: Path
    created_out: bool = False  # the output folder did not exist before this run
    image: Image.Image | None = None  # the photo as read (fitted to the geometry once the pipeline is known)


def _check_numbers(cfg: GenerationConfig, jobs: Sequence[tuple[str, int]]) -> None:
    """Steps, guidance, geometry and seeds a sampler can run with (one line naming the value otherwise)."""
    for key in ("steps", "num_frames", "height", "width"):
        value = getattr(cfg, key)
        if value is not None and int(value) < 1:
            raise UserError(f"{key}={value}: must be at least 1")
    for key in ("guidance", "fps"):
        value = getattr(cfg, key)
        if value is not None and not (math.isfinite(float(value)) and float(value) >= 0):
            raise UserError(f"{key}={value}: must be a finite number >= 0")
    if cfg.sampler is not None:
        check_sampler(cfg.sampler)
    for _, seed in jobs:
        if not 0 <= int(seed) < 2**63:
            raise UserError(f"seed {seed}: must be between 0 and 2**63 - 1")


def warn_unknown_words(pipe, prompts: Sequence[str]) -> list[str]:
    """For a toy model: the prompt words its tokenizer has no whole-word token for (it reads them letter by
    letter), with one warning naming them; real backbones' tokenizers know every word."""
    if not TOY.is_pipeline(pipe) or getattr(pipe, "tokenizer", None) is None:
        return []
    words = {w.strip(".,;:!?\"'").lower() for prompt in prompts for w in prompt.split()}
    unknown = sorted(w for w in words if w and len(pipe.tokenizer.tokenize(w)) > 1)
    if unknown:
        warn_user(
            f"prompt words the toy model has no token for: {', '.join(unknown)} (read letter by letter); "
            "toy prompts use its colours, shapes and relations, e.g. 'A red star is pushing a blue circle.'"
        )
    return unknown


def enable_context_parallel(transformer, world_size: int, tokens: int) -> None:
    """Split each video's ``tokens`` over ``world_size`` processes: diffusers' context parallelism with Ulysses
    attention (an all-to-all swaps the token split for a head split around each attention), on the
    transformer's own plan. One line naming the fix when the model has no plan or the split is uneven."""
    plan = getattr(type(transformer), "_cp_plan", None)
    name = type(transformer).__name__
    if plan is None:
        raise UserError(
            f"--context-parallel: diffusers has no context-parallel plan for {name} (Wan has one); drop "
            "--context-parallel to share the prompts x seeds over the GPUs instead"
        )
    if torch.accelerator.device_count() == 0:
        raise UserError(
            "--context-parallel needs GPUs (diffusers puts each process on one); without them drop "
            "--context-parallel to share the prompts x seeds over the processes"
        )
    heads = int(transformer.config.num_attention_heads)
    for what, count in (("attention heads", heads), ("video tokens", tokens)):
        if count % world_size:
            raise UserError(
                f"--context-parallel over {world_size} processes: the {count} {what} do not split evenly; use "
                f"a number of GPUs that divides {count}"
                + (" or another frame count / size" if what == "video tokens" else "")
            )
    from diffusers import ContextParallelConfig

    transformer.set_attention_backend("native")  # torch SDPA: supports context parallelism on any device
    transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world_size))


def video_tokens(pipe, num_frames: int, height: int, width: int) -> int:
    """Tokens of one video in ``pipe``'s transformer (latent frames x patches)."""
    backbone = get_backbone(pipe.transformer)
    channels = int(pipe.transformer.config.in_channels)
    _, frames, h, w = backbone.latent_shape(channels, num_frames, height, width)
    patch = pipe.transformer.config.patch_size
    pt, ph, pw = (1, patch, patch) if isinstance(patch, int) else patch
    return (frames // pt) * (h // ph) * (w // pw)


def _launched():
    """accelerate's process state under a multi-process launch (``WORLD_SIZE`` > 1), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _check(cfg: GenerationConfig, pipe=None) -> _Run:
    """Everything the user gives, checked before any model is loaded (``pipe``: a caller's pipeline)."""
    if cfg.offload not in OFFLOAD_MODES:
        raise UserError(f"offload {cfg.offload!r}: choose one of {', '.join(OFFLOAD_MODES)}")
    state = _launched()
    default = str(state.device) if state is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    device = cfg.device or default
    if cfg.offload != "none" and not device.startswith("cuda"):
        raise UserError(
            f"offload {cfg.offload!r} moves weights between CPU and GPU; there is no GPU here (use none)"
        )
    torch_dtype = resolve_dtype(cfg.dtype, device)
    model_path = model_dir(cfg.model)
    if cfg.model and not model_path.exists():
        raise UserError(f"model path not found: {model_path}")
    jobs = read_jobs(cfg.prompts, cfg.seeds)
    _check_numbers(cfg, jobs)
    image = None
    if cfg.image is not None:
        if pipe is None:
            _check_takes_image(model_path)
        else:
            image_pipeline(pipe)  # raises for a pipeline that cannot take an image
        image = read_image(cfg.image)
    choices = resolve_adapters(cfg.adapters, cfg.roles)
    out = Path(cfg.out_dir)
    created = not out.exists()
    ensure_output_dir(out)  # before sampling: a bad --out must not cost the videos
    return _Run(cfg, device, torch_dtype, model_path, jobs, choices, out, created, image)


def _check_takes_image(model_path: Path) -> None:
    """A :class:`UserError` when the model directory is a registered backbone without image input."""
    try:
        backbone = backbone_of_model_dir(model_path)
    except (OSError, ValueError):
        return  # not a model directory: loading reports it
    if not backbone.takes_image:
        raise UserError(
            f"{model_path}: a {backbone.name} model cannot take an image; --image needs Wan 2.2 TI2V-5B "
            "(drop --image for text-to-video)"
        )


def _fitted_image(run: _Run, settings: dict) -> Image.Image | None:
    """The run's photo at the video's size (one warning when resized or cropped), recorded in ``settings``."""
    if run.image is None:
        return None
    height, width = int(settings["height"]), int(settings["width"])
    fitted, note = fit_image(run.image, height, width)
    source = run.cfg.image
    name = Path(source).name if isinstance(source, (str, os.PathLike)) else "the image"
    if note:
        warn_user(f"{name}: {note} (the video's {width}x{height} frame)")
    is_file = isinstance(source, (str, os.PathLike))
    settings["image"] = {
        "file": str(Path(source).resolve()) if is_file else None,
        "sha256": _sha256(Path(source)) if is_file else None,
        "size": list(run.image.size),
        "fitted": note or "used as is",
    }
    return fitted


def _settings(run: _Run, pipe, sampler: dict) -> dict:
    """Every sampling setting, the model's defaults filled in (recorded in each sidecar)."""
    cfg = run.cfg
    d_steps, d_guidance, d_fps = model_profile(pipe).sampling_defaults  # the toy's, else the backbone's
    frames, height, width = model_profile(pipe).default_geometry
    steps = int(cfg.steps or d_steps)
    guidance = float(d_guidance if cfg.guidance is None else cfg.guidance)
    values = guidance_values(cfg.guidance_schedule, steps, guidance)
    return {
        "steps": steps,
        "guidance": guidance if cfg.guidance_schedule is None else None,
        "guidance_schedule": values if len(set(values)) > 1 else None,
        "num_frames": cfg.num_frames or frames,
        "height": cfg.height or height,
        "width": cfg.width or width,
        "fps": float(cfg.fps or d_fps),
        "dtype": str(pipe.transformer.dtype).removeprefix("torch."),
        "device": str(getattr(pipe, "_execution_device", run.device)),
        "offload": cfg.offload,
        "vae_tiling": bool(cfg.vae_tiling),
        "negative_prompt": cfg.negative_prompt,
        "backbone": get_backbone(pipe).name,
        **sampler,
        "noise_generator": "torch CPU generator seeded with seed",
        "_guidance": guidance,  # the scale and the per-step values the sampler runs with (not recorded)
        "_values": values,
    }


def _adapters_info(choices: Sequence[AdapterChoice]) -> list[dict]:
    return [
        {
            "role": c.role,
            "file": str(c.path.resolve()),
            "scale": c.scale,
            "sha256": _sha256(c.path),
            "metadata": c.metadata,
        }
        for c in choices
    ]


def _write_one(
    run: _Run,
    pipe,
    n: int,
    prompt: str,
    seed: int,
    record: dict,
    result: GenerationResult,
    write: bool = True,
) -> dict:
    """Sample one (prompt, seed), write its MP4 (+ GIF) and sidecar; returns its manifest entry (``write``
    False: sample only, for the other processes of a context-parallel run; no entry)."""
    settings = record["settings"]
    geometry = {k: settings[k] for k in ("num_frames", "height", "width")}
    start = time.time()
    if run.cfg.progress:
        pipe.set_progress_bar_config(disable=False, desc=f"video {n + 1}/{len(run.jobs)}", leave=False)
    sampling = Sampling(
        steps=settings["steps"],
        guidance=record["guidance"],
        guidance_schedule=record["values"],
        negative_prompt=run.cfg.negative_prompt,
        sampler=settings["sampler"],
        **geometry,
    )
    video = generate_videos(
        pipe,
        [prompt],
        [seed],
        sampling,
        image=record["image"],
        on_step=None if run.cfg.on_step is None else functools.partial(run.cfg.on_step, n),
    )[0]
    if not write:
        return {}
    stem = f"{n:03d}_{_slug(prompt)}_seed{seed}"
    fps = settings["fps"]
    files = {"mp4": write_video(run.out / f"{stem}.mp4", video, fps=fps).name}
    if run.cfg.gif:
        result.gifs.append(write_gif(run.out / f"{stem}.gif", video, fps=fps))
        files["gif"] = f"{stem}.gif"
    sidecar = {
        "prompt": prompt,
        "seed": int(seed),
        "index": n,
        "model": record["model"],
        "adapters": record["adapters"],
        "settings": settings,
        "files": files,
        "seconds": round(time.time() - start, 3),
    }
    result.sidecars.append(atomic_write_json(run.out / f"{stem}.json", sidecar))
    result.videos.append(run.out / files["mp4"])
    result.frames.append(video)
    return {"prompt": prompt, "seed": int(seed), **files, "json": f"{stem}.json"}


def enable_offload(pipe, mode: str, device: str | torch.device) -> None:
    """Install one of :data:`OFFLOAD_MODES` on ``pipe`` (loaded on the CPU, adapters already loaded)."""
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "group":
        cuda = torch.device(device).type == "cuda"
        pipe.enable_group_offload(
            onload_device=torch.device(device),
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=cuda,
            non_blocking=cuda,
        )
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif mode != "none":
        raise UserError(f"offload {mode!r}: choose one of {', '.join(OFFLOAD_MODES)}")


def _set_up(run: _Run, pipe, owned: bool) -> None:
    """Offloading (for a pipeline loaded here) and VAE tiling."""
    if owned:
        enable_offload(pipe, run.cfg.offload, run.device)
    if run.cfg.vae_tiling:
        pipe.vae.enable_tiling()


def generate_to_folder(cfg: GenerationConfig, pipe=None) -> GenerationResult:
    """Generate one video per (prompt, seed) with the chosen adapters and write them to ``cfg.out_dir``.

    Per video: ``{n:03d}_{prompt-slug}_seed{seed}.mp4`` (+ ``.gif``) and a ``.json`` sidecar (prompt, seed,
    model, adapters with strengths and sha256, every setting); per run: ``contact_sheet.png`` and
    ``manifest.json``. Defaults: see :class:`GenerationConfig`; adapters relation + output at strength 1.
    ``pipe`` reuses an already loaded pipeline (adapters loaded here are removed again afterwards).
    Everything the user gives is checked before sampling.
    """
    run = _check(cfg, pipe)
    try:
        return _generate(run, pipe)
    except BaseException:
        if run.created_out and run.out.is_dir() and not any(run.out.iterdir()):
            run.out.rmdir()  # a failed run leaves no empty folder behind
        raise


def _generate(run: _Run, pipe) -> GenerationResult:
    """The body of :func:`generate_to_folder` once the config is checked."""
    cfg = run.cfg
    owned = pipe is None
    if owned:
        device = run.device if cfg.offload == "none" else None
        pipe = load_pipeline(run.model_path, dtype=run.dtype, device=device, text_encoder=cfg.text_encoder)
    warn_unknown_words(pipe, [prompt for prompt, _ in run.jobs])
    settings = _settings(run, pipe, prepare_sampling(pipe, cfg.sampler))
    state = _launched()
    together = state is not None and cfg.context_parallel  # every process samples every video, rank 0 writes
    record = {"guidance": settings.pop("_guidance"), "values": settings.pop("_values"), "settings": settings}
    record["image"] = _fitted_image(run, settings)
    load_adapter_choices(pipe, run.choices)
    if together:  # after the adapters: their layers sit inside the blocks the plan splits around
        tokens = video_tokens(pipe, settings["num_frames"], settings["height"], settings["width"])
        enable_context_parallel(pipe.transformer, state.num_processes, tokens)
    result = GenerationResult(run.out, [], [], [], run.out / "contact_sheet.png", run.out / "manifest.json")
    try:
        _set_up(run, pipe, owned)
        record["adapters"] = _adapters_info(run.choices)
        path = run.model_path
        record["model"] = str(path.resolve()) if owned else str(getattr(pipe, "name_or_path", "") or path)
        entries = _write_share(run, pipe, record, result, together)
    finally:
        if not owned and run.choices:  # leave a caller's pipeline as it was given
            pipe.transformer.delete_adapters([c.role for c in run.choices])
        if cfg.progress:
            pipe.set_progress_bar_config(disable=True)
    if state is not None and not together:  # every process's entries and frames, in job order, everywhere
        from accelerate.utils import gather_object

        entries = gather_object(entries)
        result.frames = gather_object(result.frames)
        result.videos = [run.out / e["mp4"] for e in entries]
        result.sidecars = [run.out / e["json"] for e in entries]
        result.gifs = [run.out / e["gif"] for e in entries if "gif" in e]
    if state is not None and not state.is_main_process:
        state.wait_for_everyone()
        return result
    labels = [f"seed {seed}: {prompt}" for prompt, seed in run.jobs]
    save_png(result.contact_sheet, contact_sheet([[v] for v in result.frames], row_labels=labels))
    manifest = {
        "model": record["model"],
        "adapters": record["adapters"],
        "settings": settings,
        "videos": entries,
    }
    atomic_write_json(result.manifest, manifest)
    if state is not None:
        state.wait_for_everyone()  # the folder is complete when any process returns
    return result


def _write_share(
    run: _Run, pipe, record: dict, result: GenerationResult, together: bool = False
) -> list[dict]:
    """Sample and write this process's jobs (all of them in a single process); their manifest entries.
    ``together`` (context parallelism): every process samples every job, only the main one writes."""
    numbered = list(enumerate(run.jobs))
    state = _launched()
    if state is None or together:
        write = state is None or state.is_main_process
        return [_write_one(run, pipe, n, p, seed, record, result, write) for n, (p, seed) in numbered]
    with state.split_between_processes(numbered) as mine:
        return [_write_one(run, pipe, n, p, seed, record, result) for n, (p, seed) in mine]
