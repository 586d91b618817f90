"""The ``dreamrelation`` command line.

Every command takes an optional YAML config and ``key.path=value`` overrides; bad input ends with one
line naming the problem and a non-zero exit, never a traceback.

Each command imports the library it needs inside its function (the one place in the package that does
so for our own modules): ``dreamrelation --help`` and a mistyped option answer in 0.3 s, while importing
torch, diffusers and the trainer takes ~6 s on the 2-core CI machine.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

import typer

from dreamrelation.errors import InputWarning, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Relation-centric video customization (DreamRelation) on Mochi 1 and Wan 2.1 video models.\n\n"
    "Start with `dreamrelation demo`: it learns a relation from toy exemplar videos and generates new "
    "subjects doing it, on a CPU in minutes.",
)
toy_app = typer.Typer(
    no_args_is_help=True, help="The toy world: rendered relation videos and small Mochi / Wan backbones."
)
app.add_typer(toy_app, name="toy")
data_app = typer.Typer(no_args_is_help=True, help="Data sets: select exemplar videos from local downloads.")
app.add_typer(data_app, name="data")
benchmark_app = typer.Typer(no_args_is_help=True, help="Benchmarks that reproduce the paper's tables.")
app.add_typer(benchmark_app, name="benchmark")

OVERRIDES_HELP = "Config overrides such as train_steps=200 or seeds=[0,1]."
MODEL_HELP = (
    "Mochi or Wan directory: diffusers format, or genmo's original Mochi layout (dit/encoder/decoder"
    ".safetensors; default: toy bundle)."
)
T5_HELP = "T5 folder for a genmo-layout Mochi (default: t5-v1_1-xxl/ beside the model folder)."


@app.callback()
def _options(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show library warnings, logs and loading bars (hidden by default)."
    ),
) -> None:
    """Global options."""
    configure_output(verbose)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Our input warnings as one ``warning:`` line; any other (with --verbose) in Python's format."""
    if issubclass(category, InputWarning):
        typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def configure_output(verbose: bool) -> None:
    """Quiet by default: the project's input warnings (one line each, once) and nothing from the libraries
    (deprecations, CPU-autocast notes, PEFT's, their loading bars); ``verbose`` shows everything."""
    warnings.showwarning = _show_warning
    if verbose:
        warnings.simplefilter("default")
        return
    warnings.simplefilter("ignore")
    warnings.simplefilter("default", InputWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "--help" not in sys.argv[1:]:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()  # "Loading pipeline components"


@app.command()
def demo(
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP),
    config: Path = typer.Option(None, "--config", "-c", help="YAML file with DemoConfig fields."),
    out: Path = typer.Option(None, "--out", help="Output folder (default runs/demo)."),
) -> None:
    """Learn a held-out toy relation from person exemplars; compare DreamRelation, direct LoRA, untuned."""
    from dreamrelation.config import load_config
    from dreamrelation.demo import DemoConfig, run_demo

    cfg = load_config(DemoConfig, config, overrides)
    if out is not None:
        cfg.out_dir = str(out)
    run_demo(cfg)


