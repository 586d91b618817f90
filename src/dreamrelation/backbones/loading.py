"""Load a registered backbone's model: the whole pipeline (sampling) or only the transformer (training).

Training from a prepared cache needs neither the text encoder (T5-XXL, ~9.5 GB in bf16) nor the VAE, so
:func:`load_transformer` reads ``transformer/`` alone; the backbone comes from ``model_index.json``. An empty
model argument means the shipped toy bundle (:func:`~dreamrelation.backbones.registry.model_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

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
    path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32, device: str | None = "cpu"
):
    """The pipeline of a diffusers-format directory of a registered backbone (``MochiPipeline``,
    ``WanPipeline``; default: the shipped toy bundle).

    ``pipe.prompt_length`` is the text length the transformer reads
    (:func:`~dreamrelation.backbones.registry.text_length_of_model_dir`). ``device=None`` leaves it on the CPU
    without moving (for CPU offloading).
    """
    path = model_dir(path)
    if not (path / "model_index.json").is_file():
        arch = next((a for a, p in TOY.bundles.items() if p == path), None)
        hint = f" (run `dreamrelation toy pretrain --architecture {arch}` to build it)" if arch else ""
        raise UserError(f"{path}: not a diffusers pipeline directory (no model_index.json){hint}")
    try:
        backbone = backbone_of_model_dir(path)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    pipeline_cls = backbone.classes()[1]
    pipe = pipeline_cls.from_pretrained(path, dtype=dtype)
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
