"""Command bodies for ``dreamrelation generate`` / ``export`` / ``import``: plain-typed, typer-ready.

Each takes the values the CLI parsed, checks them, does the work and echoes a short summary; errors are
:class:`~dreamrelation.errors.UserError` (one line in the CLI).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer

from dreamrelation.adapters.interop import ExportResult, ImportResult, export_adapters, import_checkpoint
from dreamrelation.backbones.genmo import dit_file, is_genmo_dir, transformer_config
from dreamrelation.backbones.registry import model_dir
from dreamrelation.errors import UserError
from dreamrelation.inference.generate import GenerationConfig, GenerationResult, generate_to_folder
from dreamrelation.utils.io import ensure_output_dir


def parse_roles(specs: Sequence[str] | None) -> dict[str, float] | None:
    """``["relation=1", "output=0.8", "subject1"]`` -> ``{"relation": 1.0, "output": 0.8, "subject1": 1.0}``.

    Items may also be comma-separated (``"relation=1,output=0.5"``); ``None``/empty means the default.
    """
    if not specs:
        return None
    roles: dict[str, float] = {}
    for spec in specs:
        for item in str(spec).split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, value = item.replace(":", "=").partition("=")
            name = name.strip()
            if not name:
                raise UserError(f"--role {item!r}: expected NAME or NAME=STRENGTH")
            try:
                roles[name] = float(value) if sep else 1.0
            except ValueError as exc:
                raise UserError(f"--role {item!r}: strength {value!r} is not a number") from exc
    return roles or None


def cli_generation_config(
    prompts: Sequence[str] | None,
    prompts_file: Path | None,
    adapters: Sequence[Path] | None,
    roles: Sequence[str] | None,
    **settings,
) -> GenerationConfig:
    """The :class:`GenerationConfig` of ``dreamrelation generate``'s arguments: prompts as arguments or a
    ``--prompts-file`` (not both), one adapter folder or adapter files, ``--role NAME[=STRENGTH]`` specs;
    ``settings`` are the config's other fields."""
    if prompts and prompts_file:
        raise UserError("give prompts as arguments or --prompts-file, not both")
    if not prompts and prompts_file is None:
        raise UserError("no prompts: give PROMPT arguments or --prompts-file FILE (.txt or .csv)")
    source: Sequence[str] | Path = Path(prompts_file) if prompts_file is not None else list(prompts or [])
    adapter_arg: Path | list[Path] | None = None
    if adapters:
        adapter_arg = (
            Path(adapters[0]) if len(adapters) == 1 and Path(adapters[0]).is_dir() else list(adapters)
        )
    return GenerationConfig(prompts=source, adapters=adapter_arg, roles=parse_roles(roles), **settings)


def run_generate(cfg: GenerationConfig) -> GenerationResult:
    """Body of ``dreamrelation generate``: prompts x seeds -> ``cfg.out_dir``, one summary line."""
    result = generate_to_folder(cfg)
    typer.echo(f"{len(result.videos)} video(s) in {result.out_dir}; contact sheet {result.contact_sheet}")
    return result


def run_export(
    adapters: Path,
    out: Path,
    format: str = "comfyui",
    roles: Sequence[str] | None = None,  # noqa: A002
) -> ExportResult:
    """Body of ``dreamrelation export``: merge roles into one ComfyUI- or genmo-format LoRA file."""
    ensure_output_dir(out if out.is_dir() or not out.suffix else out.parent, "output path")
    result = export_adapters(adapters, out, format=format, roles=parse_roles(roles))
    strengths = ", ".join(f"{r}={s:g}" for r, s in result.roles.items())
    typer.echo(f"{result.format} LoRA ({strengths}; {result.modules} modules): {result.path}")
    return result


def run_import(checkpoint: Path, out: Path, model: Path | None = None) -> ImportResult:
    """Body of ``dreamrelation import``: public DreamRelation / genmo checkpoint -> our adapter files.

    With ``model`` (a diffusers Mochi directory) the result is checked against its transformer's layer
    shapes; only the config is read (the model is built on the meta device, no weights are loaded).
    """

    ensure_output_dir(out, "output folder")
    transformer = transformer_skeleton(model) if model is not None else None
    result = import_checkpoint(checkpoint, out, transformer=transformer)
    typer.echo(f"imported {result.source_format} checkpoint -> {result.out_dir}")
    for role, n in result.roles.items():
        typer.echo(f"  {role}: {n} LoRA modules")
    typer.echo(f"  inference roles: {', '.join(result.inference_roles)}")
    for note in result.notes:
        typer.echo(f"  note: {note}")
    if result.unknown_keys:
        typer.secho(f"  warning: {len(result.unknown_keys)} key(s) not imported (see import.json)", err=True)
    return result


def transformer_skeleton(model: Path | None):
    """The model's ``MochiTransformer3DModel`` built from its config (genmo layout: from the DiT file's
    shapes) on the meta device (no weights)."""
    from diffusers import MochiTransformer3DModel

    root = model_dir(model)
    if is_genmo_dir(root):
        with torch_meta():
            return MochiTransformer3DModel.from_config(transformer_config(dit_file(root)))
    config_dir = root / "transformer" if (root / "transformer" / "config.json").is_file() else root
    if not (config_dir / "config.json").is_file():
        raise UserError(f"{root}: no transformer config.json (expected a diffusers Mochi directory)")
    config = MochiTransformer3DModel.load_config(config_dir)
    with torch_meta():
        return MochiTransformer3DModel.from_config(config)


def torch_meta():
    """Context manager creating tensors on the meta device."""
    import torch

    return torch.device("meta")