@app.command()
def train(
    data: Path = typer.Argument(
        ..., help="Folder of exemplar videos (.mp4 + same-name .txt captions) and masks/."
    ),
    overrides: list[str] = typer.Argument(None, help="Trainer overrides such as optim.steps=500."),
    model: Path = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    text_encoder: Path = typer.Option(None, "--text-encoder", help=T5_HELP),
    method: str = typer.Option("dreamrelation", help="Method or ablation preset (e.g. direct_lora, wo_hmt)."),
    config: Path = typer.Option(
        None,
        "--config",
        "-c",
        help="YAML with TrainConfig fields, or the official DreamRelation training YAML.",
    ),
    out: Path = typer.Option(
        Path("runs/train"), "--out", help="Run folder: checkpoints, adapters, loss.csv."
    ),
    resume: bool = typer.Option(False, help="Continue from the latest checkpoint in --out."),
    num_gpus: int = typer.Option(
        1,
        "--num-gpus",
        help="Processes, one per GPU (re-launches under accelerate); memory.fsdp=true shards the base.",
    ),
) -> None:
    """Train relation adapters on exemplar videos with colour-coded masks, or on a `prepare`d folder.

    Several GPUs: `--num-gpus N`, or `accelerate launch -m dreamrelation.cli train ...`; the batch size
    is per process and every rank trains the same adapters each step.
    """
    from dreamrelation.training.distributed import init_distributed, inside_launch, launch_distributed

    if num_gpus > 1 and not inside_launch():
        argv = _argv_without("--num-gpus")
        raise typer.Exit(launch_distributed(num_gpus, argv))
    from dreamrelation.backbones.loading import model_backbone_dir
    from dreamrelation.data.prepare_folder import load_null_prompt, load_prepared
    from dreamrelation.training.config import PRESET_NAMES, check_optim_config
    from dreamrelation.training.monitor import TrainingMonitor
    from dreamrelation.training.official import load_train_config
    from dreamrelation.training.trainer import train_adapters
    from dreamrelation.utils.io import RunLock, ensure_output_dir

    if method not in PRESET_NAMES:
        raise UserError(f"--method {method!r}: unknown preset; choose one of {', '.join(PRESET_NAMES)}")
    cfg, official = load_train_config(method, config, overrides)
    check_optim_config(cfg.optim)  # before any data or model is touched
    model_path, _ = model_backbone_dir(model)
    prepared = (data / "manifest.json").is_file()
    if official is not None and prepared and cfg.monitor.validate_every:
        cfg.monitor.validate_every = 0  # validation samples need the VAE and T5, a prepared cache has neither
        official.ignored.append("sample.interval (validation is off when training from a prepared cache)")
    ctx = init_distributed()
    if ctx.is_main:
        ensure_output_dir(out)
    if official is not None and ctx.is_main:
        typer.echo(official.summary())
        official.write(out)
    with RunLock(out) if ctx.is_main else contextlib.nullcontext():
        if not prepared:  # raw videos: the same streaming decode as `prepare`
            data = _prepare_for_training(data, out / "prepared", model_path, text_encoder, ctx)
        samples, null_prompt = load_prepared(data), load_null_prompt(data)
        transformer, pipe = _training_model(cfg, model_path, text_encoder, ctx)
        monitor = TrainingMonitor(cfg, out, pipe=pipe, rank=ctx.rank)
        try:
            result = train_adapters(
                transformer, samples, cfg, out, resume=resume, callback=monitor, null_prompt=null_prompt
            )
        finally:
            monitor.close()
    typer.echo(f"adapters: {result.adapter_dir}")


def _training_model(cfg, model_path: Path, text_encoder: Path | None, ctx) -> tuple:
    """``(transformer, pipeline or None)`` for training: the transformer alone, or the whole pipeline when
    validation samples need its text encoder and VAE (parked on the CPU between validations)."""
    import torch

    from dreamrelation.backbones.loading import load_pipeline, load_transformer

    device = ctx.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" and cfg.mixed_precision != "fp32" else torch.float32
    if not cfg.monitor.validate_every:
        spread = cfg.memory.blocks_to_swap or (cfg.memory.fsdp and ctx.enabled)  # the trainer places it
        return load_transformer(model_path, dtype=dtype, device="cpu" if spread else device), None
    pipe = load_pipeline(model_path, dtype=dtype, device=str(device), text_encoder=text_encoder)
    if cfg.memory.offload_frozen and device.type != "cpu":
        from dreamrelation.training.memory import park_frozen_parts

        park_frozen_parts(pipe)  # on the CPU until a validation needs them
    return pipe.transformer, pipe


def _prepare_for_training(data: Path, cache: Path, model_path: Path, text_encoder: Path | None, ctx) -> Path:
    """Encode a raw exemplar folder into ``cache`` (rank 0; re-runs reuse it) as ``prepare`` does with the
    model's defaults; any bad input stops the run (training on a silent subset would mislead)."""
    from dreamrelation.data.prepare_folder import PrepareConfig, prepare_folder

    if ctx.is_main:
        settings = PrepareConfig.for_model(model_path)
        report = prepare_folder(data, cache, model_path, settings, text_encoder=text_encoder)
        for warning in report.warnings:
            typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
        if not report.ok:
            for problem in report.problems:
                typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
            typer.secho(
                f"fix the files above (or run `dreamrelation prepare {data} DIR` and train on DIR)", err=True
            )
            raise typer.Exit(2)
    ctx.barrier()
    return cache


