"""Load a registered backbone's model: the whole pipeline (sampling) or only the transformer (training).

Training from a prepared cache needs neither the text encoder (T5-XXL, ~9.5 GB in bf16) nor the VAE, so
:func:`load_transformer` reads ``transformer/`` alone; the backbone comes from ``model_index.json``. An empty
model argument means the shipped toy bundle (:func:`~dreamrelation.backbones.registry.model_dir`).

A Mochi directory in genmo's original layout (``dit.safetensors``, ``encoder.safetensors``,
``decoder.safetensors``; T5 in its own folder, ``text_encoder``) loads through the same functions, converted
in memory (:mod:`dreamrelation.backbones.genmo`); :func:`convert_model` writes it once as a diffusers
directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dreamrelation.backbones.genmo import is_genmo_dir, load_genmo_pipeline, load_genmo_transformer
from dreamrelation.backbones.registry import (
    TOY,
    Backbone,
    backbone_of_model_dir,
    model_dir,
    text_length_of_model_dir,
)
from dreamrelation.errors import UserError


def model_backbone_dir(model: str | os.PathLike | None) -> tuple[Path, Backbone]:
    """``(path, backbone)`` of a diffusers-format directory (default: the shipped toy bundle)."""
    path = model_dir(model)
    if not path.is_dir():
        raise UserError(f"model path not found: {path}")
    try:
        return path, backbone_of_model_dir(path)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None


def load_pipeline(
    path: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | None = "cpu",
    text_encoder: str | os.PathLike | None = None,
    with_transformer: bool = True,
):
    """The pipeline of a diffusers-format directory of a registered backbone (``MochiPipeline``,
    ``WanPipeline``; default: the shipped toy bundle), or of a genmo-layout Mochi directory with T5 from
    ``text_encoder`` (default: its sibling ``t5-v1_1-xxl/``).

    ``pipe.prompt_length`` is the text length the transformer reads
    (:func:`~dreamrelation.backbones.registry.text_length_of_model_dir`). ``device=None`` leaves it on the CPU
    without moving (for CPU offloading). ``with_transformer=False``: VAE and text encoder only.
    """
    path = model_dir(path)
    if is_genmo_dir(path):
        pipe = load_genmo_pipeline(path, text_encoder, dtype, with_transformer=with_transformer)
        return _finish(pipe, path, backbone_of_model_dir(path), device)
    if not (path / "model_index.json").is_file():
        arch = next((a for a, p in TOY.bundles.items() if p == path), None)
        hint = f" (run `dreamrelation toy pretrain --architecture {arch}` to build it)" if arch else ""
        raise UserError(f"{path}: not a diffusers pipeline directory (no model_index.json){hint}")
    try:
        backbone = backbone_of_model_dir(path)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    pipeline_cls = backbone.classes()[1]
    parts = {} if with_transformer else {"transformer": None}
    pipe = pipeline_cls.from_pretrained(path, dtype=dtype, **parts)
    return _finish(pipe, path, backbone, device)


def _finish(pipe, path: Path, backbone: Backbone, device: str | None):
    """Set the text length, move to ``device`` (None: stay), silence the progress bar."""
    pipe.prompt_length = text_length_of_model_dir(path, backbone)
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_transformer(
    model_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> torch.nn.Module:
    """The transformer of ``model_dir`` (toy bundle when None) in ``dtype``, on ``device`` if given.

    Nothing else of the pipeline (text encoder, tokenizer, VAE, scheduler) is loaded.
    """
    path, backbone = model_backbone_dir(model_dir)
    if is_genmo_dir(path):
        transformer = load_genmo_transformer(path, dtype)
        return transformer if device is None else transformer.to(device)
    if not (path / "transformer" / "config.json").is_file():
        raise UserError(
            f"{path}: no transformer/config.json (not a diffusers-format {backbone.name} directory)"
        )
    transformer_cls = backbone.classes()[0]
    try:
        transformer = transformer_cls.from_pretrained(path, subfolder="transformer", dtype=dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: cannot load the {backbone.name} transformer ({exc})") from None
    if device is not None:
        transformer = transformer.to(device)
    return transformer


def convert_model(
    model: str | os.PathLike,
    out: str | os.PathLike,
    text_encoder: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write a genmo-layout Mochi directory (+ its T5 folder) as a diffusers-format directory ``out``."""
    path, target = model_dir(model), Path(out)
    if not is_genmo_dir(path):
        raise UserError(f"{path}: not a Mochi directory in genmo's layout (dit/encoder/decoder.safetensors)")
    if target.exists() and any(target.iterdir()):
        raise UserError(f"{target}: exists and is not empty; choose a new output folder")
    pipe = load_pipeline(path, dtype=dtype, device=None, text_encoder=text_encoder)
    pipe.save_pretrained(target, safe_serialization=True, max_shard_size="5GB")
    return target