def _argv_without(option: str) -> list[str]:
    """The command-line arguments after the program name, minus ``option`` and its value."""
    args, out, skip = sys.argv[1:], [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def _report_and_exit(report) -> None:
    """Print a batch report's warnings and problems (one line each) and its summary; exit 2 if not ok."""
    for warning in getattr(report, "warnings", []):
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    for problem in report.problems:
        typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(2)


@app.command()
def prepare(
    src: Path = typer.Argument(..., help="Folder of videos (+ same-name .txt captions) and masks/NAME/."),
    out: Path = typer.Argument(
        ..., help="Cache folder: samples/*.safetensors + manifest.json (re-runs skip)."
    ),
    model: Path = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    text_encoder: Path = typer.Option(None, "--text-encoder", help=T5_HELP),
    num_frames: int = typer.Option(
        None, help="Frames per clip: Mochi 6k+1, Wan 4k+1 (default: Mochi 61, Wan 81, toy 25)."
    ),
    height: int = typer.Option(None, help="Height (default: 480, toy 64)."),
    width: int = typer.Option(None, help="Width (default: Mochi 848, Wan 832, toy 64)."),
    fps: float = typer.Option(
        None, help="Resample the clip to this frame rate (default: Wan 16, toy 8, else 30)."
    ),
    start: float = typer.Option(0.0, help="Clip start in seconds."),
    resize: str = typer.Option("crop", help="crop (centre-crop) or pad."),
    caption: str = typer.Option(None, help="One caption for every video (instead of .txt files)."),
    caption_template: str = typer.Option(None, help="e.g. 'A {subject1} is high-fiving with a {subject2}.'"),
    subjects: Path = typer.Option(None, help="JSON with subject1/subject2 mask colours (and names)."),
    preview: bool = typer.Option(False, help="Write previews/NAME.png with the masks overlaid."),
) -> None:
    """Encode videos, captions and masks into a training cache; one line per bad input, good files kept."""
    from dreamrelation.backbones.loading import model_backbone_dir
    from dreamrelation.data.prepare_folder import PrepareConfig, prepare_folder

    model_path, _ = model_backbone_dir(model)
    settings = PrepareConfig.for_model(  # the toy's geometry and frame rate, else the backbone's
        model_path,
        num_frames=num_frames,
        height=height,
        width=width,
        fps=fps,
        start=start,
        resize=resize,
        caption=caption,
        caption_template=caption_template,
        subjects=str(subjects) if subjects else None,
        preview=preview,
    )
    report = prepare_folder(src, out, model_path, settings)
    _report_and_exit(report)


@app.command()
def masks(
    src: Path = typer.Argument(..., help="Folder of videos (or with a videos/ sub-folder), as for prepare."),
    subject1: str = typer.Option(..., "--subject1", help="Text for subject 1, e.g. 'man'."),
    subject2: str = typer.Option(..., "--subject2", help="Text for subject 2, e.g. 'dog'."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Mask folder (default: SRC/masks, where prepare looks)."
    ),
    grounding_dino: Path = typer.Option(
        Path("weights/grounding-dino-tiny"),
        help="Local Grounding DINO folder (IDEA-Research/grounding-dino-tiny).",
    ),
    sam2: Path = typer.Option(
        Path("weights/sam2.1-hiera-tiny"), help="Local SAM 2 video folder (facebook/sam2.1-hiera-tiny)."
    ),
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
    box_threshold: float = typer.Option(0.35, help="Minimum Grounding DINO score for a subject's box."),
    max_frames: int = typer.Option(None, help="Only the first N frames of each video."),
    overwrite: bool = typer.Option(False, help="Redo videos whose masks already exist."),
    preview: bool = typer.Option(True, help="Write OUT_previews/NAME.png with the masks overlaid."),
) -> None:
    """Subject masks from two texts (Grounding DINO boxes + SAM 2 video tracking), in the paper's colour format."""
    import torch

    from dreamrelation.data.mask_generation import (
        MaskOptions,
        generate_masks,
        load_grounding_dino,
        load_sam2_video,
    )

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    detector = load_grounding_dino(grounding_dino, device=dev, box_threshold=box_threshold)
    segmenter = load_sam2_video(sam2, device=dev)
    report = generate_masks(
        src,
        out or src / "masks",
        subject1,
        subject2,
        detector,
        segmenter,
        MaskOptions(preview=preview, overwrite=overwrite, max_frames=max_frames),
    )
    _report_and_exit(report)


@app.command()
def generate(
    prompts: list[str] = typer.Argument(None, help="Prompts (or --prompts-file)."),
    prompts_file: Path = typer.Option(
        None,
        "--prompts-file",
        "-f",
        help="Text file, one prompt per line, or CSV with prompt[,seed] columns.",
    ),
    model: Path = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    text_encoder: Path = typer.Option(None, "--text-encoder", help=T5_HELP),
    adapters: list[Path] = typer.Option(
        None, "--adapters", "-a", help="Adapter folder (e.g. runs/train/adapters) or adapter files (repeat)."
    ),
    role: list[str] = typer.Option(
        None, "--role", "-r", help="Role[=strength], repeatable (default: the recorded inference roles)."
    ),
    seed: list[int] = typer.Option([0], "--seed", "-s", help="Seed (repeat for several)."),
    out: Path = typer.Option(Path("runs/generate"), "--out", help="Output folder."),
    steps: int = typer.Option(None, help="Sampling steps (default: Mochi 64, Wan 50, toy 32)."),
    guidance: float = typer.Option(None, help="CFG scale (default: Mochi 6.0, Wan 5.0, toy 4.0)."),
    guidance_schedule: str = typer.Option(
        None, help="Per-step CFG: 'linear:6->3' or comma-separated values."
    ),
    sampler: str = typer.Option(
        None,
        help="release (the backbone's: Mochi Euler, Wan UniPC) or ancestral (fresh noise each step) "
        "(default: release; the toy Mochi ancestral).",
    ),
    gif: bool = typer.Option(False, help="Also write a GIF per video."),
    offload: str = typer.Option(
        "none",
        help="CPU offload on a GPU machine: none, model, group (block by block, prefetched), sequential.",
    ),
    vae_tiling: bool = typer.Option(False, help="Decode with the tiled VAE (less memory)."),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16."),
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
    num_frames: int = typer.Option(
        None, help="Frames: Mochi 6k+1, Wan 4k+1 (default: Mochi 61, Wan 81, toy 25)."
    ),
    height: int = typer.Option(None, help="Height in pixels (default: 480, toy 64)."),
    width: int = typer.Option(None, help="Width in pixels (default: Mochi 848, Wan 832, toy 64)."),
    fps: float = typer.Option(
        None, help="Frame rate of the written videos (default: Mochi 30, Wan 16, toy 8)."
    ),
    num_gpus: int = typer.Option(
        1, "--num-gpus", help="Processes sharing the prompts x seeds (re-launches under accelerate)."
    ),
    context_parallel: bool = typer.Option(
        False,
        "--context-parallel",
        help="With --num-gpus N: the N processes sample each video together, its tokens split over them "
        "(Wan; for one long video).",
    ),
    image: Path = typer.Option(
        None,
        "--image",
        help="Photo to start from (image-to-video, Wan 2.2 TI2V-5B); resized/cropped to the video size.",
    ),
    negative_prompt: str = typer.Option("", help="Negative prompt (default: empty, as in the paper)."),
) -> None:
    """Generate videos with relation adapters: MP4 (+GIF) and a JSON sidecar per video, a contact sheet.

    With --image every video starts from that photo (image-to-video). Several GPUs: `--num-gpus N` splits
    the prompts x seeds over N processes, or with --context-parallel splits each video's tokens (Wan); same
    files as one process.
    """
    options = dict(locals())  # every option, by the GenerationConfig field it sets
    from dreamrelation.inference.run import cli_generation_config, run_generate
    from dreamrelation.training.distributed import inside_launch, launch_distributed

    if num_gpus > 1 and not inside_launch():
        raise typer.Exit(launch_distributed(num_gpus, _argv_without("--num-gpus")))
    del options["num_gpus"]
    options.update(seeds=list(options.pop("seed") or [0]), out_dir=options.pop("out"), progress=True)
    sources = [options.pop(k) for k in ("prompts", "prompts_file", "adapters", "role")]
    cfg = cli_generation_config(*sources, **options)
    run_generate(cfg)


@app.command()
def export(
    adapters: Path = typer.Argument(
        ..., help="Adapter folder (e.g. runs/train/adapters) or one adapter file."
    ),
    out: Path = typer.Argument(..., help="Output .safetensors file (or a folder)."),
    format: str = typer.Option("comfyui", "--format", help="comfyui or genmo."),
    role: list[str] = typer.Option(
        None, "--role", "-r", help="Role[=strength] to merge in (default: relation + output)."
    ),
) -> None:
    """Export adapters as one LoRA file for ComfyUI's Mochi loader or genmo's fine-tuner/sampler."""
    from dreamrelation.inference.run import run_export

    run_export(adapters, out, format=format, roles=role)


@app.command("import")
def import_(
    checkpoint: Path = typer.Argument(
        ..., help="Public DreamRelation .pt/.safetensors or genmo fine-tuner LoRA."
    ),
    out: Path = typer.Argument(..., help="Folder for the converted {role}.safetensors files."),
    model: Path = typer.Option(
        None, "--model", "-m", help="diffusers Mochi directory to check shapes against."
    ),
) -> None:
    """Import a public DreamRelation or genmo LoRA checkpoint (pickles are loaded with weights_only=True)."""
    from dreamrelation.inference.run import run_import

    run_import(checkpoint, out, model=model)


@app.command()
def convert(
    model: Path = typer.Argument(..., help="Mochi in genmo's layout, e.g. pretrained_models/mochi."),
    out: Path = typer.Argument(..., help="New folder for the diffusers-format pipeline."),
    text_encoder: Path = typer.Option(None, "--text-encoder", help=T5_HELP),
    dtype: str = typer.Option("bfloat16", help="Weights dtype written: bfloat16, float16 or float32."),
) -> None:
    """Write genmo-layout Mochi weights (+ T5) once as a diffusers directory (loads faster than converting)."""
    from dreamrelation.backbones.loading import convert_model
    from dreamrelation.inference.generate import resolve_dtype

    if dtype == "auto":
        raise UserError("--dtype auto: choose bfloat16, float16 or float32 for the written weights")
    path = convert_model(model, out, text_encoder=text_encoder, dtype=resolve_dtype(dtype, "cpu"))
    typer.echo(f"diffusers-format Mochi: {path}")


@app.command()
def analyze(
    inputs: list[str] = typer.Argument(
        ..., help="Videos (caption in NAME.txt/.json) or prompts (generated first)."
    ),
    model: Path = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    text_encoder: Path = typer.Option(None, "--text-encoder", help=T5_HELP),
    adapters: list[Path] = typer.Option(
        None, "--adapters", "-a", help="Adapter folder or adapter files (repeat)."
    ),
    role: list[str] = typer.Option(
        None, "--role", "-r", help="Role[=strength], repeatable (e.g. relation output)."
    ),
    word: list[str] = typer.Option(None, "--word", "-w", help="Prompt word/phrase for attention maps."),
    out: Path = typer.Option(Path("runs/analysis"), "--out", help="Output folder."),
    sigma: float = typer.Option(
        0.5, help="Noise level of the analysed latents (timestep = (1 - sigma) * 1000)."
    ),
    rank: int = typer.Option(64, help="Top-r singular vectors for the subspace similarity."),
    seed: int = typer.Option(0, help="Noise / generation seed."),
    steps: int = typer.Option(None, help="Sampling steps when a prompt is given."),
    max_frames: int = typer.Option(None, help="Use at most this many frames per video."),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16."),
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
) -> None:
    """Q/K/V feature maps, subspace similarity of Q/K/V and adapters, text-to-video attention (paper sec. 3.3)."""
    import torch

    from dreamrelation.evaluation.analysis import AnalysisConfig, run_analysis
    from dreamrelation.inference.generate import resolve_dtype
    from dreamrelation.inference.run import parse_roles

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    chosen = adapters[0] if adapters and len(adapters) == 1 else (list(adapters) if adapters else None)
    summary = run_analysis(
        model,
        out,
        inputs,
        AnalysisConfig(
            adapters=chosen,
            roles=parse_roles(role),
            words=word or None,
            sigma=sigma,
            rank=rank,
            seed=seed,
            steps=steps,
            max_frames=max_frames,
            device=device,
            dtype=resolve_dtype(dtype, device),
            text_encoder=text_encoder,
        ),
    )
    for name, path in summary["files"].items():
        typer.echo(f"{name}: {path}")
    typer.echo(f"analysis.json: {out / 'analysis.json'}")


@app.command()
def evaluate(
    videos: Path = typer.Argument(
        ..., help="Folder of videos (prompts from .json sidecars or .txt captions)."
    ),
    metric: list[str] = typer.Option(
        ["clip_t", "temporal_consistency"],
        "--metric",
        help="clip_t, temporal_consistency, fvd, relation_accuracy (repeat).",
    ),
    clip: Path = typer.Option(
        None, "--clip", help="Local CLIP weights (e.g. openai/clip-vit-large-patch14)."
    ),
    videomae: Path = typer.Option(None, "--videomae", help="Local VideoMAE weights for FVD."),
    vlm: Path = typer.Option(None, "--vlm", help="Local VLM weights for relation accuracy (e.g. llava-1.5)."),
    reference: Path = typer.Option(None, "--reference", help="Folder of real videos (FVD reference set)."),
    relation: str = typer.Option(None, help="Relation phrase for the VLM question, e.g. 'shaking hands'."),
    prompts_file: Path = typer.Option(
        None, "--prompts-file", help="One prompt per line, in natural file order."
    ),
    repeats: int = typer.Option(10, help="VLM answers per video."),
    seed: int = typer.Option(0, help="VLM sampling seed."),
    max_frames: int = typer.Option(None, help="Read at most this many frames per video."),
    out: Path = typer.Option(None, "--out", help="Report folder (default: VIDEOS/evaluation)."),
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
) -> None:
    """CLIP-T, temporal consistency, FVD and VLM relation accuracy of a folder of videos (mean, 95% CI)."""
    from dreamrelation.evaluation.metrics import EvaluationConfig, evaluate_folder

    prompts = None
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise UserError(f"{prompts_file}: prompts file not found")
        prompts = [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()]
    weights = {k: v for k, v in {"clip": clip, "videomae": videomae, "vlm": vlm}.items() if v is not None}
    data = evaluate_folder(
        videos,
        EvaluationConfig(
            prompts=prompts,
            metrics=metric,
            weights=weights,
            reference_dir=reference,
            relation=relation,
            out_dir=out,
            n_repeats=repeats,
            seed=seed,
            device=device,
            max_frames=max_frames,
        ),
    )
    for name, s in data["metrics"].items():
        typer.echo(
            f"{name:22s} {s['mean']:.4f}  (95% CI {s['ci_low']:.4f} .. {s['ci_high']:.4f}, n={s['n']})"
        )
    typer.echo(f"report: {data['report_dir']}/report.md")


@app.command()
def ui(
    model: Path = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    text_encoder: Path = typer.Option(None, "--text-encoder", help=T5_HELP),
    run: Path = typer.Option(
        None, "--run", help="Training run folder to inspect; its adapters are preselected."
    ),
    out: Path = typer.Option(Path("runs/ui"), "--out", help="Folder for generated videos."),
    host: str = typer.Option(
        "127.0.0.1", help="Address to serve on (loopback by default; there is no login)."
    ),
    port: int = typer.Option(7860, help="Port to serve on."),
    open_browser: bool = typer.Option(False, "--open", help="Open the UI in a browser tab."),
) -> None:
    """Web UI (Gradio, needs the ui extra): generate with adapters, inspect training runs."""
    from dreamrelation.ui import launch

    launch(
        host=host,
        port=port,
        default_model=model,
        default_run=run,
        out_dir=out,
        open_browser=open_browser,
        text_encoder=text_encoder,
    )


@data_app.command("ntu")
def data_ntu(
    src: Path = typer.Option(
        ..., "--src", help="Your NTU RGB+D (120) download (files like S001C001P001R001A058_rgb.avi)."
    ),
    relation: str = typer.Option(..., "--relation", help="Two-person action id, e.g. A58 (shaking hands)."),
    num: int = typer.Option(25, "--num", help="Number of videos (spread over setups and performer pairs)."),
    out: Path = typer.Option(
        Path("data/ntu"), "--out", help="Output folder: videos/NAME.avi + NAME.txt captions."
    ),
    copy: bool = typer.Option(False, help="Copy the videos instead of symlinking them."),
) -> None:
    """Select one NTU relation's videos with paper-style captions (masks: `dreamrelation masks`, or your own)."""
    from dreamrelation.data.ntu import write_ntu_folder

    written = write_ntu_folder(src, out, relation, num, copy=copy)
    typer.echo(f"{len(written)} videos in {out / 'videos'}")


@benchmark_app.command("toy")
def benchmark_toy(
    overrides: list[str] = typer.Argument(
        None, help="ToyBenchmarkConfig overrides such as relations=[pushing]."
    ),
    preset: str = typer.Option(
        "full",
        help="full (4 held-out relations, every method, 2-3 training seeds), fast (CI-sized), i2v "
        "(Table 1 from a still of the new subjects, on the toy Wan 2.2) or i2v-study (i2v plus inference "
        "roles, lambda_m and the output adapter's steps on two relations).",
    ),
    config: Path = typer.Option(None, "--config", "-c", help="YAML file with ToyBenchmarkConfig fields."),
    estimate: bool = typer.Option(
        False, "--estimate", help="Print the plan and estimated time, run nothing."
    ),
) -> None:
    """The paper's Tables 1-3 on the toy world: untuned, direct LoRA, DreamRelation, ablations, placements.

    Resumable: finished (relation, method, training seed) units in the output folder are not run again.
    """
    from dreamrelation.config import load_config
    from dreamrelation.evaluation.toy_benchmark import (
        PRESETS,
        ToyBenchmarkConfig,
        describe_plan,
        run_toy_benchmark,
    )

    if preset not in PRESETS:
        raise UserError(f"--preset {preset!r}: choose {', '.join(PRESETS)}")
    base = PRESETS[preset](ToyBenchmarkConfig())
    cfg = load_config(base, config, overrides)
    if estimate:
        typer.echo(describe_plan(cfg)[1])
        return
    run_toy_benchmark(cfg)


@benchmark_app.command("compare")
def benchmark_compare(
    a: Path = typer.Argument(..., help="A `benchmark toy` output folder."),
    b: Path = typer.Argument(..., help="Another one, run with the same subjects, seeds and training seeds."),
    out: Path = typer.Option(None, "--out", help="Also write report.md / report.json here."),
) -> None:
    """Paired differences A minus B of two toy benchmark runs, per method (e.g. another base, or a made-up
    relation word): relation accuracy and leakage with bootstrap intervals over training seeds and prompts."""
    from dreamrelation.evaluation.report import write_report
    from dreamrelation.evaluation.toy_benchmark import compare_runs, comparison_table, read_units

    rows = compare_runs(read_units(a), read_units(b))
    table = comparison_table(rows)
    typer.echo(table)
    if out is not None:
        text = f"A = `{a}`, B = `{b}`. Paired by job (same subjects and noise seeds); bootstrap over training seeds, then prompts; relations are strata."
        write_report(out, "Toy benchmark: A minus B", [("Runs", text), ("Differences", table)], rows)
        typer.echo(f"report: {out / 'report.md'}")


@toy_app.command("pretrain")
def toy_pretrain(
    out: Path = typer.Option(None, "--out", help="Bundle directory (default: the packaged toy bundle)."),
    stage: list[str] = typer.Option(["vae", "transformer"], help="Stages to run: vae, transformer."),
    overrides: list[str] = typer.Argument(
        None, help="PretrainConfig overrides such as transformer_steps=1000."
    ),
    architecture: str = typer.Option(
        "mochi", help="Toy backbone: mochi, wan (Wan 2.1 classes) or wan22 (Wan 2.2 TI2V-5B's layout)."
    ),
    work_dir: Path = typer.Option(
        None,
        help="Where stage results and resumable checkpoints are kept (default runs/toy-pretrain[-ARCH]).",
    ),
    vae_from: Path = typer.Option(
        None, help="Reuse the VAE of this toy bundle instead of training one (e.g. the shipped bundle)."
    ),
    snapshot: bool = typer.Option(
        False,
        help="Only write --out from the running transformer stage's latest checkpoint (same overrides).",
    ),
) -> None:
    """Pretrain a toy backbone (VAE on random shapes, transformer on base relations only); seeded.

    An interrupted transformer stage resumes exactly from its last checkpoint in the work dir."""
    from dreamrelation.backbones.registry import TOY
    from dreamrelation.config import load_config
    from dreamrelation.toy.backbone import ARCHITECTURES
    from dreamrelation.toy.pretrain import PretrainConfig, adopt_vae, pretrain, snapshot_bundle

    unknown = sorted(set(stage) - {"vae", "transformer"})
    if unknown:
        raise UserError(f"--stage {unknown[0]!r}: choose vae and/or transformer")
    if architecture not in ARCHITECTURES:
        raise UserError(f"--architecture {architecture!r}: choose one of {', '.join(ARCHITECTURES)}")
    cfg = load_config(PretrainConfig, None, [f"backbone.architecture={architecture}", *(overrides or [])])
    work_dir = work_dir or Path("runs/toy-pretrain" + ("" if architecture == "mochi" else f"-{architecture}"))
    if snapshot:
        if out is None:
            raise UserError("--snapshot needs --out (the shipped bundle is never overwritten by a snapshot)")
        typer.echo(f"bundle: {snapshot_bundle(out, cfg, work_dir)}")
        return
    if vae_from is not None:
        adopt_vae(vae_from, work_dir)
    bundle = pretrain(out or TOY.bundles[architecture], cfg, tuple(stage), work_dir=work_dir)
    typer.echo(
        f"bundle: {bundle}" if bundle else f"stage results in {work_dir}; run the other stage to finish"
    )


@toy_app.command("render")
def toy_render(
    out: Path = typer.Argument(..., help="Output folder: videos/*.mp4 + .txt captions, masks/<name>/*.png."),
    relation: str = typer.Option("high_fiving", help="Relation name (see `dreamrelation toy relations`)."),
    num: int = typer.Option(16, help="Number of videos."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Render person-vs-person toy videos of a relation with captions and paper-format masks."""
    from dreamrelation.evaluation.toy_study import write_exemplar_videos
    from dreamrelation.toy import world

    world.get_relation(relation)
    write_exemplar_videos(relation, num, seed, out)
    typer.echo(f"{num} videos in {out}")


@toy_app.command("relations")
def toy_relations() -> None:
    """List the toy relations (base ones are used in pretraining; held-out ones are customization targets)."""
    from dreamrelation.toy import world

    for rel in world.RELATIONS.values():
        typer.echo(
            f"{rel.name:20s} {'held-out' if rel.held_out else 'base    '}  {world.caption_template(rel)}"
        )


@toy_app.command("check")
def toy_check(
    model: str = typer.Option(
        None, "--model", "-m", help="Toy bundle directory, or mochi / wan / wan22 (default: the toy Mochi)."
    ),
    num_prompts: int = typer.Option(200, help="Base-relation prompts (balanced over the six)."),
    num_held_out: int = typer.Option(48, help="Held-out relation prompts (the untuned model)."),
    out: Path = typer.Option(Path("runs/toy-check"), "--out", help="Report folder."),
    min_ok: float = typer.Option(0.90, help="PASS if at least this share of base videos is ok."),
    min_accuracy: float = typer.Option(0.85, help="PASS if base relation accuracy is at least this."),
    max_held_out_accuracy: float = typer.Option(
        0.25, help="PASS if held-out relation accuracy is at most this (near chance)."
    ),
    strict: bool = typer.Option(False, help="Exit 1 when a criterion fails (default: always exit 0)."),
    threads: int = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    denoise_from: str = typer.Option(
        "",
        help="Also finish the rendered videos from these noise levels, e.g. 0,0.7,0.95 (0: VAE round trip).",
    ),
    from_first_frame: bool = typer.Option(
        False, help="Also generate the base videos from their rendered first frame (Wan 2.2: image-to-video)."
    ),
    steps: int = typer.Option(None, help="Sampling steps (default: the toy's, 32)."),
    guidance: float = typer.Option(None, help="CFG scale (default: the toy's, 4.0)."),
    sampler: str = typer.Option(
        None, help="release or ancestral (default: the toy model's; Mochi ancestral, Wan release)."
    ),
) -> None:
    """Judge a toy base model by generating from it: both subjects present, one each, relation accuracy."""
    from dreamrelation.toy.check import CheckConfig, run_check

    try:
        levels = tuple(float(x) for x in denoise_from.replace(" ", "").split(",") if x)
    except ValueError as exc:
        raise UserError(f"--denoise-from {denoise_from!r}: give noise levels such as 0.7,0.85,0.95") from exc

    cfg = CheckConfig(
        model=model or "mochi",
        num_prompts=num_prompts,
        num_held_out=num_held_out,
        out_dir=str(out),
        min_ok=min_ok,
        min_base_accuracy=min_accuracy,
        max_held_out_accuracy=max_held_out_accuracy,
        denoise_from=levels,
        from_first_frame=from_first_frame,
        threads=threads,
        sampler=sampler,
        **({} if steps is None else {"num_inference_steps": steps}),
        **({} if guidance is None else {"guidance_scale": guidance}),
    )
    data = run_check(cfg)
    if strict and not data["passed"]:
        raise typer.Exit(1)


@toy_app.command("compare")
def toy_compare(
    a: Path = typer.Argument(..., help="A `toy check` output folder (or its report.json)."),
    b: Path = typer.Argument(..., help="Another one, made on the same prompts and seeds."),
) -> None:
    """Paired differences A minus B of two `toy check` runs on the base prompts, with bootstrap intervals."""
    from dreamrelation.toy.check import compare_reports, read_report

    for row in compare_reports(read_report(a), read_report(b)):
        verdict = "significant" if row["significant"] else "not significant"
        typer.echo(
            f"{row['score']}: {row['a']:.3f} vs {row['b']:.3f}, difference {row['diff']:+.3f} "
            f"[{row['low']:+.3f}, {row['high']:+.3f}] ({verdict}; {row['n']} paired videos)"
        )


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        app()
    except UserError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
